"""Trajectory self-distillation training."""

from .callbacks import RefModelSyncCallback
from .config import LOSS_TYPES, T3DConfig
from .t3d_trainer import T3DTrainer

__all__ = ["LOSS_TYPES", "RefModelSyncCallback", "T3DConfig", "T3DTrainer"]
