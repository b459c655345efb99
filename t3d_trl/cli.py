"""The ``t3d-trl`` command line: ``rollout``, ``train``, ``eval`` and ``demo``.

Each subcommand is a script of :mod:`t3d_trl.scripts` (``eval`` is ``t3d_trl/scripts/evaluate.py``), dispatched by
name as TRL's ``trl`` command dispatches to ``trl/scripts/``. It reads its settings from a YAML file (``--config
file.yaml``, keys = flag names, an optional ``env:`` mapping of environment variables) and from command-line flags,
which override the file; parsing is TRL's (:class:`trl.TrlParser`). Multi-process runs go through accelerate::

    t3d-trl rollout --config examples/configs/rollout.yaml
    accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli train \\
        --config examples/configs/train.yaml --learning_rate 1e-5
    t3d-trl eval --config examples/configs/eval.yaml --tokens_per_step 1 2 4
    t3d-trl demo --full

``python -m t3d_trl.cli`` is the same program. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["SCRIPTS", "main", "make_parser", "parse_command"]

#: subcommand -> its script in :mod:`t3d_trl.scripts` (``make_parser()``, ``main(...)``, ``HELP``, ``EXAMPLES``)
SCRIPTS: dict[str, str] = {"rollout": "rollout", "train": "train", "eval": "evaluate", "demo": "demo"}


def _script(command: str) -> ModuleType:
    if command not in SCRIPTS:
        raise ValueError(f"Unknown command {command!r}; choose from {', '.join(SCRIPTS)}.")
    return importlib.import_module(f".scripts.{SCRIPTS[command]}", __package__)


def make_parser(command: str) -> Any:
    """The :class:`trl.TrlParser` of one subcommand (its script's ``make_parser``)."""
    return _script(command).make_parser(prog=f"t3d-trl {command}")


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
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="{" + ",".join(SCRIPTS) + "}")
    for command in SCRIPTS:
        # the script parses its own flags (TRL's cli does the same): registered without them
        subparsers.add_parser(command, help=_script(command).HELP, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``t3d-trl``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SCRIPTS:
        parser = _top_parser()
        parser.parse_args(argv)  # --help, --version, or an error naming the valid commands
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    script = _script(command)
    parsed = script.make_parser(prog=f"t3d-trl {command}").parse_args_and_config(rest)
    script.setup_logging()
    script.main(*parsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
