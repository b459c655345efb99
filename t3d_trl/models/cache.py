"""A prefix KV cache for block diffusion decoding that writes in place instead of concatenating.

Every denoising forward appends the current block's keys and values to the cache and crops them off again (the
block is not final yet), and every first step of a block also appends the finished previous block for good.
transformers' ``DynamicLayer`` does this with ``torch.cat``, which copies the whole cache at every forward: for a
cache of ``n`` tokens and a block of ``B``, ``O(n)`` memory traffic per layer and step where ``O(B)`` would do.
:class:`BufferedLayer` keeps the keys and values in a buffer preallocated for the whole decode, writes the new
tokens at the end of the valid prefix and returns views of the prefix, so that

* ``update`` copies only the new tokens: ``buffer[..., n : n + q, :] = new`` and returns ``buffer[..., : n + q, :]``;
* ``crop(-k)`` is ``n -= k`` (no copy).

The views are valid until the next ``update`` or ``crop``, which is how attention uses them (within one forward).

Static-shape decoding (``cache_implementation="static"``, :mod:`t3d_trl.generation.static`) needs the opposite: the
same shapes at every forward, so that ``torch.compile`` builds one graph. :class:`IndexedStaticLayer` keeps a buffer of
fixed capacity, writes each forward's keys and values at the cache slots of a tensor ``write_index`` (set by the
decoder before the forward, never a Python int) and returns the whole buffer; the attention mask, which spans the whole
capacity, hides the slots that hold nothing valid yet.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

__all__ = ["BufferedLayer", "IndexedStaticCache", "IndexedStaticLayer", "buffered_cache", "has_only_full_attention"]


class BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in a preallocated buffer (see the module docstring).

    Args:
        capacity: tokens the buffer holds before it grows (it then doubles, copying the valid prefix once).
    """

    def __init__(self, capacity: int = 256) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"`capacity` must be a positive number of tokens, got {capacity}.")
        self.capacity = int(capacity)
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._key_buffer = key_states.new_empty((*key_states.shape[:-2], self.capacity, key_states.shape[-1]))
        self._value_buffer = value_states.new_empty((*value_states.shape[:-2], self.capacity, value_states.shape[-1]))
        self.length = 0
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity)
        keys, values = self._key_buffer, self._value_buffer
        self._key_buffer = keys.new_empty((*keys.shape[:-2], capacity, keys.shape[-1]))
        self._value_buffer = values.new_empty((*values.shape[:-2], capacity, values.shape[-1]))
        self._key_buffer[..., : self.length, :] = keys[..., : self.length, :]
        self._value_buffer[..., : self.length, :] = values[..., : self.length, :]
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``key_states``/``value_states`` after the valid prefix; return views of the whole prefix."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (a negative count, as ``DynamicLayer.crop``); no copy."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"`crop` takes a negative number of tokens to remove, got {tokens_to_remove} (use -{tokens_to_remove})."
            )
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self._refresh_views()

    def _index_batch(self, index: torch.Tensor) -> None:
        """Keep (or repeat, or reorder) the batch rows ``index`` of the buffers."""
        if not self.is_initialized:
            return
        index = index.to(self.device)
        self._key_buffer = self._key_buffer[index]
        self._value_buffer = self._value_buffer[index]
        self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices`` (finished sequences leave the batch)."""
        self._index_batch(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._index_batch(torch.arange(self._key_buffer.shape[0]).repeat_interleave(repeats))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._index_batch(beam_idx)

    def offload(self) -> None:
        if self.is_initialized:
            self._key_buffer = self._key_buffer.to("cpu", non_blocking=True)
            self._value_buffer = self._value_buffer.to("cpu", non_blocking=True)
            self._refresh_views()

    def prefetch(self) -> None:
        if self.is_initialized and self._key_buffer.device != self.device:
            self._key_buffer = self._key_buffer.to(self.device, non_blocking=True)
            self._value_buffer = self._value_buffer.to(self.device, non_blocking=True)
            self._refresh_views()

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self.length = 0
        super().reset()


def buffered_cache(config, capacity: int = 256) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers are :class:`BufferedLayer` s of ``capacity``
    tokens (other layer kinds, e.g. sliding-window layers, are kept as transformers makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [BufferedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def has_only_full_attention(config) -> bool:
    """Whether every layer of ``config`` is a plain full-attention layer (what :class:`IndexedStaticCache` holds).

    Args:
        config: a (text) model config.

    Returns:
        ``False`` when transformers gives some layer another kind of cache (sliding window, linear attention...).
    """
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


class IndexedStaticLayer(StaticLayer):
    """A fixed-capacity layer that writes every forward's keys and values at the slots ``write_index`` names.

    transformers' ``StaticLayer`` appends at its running length. Block diffusion decoding chooses where each query's
    keys go (the finished block at its own columns, a query whose keys must not be kept at a scratch slot), so the slots
    are a ``LongTensor`` with one entry per query, set with :meth:`IndexedStaticCache.set_write_index` before the
    forward. ``update`` returns the whole buffer, whose shape never changes; the attention mask spans the capacity.

    Args:
        max_cache_len: slots per row.
    """

    is_compileable = True

    def __init__(self, max_cache_len: int) -> None:
        if max_cache_len < 1:
            raise ValueError(f"`max_cache_len` must be a positive number of tokens, got {max_cache_len}.")
        super().__init__(max_cache_len=max_cache_len)
        self.write_index: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate zeroed buffers (masked slots must hold finite values: attention multiplies them by 0) and mark
        their addresses static for ``torch.compile`` and CUDA graphs."""
        self.device = key_states.device
        self.batch_size, self.num_heads = key_states.shape[:2]
        self.keys = key_states.new_zeros((*key_states.shape[:2], self.max_cache_len, key_states.shape[-1]))
        self.values = value_states.new_zeros((*value_states.shape[:2], self.max_cache_len, value_states.shape[-1]))
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the ``Q`` new keys and values at slots ``write_index`` (``Q`` entries).

        Args:
            key_states: ``[batch, heads, Q, head_dim]`` new keys.
            value_states: ``[batch, heads, Q, head_dim]`` new values.

        Returns:
            The whole key and value buffers ``[batch, heads, max_cache_len, head_dim]``.

        Raises:
            ValueError: when ``write_index`` is unset or does not name one slot per query.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.write_index is None or self.write_index.shape[0] != key_states.shape[-2]:
            raise ValueError(
                f"IndexedStaticLayer.update got {key_states.shape[-2]} new tokens but `write_index` names "
                f"{None if self.write_index is None else self.write_index.shape[0]} slots; call "
                "IndexedStaticCache.set_write_index with one slot per query before the forward."
            )
        self.keys[:, :, self.write_index] = key_states
        self.values[:, :, self.write_index] = value_states
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("An IndexedStaticLayer is never cropped: the decoder chooses the slots it writes.")

    def matches(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether the buffers exist with this batch size, dtype and device.

        Args:
            batch_size: rows.
            dtype: key and value dtype.
            device: their device.

        Returns:
            ``True`` when the layer can serve a decode with these settings as it is.
        """
        return (
            self.is_initialized
            and self.keys.shape[0] == batch_size
            and self.keys.dtype == dtype
            and self.keys.device == torch.device(device)
        )


class IndexedStaticCache(Cache):
    """A cache of :class:`IndexedStaticLayer` s, one per layer of ``config``, for static-shape decoding.

    Args:
        config: the model config (every layer must be a full-attention layer, see :func:`has_only_full_attention`).
        max_cache_len: slots per row.

    Raises:
        ValueError: if ``config`` has layers of another kind (sliding-window, linear attention...).
    """

    def __init__(self, config, max_cache_len: int) -> None:
        text_config = config.get_text_config(decoder=True)
        if not has_only_full_attention(text_config):
            raise ValueError(
                "IndexedStaticCache holds full-attention layers only; this config has other layer kinds "
                f"({getattr(text_config, 'layer_types', None)})."
            )
        super().__init__(layers=[IndexedStaticLayer(max_cache_len) for _ in range(text_config.num_hidden_layers)])

    @property
    def max_cache_len(self) -> int:
        """Slots per row (the same in every layer). Our own: transformers' ``Cache.max_cache_len`` is a deprecated
        read-only property in some versions and absent in others."""
        return self.layers[0].max_cache_len

    def index_buffer(self, length: int, device: torch.device) -> torch.Tensor:
        """A ``LongTensor`` kept with the cache, for the write index of the fixed-shape forwards.

        Its address never changes, so a CUDA graph recorded with it stays valid from one decode to the next.

        Args:
            length: slots it names (queries per forward).
            device: where it lives.

        Returns:
            The buffer (its contents are the caller's to set).
        """
        buffer = getattr(self, "_index_buffer", None)
        if buffer is None or buffer.shape[0] != length or buffer.device != torch.device(device):
            buffer = torch.zeros(length, dtype=torch.long, device=device)
            torch._dynamo.mark_static_address(buffer)
            self._index_buffer = buffer
        return buffer

    def set_write_index(self, write_index: torch.Tensor) -> None:
        """Make the next forward write query ``i``'s keys and values at slot ``write_index[i]`` of every layer.

        Args:
            write_index: ``[Q]`` slots, one per query of the next forward.
        """
        for layer in self.layers:
            layer.write_index = write_index

    def matches(self, batch_size: int, capacity: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this (initialized) cache can serve a decode as it is.

        Args:
            batch_size: rows of the decode.
            capacity: slots it needs.
            dtype: the model's dtype.
            device: the model's device.

        Returns:
            ``True`` when every layer has buffers of this batch size, dtype and device and at least ``capacity`` slots.
        """
        return self.max_cache_len >= capacity and all(layer.matches(batch_size, dtype, device) for layer in self.layers)
