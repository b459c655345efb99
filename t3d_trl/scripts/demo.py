"""``t3d-trl demo``: the end-to-end demo on tiny tasks (:func:`t3d_trl.demo.run_demo`).

Every ``DemoConfig`` field becomes an optional flag (tuples become lists, dicts take JSON or a YAML mapping); an
unset flag keeps the demo's default. The three-seed study behind ``docs/results.md`` is ``examples/study.py`` (from a
clone of the repository), built on the same pipeline.

```bash
t3d-trl demo --output_dir t3d-demo
python -m t3d_trl.scripts.demo --seeds 0 1 --print_config
```

See ``docs/cli.md`` (``t3d-trl demo``) and ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from .utils import as_plain, make_script_parser

__all__ = ["demo_arguments_class", "demo_config_from_args", "main", "make_parser"]

HELP = (
    "The end-to-end demo on tiny tasks (teacher, rollouts, SFT / Naive TD / dParallel / T3D students, "
    "paper-style table); the three-seed study is examples/study.py."
)
EXAMPLES = """examples:
  t3d-trl demo                          # quick demo (minutes on a CPU)
  t3d-trl demo --seeds 0 1 --methods T3D SFT --print_config"""


def _demo_config_class() -> type:
    from ..demo import DemoConfig

    return DemoConfig


def _cli_type(annotation: Any) -> tuple[Any, str]:
    """The parser type of a ``DemoConfig`` field (always optional) and a note on how to give it."""
    origin = typing.get_origin(annotation)
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(arguments) == 1:
        return _cli_type(arguments[0])
    if origin is tuple:
        item = arguments[0] if arguments else str
        return list[item] | None, "a list"
    if origin is list:
        item = arguments[0] if arguments else str
        return list[item] | None, "a list"
    if annotation is dict or origin is dict:
        return str | None, "JSON object, or a mapping in the YAML file"
    if annotation in (int, float, str, bool):
        return annotation | None, ""
    return str | None, ""


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else repr(value)


def demo_arguments_class() -> type:
    """A dataclass with one optional field per ``DemoConfig`` field, plus ``print_config``."""
    config_class = _demo_config_class()
    hints = typing.get_type_hints(config_class)
    quick = config_class()
    specs: list[tuple[str, Any, Any]] = []
    for spec in dataclasses.fields(config_class):
        if not spec.init:
            continue
        parser_type, note = _cli_type(hints[spec.name])
        text = f"DemoConfig.{spec.name} (default {_describe(getattr(quick, spec.name))})"
        text += (f"; {note}" if note else "") + "."
        specs.append((spec.name, parser_type, dataclasses.field(default=None, metadata={"help": text})))
    specs.append(
        (
            "print_config",
            bool,
            dataclasses.field(
                default=False, metadata={"help": "Print the resolved DemoConfig as JSON and exit without running."}
            ),
        )
    )
    cls = dataclasses.make_dataclass("DemoArguments", specs)
    cls.__module__ = __name__
    cls.__doc__ = "Arguments of `t3d-trl demo`: overrides of `t3d_trl.demo.DemoConfig`."
    return cls


def demo_config_from_args(args: Any) -> Any:
    """The ``DemoConfig`` of parsed :func:`demo_arguments_class` arguments."""
    config_class = _demo_config_class()
    hints = typing.get_type_hints(config_class)
    overrides: dict[str, Any] = {}
    for spec in dataclasses.fields(config_class):
        value = getattr(args, spec.name, None)
        if value is None or not spec.init:
            continue
        annotation = hints[spec.name]
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = inner[0] if len(inner) == 1 else annotation
            origin = typing.get_origin(annotation)
        if origin is tuple and isinstance(value, (list, tuple)):
            value = tuple(value)
        elif (annotation is dict or origin is dict) and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"--{spec.name} must be a JSON object, got {value!r}.") from error
            if not isinstance(value, dict):
                raise ValueError(f"--{spec.name} must be a JSON object, got {value!r}.")
        overrides[spec.name] = value
    return config_class(**overrides)


def main(demo_args: Any) -> Any:
    """:func:`t3d_trl.demo.run_demo` with the resolved :class:`~t3d_trl.demo.DemoConfig` (``--print_config`` prints
    it and returns it without running, once :func:`~t3d_trl.demo.check_demo_config` accepts it: an unknown task or
    method is refused, not printed as a valid configuration).

    Args:
        demo_args: arguments of :func:`demo_arguments_class`.

    Returns:
        The demo's report, or the configuration with ``--print_config``.
    """
    from ..demo import check_demo_config

    config = demo_config_from_args(demo_args)
    check_demo_config(config)
    if demo_args.print_config:
        print(json.dumps(as_plain(dataclasses.asdict(config)), indent=2))
        return config
    from ..demo import run_demo

    return run_demo(config)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> Any:
    """The parser of ``t3d-trl demo``: one flag per ``DemoConfig`` field and ``--print_config`` (see
    :func:`make_script_parser`)."""
    return make_script_parser("demo", (demo_arguments_class(),), HELP, EXAMPLES, subparsers, prog)


if __name__ == "__main__":  # the same program as `t3d-trl demo` (one-line errors, --debug, --verbose)
    import sys

    from ..cli import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
