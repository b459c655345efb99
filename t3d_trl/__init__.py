"""t3d-trl: few-step decoding for diffusion language models via trajectory self-distillation (T3D)."""

__version__ = "0.1.0.dev0"

from .generation import (
    DiffusionGenerateOutput,
    DiffusionGenerationConfig,
    FewStepDiffusionGenerationMixin,
    patch_model,
)
from .collator import DataCollatorForTrajectory
from .rollout import generate_trajectories, push_trajectories_to_hub
from .sdar import register_sdar
from .trainer import RefModelSyncCallback, T3DConfig, T3DTrainer

register_sdar()

__all__ = [
    "DataCollatorForTrajectory",
    "RefModelSyncCallback",
    "T3DConfig",
    "T3DTrainer",
    "generate_trajectories",
    "push_trajectories_to_hub",
    "DiffusionGenerateOutput",
    "DiffusionGenerationConfig",
    "FewStepDiffusionGenerationMixin",
    "patch_model",
    "register_sdar",
]
