"""The end-to-end demo: a tiny teacher, its rollouts, four distilled students and the paper-style table.

Everything runs on the library's public API: the teacher is trained from scratch with ``T3DTrainer``'s ``sft``
objective on ground-truth answers, rolled out at one token per step with :func:`t3d_trl.generate_trajectories`,
distilled into students with SFT, Naive TD, dParallel and T3D, and every model is evaluated with
:func:`t3d_trl.evaluation.evaluate_few_step` at block sizes 4 and 8 and 1, 2 and 4 tokens per step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast, PrinterCallback, Qwen3ForCausalLM, set_seed

from ..collator import DataCollatorForTrajectory
from ..evaluation import DecodingSetting, evaluate_few_step
from ..generation import DiffusionGenerationConfig, patch_model
from ..rollout import generate_trajectories
from ..testing import tiny_qwen3, tiny_t3d_config, tiny_tokenizer
from ..trainer import T3DConfig, T3DTrainer
from .tasks import CATEGORIES, TASKS, evaluation_prompts, task_alphabet, training_pairs

logger = logging.getLogger(__name__)

#: the objectives compared in the table, as ``T3DConfig`` overrides
METHODS: dict[str, dict[str, Any]] = {
    "SFT": {"loss_type": ["sft"]},
    "Naive TD": {"loss_type": ["td"]},
    "dParallel": {"loss_type": ["dparallel"]},
    "T3D": {"loss_type": ["ddo", "path"]},
}
SPECIAL_TOKENS = ["<pad>", "<eos>", "<mask>"]


@dataclass
class DemoConfig:
    """Settings of the demo (defaults finish in minutes on 2 CPU cores)."""

    output_dir: str = "t3d-demo"
    num_threads: int | None = 1  # tiny models: extra CPU threads mostly add OpenMP contention
    tasks: tuple[str, ...] = ("words", "sums", "perm")
    seeds: tuple[int, ...] = (0,)
    # teacher
    hidden_size: int = 96
    num_layers: int = 3
    teacher_steps: int = 1000
    teacher_batch_size: int = 64
    teacher_learning_rate: float = 5e-3
    train_block_sizes: tuple[int, ...] = (4, 8)
    # rollouts
    rollouts_per_task: int = 256
    rollout_temperature: float = 1.0
    rollout_block_size: int = 4
    # students
    methods: tuple[str, ...] = tuple(METHODS)
    #: further rows of the table: name -> T3DConfig overrides (e.g. T3D variants of the study)
    extra_methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    student_steps: int = 250
    student_batch_size: int = 64
    student_learning_rate: float = 5e-4
    # evaluation
    eval_prompts_per_task: int = 100
    eval_block_sizes: tuple[int, ...] = (4, 8)
    tokens_per_step: tuple[int, ...] = (1, 2, 4)

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        """The study behind ``docs/results.md`` (``t3d-trl demo --full``): two seeds, the paper's baselines and T3D
        variants testing the remedies of the calibration run (fake samples at temperature 1, rarer refreshes, a larger
        β, the official 10% random-token replacement, T3D mixed with Naive TD)."""
        values: dict[str, Any] = {"output_dir": "t3d-study", "seeds": (0, 1), "extra_methods": dict(STUDY_VARIANTS)}
        values.update(overrides)
        return cls(**values)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the tasks' alphabet, with pad, EOS and mask tokens."""
    return tiny_tokenizer(
        characters=task_alphabet(), special_tokens=SPECIAL_TOKENS, chat_template=None, padding_side="left"
    )


def build_teacher(tokenizer, config: DemoConfig, seed: int) -> Qwen3ForCausalLM:
    """A Qwen3-architecture model from a config, to be trained as a block diffusion LM."""
    return tiny_qwen3(
        seed,
        dtype=torch.float32,
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=2 * config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=config.hidden_size // 4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).train()


class CyclingBlockSizeCollator:
    """Trains on several block sizes: batch ``k`` uses ``block_sizes[k % len(block_sizes)]``."""

    def __init__(self, collator: DataCollatorForTrajectory, block_sizes) -> None:
        self.collators = [dataclasses.replace(collator, block_size=size) for size in block_sizes]
        self.calls = 0

    def __call__(self, features):
        collator = self.collators[self.calls % len(self.collators)]
        self.calls += 1
        return collator(features)


def _trainer_args(
    output_dir: str, steps: int, batch_size: int, learning_rate: float, seed: int, **overrides
) -> T3DConfig:
    values = dict(
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        max_prompt_length=None,
        max_completion_length=None,
    )
    values.update(overrides)
    return tiny_t3d_config(output_dir, **values)


def _train(model, tokenizer, dataset, args: T3DConfig, block_sizes) -> T3DTrainer:
    trainer = T3DTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # the logs go to log_history and the results, not to stdout
    trainer.data_collator = CyclingBlockSizeCollator(trainer.data_collator, block_sizes)
    trainer.train()
    return trainer


def ground_truth_dataset(tokenizer, tasks, num_rows: int, seed: int, block_size: int = 4) -> Dataset:
    """Ground-truth answers of ``tasks`` as trajectory rows, to train a teacher with the ``sft`` objective (their
    ``step_map`` is left to right; ``sft`` masks at random and ignores it)."""
    rows = training_pairs(tasks, num_rows, seed)
    prompt_ids = tokenizer([r["prompt"] for r in rows])["input_ids"]
    answer_ids = tokenizer([r["answer"] for r in rows])["input_ids"]
    records = []
    for row, prompt, answer in zip(rows, prompt_ids, answer_ids):
        completion = list(answer) + [tokenizer.eos_token_id]
        records.append(
            {
                "prompt": row["prompt"],
                "completion": row["answer"],
                "prompt_ids": list(prompt),
                "completion_ids": completion,
                "step_map": list(range(len(completion))),
                "block_size": block_size,
                "steps_per_block": block_size,
            }
        )
    return Dataset.from_list(records)


def rollout_prompts(config: DemoConfig, seed: int) -> Dataset:
    """Training prompts for the teacher's rollouts: every prompt of the small tasks, repeated; fresh ones otherwise."""
    rows = []
    for name in config.tasks:
        distinct = evaluation_prompts(name, config.rollouts_per_task, seed + 1000)
        rows += [
            {"prompt": distinct[i % len(distinct)]["prompt"], "task": name} for i in range(config.rollouts_per_task)
        ]
    return Dataset.from_list(rows)


def evaluation_dataset(config: DemoConfig) -> Dataset:
    rows = []
    for name in config.tasks:
        rows += evaluation_prompts(name, config.eval_prompts_per_task, seed=12345)
    return Dataset.from_list(rows)


def decoding_settings(config: DemoConfig) -> list[DecodingSetting]:
    return [
        DecodingSetting(block_size=b, steps_per_block=b // tps, name=f"B{b}-TokPS{tps}")
        for b in config.eval_block_sizes
        for tps in config.tokens_per_step
        if b % tps == 0
    ]


def evaluate(model, tokenizer, dataset: Dataset, config: DemoConfig, output_dir: str) -> dict[str, dict[str, float]]:
    """Accuracy (%) per task and setting, plus the few-step efficiency columns of the whole set."""
    patch_model(model, tokenizer)
    model.eval()
    results: dict[str, dict[str, float]] = {}
    settings = decoding_settings(config)
    for name in config.tasks:
        subset = dataset.filter(lambda row, task=name: row["task"] == task)
        for result in evaluate_few_step(
            model,
            tokenizer,
            subset,
            settings,
            batch_size=128,
            max_new_tokens=8,
            progress=False,
            output_dir=os.path.join(output_dir, name),
        ):
            results.setdefault(result.setting, {})[name] = 100.0 * result.accuracy
            results[result.setting].setdefault("_nfe", 0.0)
            results[result.setting]["_nfe"] += result.avg_nfe / len(config.tasks)
    return results


def _progress(seed: int, text: str) -> None:
    """One line per finished stage of the demo (its progress display)."""
    print(f"[seed {seed}] {text}", flush=True)


def run_seed(config: DemoConfig, seed: int, tokenizer) -> dict[str, Any]:
    """Teacher, rollouts, students and evaluation for one seed (a line printed as each stage finishes)."""
    root = Path(config.output_dir) / f"seed{seed}"
    set_seed(seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    teacher = build_teacher(tokenizer, config, seed)
    teacher_args = _trainer_args(
        str(root / "teacher"),
        config.teacher_steps,
        config.teacher_batch_size,
        config.teacher_learning_rate,
        seed,
        loss_type=["sft"],
        sync_ref_model=False,
        random_token_ratio=0.0,
        num_eos_tokens=1,
    )
    ground_truth = ground_truth_dataset(
        tokenizer, config.tasks, config.teacher_steps * 4, seed, block_size=config.rollout_block_size
    )
    _train(teacher, tokenizer, ground_truth, teacher_args, config.train_block_sizes)
    patch_model(
        teacher,
        tokenizer,
        block_size=config.rollout_block_size,
        steps_per_block=config.rollout_block_size,
        max_new_tokens=8,
    )
    teacher.eval()
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    timings["teacher"] = time.perf_counter() - start
    _progress(seed, f"teacher trained: {config.teacher_steps} steps ({timings['teacher']:.1f} s)")

    start = time.perf_counter()
    rollout_config = DiffusionGenerationConfig(
        block_size=config.rollout_block_size,
        steps_per_block=config.rollout_block_size,
        max_new_tokens=8,
        temperature=config.rollout_temperature,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    trajectories = generate_trajectories(
        teacher, tokenizer, rollout_prompts(config, seed), rollout_config, batch_size=128, seed=seed, progress=False
    )
    trajectories.save_to_disk(str(root / "trajectories"))
    timings["rollouts"] = time.perf_counter() - start
    _progress(seed, f"teacher rollouts: {len(trajectories)} prompts ({timings['rollouts']:.1f} s)")

    eval_set = evaluation_dataset(config)
    start = time.perf_counter()
    accuracy = {"Teacher": evaluate(teacher, tokenizer, eval_set, config, str(root / "eval" / "teacher"))}
    timings["evaluation"] = time.perf_counter() - start
    settings = len(decoding_settings(config))
    _progress(seed, f"teacher evaluated: {len(eval_set)} prompts x {settings} settings ({timings['evaluation']:.1f} s)")
    logs: dict[str, list[dict]] = {}
    for method, overrides in _all_methods(config).items():
        start = time.perf_counter()
        args = _trainer_args(
            str(root / method.replace(" ", "_")),
            config.student_steps,
            config.student_batch_size,
            config.student_learning_rate,
            seed,
            **overrides,
        )
        trainer = _train(copy.deepcopy(teacher), tokenizer, trajectories, args, config.train_block_sizes)
        logs[method] = trainer.state.log_history
        timings[method] = time.perf_counter() - start
        start = time.perf_counter()
        accuracy[method] = evaluate(trainer.model, tokenizer, eval_set, config, str(root / "eval" / method))
        seconds = time.perf_counter() - start
        timings["evaluation"] += seconds
        _progress(
            seed, f"{method}: trained {args.max_steps} steps ({timings[method]:.1f} s), evaluated ({seconds:.1f} s)"
        )
    result = {"seed": seed, "accuracy": accuracy, "timings": timings, "logs": logs}
    (root / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _all_methods(config: DemoConfig) -> dict[str, dict[str, Any]]:
    methods = {name: METHODS[name] for name in config.methods}
    methods.update(config.extra_methods)
    return methods


STUDY_VARIANTS: dict[str, dict[str, Any]] = {
    "T3D fake T=1": {"loss_type": ["ddo", "path"], "reference_temperature": 1.0},
    "T3D sync 50": {"loss_type": ["ddo", "path"], "ref_model_sync_steps": 50},
    "T3D beta=1": {"loss_type": ["ddo", "path"], "beta": 1.0},
    "T3D random tokens 0.1": {"loss_type": ["ddo", "path"], "random_token_ratio": 0.1},  # the official setting
    "T3D + TD": {"loss_type": ["ddo", "path", "td"], "loss_weights": [1.0, 0.2, 1.0]},
}


def ddo_identity_lines(logs: list[dict], sync_steps: int) -> list[str]:
    """The logged ``loss/real`` right after each reference refresh, against log 2."""
    lines = []
    for entry in logs:
        if "loss/real" in entry and (entry["step"] - 1) % sync_steps == 0:
            lines.append(f"step {entry['step']:>4}: loss/real = {entry['loss/real']:.6f} (log 2 = {math.log(2):.6f})")
    return lines


def _identity_text(lines: list[str], shown: int = 4) -> str:
    if len(lines) <= shown:
        return "\n".join(f"    {line}" for line in lines)
    worst = max(abs(float(line.split("= ")[1].split()[0]) - math.log(2)) for line in lines)
    return "\n".join(f"    {line}" for line in lines[:shown]) + (
        f"\n    ... {len(lines)} refreshes in all; largest |loss/real - log 2| = {worst:.1e}"
    )


def summarise(results: list[dict[str, Any]], config: DemoConfig) -> dict[str, Any]:
    """Mean and spread over seeds of every accuracy; per-TokPS averages and improvement over the teacher."""
    methods = list(results[0]["accuracy"])  # the teacher, then every student
    settings = list(results[0]["accuracy"]["Teacher"])
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        table[method] = {}
        for setting in settings:
            for task in config.tasks:
                values = [r["accuracy"][method][setting][task] for r in results]
                table[method][f"{setting}/{task}"] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                }
    averages: dict[str, dict[int, dict[str, float]]] = {}
    for method in methods:
        averages[method] = {}
        for tps in config.tokens_per_step:
            per_seed = [
                statistics.fmean(
                    r["accuracy"][method][s][t] for s in settings if s.endswith(f"TokPS{tps}") for t in config.tasks
                )
                for r in results
            ]
            averages[method][tps] = {
                "mean": statistics.fmean(per_seed),
                "std": statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0,
            }
    return {"table": table, "averages": averages, "settings": settings, "methods": methods}


def markdown_table(summary: dict[str, Any], config: DemoConfig) -> str:
    """The paper-style table: per tokens-per-step, methods × (block size, task), average and improvement."""
    lines = []
    header = (
        ["TokPS", "Method"]
        + [f"B={b} {task}" for b in config.eval_block_sizes for task in config.tasks]
        + ["Average", "Improvement (%)"]
    )
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for tps in config.tokens_per_step:
        teacher_average = summary["averages"]["Teacher"][tps]["mean"]
        for method in summary["methods"]:
            cells = [str(tps), method]
            for b in config.eval_block_sizes:
                for task in config.tasks:
                    entry = summary["table"][method].get(f"B{b}-TokPS{tps}/{task}")
                    cells.append("—" if entry is None else _cell(entry))
            average = summary["averages"][method][tps]
            cells.append(_cell(average))
            if method == "Teacher":
                cells.append("—")
            else:
                change = 100.0 * (average["mean"] - teacher_average) / max(teacher_average, 1e-9)
                cells.append(f"{change:+.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(entry: dict[str, float]) -> str:
    return f"{entry['mean']:.1f} ± {entry['std']:.1f}" if entry["std"] else f"{entry['mean']:.1f}"


def plot(summary: dict[str, Any], config: DemoConfig, path: str) -> None:
    """Average accuracy against tokens per step, one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for method in summary["methods"]:
        means = [summary["averages"][method][t]["mean"] for t in config.tokens_per_step]
        stds = [summary["averages"][method][t]["std"] for t in config.tokens_per_step]
        axes.errorbar(config.tokens_per_step, means, yerr=stds, marker="o", capsize=3, label=method)
    axes.set_xlabel("tokens per step")
    axes.set_ylabel("accuracy (%)")
    axes.set_xticks(list(config.tokens_per_step))
    axes.set_title("Few-step accuracy (average over tasks and block sizes)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the whole demo and write ``results.json``, ``results.md`` and ``accuracy_vs_tokens_per_step.png``."""
    config = config or DemoConfig()
    unknown = [name for name in config.tasks if name not in TASKS]
    if unknown:
        raise ValueError(f"Unknown demo task(s) {unknown}; choose from {sorted(TASKS)}.")
    unknown = [name for name in config.methods if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {list(METHODS)}.")
    os.makedirs(config.output_dir, exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    tokenizer = build_tokenizer()
    start = time.perf_counter()
    print(
        f"t3d-trl demo: seeds {list(config.seeds)}, tasks {list(config.tasks)}, students {list(_all_methods(config))} "
        f"-> {config.output_dir}",
        flush=True,
    )
    results = [run_seed(config, seed, tokenizer) for seed in config.seeds]
    summary = summarise(results, config)
    table = markdown_table(summary, config)
    sync_steps = T3DConfig.__dataclass_fields__["ref_model_sync_steps"].default
    identity = ddo_identity_lines(results[0]["logs"].get("T3D", []), sync_steps)
    elapsed = time.perf_counter() - start
    report = {
        "config": dataclasses.asdict(config),
        "summary": summary,
        "seeds": [{k: v for k, v in r.items() if k != "logs"} for r in results],
        "ddo_identity": identity,
        "elapsed_seconds": elapsed,
        "categories": {k: list(v) for k, v in CATEGORIES.items()},
    }
    Path(config.output_dir, "results.json").write_text(json.dumps(report, indent=2))
    text = (
        f"# t3d-trl demo\n\nAccuracy (%) of greedy few-step decoding; {len(config.seeds)} seed(s) "
        f"(mean ± std over seeds); {elapsed / 60:.1f} minutes.\n\n{table}\n\n"
        "DDO at each reference refresh (θ = θ_ref gives loss/real = log 2):\n\n" + _identity_text(identity) + "\n"
    )
    Path(config.output_dir, "results.md").write_text(text)
    plot(summary, config, os.path.join(config.output_dir, "accuracy_vs_tokens_per_step.png"))
    print()
    print(text)
    print(f"Written to {config.output_dir}: results.md, results.json, accuracy_vs_tokens_per_step.png")
    return report
