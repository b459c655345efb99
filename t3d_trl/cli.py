"""The ``t3d-trl`` command line: ``rollout``, ``train``, ``eval`` and ``demo``.

Each subcommand reads its settings from a YAML file (``--config file.yaml``, keys = flag names, an optional
``env:`` mapping of environment variables) and from command-line flags, which override the file; parsing is TRL's
(:class:`trl.TrlParser`). Multi-process runs go through accelerate::

    t3d-trl rollout --config examples/configs/rollout.yaml
    accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli train \\
        --config examples/configs/train.yaml --learning_rate 1e-5
    t3d-trl eval --config examples/configs/eval.yaml --tokens_per_step 1 2 4
    t3d-trl demo --full

``python -m t3d_trl.cli`` is the same program. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMANDS", "main", "make_parser", "parse_command"]

#: subcommand -> one-line description
COMMANDS: dict[str, str] = {
    "rollout": "Roll a block diffusion teacher out over prompts and record its trajectories (token ids and the "
    "step that committed each token).",
    "train": "Distil a model on trajectories with T3DTrainer (T3D, or a baseline `--loss_type`); every T3DConfig / "
    "TrainingArguments field is a flag.",
    "eval": "Few-step evaluation: accuracy, tokens/s, latency, forwards and tokens per forward over decoding "
    "settings; writes JSON, markdown and a plot.",
    "demo": "The end-to-end demo on tiny tasks (teacher, rollouts, SFT / Naive TD / dParallel / T3D students, "
    "paper-style table); `--full` runs the full study.",
}

_EXAMPLES: dict[str, str] = {
    "rollout": """examples:
  t3d-trl rollout --config examples/configs/rollout.yaml
  t3d-trl rollout --model_name_or_path JetLM/SDAR-1.7B-Chat --dataset_name DigitalLearningGmbH/MATH-lighteval \\
      --prompt_column problem --as_chat --block_size 4 --steps_per_block 4 --temperature 0.1 \\
      --max_new_tokens 2000 --dtype bfloat16 --output_dir rollouts/sdar-1.7b-math
  accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli rollout --config rollout.yaml""",
    "train": """examples:
  t3d-trl train --config examples/configs/train.yaml
  accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml -m t3d_trl.cli train \\
      --model_name_or_path JetLM/SDAR-1.7B-Chat --dataset_path rollouts/sdar-1.7b-math \\
      --block_size 8 --learning_rate 1e-5 --bf16 --gradient_checkpointing --output_dir SDAR-1.7B-Chat-T3D""",
    "eval": """examples:
  t3d-trl eval --config examples/configs/eval.yaml
  t3d-trl eval --model_name_or_path SDAR-1.7B-Chat-T3D --eval_dataset math500 gsm8k \\
      --block_sizes 4 8 --tokens_per_step 1 2 4 --output_dir eval/sdar-t3d
  t3d-trl eval --model_name_or_path SDAR-1.7B-Chat-T3D --eval_dataset mbpp humaneval --allow_code_execution""",
    "demo": """examples:
  t3d-trl demo                          # quick demo (minutes on a CPU)
  t3d-trl demo --full --output_dir t3d-demo-full
  t3d-trl demo --seeds 0 1 --methods T3D SFT --print_config""",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows the defaults that are set."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _dataclass_types(command: str) -> tuple[type, ...]:
    from .scripts.arguments import (
        EvalArguments,
        GenerationArguments,
        LoraArguments,
        ModelArguments,
        RolloutArguments,
        TrainDatasetArguments,
    )

    if command == "rollout":
        return (ModelArguments, RolloutArguments, GenerationArguments)
    if command == "train":
        from .trainer import T3DConfig

        return (TrainDatasetArguments, ModelArguments, LoraArguments, T3DConfig)
    if command == "eval":
        return (ModelArguments, EvalArguments)
    if command == "demo":
        from .scripts.demo_arguments import demo_arguments_class

        return (demo_arguments_class(),)
    raise ValueError(f"Unknown command {command!r}; choose from {', '.join(COMMANDS)}.")


def make_parser(command: str) -> Any:
    """The :class:`trl.TrlParser` of one subcommand."""
    from trl import TrlParser

    from .scripts.utils import escape_help_percent

    parser = TrlParser(
        _dataclass_types(command),
        prog=f"t3d-trl {command}",
        description=COMMANDS[command] + " Settings come from `--config file.yaml` and/or flags (flags win).",
        epilog=_EXAMPLES[command],
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    return escape_help_percent(parser)


def parse_command(command: str, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse the arguments of ``command`` (``--config`` YAML, then flags) into its dataclasses."""
    return make_parser(command).parse_args_and_config(list(argv))


def _top_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="t3d-trl",
        description="Few-step decoding for diffusion language models through trajectory self-distillation (T3D, "
        "arXiv 2602.12262). Run `t3d-trl <command> --help` for a command's flags.",
        epilog="Multi-process: accelerate launch [--config_file examples/accelerate_configs/ddp.yaml] -m t3d_trl.cli "
        "<command> ...",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"t3d-trl {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, text in COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    return parser


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``t3d-trl``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        parser.parse_args(argv)  # --help, --version, or an error naming the valid commands
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    parsed = parse_command(command, rest)
    _setup_logging()
    from .scripts import commands

    if command == "rollout":
        commands.rollout(*parsed)
    elif command == "train":
        commands.train(*parsed).end()  # finish the trackers, destroy the process group
    elif command == "eval":
        commands.evaluate(*parsed)
    else:
        commands.run_demo_command(*parsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
