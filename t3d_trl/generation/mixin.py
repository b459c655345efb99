"""`FewStepDiffusionGenerationMixin` and `patch_model`: few-step ``generate()`` on models loaded with ``AutoModel*``."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import GenerationConfig

from ..models.families import ModelFamily, check_supported, get_family
from ..models.nonfinite import check_finite_weights
from .configuration import DiffusionGenerationConfig, is_diffusion_generation_config
from .decoding import generate_with_model

_PATCHED_CLASSES: dict[type, type] = {}


class FewStepDiffusionGenerationMixin:
    """Gives a transformers model the block diffusion ``generate()`` of t3d-trl.

    Applied by :func:`patch_model`; every other behaviour of the model (forward, training, saving weights) is the
    model's own. ``generate`` reads its defaults from ``model.generation_config`` (a
    :class:`DiffusionGenerationConfig`), and any of its fields can be overridden per call::

        model.generate(input_ids, attention_mask=attention_mask, steps_per_block=1, max_new_tokens=256)

    It returns a ``LongTensor`` (prompt followed by the generated tokens), or with
    ``return_dict_in_generate=True`` a :class:`~t3d_trl.generation.DiffusionGenerateOutput` with ``sequences``,
    ``step_map``, ``nfe`` and, with ``output_trajectory=True``, ``trajectory``.
    """

    #: the model family that runs the decoding forwards (set by :func:`patch_model`)
    diffusion_family: ModelFamily | None = None

    @classmethod
    def can_generate(cls) -> bool:
        return True

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ):
        """Decode ``inputs`` block by block in ``steps_per_block`` denoising steps per block.

        Args:
            inputs: ``[batch, length]`` prompt ids (left or right padded); also accepted as ``input_ids=``.
            generation_config: settings to use instead of ``self.generation_config``.
            attention_mask: ``[batch, length]`` 1 on prompt tokens and 0 on padding.
            use_cache: decode with a prefix KV cache when the model family supports one (block-causal models).
            generator: random generator for sampling at ``temperature > 0``.
            kwargs: fields of :class:`DiffusionGenerationConfig` to override for this call.
        """
        return generate_with_model(
            self,
            inputs,
            generation_config,
            attention_mask,
            family=self.diffusion_family,
            use_cache=use_cache,
            generator=generator,
            **kwargs,
        )

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, write_custom_generate: bool = True, **kwargs: Any
    ):
        """``save_pretrained`` of the model, plus its :class:`DiffusionGenerationConfig` and, unless
        ``write_custom_generate=False``, a ``custom_generate/generate.py`` with which the checkpoint decodes in few
        steps without t3d-trl installed (``generate(..., custom_generate=path, trust_remote_code=True)``)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.generation_config.save_pretrained(save_directory)
            if write_custom_generate:
                from .custom_generate import write_custom_generate as _write

                _write(save_directory)
        return result


def _patched_class(cls: type) -> type:
    """The subclass of ``cls`` with the mixin, made once per class and keeping ``cls``'s name and module (so
    ``config.architectures`` and remote-code saving see the original class)."""
    if issubclass(cls, FewStepDiffusionGenerationMixin):
        return cls
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(
            cls.__name__,
            (FewStepDiffusionGenerationMixin, cls),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
        )
    return _PATCHED_CLASSES[cls]


def _load_saved_generation_config(model) -> GenerationConfig | None:
    """``generation_config.json`` of the checkpoint the model came from, for classes transformers does not load
    it for (mask predictors report ``can_generate() == False``)."""
    path = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not path or not os.path.isfile(os.path.join(path, "generation_config.json")):
        return None
    return GenerationConfig.from_pretrained(path)


def patch_model(
    model,
    processing_class=None,
    *,
    family: str | None = None,
    shift_logits: bool = False,
    **generation_defaults: Any,
):
    """Give ``model`` the few-step diffusion ``generate()`` and return it (the same object).

    The model's class is swapped for a subclass with :class:`FewStepDiffusionGenerationMixin` (made once per
    class); instances that are not patched keep transformers' ``generate``. The generation defaults come, in
    increasing priority, from the checkpoint's ``generation_config.json``, the tokenizer (mask, EOS and pad
    tokens) and ``generation_defaults``.

    Args:
        model: a transformers model (``AutoModelForCausalLM``, ``AutoModelForMaskedLM``, SDAR remote code...).
        processing_class: its tokenizer, to take the mask, EOS and pad token ids from.
        family: a registered model family (``"block_causal"``, ``"bidirectional"``; see
            :mod:`t3d_trl.models.families`); detected from the model when omitted.
        shift_logits: set for heads whose logits at position ``i`` predict token ``i + 1``.
        generation_defaults: fields of :class:`DiffusionGenerationConfig` (``block_size=4``, ``steps_per_block=1``...).

    Returns:
        ``model``, patched.

    Raises:
        ValueError: for a setting decoding cannot honour, or a model whose weights hold NaN or ±inf (it would decode
            token 0 everywhere; :func:`t3d_trl.models.nonfinite.check_finite_weights`).
    """
    check_supported(model)
    check_finite_weights(model)
    if not isinstance(shift_logits, bool):
        raise ValueError(f"`shift_logits` must be True or False, got {shift_logits!r}.")
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if tokenizer is not None and not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise ValueError(
            f"`processing_class` must be the model's tokenizer (or a processor holding one), got "
            f"{type(processing_class).__name__}."
        )
    base = getattr(model, "generation_config", None)
    if not is_diffusion_generation_config(base):
        base = _load_saved_generation_config(model) or base
    defaults: dict[str, Any] = {}
    if tokenizer is not None:
        for field in ("mask_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(tokenizer, field, None)
            if token_id is not None and getattr(base, field, None) is None:
                defaults[field] = token_id
    config_mask = getattr(model.config, "mask_token_id", None)
    if config_mask is not None and getattr(base, "mask_token_id", None) is None:
        defaults.setdefault("mask_token_id", config_mask)
    defaults.update(generation_defaults)
    config = DiffusionGenerationConfig.from_generation_config(base, **defaults)
    diffusion_family = get_family(model, family=family, shift_logits=shift_logits)
    model.__class__ = _patched_class(type(model))  # only once every setting is known to be valid
    model.generation_config = config
    model.diffusion_family = diffusion_family
    return model
