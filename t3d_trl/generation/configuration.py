"""`DiffusionGenerationConfig`: the decoding settings of a block diffusion language model."""

from __future__ import annotations

from typing import Any

from transformers import GenerationConfig

#: ``max_new_tokens`` of a decoding whose configuration leaves it unset
DEFAULT_MAX_NEW_TOKENS = 256

REMASKING_STRATEGIES = ("low_confidence_static", "low_confidence_dynamic", "sequential", "entropy_bounded")

DIFFUSION_FIELDS = (
    "block_size",
    "steps_per_block",
    "remasking",
    "confidence_threshold",
    "entropy_bound",
    "mask_token_id",
    "output_trajectory",
)


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
            Which masked positions a step commits: ``"low_confidence_static"`` (the ``k`` most confident),
            ``"low_confidence_dynamic"`` (all above ``confidence_threshold``, at least ``k``), ``"sequential"``
            (the ``k`` leftmost) or ``"entropy_bounded"`` (lowest-entropy positions whose cumulative entropy stays
            under ``entropy_bound``, at least one). ``k`` is ``B // S`` plus one in the first ``B % S`` steps.
        confidence_threshold (`float`, defaults to 0.9):
            Probability threshold of ``"low_confidence_dynamic"``.
        entropy_bound (`float`, defaults to 1.0):
            Cumulative entropy budget (nats) per step of ``"entropy_bounded"``.
        mask_token_id (`int`, *optional*):
            Id of the mask token. Required to generate; taken from the tokenizer or model config by
            :func:`t3d_trl.patch_model` when not given.
        output_trajectory (`bool`, defaults to `False`):
            With ``return_dict_in_generate=True``, also return every intermediate state of the decoding.
        temperature (`float`, defaults to 0.0):
            Sampling temperature; ``0`` decodes greedily. A positive temperature turns ``do_sample`` on.
        kwargs:
            Every other :class:`~transformers.GenerationConfig` field (``max_new_tokens``, ``top_k``, ``top_p``,
            ``eos_token_id``, ``pad_token_id``, ``return_dict_in_generate``...).
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
        _normalise_sampling(kwargs)
        super().__init__(**kwargs)
        self.validate_diffusion()

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
        unused = super().update(**kwargs)
        self.validate_diffusion()
        return unused

    def validate_diffusion(self) -> None:
        """Check the diffusion fields and raise a `ValueError` that says what to change."""
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"`block_size` must be a positive integer, got {self.block_size!r}.")
        if not isinstance(self.steps_per_block, int) or not 1 <= self.steps_per_block <= self.block_size:
            raise ValueError(
                f"`steps_per_block` must be an integer between 1 and `block_size` ({self.block_size}), got "
                f"{self.steps_per_block!r}. Use steps_per_block=1 for one step per block or "
                f"steps_per_block={self.block_size} for one token per step."
            )
        if self.remasking not in REMASKING_STRATEGIES:
            raise ValueError(
                f"Unknown remasking strategy {self.remasking!r}; choose one of {', '.join(REMASKING_STRATEGIES)}."
            )
        if not 0.0 <= float(self.confidence_threshold) <= 1.0:
            raise ValueError(f"`confidence_threshold` must lie in [0, 1], got {self.confidence_threshold!r}.")
        if float(self.entropy_bound) <= 0.0:
            raise ValueError(f"`entropy_bound` must be positive, got {self.entropy_bound!r}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {self.max_new_tokens!r}.")

    @classmethod
    def from_generation_config(cls, config: GenerationConfig | None, **overrides: Any) -> DiffusionGenerationConfig:
        """Build a diffusion config from any generation config (e.g. one loaded from ``generation_config.json``).

        Fields of ``config`` are kept (diffusion fields survive as extra attributes of a plain
        ``GenerationConfig``), then ``overrides`` are applied.
        """
        values = {} if config is None else config.to_dict()
        for key in ("transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"):
            values.pop(key, None)
        values.update({key: value for key, value in overrides.items() if key in DIFFUSION_FIELDS})
        diffusion_config = cls(**values)
        unused = diffusion_config.update(**{k: v for k, v in overrides.items() if k not in DIFFUSION_FIELDS})
        if unused:
            raise ValueError(f"Unknown generation settings {sorted(unused)}; see DiffusionGenerationConfig's fields.")
        return diffusion_config


def _normalise_sampling(kwargs: dict[str, Any], current_do_sample: bool | None = None) -> None:
    """Map the diffusion convention (temperature 0 = greedy) onto `GenerationConfig`'s ``do_sample`` flag."""
    if "temperature" not in kwargs or kwargs["temperature"] is None:
        return
    temperature = float(kwargs["temperature"])
    if temperature < 0:
        raise ValueError(f"`temperature` must be >= 0 (0 decodes greedily), got {temperature}.")
    if temperature == 0.0:
        kwargs["temperature"] = None
        kwargs["do_sample"] = False
    elif kwargs.get("do_sample") is None and not current_do_sample:
        kwargs["do_sample"] = True
