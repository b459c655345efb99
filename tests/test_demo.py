"""The demo: its tasks and scorers, and a miniature end-to-end run of the pipeline."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
from datasets import Dataset

from t3d_trl.demo import TASKS, DemoConfig, run_demo
from t3d_trl.demo.pipeline import valid_rollouts
from t3d_trl.demo.report import markdown_table, preservation_table, summarise
from t3d_trl.demo.tasks import (
    PROMPT_LENGTH,
    evaluation_prompts,
    is_digit_sum,
    is_one_of,
    is_permutation,
    training_pairs,
)
from t3d_trl.evaluation import get_scorer
from t3d_trl.testing import task_tokenizer


def test_scorers_on_handmade_answers():
    assert is_one_of("cat", "cat|dog") and not is_one_of("cot", "cat|dog")
    assert is_digit_sum("159", "15") and not is_digit_sum("158", "15") and not is_digit_sum("1509", "15")
    assert is_permutation("cab", "abc") and not is_permutation("aab", "abc") and not is_permutation("abcd", "abc")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generated_answers_are_valid_and_prompts_align_to_blocks(name):
    tokenizer = task_tokenizer()
    scorer = get_scorer(TASKS[name].scorer)
    block = 4
    rng = random.Random(0)
    answers = set()
    for _ in range(200):
        prompt, answer, reference = TASKS[name].sample(rng)
        assert len(tokenizer(prompt)["input_ids"]) == PROMPT_LENGTH  # answers start on a block boundary
        assert scorer(answer, reference)
        # the answer and its EOS fill exactly the task's number of blocks of 4
        assert (TASKS[name].blocks - 1) * block < len(answer) + 1 <= TASKS[name].blocks * block
        assert set(prompt + answer) <= set(TASKS[name].alphabet)
        answers.add((prompt, answer))
    prompts = {p for p, _ in answers}
    assert len(answers) > len(prompts)  # several valid answers per prompt: the task is multimodal
    rows = evaluation_prompts(name, 10, seed=1)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert all(r["task"] == name for r in training_pairs([name], 5, seed=2))


def test_summary_table_recomputes_averages_and_improvement():
    config = DemoConfig(tasks=("words", "sums"), eval_block_sizes=(4,), tokens_per_step=(1, 4))
    results = [
        {
            "accuracy": {
                "Teacher": {"B4-TokPS1": {"words": 100.0, "sums": 50.0}, "B4-TokPS4": {"words": 20.0, "sums": 0.0}},
                "T3D": {"B4-TokPS1": {"words": 90.0, "sums": 50.0}, "B4-TokPS4": {"words": 60.0, "sums": 20.0}},
            }
        },
        {
            "accuracy": {
                "Teacher": {"B4-TokPS1": {"words": 100.0, "sums": 70.0}, "B4-TokPS4": {"words": 40.0, "sums": 0.0}},
                "T3D": {"B4-TokPS1": {"words": 100.0, "sums": 60.0}, "B4-TokPS4": {"words": 80.0, "sums": 20.0}},
            }
        },
    ]
    summary = summarise(results, config)
    assert summary["averages"]["T3D"][4]["mean"] == pytest.approx(45.0)  # (40 + 50) / 2
    assert summary["averages"]["T3D"][4]["std"] == pytest.approx(5.0)
    assert summary["averages"]["Teacher"][4]["mean"] == pytest.approx(15.0)
    table = markdown_table(summary, config)
    assert "| 4 | T3D | 70.0 ± 10.0 | 20.0 | 45.0 ± 5.0 | +200.0 |" in table
    # the paper's second table: one token per step, a student's change against the teacher in points
    preservation = preservation_table(summary, config)
    assert "| Teacher | 4 | 100.0 | 60.0 ± 10.0 | 80.0 |" in preservation
    assert "| T3D | 4 | 95.0 ± 5.0 (-5.0) | 55.0 ± 5.0 (-5.0) | 75.0 (-5.0) |" in preservation
    assert preservation_table(summary, dataclasses.replace(config, tokens_per_step=(4,))) == ""


#: a miniature of the demo's settings (seconds, not minutes)
MINIATURE = dict(
    tasks=("words", "walk"),
    hidden_size=32,
    num_layers=1,
    teacher_steps=12,
    teacher_batch_size=16,
    rollouts_per_task=8,
    student_steps=11,
    student_batch_size=8,
    eval_prompts_per_task=4,
)


def test_miniature_demo_runs_end_to_end_and_reuses_its_teacher(tmp_path, capsys):
    config = DemoConfig(
        output_dir=str(tmp_path),
        methods=("SFT", "ReDi", "T3D"),
        extra_methods={"T3D (uniform r)": {"loss_type": ["ddo", "path"], "mask_ratio_power": 0.0}},
        **MINIATURE,
    )
    report = run_demo(config)
    out = capsys.readouterr().out
    assert "ReDi: trained 2 rounds of 11 steps" in out
    for name in ("results.json", "results.md"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    summary = saved["summary"]
    assert summary["methods"] == ["Teacher", "SFT", "ReDi", "T3D", "T3D (uniform r)"]
    # ReDi (t3d_trl.recipes.redi): a second round, trained on the first round's own rollouts
    assert (tmp_path / "seed0" / "ReDi" / "round0").is_dir() and (tmp_path / "seed0" / "ReDi" / "round1").is_dir()
    assert (tmp_path / "seed0" / "teacher" / "generation_config.json").exists()
    assert json.loads((tmp_path / "seed0" / "teacher" / "generation_config.json").read_text())["max_new_tokens"] == 16
    identity = report["ddo_identity"]
    assert [line.split(":")[0] for line in identity] == ["step    1", "step   11"]
    assert all(abs(float(line.split("= ")[1].split()[0]) - math.log(2)) < 1e-5 for line in identity)
    accuracy = saved["seeds"][0]["accuracy"]
    assert set(accuracy["Teacher"]) == {"B4-TokPS1", "B4-TokPS2", "B4-TokPS4", "B8-TokPS1", "B8-TokPS2", "B8-TokPS4"}
    # the multi-block average is the walk column's average; DDO's logs include the fake-token agreement
    assert summary["multi_block_averages"]["T3D"]["1"]["mean"] == pytest.approx(
        (accuracy["T3D"]["B4-TokPS1"]["walk"] + accuracy["T3D"]["B8-TokPS1"]["walk"]) / 2
    )
    assert "fake_agreement" in summary["logs"]["T3D"] and "fake_agreement" not in summary["logs"]["SFT"]
    assert set(summary["rollout_validity"]) == {"words", "walk"} and summary["peak_memory_mb"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "Multi-block average" in text and "Teacher at one token per step" in text
    assert "Full-step preservation" in text and "| T3D | 8 |" in text
    capsys.readouterr()
    # a second run reuses the teacher and trains the students again (the demo keeps no students: the study does)
    again = run_demo(dataclasses.replace(config, methods=("T3D",), extra_methods={}))
    out = capsys.readouterr().out
    assert "teacher reused (same teacher settings)" in out and "T3D: trained 11 steps" in out
    assert again["seeds"][0]["accuracy"]["T3D"] == saved["seeds"][0]["accuracy"]["T3D"]  # the same run, again


def test_valid_rollouts_keep_what_the_task_scorer_accepts():
    rows = Dataset.from_list(
        [
            {"task": "walk", "completion": "31356420235", "reference": "3>5"},
            {"task": "walk", "completion": "31356420285", "reference": "3>5"},
            {"task": "words", "completion": "cat", "reference": "cat|dog"},
            {"task": "words", "completion": "cot", "reference": "cat|dog"},
            {"task": "words", "completion": "dog", "reference": "cat|dog"},
        ]
    )
    valid, share = valid_rollouts(rows)
    assert valid["completion"] == ["31356420235", "cat", "dog"]
    assert share == {"walk": 50.0, "words": pytest.approx(200 / 3)}


def test_generated_tokens_cover_the_longest_answer_in_whole_blocks():
    assert DemoConfig(tasks=("words", "perm")).generated_tokens() == 8  # 3 characters + EOS, one block of 8
    assert DemoConfig().generated_tokens() == 16  # walk: 11 + EOS = 3 blocks of 4, 2 of 8
    assert DemoConfig(max_new_tokens=24).generated_tokens() == 24


def test_demo_refuses_unknown_tasks_methods_and_data(tmp_path):
    with pytest.raises(ValueError, match="Unknown demo task"):
        run_demo(DemoConfig(output_dir=str(tmp_path), tasks=("nope",)))
    with pytest.raises(ValueError, match="Unknown method"):
        run_demo(DemoConfig(output_dir=str(tmp_path), methods=("T4D",)))
    with pytest.raises(ValueError, match="unknown data 'teacher'"):
        run_demo(DemoConfig(output_dir=str(tmp_path), extra_methods={"X": {"data": "teacher"}}))
    with pytest.raises(ValueError, match="`rounds` must be a positive integer, got 0"):
        run_demo(DemoConfig(output_dir=str(tmp_path), extra_methods={"X": {"rounds": 0}}))
    assert not list(tmp_path.iterdir())  # refused before anything ran
    untrained = DemoConfig(
        output_dir=str(tmp_path),
        tasks=("walk",),
        hidden_size=16,
        num_layers=1,
        teacher_steps=1,
        teacher_batch_size=4,
        rollouts_per_task=4,
        eval_prompts_per_task=2,
        methods=(),
        extra_methods={"TD (valid)": {"data": "valid_rollouts", "loss_type": ["td"]}},
    )
    with pytest.raises(ValueError, match=r"'TD \(valid\)' trains on the teacher rollouts its task's scorer accepts"):
        run_demo(untrained)  # an untrained teacher has no valid walk
