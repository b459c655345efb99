"""t3d-trl: few-step decoding for diffusion language models via trajectory self-distillation (T3D)."""

__version__ = "0.1.0.dev0"

from .generation import (
    DiffusionGenerateOutput,
    DiffusionGenerationConfig,
    FewStepDiffusionGenerationMixin,
    patch_model,
)
from .sdar import register_sdar

register_sdar()

__all__ = [
    "DiffusionGenerateOutput",
    "DiffusionGenerationConfig",
    "FewStepDiffusionGenerationMixin",
    "patch_model",
    "register_sdar",
]
