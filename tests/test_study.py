"""``examples/study.py``: the demo's pipeline with the study's settings, students reused between runs, the plot."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from test_demo import MINIATURE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
