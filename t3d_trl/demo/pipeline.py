"""The end-to-end demo: a tiny teacher, its rollouts, distilled students and the paper-style table.

Everything runs on the library's public API: the teacher is trained from scratch with ``T3DTrainer``'s ``sft``
objective on the tasks' reference answers, rolled out at one token per step with
:func:`t3d_trl.generate_trajectories` (temperature 0.1, the official rollout temperature), distilled into students
(SFT on the reference answers, ReDi on the model's own outputs, Naive TD, dParallel and T3D; the full study adds the
paper's recipe and the remedies of ``docs/results.md``), and every model is evaluated with
:func:`t3d_trl.evaluation.evaluate_few_step` at block sizes 4 and 8 and 1, 2 and 4 tokens per step.

A student is a :class:`~t3d_trl.T3DConfig` override mapping; its optional ``"data"`` key says what it trains on (see
:data:`DATA_SOURCES`), its optional ``"rounds"`` key how many ReDi rounds it runs (see :data:`METHODS`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast, PrinterCallback, Qwen3ForCausalLM, set_seed

from ..collator import DataCollatorForTrajectory
from ..evaluation import DecodingSetting, evaluate_few_step, get_scorer
from ..generation import DiffusionGenerationConfig, patch_model
from ..rollout import generate_trajectories
from ..testing import tiny_qwen3, tiny_t3d_config, tiny_tokenizer
from ..trainer import T3DConfig, T3DTrainer
from .tasks import CATEGORIES, TASKS, evaluation_prompts, task_alphabet, training_pairs

logger = logging.getLogger(__name__)

#: what a student can train on (the ``"data"`` key of a method; ``"rollouts"`` when absent)
DATA_SOURCES: dict[str, str] = {
    "rollouts": "every teacher rollout",
    "valid_rollouts": "the teacher rollouts its task's scorer accepts",
    "answers": "the tasks' reference answers (plain prompt/completion rows, as the paper's SFT)",
}

#: the students of the table, as ``T3DConfig`` overrides, plus the optional keys ``"data"`` (see
#: :data:`DATA_SOURCES`) and ``"rounds"`` (ReDi's rounds, see :func:`t3d_trl.recipes.redi`: after each round but the
#: last, the student rolls itself out on the teacher's rollout prompts, with the teacher's rollout settings, and the
#: next round trains on those rollouts). SFT trains on the reference answers (the paper's "SD ✗" row); ReDi on the
#: model's own outputs, ignoring the trajectory (random masks), for two rounds
METHODS: dict[str, dict[str, Any]] = {
    "SFT": {"data": "answers", "loss_type": ["sft"]},
    "ReDi": {"rounds": 2, "loss_type": ["sft"], "state_sampling": "random", "sync_ref_model": False},
    "Naive TD": {"loss_type": ["td"]},
    "dParallel": {"loss_type": ["dparallel"]},
    "T3D": {"loss_type": ["ddo", "path"]},
}

#: further students of the full study: the paper's recipe against the library's defaults, and the remedies tested
#: for T3D ≈ Naive TD: fake tokens sampled instead of the argmax (which mostly equals the teacher's token); a reference
#: that is never refreshed, and a larger β, so that DDO's margins leave the sigmoid's linear region; uniformly drawn
#: mask ratios; T3D mixed with TD
STUDY_VARIANTS: dict[str, dict[str, Any]] = {
    # the official trainer's state distribution (examples/configs/sdar_t3d_paper.yaml); the demo's prompts end on a
    # block boundary, so "response" alignment is the absolute grid here
    "T3D (paper recipe)": {
        "loss_type": ["ddo", "path"],
        "random_token_ratio": 0.1,
        "state_order": "earliest",
        "block_alignment": "response",
    },
    "T3D (fake T=1)": {"loss_type": ["ddo", "path"], "reference_temperature": 1.0},
    "T3D (fixed reference)": {"loss_type": ["ddo", "path"], "sync_ref_model": False},
    "T3D (β=1)": {"loss_type": ["ddo", "path"], "beta": 1.0},
    "Naive TD (uniform r)": {"loss_type": ["td"], "mask_ratio_power": 0.0},
    "T3D (uniform r)": {"loss_type": ["ddo", "path"], "mask_ratio_power": 0.0},
    "T3D + TD": {"loss_type": ["ddo", "path", "td"], "loss_weights": [1.0, 0.2, 1.0]},
}
SPECIAL_TOKENS = ["<pad>", "<eos>", "<mask>"]
#: the training-log metrics the report averages over the last quarter of each student's steps
LOG_METRICS = (
    "token_accuracy",
    "loss/real",
    "loss/fake",
    "margins/real",
    "margins/fake",
    "fake_agreement",
)


@dataclass
class DemoConfig:
    """Settings of the demo (the defaults finish in under 10 minutes on 2 CPU cores).

    The quick demo trains one seed of a 3-layer, 96-wide teacher for 1,500 steps on three tasks and the five students
    of :data:`METHODS`; the full study (:meth:`full`) adds the ``perm5`` task, which takes the teacher 5,000 steps,
    three seeds and the variants of :data:`STUDY_VARIANTS`. A
    teacher or a student trained before in the same ``output_dir`` with the same settings is reused, so seeds can run in
    separate processes (``--seeds 1``), a last run over all of them writes the table, and a new student trains alone.
    """

    output_dir: str = "t3d-demo"
    num_threads: int | None = 1  # tiny models: extra CPU threads mostly add OpenMP contention
    #: a one-block control task and two whose answers span three blocks of 4 (two of 8); the full study adds perm5
    tasks: tuple[str, ...] = ("words", "wordplay", "walk")
    seeds: tuple[int, ...] = (0,)
    # teacher
    hidden_size: int = 96
    num_layers: int = 3
    teacher_steps: int = 1500
    teacher_batch_size: int = 64
    teacher_learning_rate: float = 5e-3
    train_block_sizes: tuple[int, ...] = (4, 8)
    #: the teacher's accuracy (%) at one token per step expected on every task before students are trained; below
    #: it the report says so
    teacher_accuracy_target: float = 90.0
    # rollouts
    rollouts_per_task: int = 256
    rollout_temperature: float = 0.1
    rollout_block_size: int = 4
    #: generated tokens (rollouts and evaluation); ``None``: the tasks' longest answer with its EOS, in whole blocks
    #: of every block size
    max_new_tokens: int | None = None
    # students
    methods: tuple[str, ...] = tuple(METHODS)
    #: further rows of the table: name -> T3DConfig overrides, with an optional ``"data"`` key (see DATA_SOURCES)
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
        """The study behind ``docs/results.md`` (``t3d-trl demo --full``): four tasks, a teacher trained 5,000 steps,
        three seeds, the five students, T3D with the paper's recipe, and the remedies of :data:`STUDY_VARIANTS`."""
        values: dict[str, Any] = {
            "output_dir": "t3d-study",
            "tasks": ("words", "wordplay", "walk", "perm5"),
            "teacher_steps": 5000,
            "seeds": (0, 1, 2),
            "extra_methods": copy.deepcopy(STUDY_VARIANTS),
        }
        values.update(overrides)
        return cls(**values)

    def generated_tokens(self) -> int:
        """``max_new_tokens``, or the tasks' longest answer and its EOS rounded up to whole blocks of every size."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        longest = 4 * max(TASKS[name].blocks for name in self.tasks)
        unit = math.lcm(self.rollout_block_size, *self.eval_block_sizes)
        return unit * math.ceil(longest / unit)


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


def answer_rows(task_names, num_rows: int, seed: int) -> list[dict[str, str]]:
    """Reference answers as plain ``{"prompt", "completion"}`` rows (answers uniform over the valid ones): what the
    teacher learns the tasks from, and the paper's SFT baseline trains on (the trainer appends EOS)."""
    return [{"prompt": r["prompt"], "completion": r["answer"]} for r in training_pairs(task_names, num_rows, seed)]


def rollout_prompts(config: DemoConfig, seed: int) -> Dataset:
    """The teacher's rollout prompts with their task and reference: every prompt of the small tasks, repeated;
    fresh ones otherwise."""
    rows = []
    for name in config.tasks:
        distinct = evaluation_prompts(name, config.rollouts_per_task, seed + 1000)
        rows += [
            {"prompt": row["prompt"], "task": name, "reference": row["reference"]}
            for row in (distinct[i % len(distinct)] for i in range(config.rollouts_per_task))
        ]
    return Dataset.from_list(rows)


def valid_rollouts(trajectories: Dataset) -> tuple[Dataset, dict[str, float]]:
    """The rollouts whose completion its task's scorer accepts, and the valid share (%) per task."""
    verdicts = [
        get_scorer(TASKS[task].scorer)(completion, reference)
        for task, completion, reference in zip(
            trajectories["task"], trajectories["completion"], trajectories["reference"]
        )
    ]
    share: dict[str, float] = {}
    for name in dict.fromkeys(trajectories["task"]):
        mine = [ok for ok, task in zip(verdicts, trajectories["task"]) if task == name]
        share[name] = 100.0 * sum(mine) / len(mine)
    return trajectories.select([i for i, ok in enumerate(verdicts) if ok]), share


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
            max_new_tokens=config.generated_tokens(),
            progress=False,
            output_dir=os.path.join(output_dir, name),
        ):
            results.setdefault(result.setting, {})[name] = 100.0 * result.accuracy
            results[result.setting].setdefault("_nfe", 0.0)
            results[result.setting]["_nfe"] += result.avg_nfe / len(config.tasks)
    return results


def split_method(name: str, spec: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """``(data source, rounds, T3DConfig overrides)`` of a method; an unknown data source, or ``rounds`` that is not
    a positive integer, is refused."""
    overrides = dict(spec)
    data = overrides.pop("data", "rollouts")
    rounds = overrides.pop("rounds", 1)
    if data not in DATA_SOURCES:
        raise ValueError(f"Method {name!r}: unknown data {data!r}; choose from {sorted(DATA_SOURCES)}.")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"Method {name!r}: `rounds` must be a positive integer, got {rounds!r}.")
    return data, rounds, overrides


def peak_memory_mb() -> float:
    """The process's peak resident memory so far, in MB (``getrusage``'s ``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _progress(seed: int, text: str) -> None:
    """One line per finished stage of the demo (its progress display)."""
    print(f"[seed {seed}] {text}", flush=True)


#: the settings a trained teacher depends on (with its seed)
TEACHER_FIELDS = (
    "tasks",
    "hidden_size",
    "num_layers",
    "teacher_steps",
    "teacher_batch_size",
    "teacher_learning_rate",
    "train_block_sizes",
)
TEACHER_RECORD = "demo_teacher.json"


def train_teacher(config: DemoConfig, seed: int, tokenizer, directory: Path) -> tuple[Qwen3ForCausalLM, dict]:
    """The seed's teacher trained from scratch on reference answers with the ``sft`` objective, saved in
    ``directory``; a teacher saved there with the same :data:`TEACHER_FIELDS` and seed is loaded instead.

    Returns:
        ``(teacher, record)``: the record holds the training's ``seconds``, the process's ``peak_memory_mb`` when it
        ended, and whether the teacher was ``reused``.
    """
    key = {"seed": seed, **json.loads(json.dumps({name: getattr(config, name) for name in TEACHER_FIELDS}))}
    record = directory / TEACHER_RECORD
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("settings") == key:
            teacher = Qwen3ForCausalLM.from_pretrained(directory, dtype=torch.float32)
            return teacher, {**saved, "reused": True}
    start = time.perf_counter()
    set_seed(seed)
    teacher = build_teacher(tokenizer, config, seed)
    teacher_args = _trainer_args(
        str(directory),
        config.teacher_steps,
        config.teacher_batch_size,
        config.teacher_learning_rate,
        seed,
        loss_type=["sft"],
        sync_ref_model=False,
        num_eos_tokens=1,
    )
    answers = answer_rows(config.tasks, config.teacher_steps * config.teacher_batch_size, seed)
    _train(teacher, tokenizer, answers, teacher_args, config.train_block_sizes)
    teacher.eval()
    seconds = time.perf_counter() - start
    teacher.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    saved = {"settings": key, "seconds": seconds, "peak_memory_mb": peak_memory_mb()}
    record.write_text(json.dumps(saved, indent=2))
    return teacher, {**saved, "reused": False}


def _settings_key(config: DemoConfig) -> dict[str, Any]:
    """The settings every student of a seed depends on: all but where results go, which seeds run, the threads and
    which students are trained."""
    values = dataclasses.asdict(config)
    for name in ("output_dir", "seeds", "num_threads", "methods", "extra_methods"):
        values.pop(name)
    return json.loads(json.dumps(values))  # tuples as lists, as they come back from JSON


def _student_record(root: Path, method: str) -> Path:
    return root / "students" / (re.sub(r"[^A-Za-z0-9]+", "_", method).strip("_") + ".json")


def _reused_student(root: Path, method: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved accuracy, logs and time of a student trained with the same settings (``key``), if any."""
    record = _student_record(root, method)
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return saved
    return None


def run_seed(config: DemoConfig, seed: int, tokenizer) -> dict[str, Any]:
    """Teacher, rollouts, students and evaluation for one seed (a line printed as each stage finishes).

    The teacher, and every student, trained before in the same ``output_dir`` with the same settings is reused (its
    saved weights; the student's saved accuracy, logs and time), so only what changed is trained again.
    """
    root = Path(config.output_dir) / f"seed{seed}"
    set_seed(seed)
    timings: dict[str, float] = {}
    max_new_tokens = config.generated_tokens()
    teacher, teacher_record = train_teacher(config, seed, tokenizer, root / "teacher")
    timings["teacher"] = teacher_record["seconds"]
    peaks = [teacher_record.get("peak_memory_mb", 0.0)]  # of the processes that trained what is reused
    patch_model(
        teacher,
        tokenizer,
        block_size=config.rollout_block_size,
        steps_per_block=config.rollout_block_size,
        max_new_tokens=max_new_tokens,
    )
    teacher.eval()
    teacher.save_pretrained(root / "teacher")
    how = "reused (same teacher settings)" if teacher_record["reused"] else "trained"
    _progress(seed, f"teacher {how}: {config.teacher_steps} steps ({timings['teacher']:.1f} s)")
    set_seed(seed)  # the same random state after the teacher, trained or reused

    eval_set = evaluation_dataset(config)
    start = time.perf_counter()
    accuracy = {"Teacher": evaluate(teacher, tokenizer, eval_set, config, str(root / "eval" / "teacher"))}
    timings["evaluation"] = time.perf_counter() - start
    full_step = accuracy["Teacher"].get(f"B{config.rollout_block_size}-TokPS1", {})
    shown = ", ".join(f"{task} {full_step[task]:.0f}%" for task in config.tasks if task in full_step)
    _progress(seed, f"teacher evaluated: {shown} at one token per step ({timings['evaluation']:.1f} s)")

    start = time.perf_counter()
    rollout_config = DiffusionGenerationConfig(
        block_size=config.rollout_block_size,
        steps_per_block=config.rollout_block_size,
        max_new_tokens=max_new_tokens,
        temperature=config.rollout_temperature,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompts = rollout_prompts(config, seed)

    def roll_out(model, rollout_seed: int) -> Dataset:
        return generate_trajectories(
            model, tokenizer, prompts, rollout_config, batch_size=128, seed=rollout_seed, progress=False
        )

    trajectories = roll_out(teacher, seed)
    trajectories.save_to_disk(str(root / "trajectories"))
    valid, validity = valid_rollouts(trajectories)
    timings["rollouts"] = time.perf_counter() - start
    shown = ", ".join(f"{task} {share:.0f}%" for task, share in validity.items())
    _progress(seed, f"teacher rollouts: {len(trajectories)}, valid {shown} ({timings['rollouts']:.1f} s)")

    data = {
        "rollouts": trajectories,
        "valid_rollouts": valid,
        "answers": Dataset.from_list(answer_rows(config.tasks, len(trajectories), seed + 2000)),
    }
    logs: dict[str, list[dict]] = {}
    for method, spec in _all_methods(config).items():
        source, rounds, overrides = split_method(method, spec)
        if len(data[source]) == 0:
            raise ValueError(
                f"Method {method!r} trains on {DATA_SOURCES[source]}, but there are none (valid rollouts per task: "
                f"{shown}); train the teacher longer (`teacher_steps`) or leave the method out."
            )
        key = {"settings": _settings_key(config), "method": json.loads(json.dumps(spec))}
        reused_student = _reused_student(root, method, key)
        if reused_student is not None:
            accuracy[method], logs[method] = reused_student["accuracy"], reused_student["logs"]
            timings[method] = reused_student["seconds"]
            peaks.append(reused_student.get("peak_memory_mb", 0.0))
            timings["evaluation"] += reused_student.get("evaluation_seconds", 0.0)
            _progress(seed, f"{method}: reused (same settings)")
            continue
        start = time.perf_counter()
        student, dataset, logs[method] = copy.deepcopy(teacher), data[source], []
        for round_index in range(rounds):
            if round_index > 0:  # ReDi: the next round trains on the student's own rollouts
                dataset = roll_out(student.eval(), seed + round_index)
            args = _trainer_args(
                str(root / method.replace(" ", "_") / (f"round{round_index}" if rounds > 1 else "")),
                config.student_steps,
                config.student_batch_size,
                config.student_learning_rate,
                seed,
                **overrides,
            )
            trainer = _train(student, tokenizer, dataset, args, config.train_block_sizes)
            student = trainer.model
            logs[method] += trainer.state.log_history
        timings[method] = time.perf_counter() - start
        start = time.perf_counter()
        accuracy[method] = evaluate(student, tokenizer, eval_set, config, str(root / "eval" / method))
        seconds = time.perf_counter() - start
        timings["evaluation"] += seconds
        record = _student_record(root, method)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps(
                {
                    "key": key,
                    "accuracy": accuracy[method],
                    "logs": logs[method],
                    "seconds": timings[method],
                    "evaluation_seconds": seconds,
                    "peak_memory_mb": peak_memory_mb(),
                }
            )
        )
        trained = f"{args.max_steps} steps" if rounds == 1 else f"{rounds} rounds of {args.max_steps} steps"
        _progress(seed, f"{method}: trained {trained} ({timings[method]:.1f} s), evaluated ({seconds:.1f} s)")
    result = {
        "seed": seed,
        "settings": _settings_key(config),
        "accuracy": accuracy,
        "rollout_validity": validity,
        "timings": timings,
        "peak_memory_mb": max(peak_memory_mb(), *peaks),
        "logs": logs,
    }
    (root / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _all_methods(config: DemoConfig) -> dict[str, dict[str, Any]]:
    methods = {name: METHODS[name] for name in config.methods}
    methods.update(config.extra_methods)
    return methods


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


def _spread(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def multi_block_tasks(config: DemoConfig) -> list[str]:
    """The tasks of ``config`` whose answers span more than one block of 4."""
    return [name for name in config.tasks if TASKS[name].blocks > 1]


def log_summary(logs: list[dict], metrics=LOG_METRICS) -> dict[str, float]:
    """The mean of each logged metric over the last quarter of a run's logged steps."""
    steps = [entry for entry in logs if "loss" in entry and "step" in entry]
    tail = steps[len(steps) - max(1, len(steps) // 4) :]
    return {key: statistics.fmean(e[key] for e in tail) for key in metrics if tail and all(key in e for e in tail)}


def summarise(results: list[dict[str, Any]], config: DemoConfig) -> dict[str, Any]:
    """Mean and spread over seeds of every accuracy; per-TokPS averages (all tasks and the multi-block ones) and
    improvement over the teacher; the students' training logs; rollout validity, time and memory."""
    methods = list(results[0]["accuracy"])  # the teacher, then every student
    settings = list(results[0]["accuracy"]["Teacher"])
    table = {
        method: {
            f"{setting}/{task}": _spread([r["accuracy"][method][setting][task] for r in results])
            for setting in settings
            for task in config.tasks
        }
        for method in methods
    }

    def averages_over(tasks: list[str]) -> dict[str, dict[int, dict[str, float]]]:
        if not tasks:
            return {}
        return {
            method: {
                tps: _spread(
                    [
                        statistics.fmean(
                            r["accuracy"][method][s][t] for s in settings if s.endswith(f"TokPS{tps}") for t in tasks
                        )
                        for r in results
                    ]
                )
                for tps in config.tokens_per_step
            }
            for method in methods
        }

    logs = {}
    for method in methods[1:]:
        per_seed = [log_summary(r.get("logs", {}).get(method, [])) for r in results]
        keys = set.intersection(*(set(entry) for entry in per_seed))
        logs[method] = {key: _spread([entry[key] for entry in per_seed]) for key in LOG_METRICS if key in keys}
    with_validity = [r["rollout_validity"] for r in results if "rollout_validity" in r]
    timings = [sum(r["timings"].values()) for r in results if "timings" in r]
    return {
        "table": table,
        "averages": averages_over(list(config.tasks)),
        "multi_block_averages": averages_over(multi_block_tasks(config)),
        "settings": settings,
        "methods": methods,
        "logs": logs,
        "rollout_validity": {task: _spread([v[task] for v in with_validity]) for task in config.tasks}
        if with_validity
        else {},
        "seconds_per_seed": _spread(timings) if timings else None,
        "peak_memory_mb": max((r.get("peak_memory_mb", 0.0) for r in results), default=0.0),
    }


def markdown_table(summary: dict[str, Any], config: DemoConfig) -> str:
    """The paper-style table: per tokens-per-step, methods × (block size, task), the average over every task (and over
    the multi-block ones when the tasks mix both) and the improvement of the average over the teacher's."""
    mixed = 0 < len(multi_block_tasks(config)) < len(config.tasks)
    multi = summary.get("multi_block_averages") if mixed else None
    lines = []
    header = (
        ["TokPS", "Method"]
        + [f"B={b} {task}" for b in config.eval_block_sizes for task in config.tasks]
        + ["Average"]
        + (["Multi-block average"] if multi else [])
        + ["Improvement (%)"]
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
            if multi:
                cells.append(_cell(multi[method][tps]))
            if method == "Teacher":
                cells.append("—")
            else:
                change = 100.0 * (average["mean"] - teacher_average) / max(teacher_average, 1e-9)
                cells.append(f"{change:+.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def logs_table(summary: dict[str, Any]) -> str:
    """The students' training metrics (mean over the last quarter of their steps, mean ± std over seeds)."""
    lines = ["| Method | " + " | ".join(f"`{key}`" for key in LOG_METRICS) + " |", "|---|" + "---|" * len(LOG_METRICS)]
    for method, values in summary["logs"].items():
        cells = [_significant(values[key]) if key in values else "—" for key in LOG_METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(entry: dict[str, float]) -> str:
    mean, std = entry["mean"], entry["std"]
    return f"{mean:.1f} ± {std:.1f}" if std else f"{mean:.1f}"


def _significant(entry: dict[str, float]) -> str:
    """Three significant digits (margins are of the order of 1e-4 between refreshes)."""
    mean, std = entry["mean"], entry["std"]
    return f"{mean:.3g} ± {std:.2g}" if std else f"{mean:.3g}"


def plot(summary: dict[str, Any], config: DemoConfig, path: str) -> None:
    """Average accuracy against tokens per step, one line per method (error bars: std over seeds); a second panel
    averages the multi-block tasks only when the tasks mix both kinds."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = colormaps["tab20"]  # 20 distinct colours: the study has a dozen rows

    panels = [("every task", summary["averages"])]
    if 0 < len(multi_block_tasks(config)) < len(config.tasks):
        panels.append(("multi-block tasks", summary["multi_block_averages"]))
    figure = Figure(figsize=(6 * len(panels), 4.5))
    FigureCanvasAgg(figure)
    for index, (title, averages) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for index_method, method in enumerate(summary["methods"]):
            means = [averages[method][t]["mean"] for t in config.tokens_per_step]
            stds = [averages[method][t]["std"] for t in config.tokens_per_step]
            style = (
                {"color": "black", "linestyle": "--", "linewidth": 2}
                if method == "Teacher"
                else {"color": colors(index_method % colors.N), "marker": "osD^v<>ph*"[index_method % 10]}
            )
            axes.errorbar(config.tokens_per_step, means, yerr=stds, capsize=3, label=method, **style)
        axes.set_xlabel("tokens per step")
        axes.set_ylabel("accuracy (%)")
        axes.set_xticks(list(config.tokens_per_step))
        axes.set_title(f"Few-step accuracy ({title}, block sizes {', '.join(map(str, config.eval_block_sizes))})")
        axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def check_demo_config(config: DemoConfig) -> None:
    """Refuse unknown tasks, methods and data sources before anything runs."""
    unknown = [name for name in config.tasks if name not in TASKS]
    if unknown:
        raise ValueError(f"Unknown demo task(s) {unknown}; choose from {sorted(TASKS)}.")
    unknown = [name for name in config.methods if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {list(METHODS)}.")
    for name, spec in config.extra_methods.items():
        if not isinstance(spec, dict):
            raise ValueError(f"extra_methods[{name!r}] must be a mapping of T3DConfig overrides, got {spec!r}.")
        split_method(name, spec)
    if not config.seeds:
        raise ValueError("`seeds` is empty; give at least one seed.")


def _teacher_note(summary: dict[str, Any], config: DemoConfig) -> str:
    """The teacher's accuracy at one token per step, and whether it reaches ``teacher_accuracy_target``."""
    rows = summary["table"]["Teacher"]
    below = []
    cells = []
    for b in config.eval_block_sizes:
        for task in config.tasks:
            entry = rows.get(f"B{b}-TokPS1/{task}")
            if entry is None:
                continue
            cells.append(f"B={b} {task} {_cell(entry)}")
            if entry["mean"] < config.teacher_accuracy_target:
                below.append(f"B={b} {task}")
    verdict = (
        f"every task reaches the {config.teacher_accuracy_target:g} % target"
        if not below
        else f"**below the {config.teacher_accuracy_target:g} % target: {', '.join(below)}** (grow the teacher or "
        "its budget: `--hidden_size`, `--num_layers`, `--teacher_steps`)"
    )
    return f"Teacher at one token per step: {'; '.join(cells)}; {verdict}."


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the whole demo and write ``results.json``, ``results.md`` and ``accuracy_vs_tokens_per_step.png``.

    Seeds whose ``seed<k>/result.json`` holds the same settings are reused (see :class:`DemoConfig`).
    """
    config = config or DemoConfig()
    check_demo_config(config)
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
    validity = "; ".join(f"{task} {_cell(v)} %" for task, v in summary["rollout_validity"].items())
    per_seed = summary["seconds_per_seed"]
    cost = (
        f"{_cell({k: v / 60 for k, v in per_seed.items()})} minutes of work per seed; " if per_seed else ""
    ) + f"{elapsed / 60:.1f} minutes for this run; peak memory {summary['peak_memory_mb']:.0f} MB"
    text = (
        f"# t3d-trl demo\n\nAccuracy (%) of greedy few-step decoding; {len(config.seeds)} seed(s) "
        f"(mean ± std over seeds); {cost}.\n\n{_teacher_note(summary, config)}\n\n"
        f"Valid teacher rollouts (temperature {config.rollout_temperature:g}): {validity}.\n\n{table}\n\n"
        "Training logs (mean over each student's last quarter of steps):\n\n" + logs_table(summary) + "\n\n"
        "DDO at each reference refresh (θ = θ_ref gives loss/real = log 2):\n\n" + _identity_text(identity) + "\n"
    )
    Path(config.output_dir, "results.md").write_text(text)
    plot(summary, config, os.path.join(config.output_dir, "accuracy_vs_tokens_per_step.png"))
    print()
    print(text)
    print(f"Written to {config.output_dir}: results.md, results.json, accuracy_vs_tokens_per_step.png")
    return report
