"""Tests of t3d_trl.evaluation.datasets on local fixtures in the hub schemas (no network)."""

import json
from pathlib import Path

import datasets
import pytest

from t3d_trl.evaluation import (
    code_passes,
    list_eval_datasets,
    load_eval_dataset,
    math_equal,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
COLUMNS = {"id", "prompt", "reference", "scorer"}


def _read_jsonl(name):
    with open(FIXTURES / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _user_content(prompt):
    assert isinstance(prompt, list) and len(prompt) == 1
    assert prompt[0]["role"] == "user"
    return prompt[0]["content"]


def test_gsm8k():
    raw = _read_jsonl("gsm8k.jsonl")
    ds = load_eval_dataset("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
    assert isinstance(ds, datasets.Dataset)
    assert set(ds.column_names) == COLUMNS
    assert len(ds) == len(raw)
    assert ds["reference"] == ["18", "3", "70000", "540"]
    assert set(ds["scorer"]) == {"math"}
    content = _user_content(ds[0]["prompt"])
    assert content.startswith(raw[0]["question"])
    assert content.endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    # The reference is usable by the math scorer, and so is the raw GSM8K solution.
    assert math_equal("... so she makes \\boxed{18} dollars", ds[0]["reference"])
    assert math_equal("The profit is $70,000.\nThe answer is $70,000$.", raw[2]["answer"])


def test_math500():
    raw = _read_jsonl("math500.jsonl")
    ds = load_eval_dataset("MATH-500", path=FIXTURES / "math500.jsonl")
    assert set(ds.column_names) == COLUMNS
    assert ds["reference"] == [r["answer"] for r in raw]
    assert ds["id"][0] == "test/precalculus/807.json"
    content = _user_content(ds[0]["prompt"])
    assert raw[0]["problem"] in content and "\\boxed{}" in content
    # Each fixture's worked solution reaches its reference.
    for row, reference in zip(raw, ds["reference"]):
        assert math_equal(row["solution"], reference)


@pytest.mark.parametrize(("name", "fixture"), [("mbpp", "mbpp.jsonl"), ("mbpp_sanitized", "mbpp_sanitized.jsonl")])
def test_mbpp(name, fixture):
    raw = _read_jsonl(fixture)
    ds = load_eval_dataset(name, path=FIXTURES / fixture)
    assert set(ds.column_names) == COLUMNS
    assert set(ds["scorer"]) == {"code"}
    for row, example in zip(raw, ds):
        content = _user_content(example["prompt"])
        description = row.get("text", row.get("prompt"))
        assert description in content
        assert content.startswith("You are an expert Python programmer, and here is your task:")
        assert "```python" in content
        for test in row["test_list"]:
            assert test in content
            assert test in example["reference"]
        assert example["id"] == f"mbpp/{row['task_id']}"
        # The reference solution passes the reference tests.
        assert code_passes(row["code"], example["reference"], timeout=10, allow_code_execution=True)


def test_mbpp_reference_rejects_wrong_program():
    ds = load_eval_dataset("mbpp", path=FIXTURES / "mbpp.jsonl")
    wrong = "def remove_Occ(s, ch):\n    return s[1:-1]"
    assert not code_passes(wrong, ds[0]["reference"], timeout=10, allow_code_execution=True)


def test_mbpp_sanitized_test_imports_go_into_reference():
    ds = load_eval_dataset("mbpp_sanitized", path=FIXTURES / "mbpp_sanitized.jsonl")
    assert ds[2]["reference"].startswith("import heapq as hq\n")


def test_humaneval():
    raw = _read_jsonl("humaneval.jsonl")
    ds = load_eval_dataset("humaneval", path=FIXTURES / "humaneval.jsonl")
    assert set(ds.column_names) == COLUMNS
    assert ds["id"] == [r["task_id"] for r in raw]
    for row, example in zip(raw, ds):
        content = _user_content(example["prompt"])
        assert row["prompt"].strip("\n") in content
        assert "```python" in content
        assert example["reference"].startswith(row["test"].rstrip())
        assert example["reference"].rstrip().endswith(f"check({row['entry_point']})")
        program = row["prompt"] + row["canonical_solution"]
        assert code_passes(program, example["reference"], timeout=10, allow_code_execution=True)
    wrong = raw[1]["prompt"] + "    return number\n"
    assert not code_passes(wrong, ds[1]["reference"], timeout=10, allow_code_execution=True)


def test_limit_plain_text_and_custom_template():
    ds = load_eval_dataset(
        "gsm8k", path=FIXTURES / "gsm8k.jsonl", limit=2, as_chat=False, prompt_template="Q: {question}\nA:"
    )
    assert len(ds) == 2
    assert isinstance(ds[0]["prompt"], str)
    assert ds[0]["prompt"].startswith("Q: Janet") and ds[0]["prompt"].endswith("\nA:")


def test_json_file_with_split_key(tmp_path):
    rows = _read_jsonl("gsm8k.jsonl")
    path = tmp_path / "gsm8k.json"
    path.write_text(json.dumps({"train": rows[:1], "test": rows[1:]}))
    ds = load_eval_dataset("gsm8k", path=path, split="test")
    assert ds["reference"] == ["3", "70000", "540"]


def test_hub_code_path_is_called_with_hub_id(monkeypatch):
    calls = []
    rows = _read_jsonl("gsm8k.jsonl")

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(rows[:2])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_eval_dataset("gsm8k", limit=2)
    assert calls == [(("openai/gsm8k", "main"), {"split": "test[:2]"})]
    assert ds["reference"] == ["18", "3"]

    calls.clear()
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: calls.append((a, k)) or datasets.Dataset.from_list(_read_jsonl("humaneval.jsonl")),
    )
    load_eval_dataset("openai_humaneval")
    assert calls == [(("openai/openai_humaneval",), {"split": "test"})]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="choose from gsm8k, math500, mbpp, mbpp_sanitized, humaneval"):
        load_eval_dataset("squad")
    assert list_eval_datasets() == ["gsm8k", "humaneval", "math500", "mbpp", "mbpp_sanitized"]
    with pytest.raises(FileNotFoundError):
        load_eval_dataset("gsm8k", path=tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="question"):
        load_eval_dataset("gsm8k", path=bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_eval_dataset("gsm8k", path=empty)
    with pytest.raises(ValueError, match="limit"):
        load_eval_dataset("gsm8k", path=FIXTURES / "gsm8k.jsonl", limit=0)
