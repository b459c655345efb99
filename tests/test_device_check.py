"""benchmarks/device_check.py runs end to end on CPU (``--cpu-smoke``: tiny models) and prints its one table."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_markdown_table_has_one_line_per_row_and_escapes_bars(device_check):
    rows = [device_check.row("a", "check", "x | y", "1.000", "detail"), device_check.row("b", "other", "", "2", "")]
    lines = device_check.markdown_table(rows).splitlines()
    assert lines[0] == "| row | check | setting | result | detail | status |"
    assert len(lines) == 4 and lines[2].count("|") == 7 and "x / y" in lines[2]


def test_cpu_smoke_prints_every_row_of_the_table(device_check, capsys):
    assert device_check.main(["--cpu-smoke"]) == 0
    output = capsys.readouterr().out
    table = [line for line in output.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    rows = {}
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.setdefault(cells[0], []).append(cells)
    assert set(rows) == {"a", "b", "c", "d", "e", "f"}, output
    agreements = [float(re.match(r"([\d.]+) token agreement", cells[3]).group(1)) for cells in rows["a"]]
    assert len(agreements) == 3 and all(0.0 <= value <= 1.0 for value in agreements)
    dense = next(cells for cells in rows["b"] if "dense" in cells[2])
    assert dense[5] == "PASS" and re.match(r"\d+ ms", dense[3])
    assert rows["c"][0][5] == "PASS" and "x time" in rows["c"][0][3]
    static = rows["d"]  # "not available in this build" until generate() takes cache_implementation="static"
    assert static[0][3] == "not available in this build" or all("tokens/s" in cells[3] for cells in static)
    assert not any(cells[5] == "FAIL" for cells in table)
