"""The demo's report: the paper-style table of few-step accuracy over seeds, the students' training logs and the
checks a reader of the demo wants to see (the teacher at one token per step, DDO's log 2 identity at each refresh).

Plain text and numbers only: the study in ``examples/study.py`` builds its plots on top of these summaries.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .tasks import TASKS

__all__ = [
    "LOG_METRICS",
    "ddo_identity_lines",
    "identity_text",
    "log_summary",
    "logs_table",
    "markdown_table",
    "multi_block_tasks",
    "preservation_table",
    "summarise",
    "teacher_note",
]

#: the training-log metrics the report averages over the last quarter of each student's steps
LOG_METRICS = (
    "token_accuracy",
    "loss/real",
    "loss/fake",
    "margins/real",
    "margins/fake",
    "fake_agreement",
)


def ddo_identity_lines(logs: list[dict], sync_steps: int) -> list[str]:
    """The logged ``loss/real`` right after each reference refresh, against log 2."""
    lines = []
    for entry in logs:
        if "loss/real" in entry and (entry["step"] - 1) % sync_steps == 0:
            lines.append(f"step {entry['step']:>4}: loss/real = {entry['loss/real']:.6f} (log 2 = {math.log(2):.6f})")
    return lines


def identity_text(lines: list[str], shown: int = 4) -> str:
    if len(lines) <= shown:
        return "\n".join(f"    {line}" for line in lines)
    worst = max(abs(float(line.split("= ")[1].split()[0]) - math.log(2)) for line in lines)
    return "\n".join(f"    {line}" for line in lines[:shown]) + (
        f"\n    ... {len(lines)} refreshes in all; largest |loss/real - log 2| = {worst:.1e}"
    )


def _spread(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def multi_block_tasks(config: Any) -> list[str]:
    """The tasks of ``config`` whose answers span more than one block of 4."""
    return [name for name in config.tasks if TASKS[name].blocks > 1]


def log_summary(logs: list[dict], metrics=LOG_METRICS) -> dict[str, float]:
    """The mean of each logged metric over the last quarter of a run's logged steps."""
    steps = [entry for entry in logs if "loss" in entry and "step" in entry]
    tail = steps[len(steps) - max(1, len(steps) // 4) :]
    return {key: statistics.fmean(e[key] for e in tail) for key in metrics if tail and all(key in e for e in tail)}


def summarise(results: list[dict[str, Any]], config: Any) -> dict[str, Any]:
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


def markdown_table(summary: dict[str, Any], config: Any) -> str:
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


def preservation_table(summary: dict[str, Any], config: Any) -> str:
    """Full-step accuracy (one token per step) after distillation, in the layout of the T3D paper's second table (as
    :func:`t3d_trl.evaluation.report.preservation_table` writes it for ``t3d-trl eval``): one row per method and block
    size, one column per task, then their average; a student's cells show the change against the teacher in points.
    Empty when the demo does not decode at one token per step."""
    if 1 not in config.tokens_per_step:
        return ""
    header = ["Method", "Block", *config.tasks, "Average"]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    for block in config.eval_block_sizes:
        setting = f"B{block}-TokPS1"
        teacher = [summary["table"]["Teacher"].get(f"{setting}/{task}") for task in config.tasks]
        teacher_average = _mean_of(teacher)
        for method in summary["methods"]:
            entries = [summary["table"][method].get(f"{setting}/{task}") for task in config.tasks]
            cells = [method, str(block)]
            for entry, reference in zip(entries, teacher):
                if entry is None:
                    cells.append("—")
                    continue
                change = (
                    "" if method == "Teacher" or reference is None else f" ({entry['mean'] - reference['mean']:+.1f})"
                )
                cells.append(_cell(entry) + change)
            average = _mean_of(entries)
            if average is None:
                cells.append("—")
            else:
                change = (
                    "" if method == "Teacher" or teacher_average is None else f" ({average - teacher_average:+.1f})"
                )
                cells.append(f"{average:.1f}{change}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_of(entries: list[dict[str, float] | None]) -> float | None:
    """The mean of the entries' means, or ``None`` when one is missing."""
    if not entries or any(entry is None for entry in entries):
        return None
    return statistics.fmean(entry["mean"] for entry in entries)


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


def teacher_note(summary: dict[str, Any], config: Any) -> str:
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
