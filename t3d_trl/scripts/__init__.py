"""Argument dataclasses and helpers shared by the ``t3d-trl`` command line and ``examples/``.

Each subcommand of ``t3d-trl`` parses a few small dataclasses with :class:`trl.TrlParser` (``--config file.yaml``
plus command-line overrides) and calls one function of :mod:`t3d_trl.scripts.commands`.
"""

from .arguments import (
    DatasetArguments,
    EvalArguments,
    GenerationArguments,
    LoraArguments,
    ModelArguments,
    RolloutArguments,
    TrainDatasetArguments,
)
from .utils import (
    escape_help_percent,
    format_prompts,
    load_dataset_from_args,
    load_local_dataset,
    load_model,
    load_tokenizer,
    model_init_kwargs,
    peft_config_from_args,
    train_and_save,
)

__all__ = [
    "DatasetArguments",
    "EvalArguments",
    "GenerationArguments",
    "LoraArguments",
    "ModelArguments",
    "RolloutArguments",
    "TrainDatasetArguments",
    "escape_help_percent",
    "format_prompts",
    "load_dataset_from_args",
    "load_local_dataset",
    "load_model",
    "load_tokenizer",
    "model_init_kwargs",
    "peft_config_from_args",
    "train_and_save",
]
