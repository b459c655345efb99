"""Results of the few-step evaluation and their JSON, Markdown and plot reports."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "EvalResult",
    "dynamic_table",
    "few_step_table",
    "plot_accuracy_vs_tokens_per_step",
    "plots_available",
    "preservation_table",
    "read_json",
    "to_markdown",
    "write_json",
    "write_markdown",
    "write_plot",
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
        paper_accuracy: Fraction of samples the scorers' paper twins pass (the T3D paper's scoring: ``paper_math``,
            ``paper_code``); None when a sample's scorer has no paper twin.
        paper_num_correct: Number of samples the paper twins pass (None as above).
        num_disagreements: Number of samples where the scorer and its paper twin disagree (None as above).
        samples: The per-sample results, one dict per problem in the dataset's order, with the keys of the
            ``samples_<setting>.jsonl`` files: ``id``, ``prompt`` (the rendered text), ``completion`` (decoded up to
            the first EOS), ``reference``, ``scorer``, ``correct``, ``paper_scorer`` and ``paper_correct`` (the
            paper twin and its verdict, None without one), ``gen_length`` (generated tokens up to and including the
            first EOS) and ``nfe`` (forward passes; ``None`` when ``generate`` does not report them).
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
    paper_accuracy: float | None = None
    paper_num_correct: int | None = None
    num_disagreements: int | None = None
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


def _percent(fraction: float | None, digits: int = 2) -> str:
    return _fmt(None if fraction is None else 100.0 * fraction, digits)


def _decoding_label(result: EvalResult) -> str:
    kind = "dynamic" if result.threshold is not None or "dynamic" in result.remasking else "static"
    return kind if result.threshold is None else f"{kind} (τ={result.threshold:g})"


def to_markdown(results: Sequence[EvalResult], title: str | None = None) -> str:
    """Render results as a Markdown table in the layout of the T3D paper.

    Columns: setting, block size, steps per block, decoding (static / dynamic with threshold), accuracy (%),
    tokens/s, latency per sample (s), average NFE, average generated length, tokens per forward; and, when a result
    has them, the accuracy under the paper's scoring (%) and the number of problems where the two scorers disagree.

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
    paper = any(r.paper_accuracy is not None for r in results)
    if paper:
        header += ["Paper acc. (%)", "Disagree"]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * 2 + ["---"] + ["---:"] * (len(header) - 4)) + "|")
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
        if paper:
            row += [_percent(r.paper_accuracy), "-" if r.num_disagreements is None else str(r.num_disagreements)]
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


# --------------------------------------------------------------------------------------------------------------------
# The paper's three tables
# --------------------------------------------------------------------------------------------------------------------

_SCORES = {"library": "accuracy", "paper": "paper_accuracy"}


def _by_model(results: Mapping[str, Sequence[EvalResult]] | Sequence[EvalResult]) -> dict[str, list[EvalResult]]:
    """``{model: its results}``; a plain sequence of results is one model, ``"model"``. Averages over sets (dataset
    ``"average"``) are left out: the tables average the sets themselves."""
    if isinstance(results, Mapping):
        grouped = {str(name): list(group) for name, group in results.items()}
    else:
        grouped = {"model": list(results)}
    bad = [type(r).__name__ for group in grouped.values() for r in group if not isinstance(r, EvalResult)]
    if bad:
        raise TypeError(f"The tables take EvalResult objects (or {{model: [EvalResult, ...]}}), got {bad[0]}.")
    return {name: [r for r in group if r.dataset != "average"] for name, group in grouped.items()}


def _score(result: EvalResult, score: str) -> float | None:
    if score not in _SCORES:
        raise ValueError(f"score must be one of {sorted(_SCORES)}, got {score!r}.")
    value = getattr(result, _SCORES[score])
    return None if value is None or not math.isfinite(value) else value


def _check_original(models: Mapping[str, Any], original: str | None) -> None:
    if original is not None and original not in models:
        raise ValueError(f"original={original!r} is not one of the models: {list(models)}.")


def _datasets(models: Mapping[str, Sequence[EvalResult]]) -> list[str]:
    names: list[str] = []
    for group in models.values():
        for result in group:
            if (result.dataset or "-") not in names:
                names.append(result.dataset or "-")
    return names


def _static(result: EvalResult) -> bool:
    return result.threshold is None and "dynamic" not in result.remasking


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values, or None when one is missing (an average over fewer sets is not the paper's)."""
    if not values or any(value is None for value in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _static_cell(
    models: Mapping[str, Sequence[EvalResult]], model: str, dataset: str, block_size: int, steps_per_block: int
) -> EvalResult | None:
    """The model's static-decoding result on ``dataset`` at this block size and step count, if it has one."""
    for result in models[model]:
        if (result.dataset or "-") == dataset and _static(result):
            if (result.block_size, result.steps_per_block) == (block_size, steps_per_block):
                return result
    return None


def few_step_table(
    results: Mapping[str, Sequence[EvalResult]] | Sequence[EvalResult],
    original: str | None = None,
    *,
    score: str = "library",
    tokens_per_step: Sequence[int] | None = None,
    title: str | None = None,
) -> str:
    """Few-step accuracy in the layout of the T3D paper's first table, with the improvement over the original model.

    One row per model and tokens per step (TokPS = block size / steps per block, static decoding); one column per
    block size and evaluation set; then the unweighted **Average** of those cells (as the paper's "Average": every set
    at every block size) and, when ``original`` is given, the relative improvement
    ``100 (average - average_original) / average_original`` at the same TokPS.

    Args:
        results: ``{model: its EvalResults}`` (every set and setting of one model, e.g. ``t3d-trl eval`` runs), or
            the results of one model.
        original: The model the improvement is measured against (a key of ``results``).
        score: ``"library"`` (``accuracy``) or ``"paper"`` (``paper_accuracy``, the paper's scoring).
        tokens_per_step: The TokPS rows (default: every static TokPS above 1 in the results, e.g. 2 and 4).
        title: A heading above the table.

    Returns:
        The Markdown table ("-" where a cell has no result).

    Raises:
        ValueError: For an unknown ``score`` or an ``original`` that is not a model of ``results``.
        TypeError: If the results are not :class:`EvalResult` objects.
    """
    models = _by_model(results)
    _check_original(models, original)
    static = [r for group in models.values() for r in group if _static(r)]
    blocks = sorted({r.block_size for r in static})
    if tokens_per_step is None:
        tokens_per_step = sorted({round(r.tokens_per_step) for r in static if r.tokens_per_step > 1})
    datasets = _datasets(models)
    columns = [(block, dataset) for block in blocks for dataset in datasets]
    header = ["Model", "TokPS", *(f"B={block} {dataset}" for block, dataset in columns), "Average"]
    if original is not None:
        header.append(f"Improvement vs {original} (%)")
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(header) + " |"]
    lines.append("|---|---:|" + "---:|" * (len(header) - 2))
    for tokens in tokens_per_step:
        averages: dict[str, float | None] = {}
        rows: dict[str, list[str]] = {}
        for model in models:
            cells = []
            for block, dataset in columns:
                result = _static_cell(models, model, dataset, block, block // tokens) if block % tokens == 0 else None
                cells.append(None if result is None else _score(result, score))
            averages[model] = _mean(cells)
            rows[model] = [model, str(tokens), *(_percent(c) for c in cells), _percent(averages[model])]
        for model, row in rows.items():
            if original is not None:
                base, mine = averages[original], averages[model]
                gain = None if model == original or base in (None, 0) or mine is None else 100 * (mine - base) / base
                row.append("-" if gain is None else f"{gain:+.2f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def preservation_table(
    results: Mapping[str, Sequence[EvalResult]] | Sequence[EvalResult],
    original: str | None = None,
    *,
    score: str = "library",
    title: str | None = None,
) -> str:
    """Full-step accuracy (one token per step) in the layout of the T3D paper's second table: does distillation keep
    the model's accuracy when it decodes one token per step?

    One row per model and block size (static settings with ``steps_per_block == block_size``); one column per
    evaluation set, then their unweighted average. With ``original``, every other model's cells show the change
    against the original model in points, e.g. ``70.00 (+2.00)``.

    Args:
        results: ``{model: its EvalResults}``, or the results of one model.
        original: The model the changes are measured against (a key of ``results``).
        score: ``"library"`` or ``"paper"``.
        title: A heading above the table.

    Returns:
        The Markdown table.

    Raises:
        ValueError: For an unknown ``score`` or an ``original`` that is not a model of ``results``.
        TypeError: If the results are not :class:`EvalResult` objects.
    """
    models = _by_model(results)
    _check_original(models, original)
    datasets = _datasets(models)
    blocks = sorted({r.block_size for group in models.values() for r in group if _static(r)})
    header = ["Model", "Block", *datasets, "Average"]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(header) + " |"]
    lines.append("|---|---:|" + "---:|" * (len(header) - 2))

    def scores(model: str, block: int) -> list[float | None]:
        cells = [_static_cell(models, model, dataset, block, block) for dataset in datasets]
        values = [None if c is None else _score(c, score) for c in cells]
        return [*values, _mean(values)]

    for block in blocks:
        base = scores(original, block) if original is not None else None
        for model in models:
            values = scores(model, block)
            if all(value is None for value in values):
                continue
            cells = []
            for index, value in enumerate(values):
                text = _percent(value)
                if base is not None and model != original and value is not None and base[index] is not None:
                    text += f" ({100 * (value - base[index]):+.2f})"
                cells.append(text)
            lines.append("| " + " | ".join([model, str(block), *cells]) + " |")
    return "\n".join(lines) + "\n"


def dynamic_table(
    results: Mapping[str, Sequence[EvalResult]] | Sequence[EvalResult],
    original: str | None = None,
    *,
    score: str = "library",
    title: str | None = None,
) -> str:
    """Dynamic decoding in the layout of the T3D paper's third table: tokens/s, latency, average steps, average length
    and accuracy of the dynamic settings (a confidence threshold), per model and evaluation set.

    "Average steps" is the mean number of forward passes per sample (``avg_nfe``). With ``original``, its rows come
    first.

    Args:
        results: ``{model: its EvalResults}``, or the results of one model.
        original: The original model (a key of ``results``), listed first.
        score: ``"library"`` or ``"paper"``.
        title: A heading above the table.

    Returns:
        The Markdown table.

    Raises:
        ValueError: For an unknown ``score`` or an ``original`` that is not a model of ``results``.
        TypeError: If the results are not :class:`EvalResult` objects.
    """
    models = _by_model(results)
    _check_original(models, original)
    order = ([original] if original is not None else []) + [model for model in models if model != original]
    header = ["Model", "Dataset", "Setting", "Tokens/s", "Latency (s)", "Avg. steps", "Avg. length", "Acc. (%)"]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(header) + " |"]
    lines.append("|---|---|---|" + "---:|" * (len(header) - 3))
    for model in order:
        for result in models[model]:
            if _static(result):
                continue
            row = [
                model,
                result.dataset or "-",
                result.setting,
                _fmt(result.tokens_per_second, 2),
                _fmt(result.latency_per_sample, 3),
                _fmt(result.avg_nfe, 2),
                _fmt(result.avg_gen_length, 2),
                _percent(_score(result, score)),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plots_available() -> bool:
    """Whether matplotlib is installed (the ``plots`` extra: ``pip install 't3d-trl[plots]'``)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(results: Sequence[EvalResult], path: str | os.PathLike[str], title: str | None = None) -> bool:
    """:func:`plot_accuracy_vs_tokens_per_step` when matplotlib is installed; otherwise a warning that says the plot
    was not written and how to get it. Returns whether the plot was written."""
    if plots_available():
        plot_accuracy_vs_tokens_per_step(results, path, title)
        return True
    logging.getLogger(__name__).warning(
        "%s was not written: plots need matplotlib (pip install 't3d-trl[plots]'); results.md and results.json hold "
        "the same numbers.",
        os.fspath(path),
    )
    return False


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
    if not plots_available():
        raise ImportError("Plots need matplotlib: pip install 't3d-trl[plots]'.")
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
