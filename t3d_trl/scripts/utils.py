"""Helpers shared by the scripts of ``t3d-trl`` (:mod:`t3d_trl.scripts.rollout`, ``train``, ``evaluate``, ``demo``)
and the example scripts: their parsers, logging, and the loading of datasets, tokenizers, models and LoRA configs."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..local_datasets import load_local_dataset
from .arguments import DatasetArguments, LoraArguments, ModelArguments

logger = logging.getLogger(__name__)

__all__ = [
    "HelpFormatter",
    "UsageError",
    "as_plain",
    "cli_output",
    "escape_help_percent",
    "format_prompts",
    "load_dataset_from_args",
    "load_local_dataset",
    "load_model",
    "load_tokenizer",
    "make_script_parser",
    "model_init_kwargs",
    "peft_config_from_args",
    "resolve_prompt_template",
    "script_parser_class",
    "setup_logging",
]


# --------------------------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows the defaults that are set."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def escape_help_percent(parser: Any) -> Any:
    """Escape lone ``%`` in the help texts of ``parser``'s arguments (argparse %-formats help strings)."""
    for action in getattr(parser, "_actions", []):
        if isinstance(action.help, str):
            action.help = re.sub(r"(?<!%)%(?![(%])", "%%", action.help)
    return parser


class UsageError(ValueError):
    """A mistake in a command line or in its ``--config`` file (``t3d-trl`` prints it on one line, exit status 2)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: the configs that ship with t3d-trl (``t3d_trl/configs/<name>.yaml``), reachable by name from an installed wheel
BUNDLED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def bundled_configs() -> list[str]:
    """The names ``--config`` accepts besides a path: the YAML files of ``t3d_trl/configs/``."""
    return sorted(path.stem for path in BUNDLED_CONFIGS.glob("*.yaml"))


def resolve_config(value: str) -> str:
    """The YAML file of ``--config value``: ``value`` itself when it is a file, else the bundled config of that name
    (``--config train`` reads ``t3d_trl/configs/train.yaml``, in a clone or an installed wheel alike).

    Raises:
        UsageError: when it is neither, naming the bundled configs.
    """
    if Path(value).exists():
        return value
    bundled = BUNDLED_CONFIGS / (value if value.endswith(".yaml") else f"{value}.yaml")
    if bundled.parent == BUNDLED_CONFIGS and bundled.is_file():
        return str(bundled)
    raise UsageError(
        f"--config {value}: no such file, and no bundled config of that name (bundled: {', '.join(bundled_configs())})."
    )


def _normalise_config_flag(args: list[str]) -> list[str]:
    """``--config=file.yaml`` as ``--config file.yaml`` (TRL reads only the latter), a bundled config's name as its
    path (:func:`resolve_config`); a ``--config`` without a file, or given twice, is a :class:`UsageError`."""
    args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    positions = [position for position, arg in enumerate(args) if arg == "--config"]
    if len(positions) > 1:
        raise UsageError("--config is given more than once; give one YAML file (flags override its values).")
    if positions and (positions[0] + 1 >= len(args) or args[positions[0] + 1].startswith("--")):
        raise UsageError(
            f"--config needs a YAML file or a bundled config's name ({', '.join(bundled_configs())}), e.g. "
            "--config train."
        )
    if positions:
        args[positions[0] + 1] = resolve_config(args[positions[0] + 1])
    return args


class _BooleanWord(str):
    """A YAML 1.1 boolean written as a word (``yes``, ``no``, ``on``, ``off``...), kept as written until the flag it
    sets is known: ``save_strategy: no`` means the string ``"no"``, ``bf16: yes`` the boolean ``True``."""

    boolean: bool


@functools.cache
def _config_loader() -> type:
    """A YAML ``SafeLoader`` that refuses a key given twice in one mapping and keeps boolean words
    (:class:`_BooleanWord`); ``true`` / ``false`` stay booleans. Built on first use."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_bool(self, node):
            value = super().construct_yaml_bool(node)
            if node.value.lower() in ("true", "false"):
                return value
            word = _BooleanWord(node.value)
            word.boolean = value
            return word

    ConfigLoader.add_constructor("tag:yaml.org,2002:bool", ConfigLoader.construct_yaml_bool)
    return ConfigLoader


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


def _read_config(config: str) -> dict[str, Any]:
    """The mapping of a ``--config`` file, or a :class:`UsageError` for a file that is missing, not YAML, not a
    mapping, or gives a key twice (YAML itself would keep the last value without a word)."""
    import yaml

    try:
        text = Path(config).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--config {config}: {error.strerror or error}.") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"--config {config} is not UTF-8 text: {error}.") from None
    try:
        content = yaml.load(text, Loader=_config_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as duplicate:
        raise UsageError(
            f"--config {config}: `{duplicate.key}` is given twice (lines {duplicate.first} and {duplicate.second}); "
            "keep one of them (YAML would silently keep the last)."
        ) from None
    except yaml.YAMLError as error:
        raise UsageError(f"--config {config} is not valid YAML: {_one_line(error)}") from None
    if not isinstance(content, dict):
        got = "an empty file" if content is None else f"a {type(content).__name__}"
        raise UsageError(
            f"--config {config} must contain a YAML mapping of flag names to values (e.g. `learning_rate: 1e-5`), "
            f"got {got}."
        )
    return content


def _resolve_boolean_words(value: Any, keep_word: bool = False) -> Any:
    """``value`` with its :class:`_BooleanWord` s resolved: the word itself where ``keep_word`` (a flag that takes a
    string), the YAML 1.1 boolean elsewhere (nested values, boolean flags)."""
    if isinstance(value, _BooleanWord):
        return str(value) if keep_word else value.boolean
    if isinstance(value, dict):
        return {key: _resolve_boolean_words(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_boolean_words(item, keep_word) for item in value]
    return value


def _takes_a_boolean(action: argparse.Action | None) -> bool:
    """Whether a parser argument is a boolean flag (``HfArgumentParser`` parses those with ``string_to_bool``)."""
    from transformers.hf_argparser import string_to_bool

    if action is None:
        return True  # an unknown key: TRL names it; its value does not matter
    return action.type is string_to_bool or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


@functools.cache
def script_parser_class() -> type:
    """:class:`trl.TrlParser` with errors raised as :class:`UsageError` (one line, no usage dump), and TRL's and
    transformers' messages on unknown flags and config keys, missing or invalid YAML files said in a command
    line's words. Built on first use (importing TRL is slow)."""
    import yaml
    from trl import TrlParser

    class ScriptParser(TrlParser):
        """The parser of a ``t3d-trl`` command (see :func:`script_parser_class`)."""

        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{message} (`{self.prog} --help` lists the flags)")

        def parse_args_and_config(self, args: Sequence[str] | None = None, *options: Any, **kwargs: Any) -> Any:
            args = _normalise_config_flag(list(sys.argv[1:] if args is None else args))
            config = args[args.index("--config") + 1] if "--config" in args else None
            with contextlib.ExitStack() as stack:
                if config is not None:  # TRL reads a checked copy: no key twice, boolean words resolved per flag
                    values = self._resolved_config(_read_config(config))
                    copy = stack.enter_context(tempfile.TemporaryDirectory(prefix="t3d-trl-config-"))
                    checked = Path(copy) / "config.yaml"
                    checked.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
                    args[args.index("--config") + 1] = str(checked)
                try:
                    return super().parse_args_and_config(args, *options, **kwargs)
                except ValueError as error:
                    raise self._usage_error(str(error), config) from None

        def _resolved_config(self, values: dict[str, Any]) -> dict[str, Any]:
            """``values`` with boolean words as the word for flags that take a string (``save_strategy: no``) and as
            YAML's boolean for boolean flags and nested values."""
            return {
                key: _resolve_boolean_words(
                    value, keep_word=not _takes_a_boolean(self._option_string_actions.get(f"--{key}"))
                )
                for key, value in values.items()
            }

        def _usage_error(self, message: str, config: str | None) -> ValueError:
            listed = re.findall(r"'([^']*)'", message)
            if message.startswith("Unknown arguments from config file"):
                keys = [item[2:] for item in listed[0::2]]
                return UsageError(
                    f"--config {config}: {', '.join(keys)} {'is not a flag' if len(keys) == 1 else 'are not flags'} "
                    f"of `{self.prog}` (`{self.prog} --help` lists them)."
                )
            if message.startswith("Some specified arguments are not used"):
                return UsageError(f"unrecognized arguments: {' '.join(listed)} (`{self.prog} --help` lists the flags)")
            return UsageError(_one_line(message))  # e.g. a value a dataclass refuses in its __post_init__

    return ScriptParser


def make_script_parser(
    command: str,
    dataclass_types: Sequence[type],
    help_text: str,
    examples: str,
    subparsers: argparse._SubParsersAction | None = None,
    prog: str | None = None,
) -> Any:
    """The :class:`trl.TrlParser` of a script, as TRL's scripts make theirs.

    Args:
        command: the ``t3d-trl`` subcommand (the name of the subparser).
        dataclass_types: the dataclasses parsed (``--config file.yaml`` and flags).
        help_text: one line on what the script does.
        examples: the epilog (example command lines).
        subparsers: when given (from ``add_subparsers(parser_class=TrlParser)``), the parser is registered there as
            ``command``; otherwise a standalone parser is returned.
        prog: the program name of a standalone parser (``None``: the script's file name).

    Returns:
        The parser: a :func:`script_parser_class` parser (errors raised as :class:`UsageError`) when standalone. Its
        help lists ``--debug`` and ``--verbose``, which :func:`t3d_trl.cli.main` takes out of the arguments before
        parsing.
    """
    settings = dict(
        description=help_text
        + " Settings come from `--config file.yaml` (or a bundled config by name: "
        + ", ".join(bundled_configs())
        + ") and/or flags (flags win).",
        epilog=examples,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    if subparsers is not None:
        parser = subparsers.add_parser(command, help=help_text, dataclass_types=dataclass_types, **settings)
    else:
        parser = script_parser_class()(dataclass_types, prog=prog, **settings)
    _registry_choices(parser)
    group = parser.add_argument_group("output and errors (flags of t3d-trl itself, not settings of the run)")
    for flag, text in GLOBAL_FLAGS.items():
        taken = parser._option_string_actions.get(flag)
        if taken is None:
            group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
        else:  # TrainingArguments' --debug takes a value: a bare --debug is t3d-trl's
            taken.help = f"{taken.help or ''} A bare `{flag}` (no value) is t3d-trl's: {text[0].lower()}{text[1:]}"
    return escape_help_percent(parser)


def _registry_choices(parser: argparse.ArgumentParser) -> None:
    """The choices of the flags that name a registered family, objective or remasking strategy, from the registries as
    they are when the parser is built (names and aliases, with what was registered before)."""
    from ..generation.remasking import REMASKING
    from ..models.families import FAMILIES
    from ..objectives import OBJECTIVES

    registries = {"model_family": FAMILIES, "loss_type": OBJECTIVES, "remasking": REMASKING}
    for action in parser._actions:
        registry = registries.get(action.dest)
        if registry is not None:
            action.choices = list(registry.choices())


#: the flags of ``t3d-trl`` itself, taken out of a command's arguments by :func:`t3d_trl.cli.main` when they stand
#: alone (``t3d-trl train --debug underflow_overflow`` is ``TrainingArguments.debug``)
GLOBAL_FLAGS = {
    "--debug": "On an error, print the full traceback (otherwise: one line).",
    "--verbose": "Show INFO logs and the progress bars of `datasets` and the loading bars of `transformers` "
    "(hidden otherwise: one progress display per stage of the run).",
}


def process_rank() -> int:
    """This process's rank in a distributed launch (``RANK``, set by ``accelerate launch`` and ``torchrun``; 0 alone)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def setup_logging() -> None:
    """INFO logging with timestamps, for a script run from the command line (``examples/``): on the main process
    only, so that each line prints once under ``accelerate launch``; the other processes log their warnings and errors
    (transformers' ``log_level_replica``)."""
    level = logging.INFO if process_rank() == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)


#: the logger of DeepSpeed, whose handler writes to stdout
DEEPSPEED_LOGGER = "DeepSpeed"


class _LogsToStderr(logging.Filter):
    """A logger filter that writes the records at or above ``level`` to stderr and drops them from the logger's own
    handlers (a library's handler bound to stdout)."""

    def __init__(self, level: int, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.level = level
        self.handler = logging.StreamHandler()  # the current sys.stderr
        if formatter is not None:
            self.handler.setFormatter(formatter)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            self.handler.handle(record)
        return False


@contextlib.contextmanager
def cli_output(verbose: bool = False) -> Iterator[None]:
    """What a ``t3d-trl`` command shows while it runs; everything changed is restored on exit.

    Without ``verbose``: t3d-trl's warnings (no INFO logs), the warnings of ``transformers`` and ``datasets``, and
    no progress bars of ``datasets`` (Map, Filter, Saving...) nor of ``transformers`` (loading and writing weights);
    the progress bars of t3d-trl's own stages (rollout, evaluation) and the trainer's stay. With ``verbose``: INFO
    logs of t3d-trl (with timestamps), ``transformers`` and ``datasets``, and the libraries' progress bars.
    Standard output stays the command's summary: DeepSpeed's log records (its logger writes to stdout, and
    ``accelerate`` imports it when it is installed) go to stderr, at the same level as the others. Under
    ``accelerate launch`` only the main process shows INFO logs, so that each line prints once; the other processes
    show their warnings and errors (transformers' ``log_level_replica``).

    Args:
        verbose: show INFO logs and the libraries' progress bars.
    """
    import datasets
    import transformers

    level = logging.INFO if verbose and process_rank() == 0 else logging.WARNING
    ours = logging.getLogger("t3d_trl")
    handler = None
    if not logging.getLogger().handlers and not ours.handlers:  # a caller's own logging set-up is left alone
        handler = logging.StreamHandler()  # to the current sys.stderr
        layout = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(layout))
        ours.addHandler(handler)
    saved = (
        ours.level,
        datasets.utils.logging.get_verbosity(),
        datasets.utils.are_progress_bars_disabled(),
        transformers.utils.logging.get_verbosity(),
        transformers.utils.logging.is_progress_bar_enabled(),
    )
    ours.setLevel(level)
    to_stderr = _LogsToStderr(level, handler.formatter if handler is not None else None)
    logging.getLogger(DEEPSPEED_LOGGER).addFilter(to_stderr)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    if verbose:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        our_level, datasets_level, datasets_bars_off, transformers_level, transformers_bars_on = saved
        if handler is not None:
            ours.removeHandler(handler)
        logging.getLogger(DEEPSPEED_LOGGER).removeFilter(to_stderr)
        ours.setLevel(our_level)
        datasets.utils.logging.set_verbosity(datasets_level)
        transformers.utils.logging.set_verbosity(transformers_level)
        (datasets.disable_progress_bars if datasets_bars_off else datasets.enable_progress_bars)()
        if transformers_bars_on:
            transformers.utils.logging.enable_progress_bar()
        else:
            transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


def load_dataset_from_args(args: DatasetArguments) -> Any:
    """The dataset named by ``--dataset_path`` (local) or ``--dataset_name`` (local path or Hub id).

    Raises:
        ValueError: when neither is given.
    """
    from datasets import load_dataset

    if args.dataset_path is not None:
        dataset = load_local_dataset(args.dataset_path, args.dataset_split)
    elif args.dataset_name is not None and os.path.exists(args.dataset_name):
        dataset = load_local_dataset(args.dataset_name, args.dataset_split)
    elif args.dataset_name is not None:
        dataset = load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_split)
    else:
        raise ValueError("No dataset: pass --dataset_path (a local directory or file) or --dataset_name (a Hub id).")
    if args.max_samples is not None:
        if args.max_samples < 1:
            raise ValueError(f"--max_samples must be positive, got {args.max_samples}.")
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    return dataset


def resolve_prompt_template(template: str | None) -> str | None:
    """``"math"`` is the GSM8K/MATH500 evaluation prompt (:data:`t3d_trl.evaluation.MATH_PROMPT_TEMPLATE`); other
    templates must hold ``{prompt}`` (or ``{question}``), replaced by the prompt."""
    if template is None:
        return None
    if template.strip().lower() == "math":
        from ..evaluation import MATH_PROMPT_TEMPLATE

        template = MATH_PROMPT_TEMPLATE
    template = template.replace("{question}", "{prompt}")
    if "{prompt}" not in template:
        raise ValueError(
            f"--prompt_template {template!r} has no `{{prompt}}` placeholder; give e.g. "
            "'{prompt} Answer briefly.' or `math`."
        )
    return template


def format_prompts(dataset: Any, prompt_column: str, template: str | None = None, as_chat: bool = False) -> Any:
    """Apply ``template`` (see :func:`resolve_prompt_template`) to text prompts and/or wrap them as a user chat
    message (so the tokenizer's chat template is applied at rollout)."""
    template = resolve_prompt_template(template)
    if template is None and not as_chat:
        return dataset
    if prompt_column not in dataset.column_names:
        raise ValueError(f"The dataset has no `{prompt_column}` column (columns: {dataset.column_names}).")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row[prompt_column]
        if not isinstance(prompt, str):  # already chat messages
            return {prompt_column: prompt}
        if template is not None:
            prompt = template.replace("{prompt}", prompt)
        return {prompt_column: [{"role": "user", "content": prompt}] if as_chat else prompt}

    return dataset.map(convert, desc="Formatting prompts")


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def load_tokenizer(args: ModelArguments, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``args.tokenizer_name_or_path`` (or the model), with ``--mask_token`` set if given; its own
    code runs only with ``trust_remote_code``."""
    from transformers import AutoTokenizer

    from ..models.locations import TOKENIZER_FILES, check_model_location

    name = args.tokenizer_name_or_path or args.model_name_or_path
    if name is None:
        raise ValueError("No model: pass --model_name_or_path (a Hub id or a local directory).")
    flag = "--tokenizer_name_or_path" if args.tokenizer_name_or_path else "--model_name_or_path"
    check_model_location(name, flag, required_files=TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=args.model_revision, trust_remote_code=trust_remote_code)
    if args.mask_token is not None and getattr(tokenizer, "mask_token", None) != args.mask_token:
        token_id = tokenizer.convert_tokens_to_ids(args.mask_token)
        if token_id is None or token_id == getattr(tokenizer, "unk_token_id", object()):
            raise ValueError(
                f"--mask_token {args.mask_token!r} is not in the tokenizer's vocabulary. Add it and resize the "
                "embeddings first (tokenizer.add_special_tokens({'mask_token': ...}); "
                "model.resize_token_embeddings(len(tokenizer))), then save the model."
            )
        tokenizer.mask_token = args.mask_token
    return tokenizer


def model_init_kwargs(args: ModelArguments, trust_remote_code: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``from_pretrained`` for ``args`` (``trust_remote_code`` only when asked)."""
    kwargs: dict[str, Any] = {"attn_implementation": args.attn_implementation, "dtype": args.dtype}
    if args.model_revision is not None:
        kwargs["revision"] = args.model_revision
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def load_model(
    args: ModelArguments,
    family: str | None = None,
    tokenizer: Any = None,
    device: Any = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a diffusion LM with the auto class of its family (:func:`t3d_trl.models.families.load_pretrained`), put it
    on ``device`` in eval mode and give it the few-step ``generate`` of :func:`t3d_trl.patch_model`. The location
    (:func:`t3d_trl.models.locations.check_model_location`) and the device (:func:`t3d_trl.devices.check_device`)
    are checked before anything is loaded."""
    from ..devices import check_device
    from ..generation import patch_model
    from ..models.families import load_pretrained
    from ..models.locations import check_model_location

    if args.model_name_or_path is None:
        raise ValueError("No model: pass --model_name_or_path (a Hub id or a local directory).")
    check_model_location(args.model_name_or_path, "--model_name_or_path")
    if device is not None:
        check_device(device, "--device")
    kwargs = model_init_kwargs(args, trust_remote_code)
    model = load_pretrained(args.model_name_or_path, family, **kwargs)
    if device is not None:
        model.to(device)
    model.eval()
    return patch_model(model, tokenizer, family=family)


def peft_config_from_args(args: LoraArguments) -> Any:
    """A ``peft.LoraConfig`` from ``--use_peft`` and the ``--lora_*`` flags (``None`` without ``--use_peft``)."""
    if not args.use_peft:
        return None
    try:
        from peft import LoraConfig
    except ImportError as error:  # the peft extra
        raise ImportError("--use_peft needs the `peft` package: pip install 't3d-trl[peft]'") from error
    target = args.lora_target_modules
    if target == ["all-linear"]:
        target = "all-linear"  # PEFT's keyword is a string, not a module name
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target,
    )  # the task type is the model family's (T3DTrainer fills it in: CAUSAL_LM for block-causal decoders)


def as_plain(value: Any) -> Any:
    """``value`` with mappings/sequences turned into JSON-friendly dicts/lists (for records of the settings)."""
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
