"""Tests of t3d_trl.evaluation.metrics and of the `evaluate` metric module it ships (loaded offline)."""

import math
import os

import pytest

from t3d_trl.evaluation import CODE_EXECUTION_ENV_VAR
from t3d_trl.evaluation.metrics import METRIC_PATH, load_metric, score_predictions

PREDICTIONS = ["so \\boxed{4}", "The answer is 5", "I give up"]
REFERENCES = ["4", "5", "6"]


def test_score_predictions_reports_both_scorers_and_the_decoding_cost():
    scores = score_predictions(PREDICTIONS, REFERENCES, "math", forwards=[8, 4, 4], generated_tokens=[16, 8, 8])
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["num_correct"] == 2 and scores["num_samples"] == 3
    # the paper scores only boxed answers: the answer line of the second completion does not count there
    assert scores["paper_accuracy"] == pytest.approx(1 / 3) and scores["num_disagreements"] == 1
    assert scores["avg_forwards"] == pytest.approx(16 / 3) and scores["avg_generated_tokens"] == pytest.approx(32 / 3)
    assert scores["tokens_per_forward"] == pytest.approx(2.0)
    plain = score_predictions(PREDICTIONS, REFERENCES, "exact_match")
    assert "paper_accuracy" not in plain and "avg_forwards" not in plain  # no twin, no cost given
    assert "paper_accuracy" not in score_predictions(PREDICTIONS, REFERENCES, "math", paper_scores=False)


def test_score_predictions_refuses_what_it_cannot_score(monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        score_predictions(PREDICTIONS, REFERENCES[:2])
    with pytest.raises(ValueError, match="`forwards` has 2 values for 3 predictions"):
        score_predictions(PREDICTIONS, REFERENCES, forwards=[1, 2])
    with pytest.raises(ValueError, match="non-negative numbers"):
        score_predictions(PREDICTIONS, REFERENCES, generated_tokens=[1, math.nan, 2])
    with pytest.raises(ValueError, match="Unknown scorer 'bleu'"):
        score_predictions(PREDICTIONS, REFERENCES, "bleu")
    with pytest.raises(ValueError, match=CODE_EXECUTION_ENV_VAR):
        score_predictions(["x = 1"], ["assert x == 1"], "code")
    assert score_predictions(["x = 1"], ["assert x == 1"], "code", allow_code_execution=True)["accuracy"] == 1.0


def test_the_metric_module_ships_with_the_package():
    assert os.path.isfile(os.path.join(METRIC_PATH, "t3d_eval.py"))
    with pytest.raises(ValueError, match="Unknown configuration 'bleu'"):
        load_metric("bleu")


def test_evaluate_loads_the_metric_offline_and_combines_it(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    metric = load_metric("math", cache_dir=str(tmp_path))
    scores = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, forwards=[8, 4, 4], generated_tokens=[16, 8, 8]
    )
    assert scores == score_predictions(PREDICTIONS, REFERENCES, "math", forwards=[8, 4, 4], generated_tokens=[16, 8, 8])
    same = evaluate.load(METRIC_PATH, "paper_math", cache_dir=str(tmp_path))
    assert same.compute(predictions=PREDICTIONS, references=REFERENCES)["accuracy"] == pytest.approx(1 / 3)
    combined = evaluate.combine([load_metric("math", cache_dir=str(tmp_path), experiment_id="a"), same])
    merged = combined.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert sorted(value for key, value in merged.items() if key.endswith("_accuracy") and "paper" not in key) == [
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
    ]
    metric.add_batch(predictions=PREDICTIONS[:2], references=REFERENCES[:2])  # incremental, as evaluate's metrics
    metric.add_batch(predictions=PREDICTIONS[2:], references=REFERENCES[2:])
    assert metric.compute()["num_samples"] == 3
