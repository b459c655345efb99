"""Tests of the paper's evaluation protocol (t3d_trl.evaluation.protocol) and `t3d-trl eval --preset paper`, on local
files in the official JSON layout and in the usual Hub layouts, with a tiny model."""

import json
import logging
from pathlib import Path

import pytest

from t3d_trl.cli import main
from t3d_trl.evaluation import (
    CODE_EXECUTION_ENV_VAR,
    get_scorer,
    load_paper_dataset,
    paper_settings,
    parse_code_reference,
    read_json,
    render_paper_prompt,
)
from t3d_trl.scripts.arguments import EvalArguments
from t3d_trl.scripts.evaluate import apply_preset

FIXTURES = Path(__file__).parent / "fixtures" / "eval"

OFFICIAL_ROWS = {
    "MATH500": [{"question": "What is $\\frac{1}{4} + \\frac{1}{4}$?", "ground_truth_answer": "\\frac{1}{2}"}],
    "GSM8K": [{"question": "Tom has 3 apples and eats one. How many are left?", "ground_truth_answer": "2"}],
    "MBPP": [
        {
            "question": "Write a function add(a, b).\nYour code should pass the test:\nassert add(1, 2) == 3\n",
            "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
            "prefix": "",
            "test_method": "function",
            "test_time_limit": 1,
        }
    ],
    "HumanEval": [
        {
            "question": 'def inc(x):\n    """x + 1"""\n',
            "test_list": ["def check(candidate):\n    assert candidate(1) == 2\n\ncheck(inc)"],
            "prefix": '```python\ndef inc(x):\n    """x + 1"""\n',
            "test_method": "function",
            "test_time_limit": 1,
        }
    ],
}


@pytest.fixture
def official_files(tmp_path):
    paths = {}
    for name, rows in OFFICIAL_ROWS.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(rows), encoding="utf-8")
    return paths


def test_official_prompts_are_rendered_as_the_official_sampler_does(official_files):
    (math,) = load_paper_dataset("MATH500", path=str(official_files["MATH500"]))
    assert math["prompt"] == (
        "<|im_start|>user\nWhat is $\\frac{1}{4} + \\frac{1}{4}$?\nPlease reason step by step, and put your final "
        "answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant"
    )  # Jinja drops the template's last newline, so the official prompt ends at "assistant"
    assert math["reference"] == "\\frac{1}{2}" and math["scorer"] == "math"
    (code,) = load_paper_dataset("humaneval", path=str(official_files["HumanEval"]))
    assert code["prompt"].startswith("<|im_start|>user\nThis is the problem:\ndef inc(x):")
    assert (
        "Do not include more than one code block. <|im_end|>\n<|im_start|>assistant\n```python\ndef inc(x):"
        in (code["prompt"])
    )
    assert code["prompt"].endswith('"""x + 1"""')  # the prefix, less its final newline
    reference = parse_code_reference(code["reference"])
    assert reference.prefix == OFFICIAL_ROWS["HumanEval"][0]["prefix"] and len(reference.tests) == 1
    assert code["scorer"] == "code"
    assert render_paper_prompt("hi", "x\n") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nx"


def test_hub_layouts_read_like_the_official_ones(monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)
    gsm8k = load_paper_dataset("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
    assert gsm8k["reference"] == ["18", "3", "70000", "540"]  # the number after ####
    math500 = load_paper_dataset("math500", path=str(FIXTURES / "math500.jsonl"), limit=2)
    assert len(math500) == 2 and math500[1]["reference"] == "\\frac{1}{2}"
    humaneval = load_paper_dataset("humaneval", path=str(FIXTURES / "humaneval.jsonl"), limit=1)
    raw = json.loads((FIXTURES / "humaneval.jsonl").read_text(encoding="utf-8").splitlines()[0])
    reference = parse_code_reference(humaneval[0]["reference"])
    assert reference.prefix == "```python\n" + raw["prompt"]
    # the canonical body, continuing the prefix as a model would, passes under both scorers
    body = raw["canonical_solution"] + "\n```"
    for scorer in ("code", "paper_code"):
        assert get_scorer(scorer, allow_code_execution=True, timeout=10.0)(body, humaneval[0]["reference"]), scorer
    mbpp = load_paper_dataset("mbpp", path=str(FIXTURES / "mbpp.jsonl"), limit=1)
    raw = json.loads((FIXTURES / "mbpp.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert raw["text"] in mbpp[0]["prompt"] and raw["test_list"][0] in mbpp[0]["prompt"]
    assert parse_code_reference(mbpp[0]["reference"]).tests[-len(raw["test_list"]) :] == tuple(raw["test_list"])


def test_paper_rows_of_an_unknown_set_or_stdin_tests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="the paper's sets are math500, gsm8k, mbpp, humaneval"):
        load_paper_dataset("arith", path=str(tmp_path / "x.json"))
    stdin = tmp_path / "stdin.json"
    stdin.write_text(json.dumps([{"question": "q", "test_list": ["1"], "test_method": "stdio"}]))
    with pytest.raises(ValueError, match="test_method='stdio'"):
        load_paper_dataset("mbpp", path=str(stdin))


def test_paper_settings_are_the_tables_settings():
    settings = paper_settings()
    static = [(s.block_size, s.steps_per_block) for s in settings if s.confidence_threshold is None]
    assert static == [(4, 4), (4, 2), (4, 1), (8, 8), (8, 4), (8, 2)]  # 1, 2 and 4 tokens per step
    (dynamic,) = [s for s in settings if s.confidence_threshold is not None]
    assert (dynamic.block_size, dynamic.steps_per_block, dynamic.confidence_threshold) == (4, 4, 0.9)
    assert dynamic.remasking == "low_confidence_dynamic"


def test_the_preset_keeps_the_flags_the_user_set(caplog):
    args = EvalArguments(max_new_tokens=64)
    with caplog.at_level(logging.WARNING):
        kept = apply_preset(args, "paper")
    assert kept == ["--max_new_tokens 64"] and "keeping your --max_new_tokens 64" in caplog.text
    assert args.max_new_tokens == 64 and args.temperature == 1.0 and args.tokens_per_step == [1, 2, 4]
    assert args.eval_dataset == ["math500", "gsm8k", "mbpp", "humaneval"]
    with pytest.raises(ValueError, match="the presets are paper"):
        apply_preset(EvalArguments(), "lab")


@pytest.fixture
def tiny_checkpoint(tmp_path):
    import torch

    from t3d_trl.testing import task_tokenizer, tiny_qwen3

    tokenizer = task_tokenizer()
    model = tiny_qwen3(
        seed=0, dtype=torch.float32, vocab_size=len(tokenizer), max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_eval_preset_paper_writes_the_three_tables(tiny_checkpoint, official_files, tmp_path, monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)
    files = [str(official_files[name]) for name in ("MATH500", "GSM8K", "MBPP", "HumanEval")]
    common = ["--preset", "paper", "--model_name_or_path", str(tiny_checkpoint), "--eval_data_files", *files,
              "--max_new_tokens", "8", "--allow_code_execution", "--batch_size", "1"]  # fmt: skip
    assert main(["eval", *common, "--output_dir", str(tmp_path / "original")]) == 0
    assert main(["eval", *common, "--output_dir", str(tmp_path / "student"),
                 "--compare_to", str(tmp_path / "original" / "results.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "student" / "results.json").read_text())
    assert report["arguments"]["temperature"] == 1.0 and report["arguments"]["max_new_tokens"] == 8
    assert [(s["block_size"], s["steps_per_block"], s["confidence_threshold"]) for s in report["settings"]] == [
        (4, 4, None), (4, 2, None), (4, 1, None), (8, 8, None), (8, 4, None), (8, 2, None), (4, 4, 0.9)
    ]  # fmt: skip
    results = read_json(tmp_path / "student" / "results.json")
    assert {r.dataset for r in results} == {"math500", "gsm8k", "mbpp", "humaneval"}
    assert all(r.paper_accuracy is not None and r.num_disagreements is not None for r in results)
    tables = (tmp_path / "student" / "paper_tables.md").read_text()
    for heading in ("Few-step accuracy", "Full-step decoding", "Dynamic decoding"):
        assert tables.count(heading) == 2, heading  # under the paper's scoring, then the library's
    assert "Improvement vs " in tables and "(original)" in tables  # the same checkpoint twice: told apart
    sample = json.loads((tmp_path / "student" / "humaneval" / "samples_B4-S1-static.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].endswith('"""x + 1"""') and sample["paper_scorer"] == "paper_code"
    assert isinstance(sample["paper_correct"], bool) and isinstance(sample["correct"], bool)
