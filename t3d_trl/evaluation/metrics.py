"""Scores of finished generations, for Hugging Face's ``evaluate`` library and for direct use.

:func:`score_predictions` computes, from predictions and references, the accuracy under a t3d-trl scorer and under
its paper twin (the T3D paper's scoring), the problems where they disagree, and the decoding-cost columns when the
forwards and generated tokens of each prediction are given. The ``evaluate`` metric module shipped in the package
(``t3d_trl/evaluation/t3d_eval/t3d_eval.py``, at :data:`METRIC_PATH`) wraps it::

    import evaluate
    from t3d_trl.evaluation.metrics import METRIC_PATH, load_metric

    metric = load_metric("math")                    # or: evaluate.load(METRIC_PATH, "math")
    metric.compute(predictions=completions, references=answers, forwards=nfe, generated_tokens=lengths)
    evaluate.combine([load_metric("math"), "exact_match"])   # with other modules

The module is loaded from the installed package, offline. ``evaluate`` is an optional dependency
(``pip install "t3d-trl[evaluate]"``); :func:`score_predictions` does not need it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["METRIC_CONFIGS", "METRIC_PATH", "load_metric", "score_predictions"]

METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "t3d_eval")
"""The directory of the ``evaluate`` metric module (``evaluate.load(METRIC_PATH, config_name)``)."""

METRIC_CONFIGS = ("math", "code", "paper_math", "paper_code", "exact_match")
"""The configurations of the metric module: the scorer of every row (its paper twin comes from the registry)."""


def _per_row(name: str, values: Sequence[Any] | None, count: int) -> list[float] | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != count:
        raise ValueError(f"`{name}` has {len(values)} values for {count} predictions; give one per prediction.")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"`{name}` must hold non-negative numbers, one per prediction; got {bad[0]!r}.")
    return [float(v) for v in values]


def score_predictions(
    predictions: Sequence[str],
    references: Sequence[str],
    scorer: str = "math",
    *,
    forwards: Sequence[float] | None = None,
    generated_tokens: Sequence[float] | None = None,
    paper_scores: bool = True,
    allow_code_execution: bool = False,
    code_timeout: float = 3.0,
) -> dict[str, Any]:
    """Accuracy of predictions under a scorer and its paper twin, with the decoding cost when given.

    Args:
        predictions: Model completions.
        references: The references, as the scorer reads them (a bare answer, a GSM8K solution, a test program or
            ``{"tests": [...], "prefix": "..."}``).
        scorer: A registered scorer name (``math``, ``code``, ``paper_math``...).
        forwards: Forward passes spent on each prediction (``EvalResult.samples[i]["nfe"]``).
        generated_tokens: Tokens generated for each prediction, up to its first EOS.
        paper_scores: Also score with the scorer's paper twin.
        allow_code_execution: Allow scorers that run model-written code (or set ``HF_ALLOW_CODE_EVAL=1``).
        code_timeout: Seconds per program of the ``code`` scorer.

    Returns:
        ``accuracy``, ``num_correct`` and ``num_samples``; with a paper twin, ``paper_accuracy``,
        ``paper_num_correct`` and ``num_disagreements``; with ``forwards``, ``avg_forwards``; with
        ``generated_tokens``, ``avg_generated_tokens``; with both, ``tokens_per_forward`` (all tokens / all forwards).

    Raises:
        ValueError: For predictions and references of different lengths, none at all, an unknown scorer, a code
            scorer without the opt-in, or cost columns that are not one non-negative number per prediction.
        TypeError: If a prediction or reference is not a string.
    """
    from .runner import _load_scorers, _score_pair
    from .scorers import scorer_info

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; give one reference each.")
    if not predictions:
        raise ValueError("No predictions to score.")
    forwards_list = _per_row("forwards", forwards, len(predictions))
    tokens_list = _per_row("generated_tokens", generated_tokens, len(predictions))
    paper_name = scorer_info(scorer).paper if paper_scores else None
    scorers = _load_scorers([scorer, *([paper_name] if paper_name else [])], allow_code_execution, code_timeout)
    correct = paper_correct = disagreements = 0
    for prediction, reference in zip(predictions, references):
        verdict, paper_verdict = _score_pair(scorers, scorer, paper_name, prediction, reference)
        correct += verdict
        if paper_verdict is not None:
            paper_correct += paper_verdict
            disagreements += paper_verdict != verdict
    count = len(predictions)
    scores: dict[str, Any] = {"accuracy": correct / count, "num_correct": correct, "num_samples": count}
    if paper_name is not None:
        scores.update(paper_accuracy=paper_correct / count, paper_num_correct=paper_correct)
        scores["num_disagreements"] = disagreements
    if forwards_list is not None:
        scores["avg_forwards"] = sum(forwards_list) / count
    if tokens_list is not None:
        scores["avg_generated_tokens"] = sum(tokens_list) / count
    if forwards_list is not None and tokens_list is not None:
        total_forwards = sum(forwards_list)
        scores["tokens_per_forward"] = sum(tokens_list) / total_forwards if total_forwards else math.nan
    return scores


def load_metric(config_name: str = "math", **kwargs: Any) -> Any:
    """The ``evaluate`` metric module of t3d-trl, loaded from the installed package (no download).

    Args:
        config_name: The scorer of every row: one of :data:`METRIC_CONFIGS`.
        **kwargs: Other arguments of ``evaluate.load`` (``experiment_id``, ``keep_in_memory``...).

    Returns:
        An ``evaluate.EvaluationModule``; its ``compute(predictions=..., references=...)`` returns
        :func:`score_predictions`' dictionary (``forwards=``, ``generated_tokens=``, ``allow_code_execution=``...
        as keyword arguments).

    Raises:
        ImportError: If ``evaluate`` is not installed (``pip install "t3d-trl[evaluate]"``).
        ValueError: For an unknown configuration.
    """
    if config_name not in METRIC_CONFIGS:
        raise ValueError(
            f"Unknown configuration {config_name!r} of the t3d-trl metric; choose one of {METRIC_CONFIGS}."
        )
    try:
        import evaluate
    except ImportError as error:
        raise ImportError(
            'load_metric needs Hugging Face\'s `evaluate` library: pip install "t3d-trl[evaluate]".'
        ) from error
    return evaluate.load(METRIC_PATH, config_name, **kwargs)
