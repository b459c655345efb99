"""Trajectory self-distillation training."""

from .callbacks import RefModelSyncCallback
from .config import T3DConfig
from .t3d_trainer import T3DTrainer

__all__ = ["RefModelSyncCallback", "T3DConfig", "T3DTrainer"]
