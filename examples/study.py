"""The studies behind docs/results.md: the demo's pipeline over three seeds with the study's tasks and students,
students reused between runs, and each preset's own output.

Two presets (``--preset``):

* ``multi_block`` (the default): T3D ≈ Naive TD on tasks whose answers span blocks; four tasks (perm5 needs a teacher
  trained 5,000 steps), the demo's five students, the paper's recipe and the remedies tried; draws
  ``accuracy_vs_tokens_per_step.png`` (matplotlib: ``pip install t3d-trl[plots]``);
* ``forgetting``: does T3D keep full-step decoding better than Naive TD, and what keeps it (issue 17); the tasks
  echo, pairs and walk7, on which students forget at one token per step, the demo's 1,500-step teacher, Naive TD,
  T3D and the remedies (the ``anchor`` objective, mask ratios drawn ∝ r², a smaller learning rate, LoRA), and the
  diagnosis: the states the students train on against those decoding visits, accuracy at one token per step against
  training steps, and the drift from the teacher at partly filled states. It writes ``forgetting.md`` and
  ``forgetting.json`` (the preservation table, every student's averages, paired differences, the default rule,
  the cost per training step and the diagnosis) besides the demo's ``results.md``.

Both run :func:`t3d_trl.demo.run_demo` (teacher, rollouts, students, evaluation, the paper-style and the full-step
preservation tables) and keep every student in ``<output_dir>/seed<k>/students/<name>.json`` so that a run with the
same settings reuses it: seeds can run in separate processes, a last run over all of them writes the tables, a new
student trains alone.

```bash
python examples/study.py                                   # the multi-block study (about 20 minutes per seed)
python examples/study.py --preset forgetting --seeds 0 2 & python examples/study.py --preset forgetting --seeds 1; wait
python examples/study.py --preset forgetting               # reuses the three seeds, writes forgetting.md
python examples/study.py --student_steps 100 --print_config
```

It is an example, not part of the package: it needs a clone of the repository. Every flag of ``t3d-trl demo`` (each
:class:`~t3d_trl.demo.DemoConfig` field) works here, with the preset's values as defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the multi-block study's settings where they differ from the demo's: four tasks (perm5 needs a teacher trained
#: 5,000 steps), three seeds, and the students of STUDY_VARIANTS besides the demo's five
STUDY_SETTINGS: dict[str, Any] = {
    "output_dir": "t3d-study",
    "tasks": ("words", "wordplay", "walk", "perm5"),
    "teacher_steps": 5000,
    "seeds": (0, 1, 2),
}

#: further students of the multi-block study: the paper's recipe against the library's defaults, and the remedies
#: tested for T3D ≈ Naive TD: fake tokens sampled instead of the argmax (which mostly equals the teacher's token); a
#: reference that is never refreshed, and a larger β, so that DDO's margins leave the sigmoid's linear region;
#: uniformly drawn mask ratios; T3D mixed with TD
STUDY_VARIANTS: dict[str, dict[str, Any]] = {
    # the official trainer's state distribution (t3d_trl/configs/sdar_t3d_paper.yaml); the demo's prompts end on a
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

#: the forgetting study's settings: the tasks on which students forget at one token per step, the demo's teacher
#: (1,500 steps), three seeds, and Naive TD and T3D as the demo's students
FORGETTING_SETTINGS: dict[str, Any] = {
    "output_dir": "t3d-forgetting",
    "tasks": ("echo", "pairs", "walk7"),
    "teacher_steps": 1500,
    "seeds": (0, 1, 2),
    "methods": ("Naive TD", "T3D"),
}

T3D = ["ddo", "path"]
#: LoRA of every linear layer, rank 8 (trained at a higher learning rate, as LoRA usually is)
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}

#: the remedies of the forgetting study, each with the objective it is added to (its base row): the anchor at three
#: weights (DDO in its linear regime and the path term at λ = 0.2 give T3D about a fifth of Naive TD's gradient, so
#: its anchor weights are a fifth too), states drawn to cover partly filled blocks (r ∝ r² instead of r⁸), both
#: together, the official state order (the earliest-decoded tokens masked first), a smaller learning rate, and LoRA
FORGETTING_VARIANTS: dict[str, dict[str, Any]] = {
    "T3D + anchor (0.05)": {"loss_type": [*T3D, "anchor"], "loss_weights": [1.0, 0.2, 0.05]},
    "T3D + anchor (0.2)": {"loss_type": [*T3D, "anchor"], "loss_weights": [1.0, 0.2, 0.2]},
    "Naive TD + anchor (1)": {"loss_type": ["td", "anchor"], "loss_weights": [1.0, 1.0]},
    "T3D (r ∝ r²)": {"loss_type": T3D, "mask_ratio_power": 2.0},
    "T3D (r ∝ r²) + anchor (0.05)": {
        "loss_type": [*T3D, "anchor"],
        "loss_weights": [1.0, 0.2, 0.05],
        "mask_ratio_power": 2.0,
    },
    "T3D (earliest masked)": {"loss_type": T3D, "state_order": "earliest"},
    "T3D (lr 1e-4)": {"loss_type": T3D, "learning_rate": 1e-4},
    "T3D (LoRA r=8, lr 2e-3)": {"loss_type": T3D, "learning_rate": 2e-3, "peft": LORA},
}


@dataclass(frozen=True)
class Diagnosis:
    """What the forgetting preset measures besides the tables.

    Attributes:
        steps: the training steps at which the accuracy at one token per step is measured (and at the end).
        steps_students: the students measured at those steps.
        drift_students: the students whose drift from the teacher is measured at the end of training.
        drift_ratios: the mask ratios of the drift's teacher trajectory states (1 is the whole block masked).
        state_settings: the training state distributions whose visible-token counts are compared with decoding's.
    """

    steps: tuple[int, ...] = (25, 50, 100, 150, 200)
    steps_students: tuple[str, ...] = ("Naive TD", "T3D")
    drift_students: tuple[str, ...] = (
        "Naive TD",
        "T3D",
        "Naive TD + anchor (1)",
        "T3D + anchor (0.05)",
        "T3D + anchor (0.2)",
        "T3D (r ∝ r²)",
        "T3D (earliest masked)",
        "T3D (lr 1e-4)",
    )
    drift_ratios: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    state_settings: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "r ∝ r⁸ (default)": {},
            "r ∝ r²": {"mask_ratio_power": 2.0},
            "r uniform": {"mask_ratio_power": 0.0},
        }
    )


#: the presets: their settings, their students and, for the forgetting study, its diagnosis
PRESETS: dict[str, dict[str, Any]] = {
    "multi_block": {"settings": STUDY_SETTINGS, "variants": STUDY_VARIANTS, "diagnosis": None},
    "forgetting": {"settings": FORGETTING_SETTINGS, "variants": FORGETTING_VARIANTS, "diagnosis": Diagnosis()},
}

#: the base row of each remedy of the forgetting study: the student it changes one thing of
BASES = {"td": "Naive TD", "ddo": "T3D"}


def study_config(preset: str = "multi_block", **overrides: Any) -> Any:
    """The :class:`~t3d_trl.demo.DemoConfig` of a preset: its settings and students over the demo's defaults, then
    ``overrides``."""
    from t3d_trl.demo import DemoConfig

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose from {', '.join(PRESETS)}.")
    chosen = PRESETS[preset]
    values: dict[str, Any] = {**chosen["settings"], "extra_methods": copy.deepcopy(chosen["variants"])}
    values.update(overrides)
    return DemoConfig(**values)


class JsonStudentStore:
    """Students kept as ``<output_dir>/seed<k>/students/<name>.json`` with the settings they were trained with (the
    :class:`t3d_trl.demo.pipeline.StudentStore` of the study): a student is reused only for the same settings.
    What a diagnosis measured while a student trained (``extras[(seed, method)]``) is kept in its entry as
    ``"diagnosis"``."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)
        self.extras: dict[tuple[int, str], dict[str, Any]] = {}

    def path(self, seed: int, method: str) -> Path:
        return self.root / f"seed{seed}" / "students" / (re.sub(r"[^A-Za-z0-9]+", "_", method).strip("_") + ".json")

    def load(self, seed: int, method: str, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(seed, method)
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        return saved if saved.get("key") == key else None

    def save(self, seed: int, method: str, key: dict[str, Any], entry: dict[str, Any]) -> None:
        path = self.path(seed, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        extras = self.extras.pop((seed, method), None)
        path.write_text(json.dumps({"key": key, **entry, **({"diagnosis": extras} if extras else {})}))


def plot(summary: dict[str, Any], config: Any, path: str | Path) -> None:
    """Average accuracy against tokens per step, one line per method (error bars: std over seeds); a second panel
    averages the multi-block tasks only when the tasks mix both kinds."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from t3d_trl.demo.report import multi_block_tasks

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


# ------------------------------------------------------------------------------------------------ the diagnosis
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float], digits: int = 1) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _plain_model(model: Any) -> Any:
    """A model that decodes and runs the training forward on its own: a LoRA model merged into a copy."""
    from peft import PeftModel

    return copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model


class ForgettingDiagnosis:
    """The forgetting preset's measurements: trainer callbacks that record a student's accuracy at one token per step
    during training and its drift from the teacher at the end (kept with the student by the store), and the state
    coverage of training against decoding."""

    def __init__(self, config: Any, diagnosis: Diagnosis, store: JsonStudentStore) -> None:
        from t3d_trl.demo.pipeline import evaluation_dataset
        from t3d_trl.testing import task_tokenizer

        self.config, self.diagnosis, self.store = config, diagnosis, store
        self.tokenizer = task_tokenizer()
        self.eval_set = evaluation_dataset(config)
        self._teachers: dict[int, Any] = {}

    def collator(self, block_size: int, **settings: Any) -> Any:
        """A trajectory collator with the task tokenizer's special tokens and ``settings``."""
        from t3d_trl import DataCollatorForTrajectory

        tokenizer = self.tokenizer
        return DataCollatorForTrajectory(
            mask_token_id=tokenizer.mask_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            block_size=block_size,
            **settings,
        )

    # ---------------------------------------------------------------------------------------------- during training
    def callbacks(self, seed: int, method: str) -> list[Any]:
        """The callbacks of ``method``'s trainer (the pipeline's ``callbacks`` hook)."""
        steps = self.diagnosis.steps if method in self.diagnosis.steps_students else ()
        drift = method in self.diagnosis.drift_students
        return [_DiagnosisCallback(self, seed, method, steps, drift)] if steps or drift else []

    def teacher(self, seed: int) -> Any:
        """The seed's teacher, as the pipeline saved it before the students trained."""
        import torch
        from transformers import Qwen3ForCausalLM

        from t3d_trl import patch_model

        if seed not in self._teachers:
            directory = Path(self.config.output_dir) / f"seed{seed}" / "teacher"
            teacher = Qwen3ForCausalLM.from_pretrained(directory, dtype=torch.float32)
            self._teachers[seed] = patch_model(teacher, self.tokenizer).eval()
        return self._teachers[seed]

    def one_step_accuracy(self, model: Any, seed: int, method: str, step: int) -> dict[str, float]:
        """Accuracy (%) at one token per step per block size, averaged over the tasks."""
        from t3d_trl.demo.pipeline import evaluate

        one_step = dataclasses.replace(self.config, tokens_per_step=(1,))
        target = Path(self.config.output_dir) / f"seed{seed}" / "eval_steps" / method.replace(" ", "_") / str(step)
        accuracy = evaluate(_plain_model(model), self.tokenizer, self.eval_set, one_step, str(target))
        return {
            str(size): statistics.fmean(accuracy[f"B{size}-TokPS1"][task] for task in self.config.tasks)
            for size in self.config.eval_block_sizes
        }

    def held_out(self, seed: int) -> Any:
        """Teacher rollouts of the evaluation prompts (held out from training), at the rollout settings, prepared."""
        from datasets import load_from_disk

        from t3d_trl.data import prepare_trajectory_dataset
        from t3d_trl.demo.pipeline import ROLLOUT_BATCH_SIZE, rollout_generation_config
        from t3d_trl.rollout import generate_trajectories

        directory = Path(self.config.output_dir) / f"seed{seed}" / "held_out_rollouts"
        if directory.exists():
            rows = load_from_disk(str(directory))
        else:
            prompts = self.eval_set.select_columns(["prompt", "task", "reference"])
            teacher = self.teacher(seed)
            rows = generate_trajectories(
                teacher,
                self.tokenizer,
                prompts,
                rollout_generation_config(self.config, self.tokenizer),
                batch_size=ROLLOUT_BATCH_SIZE,
                seed=seed + 500,
                progress=False,
            )
            rows.save_to_disk(str(directory))
        prepared, _ = prepare_trajectory_dataset(rows, self.tokenizer, eos_token_id=self.tokenizer.eos_token_id)
        return prepared

    def drift(self, model: Any, seed: int) -> dict[str, dict[str, dict[str, float]]]:
        """KL(teacher ‖ student) (nats per masked token) and argmax agreement (%) on held-out teacher trajectory
        states, per evaluation block size and mask ratio (the ⌊r·n⌋ latest-decoded tokens of each block masked)."""
        import torch

        from t3d_trl.layouts import training_layout
        from t3d_trl.models.families import get_family

        teacher, student = self.teacher(seed), _plain_model(model)
        layout = training_layout(get_family(teacher))
        rows = self.held_out(seed)
        result: dict[str, dict[str, dict[str, float]]] = {}
        for size in self.config.eval_block_sizes:
            result[str(size)] = {}
            for ratio in self.diagnosis.drift_ratios:
                collator = self.collator(size, mask_ratios=(ratio,), mask_ratio_power=0.0, seed=7)
                kl_sum, agree_sum, count = 0.0, 0.0, 0
                for start in range(0, len(rows), 256):
                    batch = collator([rows[i] for i in range(start, min(start + 256, len(rows)))])
                    with torch.no_grad():
                        target = torch.log_softmax(layout.forward(teacher, batch).float(), -1)
                        guess = torch.log_softmax(layout.forward(student, batch).float(), -1)
                    mask = batch["loss_mask"]
                    kl = (target.exp() * (target - guess)).sum(-1)
                    kl_sum += float(kl[mask].sum())
                    agree_sum += float((target.argmax(-1) == guess.argmax(-1))[mask].sum())
                    count += int(mask.sum())
                result[str(size)][str(ratio)] = {
                    "kl": kl_sum / max(count, 1),
                    "agreement": 100.0 * agree_sum / max(count, 1),
                }
        return result

    # ---------------------------------------------------------------------------------------------- states
    def training_states(self, seed: int) -> dict[str, dict[str, dict[str, float]]]:
        """Per state setting and training block size: the share (%) of trained blocks with ``v`` visible completion
        tokens, over every rollout of the seed (each example's state is fixed by its hash)."""
        import torch
        from datasets import load_from_disk

        from t3d_trl.data import prepare_trajectory_dataset
        from t3d_trl.masks import NOISY

        tokenizer = self.tokenizer
        rows, _ = prepare_trajectory_dataset(
            load_from_disk(str(Path(self.config.output_dir) / f"seed{seed}" / "trajectories")),
            tokenizer,
            eos_token_id=tokenizer.eos_token_id,
        )
        result: dict[str, dict[str, dict[str, float]]] = {}
        for label, overrides in self.diagnosis.state_settings.items():
            result[label] = {}
            for size in self.config.train_block_sizes:
                collator = self.collator(size, seed=seed, attention_layout="deferred", **overrides)
                counts: Counter = Counter()
                for start in range(0, len(rows), 256):
                    features = [rows[i] for i in range(start, min(start + 256, len(rows)))]
                    batch = collator(features)
                    window = int(batch["logits_to_keep"])
                    prompt_length = torch.tensor([len(f["prompt_ids"]) for f in features])[:, None]
                    position, block = batch["position_ids"][:, -window:], batch["block_ids"][:, -window:]
                    completion = (
                        (batch["stream_ids"][:, -window:] == NOISY)
                        & batch["valid"][:, -window:]
                        & (position >= prompt_length)
                    )
                    visible = completion & (batch["input_ids"][:, -window:] != tokenizer.mask_token_id)
                    # one group per (row, block): its visible tokens and whether it carries a loss
                    low = int(block[completion].min())
                    span = int(block[completion].max()) - low + 1
                    group = torch.arange(len(features))[:, None] * span + (block - low).clamp(0, span - 1)
                    shown = torch.zeros(len(features) * span, dtype=torch.long).scatter_add_(
                        0, group[completion], visible[completion].long()
                    )
                    trained = torch.zeros(len(features) * span, dtype=torch.bool)
                    trained[group[batch["loss_mask"]]] = True
                    counts.update(shown[trained].tolist())
                total = sum(counts.values())
                result[label][str(size)] = {str(v): 100.0 * c / total for v, c in sorted(counts.items())}
        return result

    def decoding_states(self, seed: int) -> dict[str, dict[str, float]]:
        """Per evaluation setting: the share (%) of the teacher's denoising forwards (greedy decoding of the evaluation
        prompts) at which the block being decoded has ``v`` visible tokens."""
        from t3d_trl.evaluation import DecodingSetting, evaluate_few_step

        result = {}
        for size in self.config.eval_block_sizes:
            for tps in self.config.tokens_per_step:
                if size % tps:
                    continue
                _RecordingStatic.visible.clear()
                setting = DecodingSetting(size, size // tps, remasking=_RecordingStatic.name)
                evaluate_few_step(
                    self.teacher(seed),
                    self.tokenizer,
                    self.eval_set,
                    [setting],
                    batch_size=128,
                    max_new_tokens=self.config.generated_tokens(),
                    progress=False,
                    scorer="exact_match",
                    paper_scores=False,
                )
                total = sum(_RecordingStatic.visible.values())
                result[f"B{size}-TokPS{tps}"] = {
                    str(v): 100.0 * c / total for v, c in sorted(_RecordingStatic.visible.items())
                }
        return result


def _recording_strategy() -> type:
    """``low_confidence_static`` that counts, at every denoising forward, the visible tokens of each row's block."""
    from t3d_trl.generation.remasking import REMASKING, register_remasking

    static = REMASKING.get_entry("low_confidence_static")

    class RecordingStatic(static):
        name = "study_recording_static"
        visible: Counter = Counter()

        def select(self, confidence, entropy, masked, k, generator=None):
            working = masked.any(-1)
            RecordingStatic.visible.update((masked.shape[-1] - masked.sum(-1))[working].tolist())
            return super().select(confidence, entropy, masked, k, generator)

    return register_remasking(RecordingStatic, overwrite=True)


_RecordingStatic = _recording_strategy()


def _diagnosis_callback_class() -> type:
    from transformers import TrainerCallback

    class DiagnosisCallback(TrainerCallback):
        """Accuracy at one token per step at the given optimizer steps, and the drift at the end of training; kept
        in ``store.extras`` with the time it took (the student's training time includes it)."""

        def __init__(self, owner: ForgettingDiagnosis, seed: int, method: str, steps, drift: bool) -> None:
            self.owner, self.seed, self.method, self.steps, self.drift = owner, seed, method, set(steps), drift
            self.record: dict[str, Any] = owner.store.extras.setdefault((seed, method), {"seconds": 0.0})

        def _timed(self, model, work) -> Any:
            start = time.perf_counter()
            model.eval()
            try:
                return work()
            finally:
                model.train()
                self.record["seconds"] += time.perf_counter() - start

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in self.steps:
                accuracy = self._timed(
                    model, lambda: self.owner.one_step_accuracy(model, self.seed, self.method, state.global_step)
                )
                self.record.setdefault("steps", {})[str(state.global_step)] = accuracy

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if self.drift:
                self.record["drift"] = self._timed(model, lambda: self.owner.drift(model, self.seed))

    return DiagnosisCallback


_DiagnosisCallback = _diagnosis_callback_class()


# ------------------------------------------------------------------------------------------------ the report
def _average(accuracy: dict, config: Any, tokens_per_step: int, sizes=None) -> float:
    sizes = sizes or config.eval_block_sizes
    return statistics.fmean(accuracy[f"B{b}-TokPS{tokens_per_step}"][t] for b in sizes for t in config.tasks)


def base_of(method: str, spec: dict[str, Any]) -> str | None:
    """The base row of a remedy: Naive TD for a ``td`` student, T3D for a ``ddo`` one (``None`` for the bases)."""
    if method in BASES.values():
        return None
    return next((BASES[name] for name in spec.get("loss_type", []) if name in BASES), None)


def forgetting_report(report: dict[str, Any], config: Any, diagnosis: ForgettingDiagnosis) -> dict[str, Any]:
    """The forgetting study's tables from the demo's report and the students' entries: writes ``forgetting.md`` and
    ``forgetting.json`` into ``config.output_dir`` and returns the numbers."""
    from t3d_trl.demo.pipeline import _all_methods, settings_key
    from t3d_trl.demo.report import preservation_table

    seeds = [entry["seed"] for entry in report["seeds"]]
    accuracy = {entry["seed"]: entry["accuracy"] for entry in report["seeds"]}
    methods = ["Teacher", *_all_methods(config)]
    specs = _all_methods(config)
    entries = {
        (seed, method): diagnosis.store.load(
            seed, method, {"settings": settings_key(config), "method": json.loads(json.dumps(spec))}
        )
        or {}
        for seed in seeds
        for method, spec in specs.items()
    }
    lines = [
        "# The forgetting study: full-step decoding after distillation",
        "",
        f"Seeds {seeds}; tasks {list(config.tasks)}; teacher {config.teacher_steps} steps; students "
        f"{config.student_steps} steps × {config.student_batch_size}. Mean ± population std over seeds.",
        "",
        "## Full-step preservation (one token per step; a student's change against the teacher in points)",
        "",
        preservation_table(report["summary"], config),
        "",
        "## Every model, averages of the tasks (B4, B8, and both)",
        "",
    ]
    header = [f"TokPS{t} B{b}" for t in config.tokens_per_step for b in config.eval_block_sizes]
    header += [f"TokPS{t} avg" for t in config.tokens_per_step]
    lines += ["| Method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for method in methods:
        cells = [
            _cell([_average(accuracy[s][method], config, t, (b,)) for s in seeds])
            for t in config.tokens_per_step
            for b in config.eval_block_sizes
        ]
        cells += [_cell([_average(accuracy[s][method], config, t) for s in seeds]) for t in config.tokens_per_step]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")

    # paired differences and the default rule
    numbers: dict[str, Any] = {"seeds": seeds, "paired": {}, "rule": {}, "cost": {}}
    teacher_full = _mean_std([_average(accuracy[s]["Teacher"], config, 1) for s in seeds])[0]
    lines += [
        "",
        "## Paired by seed (a student − its base, average of the tasks and block sizes; seeds in order)",
        "",
        "| Student | base | " + " | ".join(f"TokPS{t}" for t in config.tokens_per_step) + " |",
        "|---|---|" + "---|" * len(config.tokens_per_step),
    ]
    rule = [
        "",
        "## The default rule",
        "",
        f"A remedy becomes a default only if it keeps full-step accuracy within 2 points of the teacher "
        f"({teacher_full:.1f} here, so ≥ {teacher_full - 2:.1f}) without losing few-step accuracy beyond the seed spread. "
        "Two readings of the spread at 2 and 4 tokens per step: the rows' (the mean paired difference to the base is not "
        "below minus the larger of the two rows' standard deviations over seeds) and the paired one (not below minus the "
        "standard deviation of the paired differences, stricter).",
        "",
        "| Student | full-step | within 2 of the teacher | "
        + " | ".join(f"TokPS{t} Δ (rows' / paired spread)" for t in config.tokens_per_step if t > 1)
        + " | passes (rows') | passes (paired) |",
        "|---|---|---|" + "---|" * (len(config.tokens_per_step) - 1) + "---|---|",
    ]
    comparisons = [(m, base_of(m, spec)) for m, spec in specs.items()]
    comparisons = [("T3D", "Naive TD")] + [(m, b) for m, b in comparisons if b is not None]
    for method, base in comparisons:
        diffs = {
            t: [_average(accuracy[s][method], config, t) - _average(accuracy[s][base], config, t) for s in seeds]
            for t in config.tokens_per_step
        }
        numbers["paired"][method] = {"base": base, **{str(t): d for t, d in diffs.items()}}
        lines.append(
            f"| {method} | {base} | "
            + " | ".join(", ".join(f"{d:+.1f}" for d in diffs[t]) for t in config.tokens_per_step)
            + " |"
        )
        full = _mean_std([_average(accuracy[s][method], config, 1) for s in seeds])[0]
        kept = full >= teacher_full - 2
        few = []
        passes = {"rows": kept, "paired": kept}
        for t in config.tokens_per_step:
            if t == 1:
                continue
            rows_spread = max(
                _mean_std([_average(accuracy[s][name], config, t) for s in seeds])[1] for name in (method, base)
            )
            delta, paired_spread = _mean_std(diffs[t])
            passes["rows"] = passes["rows"] and delta >= -rows_spread
            passes["paired"] = passes["paired"] and delta >= -paired_spread
            few.append(f"{delta:+.1f} ({rows_spread:.1f} / {paired_spread:.1f})")
        numbers["rule"][method] = {"full_step": full, "within_2": kept, **{f"passes_{k}": v for k, v in passes.items()}}
        verdicts = " | ".join("**yes**" if passes[k] else "no" for k in ("rows", "paired"))
        rule.append(f"| {method} | {full:.1f} | {'yes' if kept else 'no'} | " + " | ".join(few) + f" | {verdicts} |")
    lines += rule

    # cost per training step (the diagnosis's own time taken out)
    lines += [
        "",
        "## Cost per training step (wall seconds per optimizer step on this machine, the diagnosis's time taken out)",
        "",
        "| Student | s / step | × its base |",
        "|---|---|---|",
    ]
    per_step = {}
    for method in specs:
        values = [
            (
                entries[(s, method)].get("seconds", float("nan"))
                - entries[(s, method)].get("diagnosis", {}).get("seconds", 0.0)
            )
            / config.student_steps
            for s in seeds
            if entries[(s, method)]
        ]
        per_step[method] = values
    bases = dict(comparisons)
    for method in specs:
        if not per_step[method]:
            continue
        base = bases.get(method)
        ratio = (
            f"{statistics.fmean(per_step[method]) / statistics.fmean(per_step[base]):.2f}"
            if base and per_step.get(base)
            else "—"
        )
        numbers["cost"][method] = statistics.fmean(per_step[method])
        lines.append(f"| {method} | {_cell(per_step[method], 3)} | {ratio} |")

    # the diagnosis
    lines += ["", "## Diagnosis", ""]
    first = seeds[0]
    training = diagnosis.training_states(first)
    decoding = diagnosis.decoding_states(first)
    numbers["states"] = {"training": training, "decoding": decoding}
    lines += [
        f"### States: visible completion tokens in a block, training against decoding (seed {first})",
        "",
        "Training: share (%) of the trained blocks with v visible tokens; decoding: share (%) of the teacher's denoising "
        "forwards (greedy) at which its block has v visible tokens.",
        "",
        "| states | block | " + " | ".join(f"v={v}" for v in range(max(config.eval_block_sizes))) + " |",
        "|---|---|" + "---|" * max(config.eval_block_sizes),
    ]

    def share_cells(shares: dict[str, float], size: int) -> str:
        return " | ".join(
            f"{shares.get(str(v), 0.0):.1f}" if v < size else "" for v in range(max(config.eval_block_sizes))
        )

    for label, per_size in training.items():
        for size, shares in per_size.items():
            lines.append(f"| training, {label} | {size} | {share_cells(shares, int(size))} |")
    for setting, shares in decoding.items():
        size = int(setting.split("-")[0][1:])
        lines.append(f"| decoding, {setting.split('-')[1]} | {size} | {share_cells(shares, size)} |")

    lines += [
        "",
        "### Accuracy at one token per step against training steps (average of the tasks, B4 / B8)",
        "",
    ]
    numbers["steps"] = {}
    for method in diagnosis.diagnosis.steps_students:
        histories = [entries[(s, method)].get("diagnosis", {}).get("steps") or {} for s in seeds]
        measured = [step for step in diagnosis.diagnosis.steps if all(str(step) in h for h in histories)]
        if not measured:
            lines.append(
                f"- {method}: not measured (no step of the diagnosis within {config.student_steps} steps, or the "
                "students were trained without it: delete their entries to train them again)"
            )
            continue
        points = [
            "0: "
            + " / ".join(
                _cell([_average(accuracy[s]["Teacher"], config, 1, (b,)) for s in seeds])
                for b in config.eval_block_sizes
            )
        ]
        for step in measured:
            points.append(
                f"{step}: "
                + " / ".join(_cell([h[str(step)][str(b)] for h in histories]) for b in config.eval_block_sizes)
            )
        points.append(
            f"{config.student_steps}: "
            + " / ".join(
                _cell([_average(accuracy[s][method], config, 1, (b,)) for s in seeds]) for b in config.eval_block_sizes
            )
        )
        numbers["steps"][method] = histories
        lines.append(f"- {method}: " + "; ".join(points))

    ratios = diagnosis.diagnosis.drift_ratios
    columns = [(b, r) for b in config.eval_block_sizes for r in ratios]
    visible = [f"B{b} v={int(round(b * (1 - r)))}" for b, r in columns]
    numbers["drift"] = {}
    for title, key, digits in (
        ("KL(teacher ‖ student), nats per masked token", "kl", 3),
        ("Argmax agreement with the teacher (%)", "agreement", 1),
    ):
        lines += [
            "",
            f"### {title}, at held-out teacher trajectory states by visible tokens in the block",
            "",
            "| Student | " + " | ".join(visible) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for method in diagnosis.diagnosis.drift_students:
            drifts = [entries.get((s, method), {}).get("diagnosis", {}).get("drift") for s in seeds]
            if not all(drifts):
                continue
            numbers["drift"][method] = drifts
            cells = [f"{statistics.fmean(d[str(b)][str(r)][key] for d in drifts):.{digits}f}" for b, r in columns]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(config.output_dir, "forgetting.md").write_text(text)
    Path(config.output_dir, "forgetting.json").write_text(json.dumps(numbers, indent=1))
    print(text)
    return numbers


# ------------------------------------------------------------------------------------------------ running
def run_study(config: Any, preset: str = "multi_block") -> dict[str, Any]:
    """:func:`t3d_trl.demo.run_demo` with the study's student store, then the preset's output (the plot, or the
    forgetting study's tables and diagnosis); returns the demo's report."""
    from t3d_trl.demo import run_demo

    store = JsonStudentStore(config.output_dir)
    diagnosis_settings = PRESETS[preset]["diagnosis"]
    if diagnosis_settings is None:
        report = run_demo(config, students=store)
        target = Path(config.output_dir) / "accuracy_vs_tokens_per_step.png"
        plot(report["summary"], config, target)
        print(f"Plot written to {target}")
        return report
    diagnosis = ForgettingDiagnosis(config, diagnosis_settings, store)
    report = run_demo(config, students=store, callbacks=diagnosis.callbacks)
    report["forgetting"] = forgetting_report(report, config, diagnosis)
    print(f"Written to {config.output_dir}: forgetting.md, forgetting.json")
    return report


@dataclass
class StudyArguments:
    """The study's own flag."""

    preset: str = field(
        default="multi_block",
        metadata={
            "help": "Which study: `multi_block` (T3D against Naive TD across blocks) or `forgetting` (full-step "
            "decoding kept after distillation, issue 17: remedies and diagnosis).",
            "choices": list(PRESETS),
        },
    )


def make_parser() -> Any:
    """The demo's flags (one per :class:`~t3d_trl.demo.DemoConfig` field, ``--config`` and ``--print_config``), with
    the preset's defaults, and ``--preset``."""
    from t3d_trl.scripts.demo import EXAMPLES, HELP, demo_arguments_class
    from t3d_trl.scripts.utils import make_script_parser

    help_text = HELP + " The study's presets set the defaults (see PRESETS in examples/study.py)."
    return make_script_parser(
        "study", (demo_arguments_class(), StudyArguments), help_text, EXAMPLES, prog="python examples/study.py"
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | Any:
    """Parse the flags, then print the config (``--print_config``) or run the study."""
    from t3d_trl.scripts.demo import demo_config_from_args

    args, study_args = make_parser().parse_args_and_config(argv)
    overrides = {k: v for k, v in dataclasses.asdict(demo_config_from_args(args)).items() if _given(args, k)}
    config = study_config(study_args.preset, **overrides)
    if args.print_config:
        from t3d_trl.scripts.utils import as_plain

        print(json.dumps(as_plain(dataclasses.asdict(config)), indent=2))
        return config
    return run_study(config, study_args.preset)


def _given(args: Any, name: str) -> bool:
    """Whether the flag (or the YAML key) ``name`` was given: unset demo flags parse as ``None``."""
    return getattr(args, name, None) is not None


if __name__ == "__main__":
    main()
