"""What each ``t3d-trl`` subcommand does, as functions of its parsed arguments (also usable from Python)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from .arguments import (
    EvalArguments,
    GenerationArguments,
    LoraArguments,
    ModelArguments,
    RolloutArguments,
    TrainDatasetArguments,
)
from .utils import (
    as_plain,
    format_prompts,
    load_dataset_from_args,
    load_local_dataset,
    load_model,
    load_tokenizer,
    model_init_kwargs,
    peft_config_from_args,
    train_and_save,
)

logger = logging.getLogger(__name__)

__all__ = [
    "average_results",
    "decoding_settings",
    "load_eval_sets",
    "resolve_scorer",
    "rollout",
    "run_demo_command",
    "evaluate",
    "train",
]


# --------------------------------------------------------------------------------------------------------------------
# rollout
# --------------------------------------------------------------------------------------------------------------------


def rollout(model_args: ModelArguments, rollout_args: RolloutArguments, generation_args: GenerationArguments) -> Any:
    """``t3d-trl rollout``: roll the teacher out over the prompts and save the trajectories.

    Under ``accelerate launch`` the batches are shared out between the processes (``generate_trajectories``). The
    trajectories land in ``<output_dir>/dataset`` (``save_to_disk`` format); with ``--push_to_hub`` they are pushed
    with a dataset card.

    Returns:
        The trajectory dataset.
    """
    from ..rollout import _default_state, generate_trajectories, push_trajectories_to_hub

    if rollout_args.push_to_hub and not rollout_args.hub_dataset_id:
        raise ValueError("--push_to_hub needs --hub_dataset_id (the dataset repository, `user/name`).")
    state = _default_state()  # sees a multi-process CPU launch too
    tokenizer = load_tokenizer(model_args)
    with state.main_process_first():  # one process writes the datasets cache, the others read it
        dataset = load_dataset_from_args(rollout_args)
        dataset = format_prompts(
            dataset, rollout_args.prompt_column, rollout_args.prompt_template, rollout_args.as_chat
        )
    model = load_model(model_args, rollout_args.model_family, tokenizer, device=state.device)
    trajectories = generate_trajectories(
        model,
        tokenizer,
        dataset,
        generation_args.to_dict(),
        prompt_column=rollout_args.prompt_column,
        batch_size=rollout_args.batch_size,
        max_prompt_length=rollout_args.max_prompt_length,
        output_dir=rollout_args.output_dir,
        seed=rollout_args.seed,
        accelerator=state,
    )
    if state.is_main_process:
        tokens = sum(len(ids) for ids in trajectories["completion_ids"])
        forwards = sum(trajectories["nfe"])
        print(
            f"Rolled out {len(trajectories)} prompts ({tokens} completion tokens, {forwards} teacher forwards); "
            f"trajectories saved to {os.path.join(rollout_args.output_dir, 'dataset')}"
        )
        if rollout_args.push_to_hub:
            push_trajectories_to_hub(trajectories, rollout_args.hub_dataset_id, private=rollout_args.hub_private_repo)
            print(f"Pushed to https://huggingface.co/datasets/{rollout_args.hub_dataset_id}")
    state.wait_for_everyone()
    return trajectories


# --------------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------------


def train(
    script_args: TrainDatasetArguments,
    model_args: ModelArguments,
    lora_args: LoraArguments,
    training_args: Any,
) -> Any:
    """``t3d-trl train``: distil the model on a trajectory dataset with :class:`~t3d_trl.T3DTrainer`, save it to
    ``training_args.output_dir`` (weights, tokenizer, few-step ``generation_config.json``, ``custom_generate/``,
    model card) and push it with ``--push_to_hub``.

    Returns:
        The trainer.
    """
    from ..trainer import T3DTrainer

    if model_args.model_name_or_path is None:
        raise ValueError("No model: pass --model_name_or_path (the teacher, which initialises the student).")
    init_kwargs = model_init_kwargs(model_args)
    init_kwargs.update(training_args.model_init_kwargs or {})  # explicit --model_init_kwargs win
    training_args.model_init_kwargs = init_kwargs
    tokenizer = load_tokenizer(model_args)
    with training_args.main_process_first(desc="loading the trajectories"):
        train_dataset = load_dataset_from_args(script_args)
        eval_dataset = None
        if script_args.eval_split is not None:
            eval_args = dataclasses.replace(script_args, dataset_split=script_args.eval_split)
            eval_dataset = load_dataset_from_args(eval_args)
    trainer = T3DTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config_from_args(lora_args),
    )
    train_and_save(trainer, dataset_name=script_args.dataset_name)
    return trainer


# --------------------------------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------------------------------


def decoding_settings(args: EvalArguments) -> list[Any]:
    """One :class:`~t3d_trl.evaluation.DecodingSetting` per (block size, tokens per step) pair; pairs where the block
    size is not a multiple of the tokens per step are skipped."""
    from ..evaluation import DecodingSetting

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
        logger.warning("Skipping decoding settings whose block size is not a multiple of the tokens per step: %s",
                       ", ".join(skipped))
    if not settings:
        raise ValueError(
            f"No decoding setting: every (block size, tokens per step) pair of {args.block_sizes} x "
            f"{args.tokens_per_step} was skipped. Tokens per step must divide the block size."
        )
    return settings


def resolve_scorer(name: str | None) -> str | None:
    """A scorer name for ``evaluate_few_step``; ``module:function`` is imported and registered under that name."""
    if name is None or ":" not in name:
        return name
    from ..evaluation import available_scorers, register_scorer

    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--scorer {name!r}: cannot import {attribute!r} from {module_name!r} ({error}).") from error
    if not callable(function):
        raise ValueError(f"--scorer {name!r} is not callable.")
    if name not in available_scorers():
        register_scorer(name, function)
    return name


def _dataset_label(entry: str) -> str:
    path = Path(entry)
    label = path.stem if path.suffix else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "dataset"


def load_eval_sets(args: EvalArguments) -> list[tuple[str, Any]]:
    """``(label, dataset)`` for every ``--eval_dataset`` entry.

    An existing local path is read as a dataset with ``prompt`` and ``reference`` columns (and optionally
    ``scorer`` and ``id``), used as it is. Any other entry is a registered name, loaded with
    :func:`~t3d_trl.evaluation.load_eval_dataset` from the Hub or, when ``--eval_data_files`` is given, from its file
    (one file per registered name, in order).
    """
    from ..evaluation import load_eval_dataset

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

    Accuracy is the unweighted mean of the sets' accuracies; the speed columns are pooled (tokens/s = all generated
    tokens / all generation time, latency = all time / all samples, NFE and length per sample, tokens per forward =
    all tokens / all forwards).
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
            )
        )
    return averaged


def evaluate(model_args: ModelArguments, eval_args: EvalArguments) -> dict[str, Any]:
    """``t3d-trl eval``: few-step accuracy and speed of a model on evaluation sets, over decoding settings.

    Writes, in ``output_dir``: one folder per evaluation set with ``evaluate_few_step``'s ``results.json``,
    ``results.md``, ``accuracy_vs_tokens_per_step.png`` and ``samples_<setting>.jsonl``; and at the top level
    ``results.json`` (the model, its decoding configuration, the settings, every result and, with several sets, the
    average), ``results.md`` (a table per set, and the average) and ``accuracy_vs_tokens_per_step.png`` (the set's,
    or the average's).

    Returns:
        The report written to ``results.json``.
    """
    import torch
    from transformers import set_seed

    from ..evaluation import evaluate_few_step, plot_accuracy_vs_tokens_per_step, to_markdown

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "`t3d-trl eval` runs in one process on one device (every process would evaluate everything and write the "
            "same files): run it without `accelerate launch`, and pick the device with --device."
        )
    set_seed(eval_args.seed)
    for module in eval_args.scorer_modules or []:
        importlib.import_module(module)  # registers its scorers
    settings = decoding_settings(eval_args)
    scorer = resolve_scorer(eval_args.scorer)
    eval_sets = load_eval_sets(eval_args)
    device = eval_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, eval_args.model_family, tokenizer, device=device)

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
        )
    average = average_results(results_by_set) if len(results_by_set) > 1 else []
    all_results = [result for results in results_by_set.values() for result in results]
    report = {
        "model_name_or_path": model_args.model_name_or_path,
        "generation_config": as_plain(model.generation_config.to_dict()),
        "arguments": as_plain(dataclasses.asdict(eval_args)),
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
    plot_accuracy_vs_tokens_per_step(plotted, output_dir / "accuracy_vs_tokens_per_step.png", title)
    print(markdown)
    print(f"Results written to {output_dir}")
    return report


# --------------------------------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------------------------------


def run_demo_command(demo_args: Any) -> Any:
    """``t3d-trl demo``: :func:`t3d_trl.demo.run_demo` with the resolved :class:`~t3d_trl.demo.DemoConfig`
    (``--print_config`` prints it and returns without running)."""
    from .demo_arguments import demo_config_from_args

    config = demo_config_from_args(demo_args)
    if demo_args.print_config:
        print(json.dumps(as_plain(dataclasses.asdict(config)), indent=2))
        return config
    from ..demo import run_demo

    return run_demo(config)
