"""The ``t3d-trl`` command line: ``rollout``, ``import``, ``train``, ``eval`` and ``demo``.

Each subcommand is a script of :mod:`t3d_trl.scripts` (``eval`` is ``t3d_trl/scripts/evaluate.py``, ``import`` is
``t3d_trl/scripts/import_trajectories.py``), dispatched by name as TRL's ``trl`` command dispatches to
``trl/scripts/``. It reads its settings from a YAML file (``--config
file.yaml``, keys = flag names, an optional ``env:`` mapping of environment variables) and from command-line flags,
which override the file; parsing is TRL's (:class:`trl.TrlParser`). Multi-process runs go through accelerate::

    t3d-trl rollout --config rollout
    accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli train \\
        --config train --learning_rate 1e-5
    t3d-trl eval --config eval --tokens_per_step 1 2 4
    t3d-trl demo --full

Errors: a mistake in the command line or the ``--config`` file prints one line, ``t3d-trl <command>: error:
<message>``, and exits with status 2; a mistake found while running (a missing dataset column, a damaged rollout
directory, a model that cannot be loaded...) prints one such line and exits with status 1. ``--debug`` prints the
full traceback as well. Output: one progress display per stage and a short summary; INFO logs and the progress bars
of ``datasets`` and ``transformers`` show with ``--verbose`` (see :func:`t3d_trl.scripts.utils.cli_output`).

``python -m t3d_trl.cli`` is the same program. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import linecache
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

__all__ = ["SCRIPTS", "main", "make_parser", "parse_command"]

#: subcommand -> its script in :mod:`t3d_trl.scripts` (``make_parser()``, ``main(...)``, ``HELP``, ``EXAMPLES``)
SCRIPTS: dict[str, str] = {
    "rollout": "rollout",
    "import": "import_trajectories",
    "train": "train",
    "eval": "evaluate",
    "demo": "demo",
}

#: exit status of a mistake in the command line or the ``--config`` file
USAGE_ERROR = 2
#: exit status of a mistake found while running
RUN_ERROR = 1
#: exit status after Ctrl-C
INTERRUPTED = 130

#: errors that are the user's to fix, printed on one line (others are bugs: their traceback is printed); a
#: `TypeError` is the user's only when t3d-trl raised it on purpose (see `_is_user_error`)
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)
_PACKAGE = Path(__file__).resolve().parent


def _is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix: a :data:`_USER_ERRORS` error, or a ``TypeError`` that a ``raise``
    statement of t3d-trl raised about an argument's type. Any other ``TypeError`` (a call with the wrong arguments,
    an operation on ``None``...) is a bug, whose traceback is printed."""
    if isinstance(error, _USER_ERRORS):
        return True
    if not isinstance(error, TypeError) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    filename = frame.tb_frame.f_code.co_filename
    if not Path(filename).resolve().is_relative_to(_PACKAGE):
        return False
    return linecache.getline(filename, frame.tb_lineno).lstrip().startswith("raise ")


def _script(command: str) -> ModuleType:
    if command not in SCRIPTS:
        raise ValueError(f"Unknown command {command!r}; choose from {', '.join(SCRIPTS)}.")
    return importlib.import_module(f".scripts.{SCRIPTS[command]}", __package__)


def make_parser(command: str) -> Any:
    """The :class:`trl.TrlParser` of one subcommand (its script's ``make_parser``)."""
    return _script(command).make_parser(prog=f"t3d-trl {command}")


def _split_global_flags(argv: Sequence[str]) -> tuple[set[str], list[str]]:
    """``(flags, rest)``: the flags of ``t3d-trl`` itself (``--debug``, ``--verbose``), wherever they stand before a
    bare ``--``, and the other arguments in order. A flag followed by a value is the command's own
    (``t3d-trl train --debug underflow_overflow`` sets ``TrainingArguments.debug``)."""
    from .scripts.utils import GLOBAL_FLAGS

    argv = list(argv)
    flags: set[str] = set()
    rest: list[str] = []
    for position, argument in enumerate(argv):
        if argument == "--":
            rest += argv[position:]
            break
        following = argv[position + 1] if position + 1 < len(argv) else "--"
        if argument in GLOBAL_FLAGS and following.startswith("-"):
            flags.add(argument)
        else:
            rest.append(argument)
    return flags, rest


def parse_command(command: str, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse the arguments of ``command`` (``--config`` YAML, then flags) into its dataclasses.

    ``--debug`` and ``--verbose`` (flags of ``t3d-trl`` itself) are left out.

    Raises:
        UsageError: (a ``ValueError``) for an unknown flag or config key, an invalid value, a missing or invalid
            YAML file, in one line.
    """
    _, rest = _split_global_flags(argv)
    return make_parser(command).parse_args_and_config(rest)


class _TopParser(argparse.ArgumentParser):
    """The parser of ``t3d-trl`` itself: its errors are one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        from .scripts.utils import UsageError

        raise UsageError(f"{message} (`t3d-trl --help` lists the commands)")


def _top_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _TopParser(
        prog="t3d-trl",
        description="Few-step decoding for diffusion language models through trajectory self-distillation (T3D, "
        "arXiv 2602.12262). Run `t3d-trl <command> --help` for a command's flags.",
        epilog="Every command also takes --debug (full traceback on an error) and --verbose (INFO logs and the "
        "libraries' progress bars). Multi-process: accelerate launch [--config_file "
        "examples/accelerate_configs/ddp.yaml] -m t3d_trl.cli <command> ...",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"t3d-trl {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="{" + ",".join(SCRIPTS) + "}")
    for command in SCRIPTS:
        # the script parses its own flags (TRL's cli does the same): registered without them
        subparsers.add_parser(command, help=_script(command).HELP, add_help=False)
    return parser


def _report(program: str, error: BaseException, status: int, debug: bool) -> int:
    """Print ``error`` on one line (after its traceback with ``debug``) and return ``status``."""
    if debug:
        traceback.print_exception(error)
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (OSError, ImportError)) and type(error).__name__ not in message:
        message = f"{type(error).__name__}: {message}"
    hint = "" if debug else " (--debug shows the traceback)" if status == RUN_ERROR else ""
    print(f"{program}: error: {message}{hint}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``t3d-trl``; returns the exit status (0, or :data:`USAGE_ERROR`, :data:`RUN_ERROR`,
    :data:`INTERRUPTED`).

    Errors the user can fix (``ValueError``, ``OSError``, ``ImportError``, and a ``TypeError`` t3d-trl raises on
    purpose about an argument) are printed on one line, ``t3d-trl <command>: error: <message>``; ``--debug`` prints
    their traceback too. Other exceptions (bugs, any other ``TypeError`` included) propagate with their traceback. The logging and progress-bar settings changed for the run are restored before
    returning (:func:`t3d_trl.scripts.utils.cli_output`), so ``main`` can be called from Python.
    """
    from .scripts.utils import UsageError, cli_output

    flags, argv = _split_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug, verbose = "--debug" in flags, "--verbose" in flags
    if not argv or argv[0] not in SCRIPTS:
        parser = _top_parser()
        try:
            parser.parse_args(argv)  # --help, --version, or an error naming the valid commands
        except UsageError as error:
            return _report("t3d-trl", error, USAGE_ERROR, debug)
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    program = f"t3d-trl {command}"
    script = _script(command)
    try:
        parsed = script.make_parser(prog=program).parse_args_and_config(rest)
    except (UsageError, *_USER_ERRORS, TypeError) as error:
        if not _is_user_error(error):
            raise
        return _report(program, error, USAGE_ERROR, debug)
    with cli_output(verbose):
        try:
            script.main(*parsed)
        except KeyboardInterrupt:
            resume = " (the finished batches are kept in --output_dir: rerun the same command to resume)"
            print(f"{program}: interrupted{resume if command == 'rollout' else ''}", file=sys.stderr)
            return INTERRUPTED
        except (*_USER_ERRORS, TypeError) as error:
            if not _is_user_error(error):
                raise
            return _report(program, error, RUN_ERROR, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
