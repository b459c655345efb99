"""Tests of t3d_trl.evaluation.report."""

import json
import math

import pytest

from t3d_trl.evaluation import EvalResult, plot_accuracy_vs_tokens_per_step, read_json, to_markdown, write_json


def _result(block_size, steps, accuracy, threshold=None, remasking="low_confidence_static", **overrides):
    fields = dict(
        setting=f"B{block_size}-S{steps}" + ("" if threshold is None else f"-t{threshold}"),
        block_size=block_size,
        steps_per_block=steps,
        remasking=remasking,
        threshold=threshold,
        accuracy=accuracy,
        num_samples=200,
        num_correct=round(200 * accuracy),
        tokens_per_second=123.456,
        latency_per_sample=0.98765,
        avg_nfe=64.5,
        avg_gen_length=180.25,
        tokens_per_forward=2.7946,
        dataset="gsm8k",
        total_time_s=197.53,
        total_generated_tokens=36050,
        total_nfe=12900,
    )
    fields.update(overrides)
    return EvalResult(**fields)


@pytest.fixture
def results():
    return [
        _result(4, 4, 0.80),
        _result(4, 2, 0.75),
        _result(4, 1, 0.60),
        _result(8, 2, 0.70),
        _result(8, 1, 0.50),
        _result(4, 4, 0.78, threshold=0.9, remasking="low_confidence_dynamic"),
    ]


def test_json_roundtrip(tmp_path, results):
    path = tmp_path / "sub" / "results.json"
    write_json(results, path)
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == len(results)
    assert data[0]["block_size"] == 4 and data[0]["accuracy"] == 0.8 and data[0]["threshold"] is None
    assert read_json(path) == results


def test_json_nan_becomes_null(tmp_path):
    result = _result(4, 1, 0.5, avg_nfe=math.nan, tokens_per_forward=math.nan)
    path = tmp_path / "r.json"
    write_json([result], path)
    assert json.loads(path.read_text())[0]["avg_nfe"] is None  # strict JSON, no NaN literal
    back = read_json(path)[0]
    assert math.isnan(back.avg_nfe) and math.isnan(back.tokens_per_forward)
    assert back.accuracy == 0.5


def test_tokens_per_step():
    assert _result(8, 2, 0.5).tokens_per_step == 4.0


def test_markdown_table(results):
    md = to_markdown(results, title="GSM8K")
    lines = md.strip().splitlines()
    assert lines[0] == "### GSM8K"
    header = lines[2]
    for column in (
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
    ):
        assert column in header
    assert lines[3].startswith("|---")
    rows = lines[4:]
    assert len(rows) == len(results)
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells == ["B4-S4", "4", "4", "static", "80.00", "123.46", "0.988", "64.50", "180.25", "2.79"]
    assert "dynamic (τ=0.9)" in rows[-1]
    assert all(row.count("|") == header.count("|") for row in rows)


def test_markdown_missing_values_as_dash():
    md = to_markdown([_result(4, 1, 0.5, avg_nfe=math.nan)])
    assert "| - |" in md


def test_plot_written(tmp_path, results):
    path = tmp_path / "plots" / "acc.png"
    plot_accuracy_vs_tokens_per_step(results, path, title="GSM8K")
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="No results"):
        plot_accuracy_vs_tokens_per_step([], tmp_path / "x.png")
