"""What the wheel and the source distribution hold: the package with its bundled configs and no study harness; a
source distribution whose tests run (conftest.py and fixtures); a long description whose links work on PyPI."""

from __future__ import annotations

import re
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel and the sdist built from this checkout with setuptools' PEP 517 backend (no network, no isolation)."""
    import os

    from setuptools import build_meta

    out = tmp_path_factory.mktemp("dist")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        sdist = build_meta.build_sdist(str(out))
        wheel = build_meta.build_wheel(str(out))
    finally:
        os.chdir(cwd)
    return out / wheel, out / sdist


def test_the_wheel_ships_the_bundled_configs_and_not_the_study(built):
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"t3d_trl/configs/{n}.yaml" for n in ("train", "rollout", "eval", "demo", "sdar_t3d_paper")} <= set(names)
    assert not [name for name in names if name.startswith(("examples/", "tests/", "benchmarks/"))]
    assert "t3d_trl/demo/report.py" in names and "t3d_trl/demo/pipeline.py" in names


def test_the_sdist_holds_what_its_tests_need(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("tests/conftest.py", "tests/toy_objective.py", "examples/study.py", ".ci/run", "mkdocs.yml"):
        assert needed in names, needed
    fixtures = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "fixtures").rglob("*") if p.is_file())
    assert fixtures and set(fixtures) <= names


def test_the_long_description_links_are_absolute():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    relative = [link for link in re.findall(r"\]\(([^)]+)\)", readme) if not link.startswith(("http", "#"))]
    assert not relative, f"README.md is the package's long description on PyPI; make these links absolute: {relative}"
