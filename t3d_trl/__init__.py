"""t3d-trl: few-step decoding for diffusion language models via trajectory self-distillation (T3D).

The top-level names are loaded lazily (as TRL and transformers do): ``from t3d_trl import patch_model`` imports
the decoding modules only, not the trainer, ``datasets`` or ``transformers.Trainer``. Importing the package does one
thing to transformers, lazily: a load hook on the ``AutoModel*`` classes that gives checkpoints saved by t3d-trl their
few-step ``generate()`` and maps SDAR checkpoints onto Qwen3 when they are loaded (:mod:`t3d_trl.models.auto`;
``T3D_TRL_NO_AUTO_PATCH=1`` turns it off). See ``docs/design.md`` ("Importing t3d-trl").
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("t3d-trl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .models.auto import install_load_hook

install_load_hook()

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "DataCollatorForTrajectory": "collator",
    "DiffusionGenerateOutput": "generation",
    "DiffusionGenerationConfig": "generation",
    "FewStepDiffusionGenerationMixin": "generation",
    "ModelFamily": "models.families",
    "RefModelSyncCallback": "trainer",
    "T3DConfig": "trainer",
    "T3DTrainer": "trainer",
    "generate_trajectories": "rollout",
    "patch_model": "generation",
    "push_trajectories_to_hub": "rollout",
    "redi": "recipes",
    "register_family": "models.families",
    "register_objective": "objectives",
    "register_remasking": "generation",
    "register_sdar": "models.sdar",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .collator import DataCollatorForTrajectory
    from .generation import (
        DiffusionGenerateOutput,
        DiffusionGenerationConfig,
        FewStepDiffusionGenerationMixin,
        patch_model,
        register_remasking,
    )
    from .models.families import ModelFamily, register_family
    from .models.sdar import register_sdar
    from .objectives import register_objective
    from .recipes import redi
    from .rollout import generate_trajectories, push_trajectories_to_hub
    from .trainer import RefModelSyncCallback, T3DConfig, T3DTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
