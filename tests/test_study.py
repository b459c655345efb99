"""``examples/study.py``: the demo's pipeline with the study's settings, students reused between runs, the plot."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from test_demo import MINIATURE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_study_settings_and_flags(study, capsys):
    config = study.study_config()
    assert config.seeds == (0, 1, 2) and "perm5" in config.tasks and config.teacher_steps == 5000
    assert set(study.STUDY_VARIANTS) <= set(config.extra_methods)
    printed = study.main(["--student_steps", "7", "--methods", "T3D", "--print_config"])
    assert printed.student_steps == 7 and printed.methods == ("T3D",) and printed.seeds == (0, 1, 2)
    assert json.loads(capsys.readouterr().out)["teacher_steps"] == 5000  # the study's default, not the demo's


def test_the_study_reuses_students_trained_with_the_same_settings(study, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the study's plot needs the plots extra (pip install t3d-trl[plots])")
    config = study.study_config(
        output_dir=str(tmp_path), seeds=(0,), methods=("SFT", "T3D"), extra_methods={}, **MINIATURE
    )
    first = study.run_study(config)
    assert (tmp_path / "accuracy_vs_tokens_per_step.png").stat().st_size > 0
    assert (tmp_path / "seed0" / "students" / "T3D.json").exists()
    capsys.readouterr()
    again = study.run_study(config)
    out = capsys.readouterr().out
    assert "teacher reused (same teacher settings)" in out and "T3D: reused (same settings)" in out
    assert again["seeds"][0]["accuracy"] == first["seeds"][0]["accuracy"]
    changed = dataclasses.replace(config, methods=("SFT",), extra_methods={"T3D (β=1)": {"beta": 1.0}})
    study.run_study(changed)
    out = capsys.readouterr().out
    assert "SFT: reused" in out and "T3D (β=1): trained 11 steps" in out
    # other student settings train every student again, on the same teacher
    study.run_study(dataclasses.replace(config, student_steps=2))
    out = capsys.readouterr().out
    assert "teacher reused" in out and "T3D: trained 2 steps" in out


def test_the_forgetting_preset_writes_its_tables_and_its_diagnosis(study, tmp_path, monkeypatch):
    diagnosis = study.Diagnosis(steps=(5,), steps_students=("T3D",), drift_students=("T3D", "T3D + anchor (0.05)"))
    monkeypatch.setitem(study.PRESETS["forgetting"], "diagnosis", diagnosis)
    variants = {name: study.FORGETTING_VARIANTS[name] for name in ("T3D + anchor (0.05)", "T3D (LoRA r=8, lr 2e-3)")}
    config = study.study_config("forgetting", output_dir=str(tmp_path), seeds=(0,), extra_methods=variants, **MINIATURE)
    assert config.methods == ("Naive TD", "T3D") and config.teacher_steps == MINIATURE["teacher_steps"]
    report = study.run_study(config, "forgetting")
    text = (tmp_path / "forgetting.md").read_text()
    for heading in ("Full-step preservation", "Paired by seed", "The default rule", "Cost per training step", "States"):
        assert heading in text, heading
    assert "| T3D + anchor (0.05) | T3D |" in text and "| T3D (LoRA r=8, lr 2e-3) | T3D |" in text
    numbers = report["forgetting"]
    assert set(numbers["steps"]["T3D"][0]["5"]) == {"4", "8"}  # measured at step 5, per block size
    drift = numbers["drift"]["T3D + anchor (0.05)"][0]
    assert set(drift) == {"4", "8"} and all(value["kl"] >= 0 for value in drift["4"].values())
    training, decoding = numbers["states"]["training"], numbers["states"]["decoding"]
    assert sum(training["r ∝ r⁸ (default)"]["4"].values()) == pytest.approx(100.0)
    assert decoding["B4-TokPS4"] == {"0": 100.0}  # four tokens per step: every forward sees an empty block
    assert set(decoding["B8-TokPS2"]) <= {"0", "2", "4", "6"}
    entry = json.loads((tmp_path / "seed0" / "students" / "T3D.json").read_text())
    assert entry["diagnosis"]["seconds"] > 0  # kept with the student, taken out of its cost
    # a second run reuses every student and their diagnosis
    again = study.run_study(config, "forgetting")
    assert again["forgetting"]["steps"] == numbers["steps"]


def test_a_lora_student_of_the_demo_is_checked(tmp_path):
    from t3d_trl.demo.pipeline import split_method

    assert split_method("x", {"peft": {"r": 4}, "loss_type": ["td"]}).peft == {"r": 4}
    with pytest.raises(ValueError, match="is not a LoraConfig"):
        split_method("x", {"peft": {"rank": 4}})
    with pytest.raises(ValueError, match="cannot be combined"):
        split_method("x", {"peft": {"r": 4}, "rounds": 2})
