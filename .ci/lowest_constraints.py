"""Print pip constraints that pin every requirement in pyproject.toml to its lower bound (``pkg>=X`` -> ``pkg==X``).

.ci/run installs t3d-trl against this output and runs the fast tests, so the floors are tested where they are
declared and nowhere else. Build requirements, dependencies and extras are all covered; a requirement without a
single ``>=`` floor is an error, so a new dependency cannot slip past the lowest-versions run.
"""

import re
import sys
import tomllib
from pathlib import Path

pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
project = pyproject["project"]
requirements = [*pyproject["build-system"]["requires"], *project["dependencies"]]
for extra in project.get("optional-dependencies", {}).values():
    requirements += extra

pins: dict[str, str] = {}
for requirement in requirements:
    name, specifiers = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?([^;]*)(?:;.*)?", requirement).groups()
    floors = [spec.strip()[2:].strip() for spec in specifiers.split(",") if spec.strip().startswith(">=")]
    if len(floors) != 1:
        sys.exit(f"error: {requirement!r} in pyproject.toml needs exactly one '>=' lower bound to test")
    key = re.sub(r"[-_.]+", "-", name).lower()
    if pins.setdefault(key, floors[0]) != floors[0]:
        sys.exit(f"error: {name} has two different lower bounds in pyproject.toml")
print("\n".join(f"{name}=={floor}" for name, floor in pins.items()))
