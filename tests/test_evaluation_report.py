"""Tests of t3d_trl.evaluation.report."""

import json
import math

import pytest

from t3d_trl.evaluation import (
    EvalResult,
    dynamic_table,
    few_step_table,
    plot_accuracy_vs_tokens_per_step,
    preservation_table,
    read_json,
    to_markdown,
    write_json,
)


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


# --------------------------------------------------------------------------------------------------------------------
# The paper's three tables
# --------------------------------------------------------------------------------------------------------------------


def _model_results(scale):
    """One model's results on two sets: static B=4 and B=8 at 1, 2 and 4 tokens per step, and the dynamic setting;
    accuracy = scale * (0.9 - 0.1 * tokens per step), on gsm8k, and half of it on math500."""
    results = []
    for dataset, factor in (("gsm8k", 1.0), ("math500", 0.5)):
        for block in (4, 8):
            for tokens in (1, 2, 4):
                accuracy = scale * factor * (0.9 - 0.1 * tokens)
                results.append(
                    _result(block, block // tokens, accuracy, dataset=dataset, paper_accuracy=accuracy - 0.05)
                )
        results.append(
            _result(4, 4, scale * factor * 0.6, threshold=0.9, remasking="low_confidence_dynamic", dataset=dataset)
        )
    return results


def _rows(table):
    return [
        [cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")
    ]


def test_few_step_table_averages_every_set_and_block_and_gives_the_improvement():
    table = few_step_table({"original": _model_results(1.0), "T3D": _model_results(1.2)}, "original")
    header, *rows = _rows(table)
    assert header[:4] == ["Model", "TokPS", "B=4 gsm8k", "B=4 math500"] and header[-1] == "Improvement vs original (%)"
    assert [(row[0], row[1]) for row in rows] == [("original", "2"), ("T3D", "2"), ("original", "4"), ("T3D", "4")]
    # TokPS 2: gsm8k 0.7, math500 0.35 at both block sizes -> average 52.50; T3D is 1.2x -> +20 %
    assert rows[0][2:4] == ["70.00", "35.00"] and rows[0][-2:] == ["52.50", "-"]
    assert rows[1][-2:] == ["63.00", "+20.00"]
    assert _rows(few_step_table({"T3D": _model_results(1.2)}, score="paper", tokens_per_step=[4]))[1][2] == "55.00"


def test_preservation_table_shows_full_step_accuracy_and_its_change():
    table = preservation_table({"original": _model_results(1.0), "T3D": _model_results(0.9)}, original="original")
    header, *rows = _rows(table)
    assert header == ["Model", "Block", "gsm8k", "math500", "Average"]
    assert rows[0] == ["original", "4", "80.00", "40.00", "60.00"]
    assert rows[1] == ["T3D", "4", "72.00 (-8.00)", "36.00 (-4.00)", "54.00 (-6.00)"]
    assert [row[1] for row in rows] == ["4", "4", "8", "8"]


def test_dynamic_table_has_the_efficiency_columns():
    header, *rows = _rows(dynamic_table({"T3D": _model_results(1.0), "original": _model_results(0.5)}, "original"))
    assert header == ["Model", "Dataset", "Setting", "Tokens/s", "Latency (s)", "Avg. steps", "Avg. length", "Acc. (%)"]
    assert [row[:2] for row in rows] == [
        ["original", "gsm8k"],
        ["original", "math500"],
        ["T3D", "gsm8k"],
        ["T3D", "math500"],
    ]
    assert rows[2][3:] == ["123.46", "0.988", "64.50", "180.25", "60.00"]


def test_tables_refuse_what_they_cannot_show():
    with pytest.raises(ValueError, match="original='base' is not one of the models"):
        few_step_table({"T3D": _model_results(1.0)}, "base")
    with pytest.raises(ValueError, match="score must be one of"):
        preservation_table(_model_results(1.0), score="official")
    with pytest.raises(TypeError, match="EvalResult"):
        dynamic_table({"T3D": [{"accuracy": 1.0}]})
    # a cell without a paper accuracy reads "-" and so does an average over it
    assert "| - |" in dynamic_table(_model_results(1.0), score="paper")


def test_without_matplotlib_the_plot_is_skipped_with_a_word(results, tmp_path, monkeypatch, caplog):
    import t3d_trl.evaluation.report as report

    monkeypatch.setattr(report, "plots_available", lambda: False)
    with caplog.at_level("WARNING", logger="t3d_trl.evaluation.report"):
        assert report.write_plot(results, tmp_path / "plot.png") is False
    assert "pip install 't3d-trl[plots]'" in caplog.text and not (tmp_path / "plot.png").exists()
    with pytest.raises(ImportError, match=r"t3d-trl\[plots\]"):
        report.plot_accuracy_vs_tokens_per_step(results, tmp_path / "plot.png")
