"""Model families: how each kind of diffusion LM loads and decodes, in one place.

A :class:`ModelFamily` owns, for one kind of model:

* loading: the ``AutoModel*`` class a checkpoint of the family loads with (:attr:`ModelFamily.auto_model_class`) and
  the PEFT task type of its LoRA adapters (:attr:`ModelFamily.peft_task_type`);
* decoding: the block grid (:attr:`ModelFamily.decoding_grid`, a :class:`~t3d_trl.models.grid.BlockGrid`), the
  cache (:meth:`ModelFamily.new_cache`, :meth:`ModelFamily.select_rows`), the attention mask of a denoising forward
  (:meth:`ModelFamily.decode_mask`) and the forward itself (:meth:`ModelFamily.denoise_forward`), both taking one
  :class:`DenoiseStep`, and their static-shape counterparts (:meth:`ModelFamily.static_decoding_unsupported`,
  :meth:`ModelFamily.new_static_cache`, :meth:`ModelFamily.static_decode_mask`, :meth:`ModelFamily.static_forward`).

How a family *trains* (its sequence layout, trajectory states and training forward) lives with training, in
:mod:`t3d_trl.layouts` (:class:`~t3d_trl.layouts.TrainingLayout`, registered per family): this module is copied into
the ``custom_generate/generate.py`` of saved checkpoints, which decode and never train.

Code outside this module asks the family; it never compares family names. Two families are registered:

* ``"block_causal"`` (:class:`BlockCausalFamily`): any transformers decoder LM (Qwen3, Llama, SDAR loaded natively
  as Qwen3) run as a block diffusion model through 4D attention masks and a prefix KV cache; remote-code models with
  SDAR's ``store_kv`` cache interface run through :class:`StoreKVFamily`, the same family with another cache driver.
* ``"bidirectional"`` (:class:`BidirectionalFamily`): mask predictors with full attention (``AutoModelForMaskedLM``,
  LLaDA-style); no cache, the whole sequence every step.

A new family is one subclass of :class:`ModelFamily` and one :func:`register_family` (see ``docs/design.md``,
"Adding a model family"). This module imports only the standard library, torch, transformers and the decoding
modules below it (the attention rule, the cache, the block grids, the registry helper).
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import DynamicCache

from ..masks import CLEAN, NOISY, layout_attention_mask, to_additive_mask
from ..registry import Registry
from .cache import IndexedStaticCache, buffered_cache, has_only_full_attention
from .grid import BlockGrid, get_grid

#: attention kernels that accept an arbitrary (4D) attention mask
MASKABLE_KERNELS = ("sdpa", "eager", "flex_attention")
#: attention kernels of static-shape decoding (a dense mask over the whole cache; flex attention would rebuild its
#: block mask at every forward)
STATIC_KERNELS = ("sdpa", "eager")

#: ``model_type`` values of bidirectional mask predictors loaded through remote code
BIDIRECTIONAL_MODEL_TYPES = ("llada", "llada_moe", "dream", "mdlm")

#: registered families by name, in registration order
FAMILIES: Registry[type[ModelFamily]] = Registry(
    "model family", hint="register one with t3d_trl.register_family; see docs/design.md, 'Adding a model family'"
)


def _forward_parameters(model: torch.nn.Module) -> frozenset[str]:
    return _class_forward_parameters(type(model))


@functools.cache
def _class_forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def attention_kernel(model: torch.nn.Module) -> str:
    """The attention implementation the model runs with (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


def _logits_kwargs(model: torch.nn.Module, num_logits: int | None) -> dict[str, int]:
    """``logits_to_keep`` for models that can skip the LM head on the other positions."""
    if num_logits is None or "logits_to_keep" not in _forward_parameters(model):
        return {}
    return {"logits_to_keep": num_logits}


@dataclass
class DenoiseStep:
    """One forward of the decoding loop: which rows run on which canvas columns.

    The canvas (:func:`t3d_trl.generation.decoding.build_canvas`) lays every row's prompt and generated blocks on
    shared columns; a forward runs the active ``rows`` on columns ``[context_start, block_start + block_size)``:
    the context not yet in the cache (clean), then the block being denoised (noisy).

    Attributes:
        tokens: ``[batch, N]`` canvas tokens (mask tokens where nothing is committed yet).
        positions: ``[batch, N]`` position ids of the canvas columns.
        valid: ``[batch, N]`` ``False`` on padding columns.
        block: ``[batch, N]`` block id of every column (only compared with each other).
        rows: ``[r]`` the batch rows that still decode.
        context_start: first column of the forward: the first column the cache does not hold (``0`` without one).
        block_start: first column ``s`` of the block being denoised.
        block_size: tokens per block ``B``; ``0`` for a forward that only stores ``[context_start, block_start)``.
        cache: the family's cache (:meth:`ModelFamily.new_cache`), or ``None``.
        mask: the forward's attention mask (:meth:`ModelFamily.decode_mask`), or ``None``.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    block: torch.Tensor
    rows: torch.Tensor
    context_start: int
    block_start: int
    block_size: int
    cache: Any = None
    mask: torch.Tensor | None = None

    @property
    def end(self) -> int:
        """The column after the block: ``block_start + block_size``."""
        return self.block_start + self.block_size


class ModelFamily(abc.ABC):
    """How one kind of diffusion LM loads and decodes (see the module docstring).

    Subclasses set the class attributes and implement :meth:`denoise_forward`; register them with
    :func:`register_family`, and their training layout with :func:`t3d_trl.layouts.register_training_layout` (a
    subclass of a registered family inherits its parent's).

    Args:
        shift_logits: whether the logits at position ``i`` predict token ``i + 1`` (autoregressive-style heads).
    """

    #: registry name, e.g. ``"block_causal"``
    name: ClassVar[str] = ""
    #: what the family runs, for error messages that list the supported families
    description: ClassVar[str] = ""
    #: the ``transformers`` auto class a checkpoint of the family loads with
    auto_model_class: ClassVar[str] = "AutoModelForCausalLM"
    #: the ``peft`` ``TaskType`` of a LoRA adapter on a model of the family (``None``: a plain ``PeftModel``)
    peft_task_type: ClassVar[str | None] = None
    #: whether decoding keeps a prefix KV cache across blocks
    supports_cache: ClassVar[bool] = False
    #: the name of the block grid decoding uses (:data:`t3d_trl.models.grid.GRIDS`): ``"absolute"`` (block id =
    #: position // B) or ``"response"`` (blocks start at the first generated position)
    decoding_grid: ClassVar[str] = "absolute"

    def __init__(self, shift_logits: bool = False) -> None:
        self.shift_logits = shift_logits

    @property
    def grid(self) -> BlockGrid:
        """The family's :class:`~t3d_trl.models.grid.BlockGrid`."""
        return get_grid(self.decoding_grid)

    # ------------------------------------------------------------------------------------------------ detection
    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        """Whether ``model`` belongs to this family when the family is not named explicitly."""
        return False

    @classmethod
    def for_model(cls, model: torch.nn.Module, shift_logits: bool = False) -> ModelFamily:
        """The family object that drives ``model`` (a subclass may pick a variant, e.g. another cache driver)."""
        return cls(shift_logits=shift_logits)

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise a `ValueError` before any compute if ``model`` cannot run this family's forwards."""

    # ------------------------------------------------------------------------------------------------ decoding
    def new_cache(self, model: torch.nn.Module, capacity: int | None = None) -> Any:
        """A fresh cache for one ``generate`` call of at most ``capacity`` tokens per row (``None`` without a cache)."""
        return None

    def select_rows(self, cache: Any, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` of ``cache`` (finished sequences stop costing compute)."""

    def decode_mask(self, step: DenoiseStep) -> torch.Tensor | None:
        """The attention mask of the forward ``step`` (its ``mask`` is ignored), or ``None`` when the family needs only
        the padding mask ``step.valid``."""
        return None

    @abc.abstractmethod
    def denoise_forward(self, model: torch.nn.Module, step: DenoiseStep) -> torch.Tensor:
        """Logits of the forward ``step``: at least the block's columns ``[block_start, block_start + B)`` as the last
        ``B`` (and the column before them for shifted heads). ``step.block_size = 0`` stores
        ``[context_start, block_start)`` in the cache without denoising."""

    # ------------------------------------------------------------------------------------------ static decoding
    def static_decoding_unsupported(self, model: torch.nn.Module | None) -> str | None:
        """Why ``model`` cannot decode with static shapes in this family (``cache_implementation="static"``, see
        :mod:`t3d_trl.generation.static`), or ``None`` when it can.

        Args:
            model: a model of the family.

        Returns:
            ``None``, or a short reason that the decoder logs when it falls back to the dynamic path.
        """
        return f"the {self.name or type(self).__name__} family has no static-shape decoding"

    def new_static_cache(self, model: torch.nn.Module, capacity: int) -> IndexedStaticCache:
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
        self,
        key_block: torch.Tensor,
        key_valid: torch.Tensor,
        query_columns: torch.Tensor,
        query_valid: torch.Tensor,
        write_columns: torch.Tensor,
        block_start: int,
        block_size: int,
    ) -> torch.Tensor:
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

    def static_forward(
        self,
        call: Callable[..., Any],
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        cache: IndexedStaticCache,
        write_columns: torch.Tensor,
        num_logits: int,
    ) -> torch.Tensor:
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
    peft_task_type = "CAUSAL_LM"

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return True  # the default: any decoder LM runs block-causally

    @classmethod
    def for_model(cls, model: torch.nn.Module, shift_logits: bool = False) -> ModelFamily:
        if "store_kv" in _forward_parameters(model):
            return StoreKVFamily(shift_logits=shift_logits)
        return cls(shift_logits=shift_logits)

    def check_model(self, model: torch.nn.Module) -> None:
        kernel = attention_kernel(model)
        if kernel not in MASKABLE_KERNELS:
            raise ValueError(
                f"The model runs attention with {kernel!r}, which cannot take the block-causal attention mask of "
                f"diffusion decoding. Load it with attn_implementation='sdpa' (or 'eager', 'flex_attention'), or call "
                f"model.set_attn_implementation('sdpa')."
            )

    def new_cache(self, model: torch.nn.Module, capacity: int | None = None) -> DynamicCache:
        """A ``DynamicCache`` whose layers write in place into a buffer of ``capacity`` tokens
        (:class:`~t3d_trl.models.cache.BufferedLayer`) instead of concatenating at every forward."""
        return buffered_cache(model.config, capacity or 256)

    def select_rows(self, cache: DynamicCache, rows: torch.Tensor) -> None:
        cache.batch_select_indices(rows)

    def decode_mask(self, step: DenoiseStep) -> torch.Tensor:
        """Columns ``[context_start, block_start)`` are clean context (stored in the cache when there is one), columns
        ``[block_start, block_start + block_size)`` the block being denoised (noisy stream, never stored)."""
        rows, start, end = step.rows, step.context_start, step.end
        columns = torch.arange(end, device=step.block.device)
        stream = torch.where(columns >= step.block_start, NOISY, CLEAN).expand(len(rows), -1)
        return layout_attention_mask(
            step.block[rows, start:end],
            stream[:, start:end],
            step.block[rows, :end],
            stream,
            step.valid[rows, :end],
            query_valid=step.valid[rows, start:end],
            query_offset=start,
        )

    def denoise_forward(self, model: torch.nn.Module, step: DenoiseStep) -> torch.Tensor:
        rows, start, end = step.rows, step.context_start, step.end
        num_logits = step.block_size + (1 if self.shift_logits else 0)
        return self.block_forward(
            model,
            step.tokens[rows, start:end],
            step.positions[rows, start:end],
            step.mask,
            step.cache,
            num_tokens_to_store=step.block_start - start if step.cache is not None else 0,
            num_logits=num_logits if step.block_size else None,
        )

    def static_decoding_unsupported(self, model: torch.nn.Module | None) -> str | None:
        kernel = attention_kernel(model)
        if kernel not in STATIC_KERNELS:
            return f"attention kernel {kernel!r} (static decoding runs with {' or '.join(map(repr, STATIC_KERNELS))})"
        if not has_only_full_attention(model.config.get_text_config(decoder=True)):
            return (
                "the model has layers other than full attention (sliding-window, linear...), which a fixed-capacity "
                "cache of full-attention layers cannot hold"
            )
        return None

    def new_static_cache(self, model: torch.nn.Module, capacity: int) -> IndexedStaticCache:
        return IndexedStaticCache(model.config, capacity)

    def static_decode_mask(
        self,
        key_block: torch.Tensor,
        key_valid: torch.Tensor,
        query_columns: torch.Tensor,
        query_valid: torch.Tensor,
        write_columns: torch.Tensor,
        block_start: int,
        block_size: int,
    ) -> torch.Tensor:
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

    def static_forward(
        self,
        call: Callable[..., Any],
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        cache: IndexedStaticCache,
        write_columns: torch.Tensor,
        num_logits: int,
    ) -> torch.Tensor:
        cache.set_write_index(write_columns)
        outputs = call(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=self.format_mask(model, mask),
            **self._cache_kwargs(model, cache),
            **_logits_kwargs(model, num_logits),
        )
        return outputs.logits

    def format_mask(self, model: torch.nn.Module, mask: torch.Tensor) -> Any:
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

    def _cache_kwargs(self, model: torch.nn.Module, cache: Any) -> dict[str, Any]:
        if cache is None:
            return {"use_cache": False}
        name = "cache" if "cache" in _forward_parameters(model) else "past_key_values"
        return {name: cache, "use_cache": True}

    def block_forward(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        num_tokens_to_store: int = 0,
        num_logits: int | None = None,
    ) -> torch.Tensor:
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


class StoreKVFamily(BlockCausalFamily):
    """The block-causal family driven through SDAR's ``store_kv`` cache interface (``trust_remote_code=True``).

    ``store_kv=True`` appends the forward's keys and values to the cache, ``store_kv=False`` reads it without
    writing. A forward that stores only its first tokens (the fused "store block k + denoise block k+1") stores
    all of them and crops the read-only tail when the cache can crop, and otherwise runs as two forwards. Not
    registered by name: :meth:`BlockCausalFamily.for_model` picks it for models whose forward takes ``store_kv``.
    """

    def new_cache(self, model: torch.nn.Module, capacity: int | None = None) -> DynamicCache:
        """A plain ``DynamicCache``: remote code may read its layers in ways a buffered layer does not foresee."""
        return DynamicCache(config=model.config)

    def static_decoding_unsupported(self, model: torch.nn.Module | None) -> str | None:
        return "remote code with SDAR's store_kv interface manages its own cache"

    def block_forward(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        num_tokens_to_store: int = 0,
        num_logits: int | None = None,
    ) -> torch.Tensor:
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

    def _run(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any,
        queries: slice,
        store: bool,
        num_logits: int | None = None,
    ) -> torch.Tensor:
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

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        model_type = getattr(model.config, "model_type", "")
        masked_lm_classes = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
        class_names = {cls.__name__ for cls in type(model).__mro__}
        return model_type in BIDIRECTIONAL_MODEL_TYPES or bool(class_names & masked_lm_classes)

    def denoise_forward(self, model: torch.nn.Module, step: DenoiseStep) -> torch.Tensor:
        kwargs = {"input_ids": step.tokens[step.rows], "attention_mask": step.valid[step.rows].long()}
        if "position_ids" in _forward_parameters(model):
            kwargs["position_ids"] = step.positions[step.rows]
        return model(**kwargs).logits[:, : step.end]


# ---------------------------------------------------------------------------------------------------------- registry
def register_family(family: type[ModelFamily], *, overwrite: bool = False) -> type[ModelFamily]:
    """Register a :class:`ModelFamily` subclass under its ``name`` (usable as a class decorator).

    Args:
        family: the family class.
        overwrite: replace a family registered under the same name (not a built-in one).

    Raises:
        ValueError: if the class has no name, or the name is taken (see :class:`~t3d_trl.registry.Registry`).
    """
    if not family.name:
        raise ValueError(f"{family.__name__} needs a non-empty `name` to be registered.")
    get_grid(family.decoding_grid)  # an unknown grid is refused here, not at the first decode
    return FAMILIES.register(family.name, family, overwrite=overwrite)


FAMILIES.register(BlockCausalFamily.name, BlockCausalFamily, builtin=True)
FAMILIES.register(BidirectionalFamily.name, BidirectionalFamily, builtin=True)

#: the family of a model that no other registered family claims
DEFAULT_FAMILY = BlockCausalFamily.name


def family_class(name: str) -> type[ModelFamily]:
    """The registered family called ``name``.

    Raises:
        ValueError: naming the value and the registered families.
    """
    return FAMILIES.get_entry(name)


def detect_family(model: torch.nn.Module) -> str:
    """The name of the family ``model`` belongs to: the first registered family other than the default that claims
    it (:meth:`ModelFamily.matches`), else :data:`DEFAULT_FAMILY`."""
    for name, family in FAMILIES.items():
        if name != DEFAULT_FAMILY and family.matches(model):
            return name
    return DEFAULT_FAMILY


def supported_families() -> str:
    """The registered families, one phrase each, for error messages."""
    return "; ".join(f"{name!r}: {family.description or family.__name__}" for name, family in FAMILIES.items())


def check_supported(model: torch.nn.Module) -> None:
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


def get_family(model: torch.nn.Module, family: str | None = None, shift_logits: bool = False) -> ModelFamily:
    """The family object that drives ``model``: ``family`` by name, or detected from the model.

    Raises:
        ValueError: for a model no family can run (:func:`check_supported`) or an unknown family name.
    """
    check_supported(model)
    return family_class(family or detect_family(model)).for_model(model, shift_logits=shift_logits)


def auto_model_class(family: str | None = None) -> type:
    """The ``transformers`` auto class that loads checkpoints of ``family`` (the default family when ``None``)."""
    import transformers

    return getattr(transformers, family_class(family or DEFAULT_FAMILY).auto_model_class)


def load_pretrained(name_or_path: str, family: str | None = None, **kwargs: Any) -> torch.nn.Module:
    """``from_pretrained`` with the auto class of ``family``, SDAR checkpoints mapped onto Qwen3 first.

    Args:
        name_or_path: a hub id or a local directory.
        family: a registered family name; the default family's class when ``None``.
        kwargs: arguments of ``from_pretrained`` (``dtype``, ``attn_implementation``, ``trust_remote_code``...); a
            ``dtype`` given by name (``"bfloat16"``) is turned into the torch dtype here, the one place that parses it.
    """
    from .sdar import register_sdar

    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"`dtype`={dtype!r} is not a torch dtype; use 'auto', 'bfloat16', 'float16' or 'float32'.")
        kwargs["dtype"] = getattr(torch, dtype)
    register_sdar()
    return auto_model_class(family).from_pretrained(name_or_path, **kwargs)
