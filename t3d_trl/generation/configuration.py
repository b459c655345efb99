"""`DiffusionGenerationConfig`: the decoding settings of a block diffusion language model.

In ``generation_config.json`` the diffusion settings (block size, steps per block, remasking, mask token...) are
saved under one key, :data:`SAVED_SETTINGS_KEY`, with a note on how to decode the checkpoint in few steps
(:data:`HOW_TO_DECODE`); transformers' own fields (``max_new_tokens``, ``temperature``, ``eos_token_id``...) stay at
the top. transformers alone then has no ``steps_per_block`` field, so ``generate(steps_per_block=1)`` on a model
loaded without t3d-trl and without ``trust_remote_code`` is refused by transformers ("model_kwargs are not used")
instead of running its autoregressive decoding with the argument silently accepted. Files with the settings at the
top level (saved by earlier versions) still load. See ``docs/generation.md`` ("Saving and decoding without t3d-trl").
"""

from __future__ import annotations

import json
import math
from numbers import Integral, Real
from typing import Any

from transformers import GenerationConfig
from transformers.utils import logging

from .remasking import remasking_class, remasking_names, remasking_parameters

logger = logging.get_logger(__name__)

#: ``max_new_tokens`` of decoding when a config leaves it unset
DEFAULT_MAX_NEW_TOKENS = 256

DIFFUSION_FIELDS = (
    "block_size",
    "steps_per_block",
    "remasking",
    "confidence_threshold",
    "entropy_bound",
    "mask_token_id",
    "output_trajectory",
)

#: the key of ``generation_config.json`` under which the diffusion settings are saved
SAVED_SETTINGS_KEY = "block_diffusion"
_NOTE_KEY = "how_to_decode"
#: the note saved with the diffusion settings
HOW_TO_DECODE = (
    "Few-step block diffusion decoding: transformers' own generate() decodes autoregressively and does not read "
    "these settings. Load with trust_remote_code=True (from_pretrained runs custom_generate/generate.py), or "
    "pip install t3d-trl and import t3d_trl before from_pretrained; then generate(..., steps_per_block=1)."
)


def _saved_keys() -> tuple[str, ...]:
    """The settings saved under :data:`SAVED_SETTINGS_KEY`: the diffusion fields and every registered strategy's."""
    return (*DIFFUSION_FIELDS, *remasking_parameters())


def flatten_saved_settings(values: dict[str, Any]) -> dict[str, Any]:
    """A generation config's fields with the diffusion settings saved under :data:`SAVED_SETTINGS_KEY` moved to the
    top level (a setting already at the top level is kept; the note is dropped)."""
    saved = values.get(SAVED_SETTINGS_KEY)
    if not isinstance(saved, dict):
        return values
    flat = {key: value for key, value in values.items() if key != SAVED_SETTINGS_KEY}
    for key, value in saved.items():
        if key != _NOTE_KEY:
            flat.setdefault(key, value)
    return flat


def is_diffusion_generation_config(config: Any) -> bool:
    """Whether ``config`` (any generation config) holds block diffusion settings: a
    :class:`DiffusionGenerationConfig`, a plain ``GenerationConfig`` loaded from a ``generation_config.json`` t3d-trl
    saved, or one with ``block_size`` and ``steps_per_block`` fields (files of earlier versions)."""
    if config is None:
        return False
    if isinstance(config, DiffusionGenerationConfig) or isinstance(getattr(config, SAVED_SETTINGS_KEY, None), dict):
        return True
    return all(getattr(config, name, None) is not None for name in ("block_size", "steps_per_block"))


class DiffusionGenerationConfig(GenerationConfig):
    """Generation settings for few-step block diffusion decoding.

    A :class:`transformers.GenerationConfig` with the fields of block diffusion decoding. It is saved to
    ``generation_config.json`` by ``save_pretrained`` and restored by :func:`t3d_trl.patch_model`, so a distilled
    checkpoint decodes with its own mask token, block size and step count without arguments.

    Args:
        block_size (`int`, defaults to 4):
            Tokens per block ``B``. Blocks are aligned to absolute positions: block id = position // B.
        steps_per_block (`int`, *optional*):
            Denoising steps ``S`` per block, ``1 <= S <= B``; tokens per step is ``B / S``. Defaults to
            ``block_size`` (one token per step, the teacher's "full-step" decoding).
        remasking (`str`, defaults to ``"low_confidence_static"``):
            Which masked positions a step commits, a registered strategy
            (:func:`t3d_trl.generation.remasking.register_remasking`): ``"low_confidence_static"`` (the ``k`` most
            confident), ``"low_confidence_dynamic"`` (all above ``confidence_threshold``, at least ``k``),
            ``"sequential"`` (the ``k`` leftmost) or ``"entropy_bounded"`` (lowest-entropy positions whose cumulative
            entropy stays under ``entropy_bound``, at least one). ``k`` is ``B // S`` plus one in the first ``B % S``
            steps. A registered strategy's own settings are fields of this config too.
        confidence_threshold (`float`, defaults to 0.9):
            Probability threshold of ``"low_confidence_dynamic"``.
        entropy_bound (`float`, defaults to 1.0):
            Cumulative entropy budget (nats) per step of ``"entropy_bounded"``.
        mask_token_id (`int`, *optional*):
            Id of the mask token. Required to generate; taken from the tokenizer or model config by
            :func:`t3d_trl.patch_model` when not given.
        output_trajectory (`bool`, defaults to `False`):
            With ``return_dict_in_generate=True``, also return every intermediate state of the decoding.
        kwargs:
            Every other :class:`~transformers.GenerationConfig` field (``max_new_tokens``, ``top_k``, ``top_p``,
            ``eos_token_id``, ``pad_token_id``, ``return_dict_in_generate``...), among them ``temperature``
            (`float`, defaults to 0.0): the sampling temperature; ``0`` decodes greedily, a positive temperature
            turns ``do_sample`` on.
    """

    def __init__(
        self,
        block_size: int = 4,
        steps_per_block: int | None = None,
        remasking: str = "low_confidence_static",
        confidence_threshold: float = 0.9,
        entropy_bound: float = 1.0,
        mask_token_id: int | None = None,
        output_trajectory: bool = False,
        **kwargs: Any,
    ) -> None:
        self.block_size = block_size
        self.steps_per_block = block_size if steps_per_block is None else steps_per_block
        self.remasking = remasking
        self.confidence_threshold = confidence_threshold
        self.entropy_bound = entropy_bound
        self.mask_token_id = mask_token_id
        self.output_trajectory = output_trajectory
        for field, default in remasking_parameters().items():  # settings of strategies registered later
            if not hasattr(self, field) and field not in kwargs:
                setattr(self, field, default)
        _normalise_sampling(kwargs)
        super().__init__(**kwargs)  # ends with self.validate()

    @property
    def effective_temperature(self) -> float:
        """The temperature the sampler uses: 0 (greedy) unless ``do_sample`` is on."""
        if not self.do_sample:
            return 0.0
        return 1.0 if self.temperature is None else float(self.temperature)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Update fields from ``kwargs`` (a positive ``temperature`` turns sampling on) and re-validate.

        Returns:
            The keyword arguments that are not fields of this config.
        """
        _normalise_sampling(kwargs, current_do_sample=self.do_sample)
        for field in remasking_parameters():  # a strategy registered after this config was built
            if field in kwargs and not hasattr(self, field):
                setattr(self, field, kwargs[field])
        unused = super().update(**kwargs)  # ends with self.validate()
        if kwargs.get("max_length") is not None and self.max_new_tokens is not None:
            # transformers' own words (`GenerationMixin._prepare_generated_length`) for the same conflict
            logger.warning(
                f"Both `max_new_tokens` (={self.max_new_tokens}) and `max_length`(={self.max_length}) seem to have "
                "been set. `max_new_tokens` will take precedence. Pass `max_new_tokens` to change the number of new "
                "tokens, or `max_new_tokens=None` with `max_length` to count the prompt."
            )
        return unused

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None) -> None:
        """transformers' checks, then :meth:`validate_diffusion`. transformers calls it when the config is built,
        updated and saved, so an invalid config is refused then, not when it is reloaded."""
        super().validate(strict=strict, user_set_attributes=user_set_attributes)
        self.validate_diffusion()

    def validate_diffusion(self) -> None:
        """Check the diffusion fields and the sampling settings, and raise a `ValueError` that says what to change."""
        if not _is_integer(self.block_size) or self.block_size < 1:
            raise ValueError(f"`block_size` must be a positive integer, got {self.block_size!r}.")
        if not _is_integer(self.steps_per_block) or not 1 <= self.steps_per_block <= self.block_size:
            raise ValueError(
                f"`steps_per_block` must be an integer between 1 and `block_size` ({self.block_size}), got "
                f"{self.steps_per_block!r}. Use steps_per_block=1 for one step per block or "
                f"steps_per_block={self.block_size} for one token per step."
            )
        remasking_class(self.remasking)  # raises for an unknown name, listing the accepted ones
        defaults = remasking_parameters()
        for name in remasking_names():
            strategy = remasking_class(name)
            strategy.check_parameters({field: getattr(self, field, defaults[field]) for field in strategy.parameters})
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {self.max_new_tokens!r}.")
        samples = self.num_return_sequences
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise ValueError(f"`num_return_sequences` must be a positive integer, got {samples!r}.")
        _check_mask_token_id(self.mask_token_id)
        _check_sampling(self.temperature, self.top_k, self.top_p)

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False, **kwargs: Any) -> str:
        """transformers' JSON of the config, with the diffusion settings under :data:`SAVED_SETTINGS_KEY` and the
        note :data:`HOW_TO_DECODE` (what ``save_pretrained`` writes to ``generation_config.json``)."""
        values = json.loads(super().to_json_string(use_diff=use_diff, ignore_metadata=ignore_metadata, **kwargs))
        saved = {key: values.pop(key) for key in _saved_keys() if key in values}
        if saved:
            values[SAVED_SETTINGS_KEY] = {**saved, _NOTE_KEY: HOW_TO_DECODE}
        return json.dumps(values, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """transformers' ``from_dict``, reading the diffusion settings from :data:`SAVED_SETTINGS_KEY` (or from the
        top level, as earlier versions saved them)."""
        return super().from_dict(flatten_saved_settings(config_dict), **kwargs)

    @classmethod
    def from_generation_config(cls, config: GenerationConfig | None, **overrides: Any) -> DiffusionGenerationConfig:
        """Build a diffusion config from any generation config (e.g. one loaded from ``generation_config.json``).

        Fields of ``config`` are kept (diffusion settings survive in a plain ``GenerationConfig`` as its
        :data:`SAVED_SETTINGS_KEY` attribute, or as extra attributes in files of earlier versions), then
        ``overrides`` are applied.
        """
        values = {} if config is None else flatten_saved_settings(config.to_dict())
        for key in ("transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"):
            values.pop(key, None)
        constructor_fields = (*DIFFUSION_FIELDS, *remasking_parameters())
        values.update({key: value for key, value in overrides.items() if key in constructor_fields})
        diffusion_config = cls(**values)
        unused = diffusion_config.update(**{k: v for k, v in overrides.items() if k not in constructor_fields})
        if unused:
            raise ValueError(f"Unknown generation settings {sorted(unused)}; see DiffusionGenerationConfig's fields.")
        return diffusion_config


def _is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (``True`` and ``2.0`` are not)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_mask_token_id(mask_token_id: Any) -> None:
    """A mask token id is ``None`` (unset) or a non-negative integer; a token string gets the way to its id."""
    if mask_token_id is None or (_is_integer(mask_token_id) and mask_token_id >= 0):
        return
    if isinstance(mask_token_id, str):
        raise ValueError(
            f"`mask_token_id` must be a token id (an integer), got the string {mask_token_id!r}. Look its id up with "
            f"`tokenizer.convert_tokens_to_ids({mask_token_id!r})`, or pass the tokenizer to "
            "`patch_model(model, tokenizer)`, which takes its mask token."
        )
    raise ValueError(
        f"`mask_token_id` must be a non-negative integer token id, got {mask_token_id!r} "
        f"({type(mask_token_id).__name__})."
    )


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> None:
    """The ranges transformers' samplers accept: a finite ``temperature >= 0``, an integer ``top_k >= 0`` (0: off) and
    ``0 <= top_p <= 1`` (1: off)."""
    if temperature is not None:
        _check_temperature(temperature)
    if top_k is not None and (not _is_integer(top_k) or top_k < 0):
        raise ValueError(f"`top_k` must be an integer >= 0 (0 or None turns it off), got {top_k!r}.")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0.0 <= top_p <= 1.0  # NaN fails the range
    ):
        raise ValueError(f"`top_p` must be a number between 0 and 1 (1 or None turns it off), got {top_p!r}.")


def _check_temperature(temperature: Any) -> float:
    """``temperature`` as a float, or a `ValueError`: it must be a finite number >= 0 (0 decodes greedily)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (Real, str)):
        raise ValueError(f"`temperature` must be a number >= 0 (0 decodes greedily), got {temperature!r}.")
    try:
        value = float(temperature)
    except ValueError:
        raise ValueError(f"`temperature` must be a number >= 0 (0 decodes greedily), got {temperature!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`temperature` must be a finite number >= 0 (0 decodes greedily, 1 samples from the model's "
            f"distribution), got {temperature!r}."
        )
    return value


def _normalise_sampling(kwargs: dict[str, Any], current_do_sample: bool | None = None) -> None:
    """Map the diffusion convention (temperature 0 = greedy) onto `GenerationConfig`'s ``do_sample`` flag."""
    if "temperature" not in kwargs or kwargs["temperature"] is None:
        return
    temperature = _check_temperature(kwargs["temperature"])
    if temperature == 0.0:
        kwargs["temperature"] = None
        kwargs["do_sample"] = False
    elif kwargs.get("do_sample") is None and not current_do_sample:
        kwargs["do_sample"] = True
