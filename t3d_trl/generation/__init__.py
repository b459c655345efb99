"""Few-step block diffusion decoding."""

from .configuration import REMASKING_STRATEGIES, DiffusionGenerationConfig
from .decoding import DiffusionGenerateOutput, diffusion_generate
from .mixin import FewStepDiffusionGenerationMixin, patch_model
from .remasking import num_transfer_tokens

__all__ = [
    "REMASKING_STRATEGIES",
    "DiffusionGenerateOutput",
    "DiffusionGenerationConfig",
    "FewStepDiffusionGenerationMixin",
    "diffusion_generate",
    "num_transfer_tokens",
    "patch_model",
]
