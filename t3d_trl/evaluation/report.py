"""Results of the few-step evaluation and their JSON, Markdown and plot reports."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "EvalResult",
    "plot_accuracy_vs_tokens_per_step",
    "read_json",
    "to_markdown",
    "write_json",
    "write_markdown",
]


@dataclass
class EvalResult:
    """Metrics of one decoding setting on one evaluation set (the columns of the T3D paper's tables).

    Attributes:
        setting: Name of the decoding setting, e.g. ``"B4-S2-static"``.
        block_size: Tokens per block.
        steps_per_block: Denoising steps per block (the maximum for dynamic decoding).
        remasking: Remasking strategy passed to ``generate``.
        threshold: Confidence threshold of dynamic decoding (None for static decoding).
        accuracy: Fraction of correct samples, in [0, 1].
        num_samples: Number of evaluated samples.
        num_correct: Number of correct samples.
        tokens_per_second: Generated tokens divided by the total generation time.
        latency_per_sample: Total generation time divided by the number of samples, in seconds.
        avg_nfe: Mean number of model forward passes (NFE) per sample.
        avg_gen_length: Mean number of generated tokens per sample (up to and including the first EOS).
        tokens_per_forward: Generated tokens divided by forward passes (total over all samples).
        dataset: Name of the evaluation set, if known.
        total_time_s: Total generation time in seconds.
        total_generated_tokens: Generated tokens over all samples.
        total_nfe: Forward passes over all samples.
        samples: The per-sample results, one dict per problem in the dataset's order, with the keys of the
            ``samples_<setting>.jsonl`` files: ``id``, ``prompt`` (the rendered text), ``completion`` (decoded up to
            the first EOS), ``reference``, ``scorer``, ``correct``, ``gen_length`` (generated tokens up to and
            including the first EOS) and ``nfe`` (forward passes; ``None`` when ``generate`` does not report them).
            Filled by :func:`~t3d_trl.evaluation.evaluate_few_step`; empty for results read back from JSON and for
            averages over sets. Not part of :meth:`to_dict` (nor of ``results.json``), nor of comparisons.
    """

    setting: str
    block_size: int
    steps_per_block: int
    remasking: str
    threshold: float | None
    accuracy: float
    num_samples: int
    num_correct: int
    tokens_per_second: float
    latency_per_sample: float
    avg_nfe: float
    avg_gen_length: float
    tokens_per_forward: float
    dataset: str | None = None
    total_time_s: float = 0.0
    total_generated_tokens: int = 0
    total_nfe: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    @property
    def tokens_per_step(self) -> float:
        """Nominal tokens decoded per denoising step: ``block_size / steps_per_block``."""
        return self.block_size / self.steps_per_block

    def to_dict(self) -> dict[str, Any]:
        """The metrics as a JSON-serialisable dictionary (NaN/inf become None; ``samples`` is left out)."""
        out = {spec.name: getattr(self, spec.name) for spec in fields(self) if spec.name != "samples"}
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Build a result from :meth:`to_dict` output; unknown keys are ignored.

        Args:
            data: Dictionary of fields.

        Returns:
            The result.
        """
        known = {f.name for f in fields(cls) if f.name != "samples"}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("tokens_per_second", "latency_per_sample", "avg_nfe", "avg_gen_length", "tokens_per_forward"):
            if kwargs.get(key) is None and key in kwargs:
                kwargs[key] = float("nan")
        return cls(**kwargs)


def write_json(results: Iterable[EvalResult], path: str | os.PathLike[str]) -> None:
    """Write results as a JSON list of objects (one per setting).

    Args:
        results: Evaluation results.
        path: Output file; parent directories are created.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([r.to_dict() for r in results], f, indent=2)
        f.write("\n")


def read_json(path: str | os.PathLike[str]) -> list[EvalResult]:
    """Read results written by :func:`write_json`.

    Args:
        path: JSON file holding a list of result objects (or ``{"results": [...]}``).

    Returns:
        The results.
    """
    with open(os.fspath(path), encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("results", [])
    return [EvalResult.from_dict(item) for item in data]


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _decoding_label(result: EvalResult) -> str:
    kind = "dynamic" if result.threshold is not None or "dynamic" in result.remasking else "static"
    return kind if result.threshold is None else f"{kind} (τ={result.threshold:g})"


def to_markdown(results: Sequence[EvalResult], title: str | None = None) -> str:
    """Render results as a Markdown table in the layout of the T3D paper.

    Columns: setting, block size, steps per block, decoding (static / dynamic with threshold), accuracy (%),
    tokens/s, latency per sample (s), average NFE, average generated length, tokens per forward.

    Args:
        results: Evaluation results, one row each.
        title: Optional heading placed above the table.

    Returns:
        The Markdown text.
    """
    header = [
        "Setting",
        "Block",
        "Steps/Block",
        "Decoding",
        "Acc. (%)",
        "Tokens/s",
        "Latency (s)",
        "Avg. NFE",
        "Avg. Len",
        "Tokens/Fwd",
    ]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * 2 + ["---"] + ["---:"] * 6) + "|")
    for r in results:
        row = [
            r.setting,
            str(r.block_size),
            str(r.steps_per_block),
            _decoding_label(r),
            _fmt(100.0 * r.accuracy, 2),
            _fmt(r.tokens_per_second, 2),
            _fmt(r.latency_per_sample, 3),
            _fmt(r.avg_nfe, 2),
            _fmt(r.avg_gen_length, 2),
            _fmt(r.tokens_per_forward, 2),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(results: Sequence[EvalResult], path: str | os.PathLike[str], title: str | None = None) -> None:
    """Write :func:`to_markdown` output to a file.

    Args:
        results: Evaluation results.
        path: Output file; parent directories are created.
        title: Optional heading.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_markdown(results, title=title))


def plot_accuracy_vs_tokens_per_step(
    results: Sequence[EvalResult], path: str | os.PathLike[str], title: str | None = None
) -> None:
    """Plot accuracy against tokens per step (``block_size / steps_per_block``), one line per block size.

    Static and dynamic settings of the same block size are drawn as separate lines (dynamic dashed). The
    figure is rendered with the Agg backend, without touching pyplot's global state.

    Args:
        results: Evaluation results.
        path: Output PNG file; parent directories are created.
        title: Optional figure title.

    Raises:
        ValueError: If ``results`` is empty.
    """
    if not results:
        raise ValueError("No results to plot.")
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups: dict[tuple[int, str], list[EvalResult]] = {}
    for r in results:
        kind = "static" if _decoding_label(r) == "static" else "dynamic"
        groups.setdefault((r.block_size, kind), []).append(r)
    several_kinds = len({kind for _, kind in groups}) > 1

    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs_all: list[float] = []
    palette = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]] or ["C0"]
    colors = {b: palette[i % len(palette)] for i, b in enumerate(sorted({b for b, _ in groups}))}
    for (block_size, kind), group in sorted(groups.items()):
        group = sorted(group, key=lambda r: r.tokens_per_step)
        xs = [r.tokens_per_step for r in group]
        ys = [100.0 * r.accuracy for r in group]
        xs_all += xs
        label = f"block {block_size}" + (f" ({kind})" if several_kinds else "")
        ax.plot(xs, ys, marker="o", color=colors[block_size], linestyle="--" if kind == "dynamic" else "-", label=label)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 4:
        ax.set_xscale("log", base=2)
    ticks = sorted(set(xs_all))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("tokens per step (block size / steps per block)")
    ax.set_ylabel("accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()

    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
