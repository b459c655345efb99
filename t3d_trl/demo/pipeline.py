"""The end-to-end demo: a tiny teacher, its rollouts, distilled students and the paper-style table.

Everything runs on the library's public API: the teacher is trained from scratch with ``T3DTrainer``'s ``sft``
objective on the tasks' reference answers, rolled out at one token per step with
:func:`t3d_trl.generate_trajectories` (temperature 0.1, the official rollout temperature), distilled into students
(SFT on the reference answers, ReDi on the model's own outputs with :func:`t3d_trl.recipes.redi`, Naive TD, dParallel
and T3D), and every model is evaluated with :func:`t3d_trl.evaluation.evaluate_few_step` at block sizes 4 and 8 and 1,
2 and 4 tokens per step. The tables come from :mod:`t3d_trl.demo.report`.

A student is a :class:`~t3d_trl.T3DConfig` override mapping; its optional ``"data"`` key says what it trains on (see
:data:`DATA_SOURCES`), its optional ``"rounds"`` key how many ReDi rounds it runs (see :data:`METHODS`), its optional
``"peft"`` key the :class:`peft.LoraConfig` arguments of a LoRA student (merged into the model before evaluation). The study
behind ``docs/results.md`` (three seeds, more tasks, the paper's recipe and the remedies, students reused between
runs, plots) is ``examples/study.py``, built on :func:`run_seed` and the report; it is not part of the package.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from datasets import Dataset
from transformers import PrinterCallback, Qwen3ForCausalLM, TrainerCallback, set_seed

from ..collator import DataCollatorForTrajectory
from ..evaluation import DecodingSetting, evaluate_few_step, get_scorer
from ..generation import DiffusionGenerationConfig, patch_model
from ..recipes import redi
from ..rollout import generate_trajectories
from ..testing import task_model, task_tokenizer, tiny_t3d_config
from ..trainer import T3DConfig, T3DTrainer
from .report import (
    _cell,
    ddo_identity_lines,
    identity_text,
    logs_table,
    markdown_table,
    preservation_table,
    summarise,
    teacher_note,
)
from .tasks import CATEGORIES, TASKS, answer_rows, evaluation_prompts

logger = logging.getLogger(__name__)

#: rows per batch of the demo's rollouts (the teacher's and ReDi's)
ROLLOUT_BATCH_SIZE = 128

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


class StudentStore(Protocol):
    """Where :func:`run_seed` finds students trained before with the same settings, and keeps new ones (the study's
    reuse between runs; the demo keeps none)."""

    def load(self, seed: int, method: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The saved entry (``accuracy``, ``logs``, ``seconds``, ``evaluation_seconds``, ``peak_memory_mb``) of the
        student ``method`` of ``seed`` trained with settings ``key``, or ``None``."""

    def save(self, seed: int, method: str, key: dict[str, Any], entry: dict[str, Any]) -> None:
        """Keep the entry of a student just trained."""


#: ``(seed, method) -> trainer callbacks`` of a student about to train (see :func:`run_seed`)
StudentCallbacks = Callable[[int, str], Sequence[TrainerCallback]]


@dataclass
class DemoConfig:
    """Settings of the demo (the defaults finish in under 10 minutes on 2 CPU cores).

    The demo trains one seed of a 3-layer, 96-wide teacher for 1,500 steps on three tasks and the five students of
    :data:`METHODS`. A teacher trained before in the same ``output_dir`` with the same settings is reused. The study
    (``examples/study.py``) runs the same pipeline with more tasks, seeds and students.
    """

    output_dir: str = "t3d-demo"
    num_threads: int | None = 1  # tiny models: extra CPU threads mostly add OpenMP contention
    #: a one-block control task and two whose answers span three blocks of 4 (two of 8); the study adds perm5
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
    #: further rows of the table: name -> T3DConfig overrides, with the optional keys ``"data"`` (see DATA_SOURCES),
    #: ``"rounds"`` and ``"peft"`` (LoraConfig arguments: a LoRA student)
    extra_methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    student_steps: int = 250
    student_batch_size: int = 64
    student_learning_rate: float = 5e-4
    # evaluation
    eval_prompts_per_task: int = 100
    eval_block_sizes: tuple[int, ...] = (4, 8)
    tokens_per_step: tuple[int, ...] = (1, 2, 4)

    def generated_tokens(self) -> int:
        """``max_new_tokens``, or the tasks' longest answer and its EOS rounded up to whole blocks of every size."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        longest = 4 * max(TASKS[name].blocks for name in self.tasks)
        unit = math.lcm(self.rollout_block_size, *self.eval_block_sizes)
        return unit * math.ceil(longest / unit)


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


def _train(model, tokenizer, dataset, args: T3DConfig, block_sizes, peft_config=None, callbacks=None) -> T3DTrainer:
    trainer = T3DTrainer(
        model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks or []),
    )
    trainer.remove_callback(PrinterCallback)  # the logs go to log_history and the results, not to stdout
    trainer.data_collator = CyclingBlockSizeCollator(trainer.data_collator, block_sizes)
    trainer.train()
    return trainer


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


def rollout_generation_config(config: DemoConfig, tokenizer) -> DiffusionGenerationConfig:
    """The teacher's rollout settings: one token per step in blocks of ``rollout_block_size``, at
    ``rollout_temperature``, up to :meth:`DemoConfig.generated_tokens` tokens."""
    return DiffusionGenerationConfig(
        block_size=config.rollout_block_size,
        steps_per_block=config.rollout_block_size,
        max_new_tokens=config.generated_tokens(),
        temperature=config.rollout_temperature,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


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


class StudentMethod(NamedTuple):
    """A student of the table, split (:func:`split_method`): what it trains on, its ReDi rounds, its LoRA arguments
    (``None``: the whole model trains) and its :class:`~t3d_trl.T3DConfig` overrides."""

    data: str
    rounds: int
    peft: dict[str, Any] | None
    overrides: dict[str, Any]


def split_method(name: str, spec: dict[str, Any]) -> StudentMethod:
    """The parts of a method; an unknown data source, ``rounds`` that is not a positive integer, or ``peft`` that is
    not a mapping of :class:`peft.LoraConfig` arguments (or is given with ReDi rounds) is refused."""
    overrides = dict(spec)
    data = overrides.pop("data", "rollouts")
    rounds = overrides.pop("rounds", 1)
    peft = overrides.pop("peft", None)
    if data not in DATA_SOURCES:
        raise ValueError(f"Method {name!r}: unknown data {data!r}; choose from {sorted(DATA_SOURCES)}.")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"Method {name!r}: `rounds` must be a positive integer, got {rounds!r}.")
    if peft is not None:
        if not isinstance(peft, dict):
            raise ValueError(f"Method {name!r}: `peft` must be a mapping of LoraConfig arguments, got {peft!r}.")
        if rounds > 1:
            raise ValueError(f"Method {name!r}: `peft` (a LoRA student) and ReDi `rounds` > 1 cannot be combined.")
        from peft import LoraConfig

        try:
            LoraConfig(**peft)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Method {name!r}: `peft` {peft!r} is not a LoraConfig ({error}).") from None
    return StudentMethod(data, rounds, peft, overrides)


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
    teacher = task_model(tokenizer, config.hidden_size, config.num_layers, seed)
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


def settings_key(config: DemoConfig) -> dict[str, Any]:
    """The settings every student of a seed depends on: all but where results go, which seeds run, the threads and
    which students are trained."""
    values = dataclasses.asdict(config)
    for name in ("output_dir", "seeds", "num_threads", "methods", "extra_methods"):
        values.pop(name)
    return json.loads(json.dumps(values))  # tuples as lists, as they come back from JSON


def run_seed(
    config: DemoConfig,
    seed: int,
    tokenizer,
    students: StudentStore | None = None,
    callbacks: StudentCallbacks | None = None,
) -> dict[str, Any]:
    """Teacher, rollouts, students and evaluation for one seed (a line printed as each stage finishes).

    The teacher trained before in the same ``output_dir`` with the same settings is reused (its saved weights); a
    student ``students`` holds for the same settings too (its saved accuracy, logs and time). ``callbacks(seed,
    method)`` gives the extra trainer callbacks of a student that trains (the study's diagnosis); the teacher is saved
    in ``<output_dir>/seed<k>/teacher`` and its rollouts in ``.../trajectories`` before any student trains.

    Returns:
        The seed's ``accuracy`` (per method, setting and task), ``rollout_validity``, ``timings``,
        ``peak_memory_mb`` and training ``logs``.
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
    eval_set.to_json(str(root / "prompts.jsonl"))  # the bundled configs' tiny CLI run reads them (t3d_trl/configs)
    start = time.perf_counter()
    accuracy = {"Teacher": evaluate(teacher, tokenizer, eval_set, config, str(root / "eval" / "teacher"))}
    timings["evaluation"] = time.perf_counter() - start
    full_step = accuracy["Teacher"].get(f"B{config.rollout_block_size}-TokPS1", {})
    shown = ", ".join(f"{task} {full_step[task]:.0f}%" for task in config.tasks if task in full_step)
    _progress(seed, f"teacher evaluated: {shown} at one token per step ({timings['evaluation']:.1f} s)")

    start = time.perf_counter()
    rollout_config = rollout_generation_config(config, tokenizer)
    prompts = rollout_prompts(config, seed)

    trajectories = generate_trajectories(
        teacher, tokenizer, prompts, rollout_config, batch_size=ROLLOUT_BATCH_SIZE, seed=seed, progress=False
    )
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
        source, rounds, peft, overrides = split_method(method, spec)
        if len(data[source]) == 0:
            raise ValueError(
                f"Method {method!r} trains on {DATA_SOURCES[source]}, but there are none (valid rollouts per task: "
                f"{shown}); train the teacher longer (`teacher_steps`) or leave the method out."
            )
        key = {"settings": settings_key(config), "method": json.loads(json.dumps(spec))}
        reused_student = students.load(seed, method, key) if students is not None else None
        if reused_student is not None:
            accuracy[method], logs[method] = reused_student["accuracy"], reused_student["logs"]
            timings[method] = reused_student["seconds"]
            peaks.append(reused_student.get("peak_memory_mb", 0.0))
            timings["evaluation"] += reused_student.get("evaluation_seconds", 0.0)
            _progress(seed, f"{method}: reused (same settings)")
            continue
        start = time.perf_counter()
        logs[method] = []
        output_dir = str(root / method.replace(" ", "_"))

        def train(model, dataset, args, logs=logs[method], peft=peft, method=method):
            peft_config = None
            if peft is not None:
                from peft import LoraConfig

                peft_config = LoraConfig(**peft)
            extra = callbacks(seed, method) if callbacks is not None else ()
            # a LoRA adapter is initialised from the global random state before the Trainer seeds it: seeded here, a
            # student is the same whichever students trained before it in the process (or were reused)
            set_seed(args.seed)
            trainer = _train(model, tokenizer, dataset, args, config.train_block_sizes, peft_config, extra)
            logs += trainer.state.log_history
            return trainer

        learning_rate = overrides.pop("learning_rate", config.student_learning_rate)  # a student may set its own
        args = _trainer_args(
            output_dir, config.student_steps, config.student_batch_size, learning_rate, seed, **overrides
        )
        if rounds > 1:  # ReDi: round 0 trains on the teacher's rollouts, each next one on the student's own
            student = redi(
                copy.deepcopy(teacher),
                tokenizer,
                prompts,
                args,
                rollout_config,
                rounds=rounds,
                batch_size=ROLLOUT_BATCH_SIZE,
                trajectories=data[source],
                train=train,
            )
        else:
            student = train(copy.deepcopy(teacher), data[source], args).model
            if peft is not None:  # the LoRA student decodes as one model: its adapter merged into the teacher's copy
                student = student.merge_and_unload()
        timings[method] = time.perf_counter() - start
        start = time.perf_counter()
        accuracy[method] = evaluate(student, tokenizer, eval_set, config, str(root / "eval" / method))
        seconds = time.perf_counter() - start
        timings["evaluation"] += seconds
        if students is not None:
            entry = {
                "accuracy": accuracy[method],
                "logs": logs[method],
                "seconds": timings[method],
                "evaluation_seconds": seconds,
                "peak_memory_mb": peak_memory_mb(),
            }
            students.save(seed, method, key, entry)
        trained = f"{args.max_steps} steps" if rounds == 1 else f"{rounds} rounds of {args.max_steps} steps"
        _progress(seed, f"{method}: trained {trained} ({timings[method]:.1f} s), evaluated ({seconds:.1f} s)")
    result = {
        "seed": seed,
        "settings": settings_key(config),
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


def check_demo_config(config: DemoConfig) -> None:
    """Refuse unknown tasks, methods and data sources before anything runs."""
    unknown = [name for name in config.tasks if name not in TASKS]
    if unknown:
        raise ValueError(f"Unknown demo task(s) {unknown}; choose from {', '.join(TASKS)}.")
    unknown = [name for name in config.methods if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {list(METHODS)}.")
    for name, spec in config.extra_methods.items():
        if not isinstance(spec, dict):
            raise ValueError(f"extra_methods[{name!r}] must be a mapping of T3DConfig overrides, got {spec!r}.")
        split_method(name, spec)
    if not config.seeds:
        raise ValueError("`seeds` is empty; give at least one seed.")


def run_demo(
    config: DemoConfig | None = None,
    students: StudentStore | None = None,
    callbacks: StudentCallbacks | None = None,
) -> dict[str, Any]:
    """Run the whole demo over ``config.seeds`` and write ``results.json`` and ``results.md``.

    Args:
        config: the settings (the quick demo's defaults when ``None``).
        students: where students trained before are found and new ones kept (the study's; none by default).
        callbacks: ``callbacks(seed, method)``: extra trainer callbacks of each student that trains (the study's
            diagnosis; none by default).

    Returns:
        The report written to ``results.json``: the config, the summary over seeds (:func:`~.report.summarise`), each
        seed's results without its logs, DDO's log 2 lines and the run's time.
    """
    config = config or DemoConfig()
    check_demo_config(config)
    os.makedirs(config.output_dir, exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    tokenizer = task_tokenizer()
    start = time.perf_counter()
    print(
        f"t3d-trl demo: seeds {list(config.seeds)}, tasks {list(config.tasks)}, students {list(_all_methods(config))} "
        f"-> {config.output_dir}",
        flush=True,
    )
    results = [run_seed(config, seed, tokenizer, students, callbacks) for seed in config.seeds]
    summary = summarise(results, config)
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
    sections = [
        f"# t3d-trl demo\n\nAccuracy (%) of greedy few-step decoding; {len(config.seeds)} seed(s) "
        f"(mean ± std over seeds); {cost}.",
        teacher_note(summary, config),
        f"Valid teacher rollouts (temperature {config.rollout_temperature:g}): {validity}.",
        markdown_table(summary, config),
    ]
    preservation = preservation_table(summary, config)
    if preservation:
        sections.append(
            "Full-step preservation (one token per step after distillation; a student's change against the teacher "
            f"in points):\n\n{preservation}"
        )
    sections.append(f"Training logs (mean over each student's last quarter of steps):\n\n{logs_table(summary)}")
    sections.append(f"DDO at each reference refresh (θ = θ_ref gives loss/real = log 2):\n\n{identity_text(identity)}")
    text = "\n\n".join(sections) + "\n"
    Path(config.output_dir, "results.md").write_text(text)
    print()
    print(text)
    print(f"Written to {config.output_dir}: results.md, results.json")
    return report
