"""Model families: every decision that depends on how a kind of diffusion LM runs, in one place.

A :class:`ModelFamily` owns, for one kind of model:

* loading: the ``AutoModel*`` class a checkpoint of the family loads with (:attr:`ModelFamily.auto_model_class`);
* decoding: the block grid (:attr:`ModelFamily.decoding_grid`), the cache (:meth:`ModelFamily.new_cache`,
  :meth:`ModelFamily.select_rows`), the attention mask of a denoising forward (:meth:`ModelFamily.decode_mask`)
  and the forward itself (:meth:`ModelFamily.denoise_forward`), and their static-shape counterparts
  (:meth:`ModelFamily.static_decoding_unsupported`, :meth:`ModelFamily.new_static_cache`,
  :meth:`ModelFamily.static_decode_mask`, :meth:`ModelFamily.static_forward`);
* training: the sequence layout (:meth:`ModelFamily.training_layout`), which tokens of a trajectory state are
  noised and trained (:meth:`ModelFamily.trajectory_state`), how the collator hands over the attention mask
  (:attr:`ModelFamily.training_attention_layout`) and the training forward (:meth:`ModelFamily.training_forward`).

Code outside this module asks the family; it never compares family names. Two families are registered:

* ``"block_causal"`` (:class:`BlockCausalFamily`): any transformers decoder LM (Qwen3, Llama, SDAR loaded natively
  as Qwen3) run as a block diffusion model through 4D attention masks and a prefix KV cache; remote-code models with
  SDAR's ``store_kv`` cache interface run through :class:`StoreKVFamily`, the same family with another cache driver.
* ``"bidirectional"`` (:class:`BidirectionalFamily`): mask predictors with full attention (``AutoModelForMaskedLM``,
  LLaDA-style); no cache, the whole sequence every step.

A new family is one subclass of :class:`ModelFamily` and one :func:`register_family` (see ``docs/design.md``,
"Adding a model family"). This module imports only the standard library, torch, transformers and the layout
modules below it, because it is also copied into the ``custom_generate/generate.py`` of saved checkpoints.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from typing import Any, ClassVar

import torch
from transformers import DynamicCache

from ..layouts import bidirectional_layout, block_causal_layout
from ..masks import CLEAN, NOISY, layout_attention_mask, layout_block_mask, to_additive_mask
from ..statistics import StatisticsRequest, TokenStatistics, head_gives_logits, statistics_head, window_statistics
from ..trajectory import sample_current_block
from .cache import IndexedStaticCache, buffered_cache, has_only_full_attention

#: attention kernels that accept an arbitrary (4D) attention mask
MASKABLE_KERNELS = ("sdpa", "eager", "flex_attention")
#: attention kernels of static-shape decoding (a dense mask over the whole cache; flex attention would rebuild its
#: block mask at every forward)
STATIC_KERNELS = ("sdpa", "eager")

#: ``model_type`` values of bidirectional mask predictors loaded through remote code
BIDIRECTIONAL_MODEL_TYPES = ("llada", "llada_moe", "dream", "mdlm")

#: registered families by name, in registration order
FAMILIES: dict[str, type[ModelFamily]] = {}


def _forward_parameters(model) -> frozenset[str]:
    return _class_forward_parameters(type(model))


@functools.cache
def _class_forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def attention_kernel(model) -> str:
    """The attention implementation the model runs with (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


def _logits_kwargs(model, num_logits: int | None) -> dict:
    """``logits_to_keep`` for models that can skip the LM head on the other positions."""
    if num_logits is None or "logits_to_keep" not in _forward_parameters(model):
        return {}
    return {"logits_to_keep": num_logits}


class ModelFamily(abc.ABC):
    """How one kind of diffusion LM loads, decodes and trains (see the module docstring).

    Subclasses set the class attributes and implement :meth:`denoise_forward` and :meth:`training_layout`; register
    them with :func:`register_family`.

    Args:
        shift_logits: whether the logits at position ``i`` predict token ``i + 1`` (autoregressive-style heads).
    """

    #: registry name, e.g. ``"block_causal"``
    name: ClassVar[str] = ""
    #: what the family runs, for error messages that list the supported families
    description: ClassVar[str] = ""
    #: the ``transformers`` auto class a checkpoint of the family loads with
    auto_model_class: ClassVar[str] = "AutoModelForCausalLM"
    #: whether decoding keeps a prefix KV cache across blocks
    supports_cache: ClassVar[bool] = False
    #: where decoding blocks start: ``"absolute"`` (block id = position // B) or ``"response"`` (at the first
    #: generated position)
    decoding_grid: ClassVar[str] = "absolute"
    #: how the trajectory collator hands over the training attention mask (see :data:`t3d_trl.layouts.ATTENTION_LAYOUTS`)
    training_attention_layout: ClassVar[str] = "dense"
    #: whether the training forward always passes ``position_ids`` (they carry the layout's block structure)
    needs_position_ids: ClassVar[bool] = False

    def __init__(self, shift_logits: bool = False) -> None:
        self.shift_logits = shift_logits

    # ------------------------------------------------------------------------------------------------ detection
    @classmethod
    def matches(cls, model) -> bool:
        """Whether ``model`` belongs to this family when the family is not named explicitly."""
        return False

    @classmethod
    def for_model(cls, model, shift_logits: bool = False) -> ModelFamily:
        """The family object that drives ``model`` (a subclass may pick a variant, e.g. another cache driver)."""
        return cls(shift_logits=shift_logits)

    def check_model(self, model) -> None:
        """Raise a `ValueError` before any compute if ``model`` cannot run this family's forwards."""

    # ------------------------------------------------------------------------------------------------ decoding
    def new_cache(self, model, capacity: int | None = None):
        """A fresh cache for one ``generate`` call of at most ``capacity`` tokens per row (``None`` without a cache)."""
        return None

    def select_rows(self, cache, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` of ``cache`` (finished sequences stop costing compute)."""

    def decode_mask(self, block, valid, rows, context_start: int, block_start: int, block_size: int):
        """The attention mask of a denoising forward of ``rows`` on canvas columns ``[context_start, block_start + B)``,
        or ``None`` when the family needs only the padding mask ``valid``."""
        return None

    @abc.abstractmethod
    def denoise_forward(
        self, model, tokens, positions, valid, rows, context_start: int, block_start: int, block_size: int, cache, mask
    ) -> torch.Tensor:
        """Logits of a denoising forward of ``rows``: at least the block's columns ``[block_start, block_start + B)``
        as the last ``B`` (and the column before them for shifted heads). ``block_size=0`` stores
        ``[context_start, block_start)`` in the cache without denoising."""

    # ------------------------------------------------------------------------------------------ static decoding
    def static_decoding_unsupported(self, model) -> str | None:
        """Why ``model`` cannot decode with static shapes in this family (``cache_implementation="static"``, see
        :mod:`t3d_trl.generation.static`), or ``None`` when it can.

        Args:
            model: a model of the family.

        Returns:
            ``None``, or a short reason that the decoder logs when it falls back to the dynamic path.
        """
        return f"the {self.name or type(self).__name__} family has no static-shape decoding"

    def new_static_cache(self, model, capacity: int):
        """A fixed-capacity cache of ``capacity`` slots per row whose forwards write at given slots
        (:class:`~t3d_trl.models.cache.IndexedStaticCache`).

        Args:
            model: a model of the family.
            capacity: slots per row.

        Returns:
            The cache.
        """
        raise ValueError(self.static_decoding_unsupported(model))

    def static_decode_mask(
        self, key_block, key_valid, query_columns, query_valid, write_columns, block_start, block_size
    ):
        """The attention mask of a static-shape forward, over the whole cache.

        Args:
            key_block: ``[batch, C]`` block id of every cache slot (slot ``c < N`` holds canvas column ``c``).
            key_valid: ``[batch, C]`` ``False`` on padding and on slots that are no canvas column.
            query_columns: ``[Q]`` canvas column of every query.
            query_valid: ``[batch, Q]`` ``False`` on queries whose result is discarded (padding, an unused store slot).
            write_columns: ``[Q]`` the slot each query's keys are written to.
            block_start: first column ``s`` of the block being denoised (queries at ``>= s`` are that block).
            block_size: tokens per block ``B``.

        Returns:
            A boolean ``[batch, 1, Q, C]`` mask (``True`` = attend).
        """
        raise ValueError(self.static_decoding_unsupported(None))

    def static_forward(self, call, model, input_ids, position_ids, mask, cache, write_columns, num_logits: int):
        """Run ``call`` (the model's forward, compiled or not) on fixed-shape inputs with the static ``cache``.

        Args:
            call: ``model.__call__`` or its compiled version.
            model: the model (for its attention kernel and forward signature).
            input_ids: ``[batch, Q]`` token ids.
            position_ids: ``[batch, Q]`` positions.
            mask: the boolean ``[batch, 1, Q, C]`` mask of :meth:`static_decode_mask`.
            cache: the cache of :meth:`new_static_cache`.
            write_columns: ``[Q]`` slot of every query's keys and values.
            num_logits: logits to keep, counted from the last query.

        Returns:
            Logits ``[batch, num_logits, V]`` (``[batch, Q, V]`` for models that cannot skip the others).
        """
        raise ValueError(self.static_decoding_unsupported(model))

    # ------------------------------------------------------------------------------------------------ training
    @staticmethod
    def trajectory_state(state, trained, block, valid, example_index, seed: int):
        """Which completion tokens of a trajectory state are noised and which are trained on.

        Args:
            state: ``[b, C]`` bool, the tokens each block's state masks.
            trained: ``[b, C]`` bool, tokens that may carry a loss.
            block: ``[b, C]`` the training block of every token.
            valid: ``[b, C]`` bool, ``False`` at padding.
            example_index: ``[b]`` the dataset index of every example (a key of the per-example hash).
            seed: the seed of the per-example hash.

        Returns:
            ``(noised, loss_mask)``; by default every block is noised independently and trained.
        """
        return state, state & trained

    @staticmethod
    @abc.abstractmethod
    def training_layout(prompt, prompt_len, comp, block_size: int, pad_token_id: int, attention_layout: str) -> dict:
        """The training batch of the family's layout (see :mod:`t3d_trl.layouts`)."""

    def layout_mask(self, kernel: str, batch: dict, dtype: torch.dtype = torch.float32):
        """The training-layout mask built from a batch's ``block_ids``/``stream_ids``/``valid`` on their device: a
        flex ``BlockMask``, the additive mask of eager attention, or the boolean mask of sdpa."""
        block, stream, valid = batch["block_ids"], batch["stream_ids"], batch["valid"]
        if kernel == "flex_attention":
            return layout_block_mask(block, stream, valid)
        mask = layout_attention_mask(block, stream, block, stream, valid, query_valid=valid)
        return to_additive_mask(mask, dtype) if kernel == "eager" else mask

    def training_forward(
        self,
        model,
        batch: dict,
        forward_parameters: set[str] | frozenset[str] | None = None,
        kernel: str | None = None,
        dtype: torch.dtype = torch.float32,
        statistics: StatisticsRequest | None = None,
        chunk_size: int | None = None,
        unwrapped=None,
    ):
        """The noisy window of a batch from :class:`~t3d_trl.collator.DataCollatorForTrajectory`: its logits
        ``[b, W, V]``, or with ``statistics`` its :class:`~t3d_trl.statistics.TokenStatistics`.

        Builds the layout mask on the batch's device when the collator left it to the model, asks the model for only
        the window's logits (``logits_to_keep``) and aligns shifted heads (the logit of token ``i`` is read at
        position ``i - 1``). With ``statistics`` and a ``chunk_size``, the model's LM head is replaced for the forward
        by a :class:`~t3d_trl.statistics.StatisticsHead` that computes the statistics ``chunk_size`` positions at a
        time from the last hidden states, so no whole window of logits exists; without ``chunk_size`` they are
        computed from the window's logits.

        Args:
            model: the model to run (possibly wrapped for distributed training).
            batch: the collated batch.
            forward_parameters: the arguments the unwrapped model's forward accepts (default: ``model.forward``'s).
            kernel: the attention implementation of the unwrapped model.
            dtype: the parameter dtype of the unwrapped model (for eager attention's additive mask).
            statistics: what to compute per window position, instead of returning logits.
            chunk_size: window tokens (rows × positions) per chunk when computing ``statistics`` inside the forward.
            unwrapped: the model without its distributed wrapper, whose LM head is replaced (default ``model``).
        """
        accepted = _forward_parameters(model) if forward_parameters is None else forward_parameters
        window = int(batch["logits_to_keep"])
        keep = window + 1 if self.shift_logits else window
        mask = batch.get("attention_mask")
        if mask is None:  # the collator left the mask to the device
            mask = self.layout_mask(kernel or attention_kernel(model), batch, dtype)
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "position_ids" in accepted or self.needs_position_ids:
            kwargs["position_ids"] = batch["position_ids"]
        if "logits_to_keep" in accepted:
            kwargs["logits_to_keep"] = keep
        owner = unwrapped if unwrapped is not None else model
        if statistics is not None and chunk_size and head_gives_logits(owner):
            request = statistics
            if self.shift_logits:  # one more hidden state; its statistics are dropped below
                request = dataclasses.replace(
                    statistics,
                    **{
                        name: torch.nn.functional.pad(getattr(statistics, name), (0, 1))
                        for name in ("labels", "fake_tokens")
                        if getattr(statistics, name) is not None
                    },
                )
            with statistics_head(owner, request, chunk_size) as head:
                output = model(**kwargs).logits[:, -keep:]
            if head.calls:
                return TokenStatistics(output[:, :-1] if self.shift_logits else output)
            logits = output  # the model computed its logits without calling its head module
        else:
            logits = model(**kwargs).logits[:, -keep:]
        logits = logits[:, :-1] if self.shift_logits else logits
        if statistics is None:
            return logits
        return window_statistics(logits, statistics, chunk_size)


class BlockCausalFamily(ModelFamily):
    """Stock transformers decoder LMs run as block diffusion models (and SDAR checkpoints loaded as Qwen3).

    Blocks sit on the absolute grid (block id = position // B, which the attention rule fixes), decoding keeps a
    ``DynamicCache`` with in-place buffered layers that is cropped after forwards that must not write it, and the
    store pass of a finished block is fused into the next block's first denoising forward.
    """

    name = "block_causal"
    description = "decoder LMs with an LM head run with block-causal attention (SDAR, Qwen3, Llama...)"
    auto_model_class = "AutoModelForCausalLM"
    supports_cache = True
    decoding_grid = "absolute"
    training_attention_layout = "deferred"  # the N² mask is built on the accelerator, not on the host
    needs_position_ids = True

    @classmethod
    def matches(cls, model) -> bool:
        return True  # the default: any decoder LM runs block-causally

    @classmethod
    def for_model(cls, model, shift_logits: bool = False) -> ModelFamily:
        if "store_kv" in _forward_parameters(model):
            return StoreKVFamily(shift_logits=shift_logits)
        return cls(shift_logits=shift_logits)

    def check_model(self, model) -> None:
        kernel = attention_kernel(model)
        if kernel not in MASKABLE_KERNELS:
            raise ValueError(
                f"The model runs attention with {kernel!r}, which cannot take the block-causal attention mask of "
                f"diffusion decoding. Load it with attn_implementation='sdpa' (or 'eager', 'flex_attention'), or call "
                f"model.set_attn_implementation('sdpa')."
            )

    def new_cache(self, model, capacity: int | None = None):
        """A ``DynamicCache`` whose layers write in place into a buffer of ``capacity`` tokens
        (:class:`~t3d_trl.models.cache.BufferedLayer`) instead of concatenating at every forward."""
        return buffered_cache(model.config, capacity or 256)

    def select_rows(self, cache, rows: torch.Tensor) -> None:
        cache.batch_select_indices(rows)

    def decode_mask(self, block, valid, rows, context_start, block_start, block_size):
        """Columns ``[context_start, block_start)`` are clean context (stored in the cache when there is one), columns
        ``[block_start, block_start + block_size)`` the block being denoised (noisy stream, never stored)."""
        end = block_start + block_size
        stream = torch.where(torch.arange(end, device=block.device) >= block_start, NOISY, CLEAN).expand(len(rows), -1)
        return layout_attention_mask(
            block[rows, context_start:end],
            stream[:, context_start:end],
            block[rows, :end],
            stream,
            valid[rows, :end],
            query_valid=valid[rows, context_start:end],
            query_offset=context_start,
        )

    def denoise_forward(
        self, model, tokens, positions, valid, rows, context_start, block_start, block_size, cache, mask
    ):
        end = block_start + block_size
        num_logits = block_size + (1 if self.shift_logits else 0)
        return self.block_forward(
            model,
            tokens[rows, context_start:end],
            positions[rows, context_start:end],
            mask,
            cache,
            num_tokens_to_store=block_start - context_start if cache is not None else 0,
            num_logits=num_logits if block_size else None,
        )

    def static_decoding_unsupported(self, model) -> str | None:
        kernel = attention_kernel(model)
        if kernel not in STATIC_KERNELS:
            return f"attention kernel {kernel!r} (static decoding runs with {' or '.join(map(repr, STATIC_KERNELS))})"
        if not has_only_full_attention(model.config.get_text_config(decoder=True)):
            return (
                "the model has layers other than full attention (sliding-window, linear...), which a fixed-capacity "
                "cache of full-attention layers cannot hold"
            )
        return None

    def new_static_cache(self, model, capacity: int):
        return IndexedStaticCache(model.config, capacity)

    def static_decode_mask(
        self, key_block, key_valid, query_columns, query_valid, write_columns, block_start, block_size
    ):
        """The rule of :meth:`decode_mask` over the whole cache: slots before ``block_start`` are clean context, the
        block's slots ``[block_start, block_start + B)`` are the noisy stream, slots from ``block_start + B`` on hold
        nothing valid yet; a query whose result is discarded sees only its own slot (no empty row)."""
        batch, capacity = key_block.shape
        slots = torch.arange(capacity, device=key_block.device)
        end = block_start + block_size
        key_stream = torch.where((slots >= block_start) & (slots < end), NOISY, CLEAN).expand(batch, -1)
        query_stream = torch.where(query_columns >= block_start, NOISY, CLEAN).expand(batch, -1)
        mask = layout_attention_mask(
            key_block.index_select(1, query_columns.clamp(min=0)),
            query_stream,
            key_block,
            key_stream,
            key_valid & (slots < end),
        )
        own_slot = slots[None, :] == write_columns[:, None]
        return torch.where(query_valid[:, None, :, None], mask, own_slot[None, None])

    def static_forward(self, call, model, input_ids, position_ids, mask, cache, write_columns, num_logits):
        cache.set_write_index(write_columns)
        outputs = call(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=self.format_mask(model, mask),
            **self._cache_kwargs(model, cache),
            **_logits_kwargs(model, num_logits),
        )
        return outputs.logits

    def format_mask(self, model, mask: torch.Tensor):
        """The layout mask in the form the model's attention kernel expects."""
        kernel = attention_kernel(model)
        if kernel == "eager":
            return to_additive_mask(mask, model.dtype)
        if kernel == "flex_attention":
            from torch.nn.attention.flex_attention import create_block_mask

            dense = mask[:, 0]

            def mask_mod(b, h, q_idx, kv_idx):
                return dense[b, q_idx, kv_idx]

            batch, num_queries, num_keys = dense.shape
            return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=num_queries, KV_LEN=num_keys, device=dense.device)
        return mask

    def _cache_kwargs(self, model, cache) -> dict:
        if cache is None:
            return {"use_cache": False}
        name = "cache" if "cache" in _forward_parameters(model) else "past_key_values"
        return {name: cache, "use_cache": True}

    def block_forward(
        self, model, input_ids, position_ids, attention_mask, cache=None, num_tokens_to_store=0, num_logits=None
    ):
        """Run the model on ``input_ids`` with the boolean ``[batch, 1, Q, K]`` layout mask and return logits
        ``[batch, Q, V]`` (the last ``num_logits`` only, when given and the model can skip the others). With a cache,
        the first ``num_tokens_to_store`` inputs are appended to it and the rest are read-only."""
        outputs = model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=self.format_mask(model, attention_mask),
            **self._cache_kwargs(model, cache),
            **_logits_kwargs(model, num_logits),
        )
        read_only = input_ids.shape[1] - num_tokens_to_store
        if cache is not None and read_only > 0:
            cache.crop(-read_only)
        return outputs.logits

    @staticmethod
    def training_layout(prompt, prompt_len, comp, block_size, pad_token_id, attention_layout):
        return block_causal_layout(prompt, prompt_len, comp, block_size, pad_token_id, attention_layout)


class StoreKVFamily(BlockCausalFamily):
    """The block-causal family driven through SDAR's ``store_kv`` cache interface (``trust_remote_code=True``).

    ``store_kv=True`` appends the forward's keys and values to the cache, ``store_kv=False`` reads it without
    writing. A forward that stores only its first tokens (the fused "store block k + denoise block k+1") stores
    all of them and crops the read-only tail when the cache can crop, and otherwise runs as two forwards. Not
    registered by name: :meth:`BlockCausalFamily.for_model` picks it for models whose forward takes ``store_kv``.
    """

    def new_cache(self, model, capacity: int | None = None):
        """A plain ``DynamicCache``: remote code may read its layers in ways a buffered layer does not foresee."""
        return DynamicCache(config=model.config)

    def static_decoding_unsupported(self, model) -> str | None:
        return "remote code with SDAR's store_kv interface manages its own cache"

    def block_forward(
        self, model, input_ids, position_ids, attention_mask, cache=None, num_tokens_to_store=0, num_logits=None
    ):
        num_queries = input_ids.shape[1]
        fused = 0 < num_tokens_to_store < num_queries
        if fused and not hasattr(cache, "crop"):
            head, tail = slice(0, num_tokens_to_store), slice(num_tokens_to_store, None)
            stored = self._run(model, input_ids, position_ids, attention_mask, cache, head, store=True)
            rest = self._run(
                model, input_ids, position_ids, attention_mask, cache, tail, store=False, num_logits=num_logits
            )
            return torch.cat([stored, rest], dim=1)
        logits = self._run(
            model, input_ids, position_ids, attention_mask, cache, slice(None), num_tokens_to_store > 0, num_logits
        )
        if fused:
            cache.crop(-(num_queries - num_tokens_to_store))
        return logits

    def _run(self, model, input_ids, position_ids, attention_mask, cache, queries: slice, store: bool, num_logits=None):
        # keys of a query slice: the cache before this call plus the inputs up to the slice's end
        key_end = queries.stop if queries.stop is not None else input_ids.shape[1]
        num_keys = attention_mask.shape[-1] - input_ids.shape[1] + key_end
        outputs = model(
            input_ids=input_ids[:, queries],
            position_ids=position_ids[:, queries],
            attention_mask=self.format_mask(model, attention_mask[:, :, queries, :num_keys]),
            past_key_values=cache,
            use_cache=cache is not None,
            store_kv=store,
            **_logits_kwargs(model, num_logits),
        )
        return outputs.logits


class BidirectionalFamily(ModelFamily):
    """Full-attention mask predictors (``AutoModelForMaskedLM``, LLaDA-style): no cache, the whole sequence."""

    name = "bidirectional"
    description = "mask predictors with full attention (AutoModelForMaskedLM, LLaDA-style)"
    auto_model_class = "AutoModelForMaskedLM"
    supports_cache = False
    decoding_grid = "response"  # blocks are a decoding schedule here, started at the first generated token (LLaDA)
    training_attention_layout = "dense"

    @classmethod
    def matches(cls, model) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        model_type = getattr(model.config, "model_type", "")
        masked_lm_classes = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
        class_names = {cls.__name__ for cls in type(model).__mro__}
        return model_type in BIDIRECTIONAL_MODEL_TYPES or bool(class_names & masked_lm_classes)

    def denoise_forward(
        self, model, tokens, positions, valid, rows, context_start, block_start, block_size, cache, mask
    ):
        end = block_start + block_size
        kwargs = {"input_ids": tokens[rows], "attention_mask": valid[rows].long()}
        if "position_ids" in _forward_parameters(model):
            kwargs["position_ids"] = positions[rows]
        return model(**kwargs).logits[:, :end]

    @staticmethod
    def trajectory_state(state, trained, block, valid, example_index, seed):
        """A global step cut: blocks before the current one ``c`` are clean, ``c`` holds the state, later blocks are
        fully masked, and only ``c`` is trained (``c`` drawn per example from its completion's blocks)."""
        big = torch.iinfo(torch.int64).max
        first = torch.where(valid, block, torch.full_like(block, big)).amin(dim=1)
        last = torch.where(valid, block, torch.full_like(block, -1)).amax(dim=1)
        first = torch.where(last >= 0, first, torch.zeros_like(first))
        current = (first + sample_current_block(example_index, seed, (last - first + 1).clamp_min(1)))[:, None]
        loss = state & trained & (block == current)
        return valid & ((block > current) | ((block == current) & state)), loss

    @staticmethod
    def training_layout(prompt, prompt_len, comp, block_size, pad_token_id, attention_layout):
        return bidirectional_layout(prompt, prompt_len, comp, block_size, pad_token_id, attention_layout)


# ---------------------------------------------------------------------------------------------------------- registry
def register_family(family: type[ModelFamily]) -> type[ModelFamily]:
    """Register a :class:`ModelFamily` subclass under its ``name`` (usable as a class decorator).

    Raises:
        ValueError: if the class has no name or the name is taken.
    """
    if not family.name:
        raise ValueError(f"{family.__name__} needs a non-empty `name` to be registered.")
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(
            f"A model family named {family.name!r} is already registered ({FAMILIES[family.name].__name__})."
        )
    FAMILIES[family.name] = family
    return family


register_family(BlockCausalFamily)
register_family(BidirectionalFamily)

#: the family of a model that no other registered family claims
DEFAULT_FAMILY = BlockCausalFamily.name


def family_class(name: str) -> type[ModelFamily]:
    """The registered family called ``name``.

    Raises:
        ValueError: naming the supported families.
    """
    if name not in FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; supported families: {supported_families()}.")
    return FAMILIES[name]


def detect_family(model) -> str:
    """The name of the family ``model`` belongs to: the first registered family other than the default that claims
    it (:meth:`ModelFamily.matches`), else :data:`DEFAULT_FAMILY`."""
    for name, family in FAMILIES.items():
        if name != DEFAULT_FAMILY and family.matches(model):
            return name
    return DEFAULT_FAMILY


def supported_families() -> str:
    """The registered families, one phrase each, for error messages."""
    return "; ".join(f"{name!r}: {family.description or family.__name__}" for name, family in FAMILIES.items())


def check_supported(model) -> None:
    """Raise one clear `ValueError` listing the supported families when no family can run ``model``: not a
    transformers ``PreTrainedModel`` (a PEFT model is checked through its base model), an encoder-decoder, or no LM
    head."""
    from transformers import PreTrainedModel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel):
        problem = f"it is a {type(base).__name__}, not a transformers PreTrainedModel"
    elif getattr(base.config, "is_encoder_decoder", False):
        problem = "it is an encoder-decoder model"
    elif base.get_output_embeddings() is None:
        problem = (
            "it has no LM head (get_output_embeddings() is None): load it with AutoModelForCausalLM or "
            "AutoModelForMaskedLM, not AutoModel"
        )
    else:
        return
    raise ValueError(
        f"t3d-trl cannot run {type(base).__name__}: {problem}. Supported families: {supported_families()}."
    )


def get_family(model, family: str | None = None, shift_logits: bool = False) -> ModelFamily:
    """The family object that drives ``model``: ``family`` by name, or detected from the model.

    Raises:
        ValueError: for a model no family can run (:func:`check_supported`) or an unknown family name.
    """
    check_supported(model)
    return family_class(family or detect_family(model)).for_model(model, shift_logits=shift_logits)


def auto_model_class(family: str | None = None):
    """The ``transformers`` auto class that loads checkpoints of ``family`` (the default family when ``None``)."""
    import transformers

    return getattr(transformers, family_class(family or DEFAULT_FAMILY).auto_model_class)


def load_pretrained(name_or_path: str, family: str | None = None, **kwargs: Any):
    """``from_pretrained`` with the auto class of ``family``, SDAR checkpoints mapped onto Qwen3 first.

    Args:
        name_or_path: a hub id or a local directory.
        family: a registered family name; the default family's class when ``None``.
        kwargs: arguments of ``from_pretrained`` (``dtype``, ``attn_implementation``, ``trust_remote_code``...).
    """
    from .sdar import register_sdar

    register_sdar()
    return auto_model_class(family).from_pretrained(name_or_path, **kwargs)
