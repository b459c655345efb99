"""Few-step block diffusion decoding."""

from .configuration import DEFAULT_MAX_NEW_TOKENS, DiffusionGenerationConfig
from .decoding import DiffusionGenerateOutput, diffusion_generate
from .mixin import FewStepDiffusionGenerationMixin, patch_model
from .remasking import (
    RemaskingStrategy,
    get_remasking_strategy,
    num_transfer_tokens,
    register_remasking,
    remasking_names,
    remasking_strategy,
)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DiffusionGenerateOutput",
    "DiffusionGenerationConfig",
    "FewStepDiffusionGenerationMixin",
    "RemaskingStrategy",
    "diffusion_generate",
    "get_remasking_strategy",
    "num_transfer_tokens",
    "patch_model",
    "register_remasking",
    "remasking_names",
    "remasking_strategy",
]
