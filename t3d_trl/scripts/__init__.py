"""The scripts of the ``t3d-trl`` command line, laid out as TRL's (``trl/scripts/``).

One module per subcommand, each with ``make_parser(subparsers=None, prog=None)`` (a :class:`trl.TrlParser`:
``--config file.yaml`` plus command-line overrides) and ``main(...)`` taking the parsed dataclasses, and runnable as
``python -m t3d_trl.scripts.<name>``:

* :mod:`t3d_trl.scripts.rollout`: ``t3d-trl rollout``;
* :mod:`t3d_trl.scripts.import_trajectories`: ``t3d-trl import``;
* :mod:`t3d_trl.scripts.train`: ``t3d-trl train``;
* :mod:`t3d_trl.scripts.evaluate`: ``t3d-trl eval``;
* :mod:`t3d_trl.scripts.demo`: ``t3d-trl demo``.

The argument dataclasses (:mod:`t3d_trl.scripts.arguments`) and the loading helpers (:mod:`t3d_trl.scripts.utils`)
are shared with ``examples/``.
"""

from .arguments import (
    DatasetArguments,
    EvalArguments,
    GenerationArguments,
    ImportArguments,
    LoraArguments,
    ModelArguments,
    RolloutArguments,
    TrainDatasetArguments,
)
from .utils import (
    UsageError,
    cli_output,
    escape_help_percent,
    format_prompts,
    load_dataset_from_args,
    load_local_dataset,
    load_model,
    load_tokenizer,
    model_init_kwargs,
    peft_config_from_args,
    setup_logging,
)

__all__ = [
    "DatasetArguments",
    "EvalArguments",
    "GenerationArguments",
    "ImportArguments",
    "LoraArguments",
    "ModelArguments",
    "RolloutArguments",
    "TrainDatasetArguments",
    "UsageError",
    "cli_output",
    "escape_help_percent",
    "format_prompts",
    "load_dataset_from_args",
    "load_local_dataset",
    "load_model",
    "load_tokenizer",
    "model_init_kwargs",
    "peft_config_from_args",
    "setup_logging",
]
