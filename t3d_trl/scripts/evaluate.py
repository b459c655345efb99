"""``t3d-trl eval``: few-step accuracy and speed of a model on evaluation sets, over decoding settings.

```bash
t3d-trl eval --config eval
python -m t3d_trl.scripts.evaluate --model_name_or_path SDAR-1.7B-Chat-T3D --eval_dataset math500 gsm8k
```

See ``docs/cli.md`` (``t3d-trl eval``) and ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..local_datasets import load_local_dataset
from .arguments import EvalArguments, ModelArguments
from .utils import as_plain, load_model, load_tokenizer, make_script_parser

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "PresetArguments",
    "apply_preset",
    "average_results",
    "check_eval_arguments",
    "decoding_settings",
    "load_eval_sets",
    "main",
    "make_parser",
    "paper_tables",
    "resolve_scorer",
]

HELP = (
    "Few-step evaluation: accuracy, tokens/s, latency, forwards and tokens per forward over decoding settings; "
    "writes JSON, markdown and a plot."
)
EXAMPLES = """examples:
  t3d-trl eval --config eval
  t3d-trl eval --model_name_or_path SDAR-1.7B-Chat-T3D --eval_dataset math500 gsm8k \\
      --block_sizes 4 8 --tokens_per_step 1 2 4 --output_dir eval/sdar-t3d
  t3d-trl eval --model_name_or_path SDAR-1.7B-Chat-T3D --eval_dataset mbpp humaneval --allow_code_execution
  t3d-trl eval --preset paper --model_name_or_path SDAR-4B-Chat --allow_code_execution --output_dir eval/original
  t3d-trl eval --preset paper --model_name_or_path SDAR-4B-Chat-T3D --allow_code_execution \\
      --compare_to eval/original/results.json --output_dir eval/t3d"""


@dataclass
class PresetArguments:
    """A ready-made protocol for `t3d-trl eval`, and the comparison its tables make."""

    preset: str | None = field(
        default=None,
        metadata={
            "help": "`paper`: the T3D paper's protocol: MATH500, GSM8K, MBPP and HumanEval with the official prompts "
            "and chat template (`--eval_data_files` in the official JSON or Hub layout, else the official JSON from "
            "the Hub), 2000 new tokens, temperature 1.0, block sizes 4 and 8 at 1, 2 and 4 tokens per step and the "
            "dynamic setting (B=4, S=4, threshold 0.9); writes `paper_tables.md`. Flags you set keep your value.",
            "choices": ["paper"],
        },
    )
    compare_to: str | None = field(
        default=None,
        metadata={
            "help": "The `results.json` of an earlier `t3d-trl eval` run of the original model (the same settings): "
            "`paper_tables.md` then shows the improvement over it and the change of full-step accuracy."
        },
    )
    paper_scores: bool = field(
        default=True,
        metadata={
            "help": "Also score with each scorer's paper twin (`paper_math`, `paper_code`) and report both accuracies "
            "and their disagreements (`--no_paper_scores`: the library scorer only; code runs once)."
        },
    )


#: ``--preset`` name -> the :class:`EvalArguments` values it sets (fields still at their defaults take them)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "eval_dataset": ["math500", "gsm8k", "mbpp", "humaneval"],
        "block_sizes": [4, 8],
        "tokens_per_step": [1, 2, 4],
        "max_new_tokens": 2000,
        "temperature": 1.0,
    }
}


def decoding_settings(args: EvalArguments) -> list[Any]:
    """One :class:`~t3d_trl.evaluation.DecodingSetting` per (block size, tokens per step) pair; pairs where the block
    size is not a multiple of the tokens per step are skipped (with a warning).

    Raises:
        ValueError: for a block size or tokens per step that is not a positive integer, or when every pair is
            skipped.
    """
    from ..evaluation import DecodingSetting

    for flag, values in (("--block_sizes", args.block_sizes), ("--tokens_per_step", args.tokens_per_step)):
        bad = [value for value in values if isinstance(value, bool) or not isinstance(value, int) or value < 1]
        if bad or not values:
            raise ValueError(f"{flag} takes positive integers, got {list(values)}.")
    settings, skipped = [], []
    for block_size in args.block_sizes:
        for tokens in args.tokens_per_step:
            if tokens < 1 or tokens > block_size or block_size % tokens:
                skipped.append(f"B={block_size}/TokPS={tokens}")
                continue
            settings.append(
                DecodingSetting(
                    block_size=block_size,
                    steps_per_block=block_size // tokens,
                    remasking=args.remasking,
                    confidence_threshold=args.confidence_threshold,
                )
            )
    if skipped:
        logger.warning(
            "Skipping decoding settings whose block size is not a multiple of the tokens per step: %s",
            ", ".join(skipped),
        )
    if not settings:
        raise ValueError(
            f"No decoding setting: every (block size, tokens per step) pair of {args.block_sizes} x "
            f"{args.tokens_per_step} was skipped. Tokens per step must divide the block size."
        )
    return settings


def resolve_scorer(name: str | None) -> str | None:
    """The ``--scorer`` name, which must be registered (built in, or by a module of ``--scorer_modules``).

    An import path (``module:function``) is refused: calling any importable function with model output
    (``os:system``...) is not something a flag should do; register the function with
    :func:`~t3d_trl.evaluation.register_scorer` in a module and name that module in ``--scorer_modules``.

    Raises:
        ValueError: For an import path or a name no scorer is registered under.
    """
    if name is None:
        return None
    from ..evaluation import available_scorers

    if ":" in name:
        module_name, _, attribute = name.partition(":")
        raise ValueError(
            f"--scorer {name!r} is an import path; only registered scorers are accepted ({', '.join(available_scorers())}"
            f"). Register it in a module (register_scorer({attribute!r}, {attribute})) and pass --scorer_modules "
            f"{module_name} --scorer {attribute}."
        )
    if name not in available_scorers():
        raise ValueError(
            f"--scorer {name!r} is not a registered scorer: {', '.join(available_scorers())} (a module of "
            "--scorer_modules can register more)."
        )
    return name


def apply_preset(eval_args: EvalArguments, preset: str | None) -> list[str]:
    """Set the values of a ``--preset`` on the fields of ``eval_args`` that are still at their defaults.

    Args:
        eval_args: The parsed evaluation arguments (changed in place).
        preset: A name of :data:`PRESETS`, or None.

    Returns:
        The flags that kept the user's value instead of the preset's (also logged).

    Raises:
        ValueError: For an unknown preset.
    """
    if preset is None:
        return []
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is not a preset; the presets are {', '.join(PRESETS)}.")
    defaults = EvalArguments()
    kept = []
    for name, value in PRESETS[preset].items():
        current = getattr(eval_args, name)
        if current == getattr(defaults, name):
            setattr(eval_args, name, value)
        elif current != value:
            kept.append(f"--{name} {current}")
    if kept:
        logger.warning("--preset %s: keeping your %s instead of the preset's value.", preset, ", ".join(kept))
    return kept


def _dataset_label(entry: str) -> str:
    path = Path(entry)
    label = path.stem if path.suffix else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "dataset"


def load_eval_sets(args: EvalArguments, preset: str | None = None) -> list[tuple[str, Any]]:
    """``(label, dataset)`` for every ``--eval_dataset`` entry.

    An existing local path is read as a dataset with ``prompt`` and ``reference`` columns (and optionally
    ``scorer`` and ``id``), used as it is. Any other entry is a registered name, loaded with
    :func:`~t3d_trl.evaluation.load_eval_dataset` from the Hub or, when ``--eval_data_files`` is given, from its file
    (one file per registered name, in order). With ``preset="paper"`` a name is one of the paper's sets, loaded with
    :func:`~t3d_trl.evaluation.protocol.load_paper_dataset` (official prompts; the official JSON or Hub layout).
    """
    from ..evaluation import load_eval_dataset
    from ..evaluation.protocol import load_paper_dataset

    local = [os.path.exists(entry) for entry in args.eval_dataset]
    files = list(args.eval_data_files or [])
    registered = len(local) - sum(local)
    if files and len(files) != registered:
        raise ValueError(
            f"--eval_data_files has {len(files)} entries but --eval_dataset names {registered} registered set(s); give "
            "one file per registered evaluation set, in order (local datasets need none)."
        )
    pending_files = iter(files)
    sets, labels = [], set()
    for entry, is_local in zip(args.eval_dataset, local):
        if is_local:
            dataset = load_local_dataset(entry, split=args.eval_split or "test")
            missing = [c for c in ("prompt", "reference") if c not in dataset.column_names]
            if missing:
                raise ValueError(
                    f"{entry}: a custom evaluation set needs `prompt` and `reference` columns; {missing} missing "
                    f"(columns: {dataset.column_names})."
                )
            if args.eval_limit is not None:
                dataset = dataset.select(range(min(args.eval_limit, len(dataset))))
            label = _dataset_label(entry)
        elif preset == "paper":
            dataset = load_paper_dataset(
                entry, path=next(pending_files, None), split=args.eval_split, limit=args.eval_limit
            )
            label = entry
        else:
            dataset = load_eval_dataset(
                entry,
                path=next(pending_files, None),
                split=args.eval_split,
                limit=args.eval_limit,
                prompt_template=args.prompt_template,
                as_chat=args.as_chat,
            )
            label = entry
        base, k = label, 1
        while label in labels:
            k += 1
            label = f"{base}_{k}"
        labels.add(label)
        sets.append((label, dataset))
    return sets


def average_results(results_by_set: dict[str, list[Any]]) -> list[Any]:
    """Per decoding setting, the results of every set combined as in the paper's "Average" column.

    Accuracy is the unweighted mean of the sets' accuracies (and so is the paper accuracy, when every set has one;
    disagreements are summed); the speed columns are pooled (tokens/s = all generated tokens / all generation time,
    latency = all time / all samples, NFE and length per sample, tokens per forward = all tokens / all forwards).
    """
    from ..evaluation import EvalResult

    per_setting: dict[str, list[Any]] = {}
    for results in results_by_set.values():
        for result in results:
            per_setting.setdefault(result.setting, []).append(result)
    averaged = []
    for setting, group in per_setting.items():
        first = group[0]
        samples = sum(r.num_samples for r in group)
        tokens = sum(r.total_generated_tokens for r in group)
        seconds = sum(r.total_time_s for r in group)
        forwards = sum(r.total_nfe for r in group)
        nfe_known = all(math.isfinite(r.avg_nfe) for r in group)
        paper = all(r.paper_accuracy is not None for r in group)
        averaged.append(
            EvalResult(
                setting=setting,
                block_size=first.block_size,
                steps_per_block=first.steps_per_block,
                remasking=first.remasking,
                threshold=first.threshold,
                accuracy=sum(r.accuracy for r in group) / len(group),
                num_samples=samples,
                num_correct=sum(r.num_correct for r in group),
                tokens_per_second=tokens / seconds if seconds > 0 else math.nan,
                latency_per_sample=seconds / samples,
                avg_nfe=forwards / samples if nfe_known else math.nan,
                avg_gen_length=tokens / samples,
                tokens_per_forward=tokens / forwards if nfe_known and forwards else math.nan,
                dataset="average",
                total_time_s=seconds,
                total_generated_tokens=tokens,
                total_nfe=forwards,
                paper_accuracy=sum(r.paper_accuracy for r in group) / len(group) if paper else None,
                paper_num_correct=sum(r.paper_num_correct for r in group) if paper else None,
                num_disagreements=sum(r.num_disagreements for r in group) if paper else None,
            )
        )
    return averaged


def check_eval_arguments(args: EvalArguments) -> None:
    """Refuse the settings of ``t3d-trl eval`` that cannot work, before anything is loaded (the decoding settings
    are checked by :func:`decoding_settings`).

    Raises:
        ValueError: naming the flag, the value and what is accepted.
    """
    from ..evaluation.runner import _check_sizes, check_output_dir

    try:
        _check_sizes(args.batch_size, args.max_new_tokens)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    check_output_dir(args.output_dir, "--output_dir")
    if args.eval_limit is not None and (isinstance(args.eval_limit, bool) or args.eval_limit < 1):
        raise ValueError(f"--eval_limit must be a positive integer (problems per set), got {args.eval_limit!r}.")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 decodes greedily), got {args.temperature!r}.")
    if not math.isfinite(args.code_timeout) or args.code_timeout <= 0:
        raise ValueError(f"--code_timeout must be a positive number of seconds, got {args.code_timeout!r}.")
    if not args.eval_dataset:
        raise ValueError("--eval_dataset names no evaluation set; give e.g. --eval_dataset gsm8k.")


def paper_tables(
    results: list[Any], model: str, original: tuple[str, list[Any]] | None = None, score: str = "paper"
) -> str:
    """The T3D paper's three tables (few-step accuracy, full-step preservation, dynamic decoding) of one run, beside
    the original model's results when given, as Markdown.

    Args:
        results: The run's :class:`~t3d_trl.evaluation.EvalResult` objects (every set and setting).
        model: The run's model, the label of its rows.
        original: ``(label, results)`` of the original model, evaluated with the same settings.
        score: ``"paper"`` (the paper's scoring) or ``"library"``.

    Returns:
        The three tables.
    """
    from ..evaluation import dynamic_table, few_step_table, preservation_table

    base = None
    models = {model: results}
    if original is not None:
        base = original[0] if original[0] != model else f"{original[0]} (original)"
        models = {base: original[1], model: results}
    scorer = "the paper's scoring (paper_math, paper_code)" if score == "paper" else "t3d-trl's scorers (math, code)"
    return "\n".join(
        [
            f"## Accuracy under {scorer}\n",
            few_step_table(models, base, score=score, title="Few-step accuracy (static decoding)"),
            preservation_table(models, base, score=score, title="Full-step decoding (one token per step)"),
            dynamic_table(models, base, score=score, title="Dynamic decoding"),
        ]
    )


def _read_compared_run(path: str) -> tuple[str, list[Any]]:
    """``(label, results)`` of an earlier ``t3d-trl eval`` run's ``results.json``."""
    from ..evaluation import EvalResult

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"--compare_to {path}: cannot read the results.json of a `t3d-trl eval` run ({error})."
        ) from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ValueError(
            f"--compare_to {path} is not the top-level results.json of a `t3d-trl eval` run (no `results`)."
        )
    label = str(report.get("model_name_or_path") or "original")
    return label, [EvalResult.from_dict(item) for item in report["results"]]


def main(
    model_args: ModelArguments, eval_args: EvalArguments, preset_args: PresetArguments | None = None
) -> dict[str, Any]:
    """Evaluate a model's few-step accuracy and speed on evaluation sets, over decoding settings.

    Writes, in ``output_dir``: one folder per evaluation set with ``evaluate_few_step``'s ``results.json``,
    ``results.md``, ``accuracy_vs_tokens_per_step.png`` and ``samples_<setting>.jsonl``; and at the top level
    ``results.json`` (the model, its decoding configuration, the settings, every result and, with several sets, the
    average), ``results.md`` (a table per set, and the average) and ``accuracy_vs_tokens_per_step.png`` (the set's,
    or the average's). With ``--preset paper`` or ``--compare_to``, also ``paper_tables.md``: the paper's three
    tables under its scoring and under t3d-trl's.

    Args:
        model_args: the model to evaluate.
        eval_args: the evaluation sets, the decoding settings and the outputs.
        preset_args: ``--preset``, ``--compare_to`` and ``--paper_scores``.

    Returns:
        The report written to ``results.json``.
    """
    import torch
    from transformers import set_seed

    from ..devices import check_device
    from ..evaluation import evaluate_few_step, to_markdown
    from ..evaluation.protocol import paper_settings
    from ..evaluation.report import write_plot

    preset_args = preset_args or PresetArguments()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "`t3d-trl eval` runs in one process on one device (every process would evaluate everything and write the "
            "same files): run it without `accelerate launch`, and pick the device with --device."
        )
    apply_preset(eval_args, preset_args.preset)
    check_eval_arguments(eval_args)
    check_device(eval_args.device or "cpu", "--device")  # before any data or model is loaded
    original = _read_compared_run(preset_args.compare_to) if preset_args.compare_to else None
    set_seed(eval_args.seed)
    for module in eval_args.scorer_modules or []:
        try:
            importlib.import_module(module)  # registers its scorers
        except ImportError as error:
            raise ValueError(f"--scorer_modules {module!r} cannot be imported ({error}).") from None
    settings = decoding_settings(eval_args)
    if preset_args.preset == "paper":
        settings += [s for s in paper_settings() if s.confidence_threshold is not None]  # the dynamic setting
    scorer = resolve_scorer(eval_args.scorer)
    eval_sets = load_eval_sets(eval_args, preset_args.preset)
    device = eval_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_args, eval_args.trust_remote_code)
    model = load_model(model_args, eval_args.model_family, tokenizer, device, eval_args.trust_remote_code)

    output_dir = Path(eval_args.output_dir)
    results_by_set: dict[str, list[Any]] = {}
    for label, dataset in eval_sets:
        results_by_set[label] = evaluate_few_step(
            model,
            tokenizer,
            dataset,
            settings,
            batch_size=eval_args.batch_size,
            max_new_tokens=eval_args.max_new_tokens,
            output_dir=output_dir / label,
            allow_code_execution=eval_args.allow_code_execution,
            scorer=scorer,
            code_timeout=eval_args.code_timeout,
            dataset_name=label,
            warmup=eval_args.warmup,
            generate_kwargs={"temperature": eval_args.temperature},
            paper_scores=preset_args.paper_scores,
        )
    average = average_results(results_by_set) if len(results_by_set) > 1 else []
    all_results = [result for results in results_by_set.values() for result in results]
    report = {
        "model_name_or_path": model_args.model_name_or_path,
        "generation_config": as_plain(model.generation_config.to_dict()),
        "arguments": as_plain(dataclasses.asdict(eval_args)),
        "preset": as_plain(dataclasses.asdict(preset_args)),
        "settings": [as_plain(dataclasses.asdict(s)) for s in settings],
        "results": [r.to_dict() for r in all_results],
        "average": [r.to_dict() for r in average],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    parts = [f"# Few-step evaluation of `{model_args.model_name_or_path}`\n"]
    parts += [to_markdown(results, title=label) for label, results in results_by_set.items()]
    if average:
        parts.append(to_markdown(average, title=f"Average over {', '.join(results_by_set)}"))
    markdown = "\n".join(parts)
    (output_dir / "results.md").write_text(markdown, encoding="utf-8")
    plotted = average or next(iter(results_by_set.values()))
    title = "average" if average else next(iter(results_by_set))
    write_plot(plotted, output_dir / "accuracy_vs_tokens_per_step.png", title)
    print(markdown)
    if preset_args.preset == "paper" or original is not None:
        model_label = str(model_args.model_name_or_path)
        scores = ["paper", "library"] if preset_args.paper_scores else ["library"]
        tables = "\n".join(paper_tables(all_results, model_label, original, score) for score in scores)
        (output_dir / "paper_tables.md").write_text(f"# `{model_label}` in the layout of the T3D paper\n\n{tables}")
        print(tables)
    print(f"Results written to {output_dir}")
    return report


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> Any:
    """The parser of ``t3d-trl eval``: model, evaluation and preset flags (see :func:`make_script_parser`)."""
    return make_script_parser(
        "eval", (ModelArguments, EvalArguments, PresetArguments), HELP, EXAMPLES, subparsers, prog
    )


if __name__ == "__main__":  # the same program as `t3d-trl eval` (one-line errors, --debug, --verbose)
    import sys

    from ..cli import main as cli_main

    sys.exit(cli_main(["eval", *sys.argv[1:]]))
