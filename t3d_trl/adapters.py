"""Model-family adapters: the only place that knows how a family runs a block forward.

A family differs in three things (DESIGN §2): how a cached block forward runs (and how its cache is written),
how its attention mask is passed, and whether its logits are shifted. Everything else in t3d-trl (decoding,
rollouts, training) talks to a model through one of these adapters, so supporting a new family means adding
one class here and registering it in :func:`get_adapter`.

* :class:`BlockCausalAdapter`: any transformers decoder LM (Qwen3, Llama, SDAR loaded natively as Qwen3) run as
  a block-causal diffusion model through 4D attention masks and a ``DynamicCache`` (with in-place buffered
  layers) that is cropped after forwards that must not write it.
* :class:`StoreKVAdapter`: remote-code models following SDAR's cache interface (a ``store_kv`` flag on
  ``forward``: ``False`` reads the cache without writing it, ``True`` appends).
* :class:`BidirectionalAdapter`: mask predictors with full attention (``AutoModelForMaskedLM``, LLaDA-style);
  no cache, the whole sequence every step.
"""

from __future__ import annotations

import abc
import functools
import inspect

import torch
from transformers import DynamicCache

from .cache import buffered_cache
from .masks import layout_attention_mask, layout_block_mask, to_additive_mask

#: attention kernels that accept an arbitrary (4D) attention mask
MASKABLE_KERNELS = ("sdpa", "eager", "flex_attention")

#: ``model_type`` values of bidirectional mask predictors loaded through remote code
BIDIRECTIONAL_MODEL_TYPES = ("llada", "llada_moe", "dream", "mdlm")


def _forward_parameters(model) -> set[str]:
    return _class_forward_parameters(type(model))


@functools.lru_cache(maxsize=None)
def _class_forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def attention_kernel(model) -> str:
    """The attention implementation the model runs with (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


class DiffusionAdapter(abc.ABC):
    """Interface between the decoding / training code and one model family."""

    #: ``"block_causal"`` or ``"bidirectional"``
    family: str = ""
    #: whether the family decodes with a prefix KV cache
    supports_cache: bool = False
    #: whether the logits at position ``i`` predict token ``i + 1`` (autoregressive-style heads)
    shift_logits: bool = False

    def __init__(self, shift_logits: bool = False) -> None:
        self.shift_logits = shift_logits

    def check_model(self, model) -> None:
        """Raise a `ValueError` before any compute if ``model`` cannot run this family's forwards."""

    def new_cache(self, model, capacity: int | None = None):
        """A fresh cache for one ``generate`` call of at most ``capacity`` tokens per row (``None`` without a cache)."""
        return None

    def select_rows(self, cache, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` of ``cache`` (finished sequences stop costing compute)."""

    @abc.abstractmethod
    def block_forward(
        self,
        model,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache=None,
        num_tokens_to_store: int = 0,
        num_logits: int | None = None,
    ) -> torch.Tensor:
        """Run the model on ``input_ids`` and return logits ``[batch, Q, V]`` (the last ``num_logits`` only, when given
        and the model can skip the others).

        ``attention_mask`` is the boolean ``[batch, 1, Q, K]`` layout mask (block-causal families) or the ``[batch, K]``
        padding mask (bidirectional family). With a cache, the first ``num_tokens_to_store`` inputs are appended to it
        and the rest are read-only.
        """

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
        forward_parameters: set[str] | None = None,
        kernel: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Logits ``[b, W, V]`` of the noisy window of a batch from :class:`~t3d_trl.collator.DataCollatorForTrajectory`.

        Builds the flex-attention ``BlockMask`` on the batch's device when the collator left the mask to the model
        (``attention_layout="flex"``), asks the model for only the window's logits (``logits_to_keep``) and aligns
        shifted heads (the logit of token ``i`` is read at position ``i - 1``). ``forward_parameters`` names the
        arguments the (unwrapped) model's forward accepts; by default those of ``model.forward``; ``kernel`` and ``dtype``
        are the attention implementation and parameter dtype of the unwrapped model.
        """
        accepted = _forward_parameters(model) if forward_parameters is None else forward_parameters
        window = int(batch["logits_to_keep"])
        keep = window + 1 if self.shift_logits else window
        mask = batch.get("attention_mask")
        if mask is None:  # the collator left the mask to the device
            mask = self.layout_mask(kernel or attention_kernel(model), batch, dtype)
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "position_ids" in accepted or self.family == "block_causal":
            kwargs["position_ids"] = batch["position_ids"]
        if "logits_to_keep" in accepted:
            logits = model(**kwargs, logits_to_keep=keep).logits
        else:
            logits = model(**kwargs).logits[:, -keep:]
        return logits[:, :-1] if self.shift_logits else logits


class BlockCausalAdapter(DiffusionAdapter):
    """Stock transformers decoder LMs run as block diffusion models (and SDAR checkpoints loaded as Qwen3)."""

    family = "block_causal"
    supports_cache = True

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
        (:class:`~t3d_trl.cache.BufferedLayer`) instead of concatenating at every forward."""
        return buffered_cache(model.config, capacity or 256)

    def select_rows(self, cache, rows: torch.Tensor) -> None:
        cache.batch_select_indices(rows)

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
            return create_block_mask(
                mask_mod, B=batch, H=None, Q_LEN=num_queries, KV_LEN=num_keys, device=dense.device
            )
        return mask

    def _cache_kwargs(self, model, cache) -> dict:
        if cache is None:
            return {"use_cache": False}
        name = "cache" if "cache" in _forward_parameters(model) else "past_key_values"
        return {name: cache, "use_cache": True}

    def block_forward(
        self, model, input_ids, position_ids, attention_mask, cache=None, num_tokens_to_store=0, num_logits=None
    ):
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


class StoreKVAdapter(BlockCausalAdapter):
    """Remote-code models with SDAR's ``store_kv`` cache interface (``trust_remote_code=True`` checkpoints).

    ``store_kv=True`` appends the forward's keys and values to the cache, ``store_kv=False`` reads it without
    writing. A forward that stores only its first tokens (the fused "store block k + denoise block k+1") stores
    all of them and crops the read-only tail when the cache can crop, and otherwise runs as two forwards.
    """

    def new_cache(self, model, capacity: int | None = None):
        """A plain ``DynamicCache``: remote code may read its layers in ways a buffered layer does not foresee."""
        return DynamicCache(config=model.config)

    def block_forward(
        self, model, input_ids, position_ids, attention_mask, cache=None, num_tokens_to_store=0, num_logits=None
    ):
        num_queries = input_ids.shape[1]
        fused = 0 < num_tokens_to_store < num_queries
        if fused and not hasattr(cache, "crop"):
            head, tail = slice(0, num_tokens_to_store), slice(num_tokens_to_store, None)
            stored = self._run(model, input_ids, position_ids, attention_mask, cache, head, store=True)
            rest = self._run(model, input_ids, position_ids, attention_mask, cache, tail, store=False, num_logits=num_logits)
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


def _logits_kwargs(model, num_logits: int | None) -> dict:
    """``logits_to_keep`` for models that can skip the LM head on the other positions."""
    if num_logits is None or "logits_to_keep" not in _forward_parameters(model):
        return {}
    return {"logits_to_keep": num_logits}


class BidirectionalAdapter(DiffusionAdapter):
    """Full-attention mask predictors (``AutoModelForMaskedLM``, LLaDA-style): no cache, whole sequence."""

    family = "bidirectional"
    supports_cache = False

    def block_forward(
        self, model, input_ids, position_ids, attention_mask, cache=None, num_tokens_to_store=0, num_logits=None
    ):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask.long()}
        if "position_ids" in _forward_parameters(model):
            kwargs["position_ids"] = position_ids
        return model(**kwargs).logits


def detect_family(model) -> str:
    """``"bidirectional"`` for mask predictors, ``"block_causal"`` for decoder LMs."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(model.config, "model_type", "")
    masked_lm_classes = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
    class_names = {cls.__name__ for cls in type(model).__mro__}
    if model_type in BIDIRECTIONAL_MODEL_TYPES or class_names & masked_lm_classes:
        return "bidirectional"
    return "block_causal"


def get_adapter(model, family: str | None = None, shift_logits: bool = False) -> DiffusionAdapter:
    """The adapter for ``model``: ``family`` (``"block_causal"`` / ``"bidirectional"``) or detected from the model."""
    family = family or detect_family(model)
    if family == "bidirectional":
        return BidirectionalAdapter(shift_logits=shift_logits)
    if family == "block_causal":
        if "store_kv" in _forward_parameters(model):
            return StoreKVAdapter(shift_logits=shift_logits)
        return BlockCausalAdapter(shift_logits=shift_logits)
    raise ValueError(f"Unknown model family {family!r}; use 'block_causal' or 'bidirectional'.")

