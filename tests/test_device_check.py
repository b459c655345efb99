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
    if static[0][3] != "not available in this build":
        # the first cell always runs; the others run until --static-budget seconds have passed, which depends on the
        # machine's load, so a later cell is measured or skipped for the time budget, never anything else
        assert "tokens/s" in static[0][3], static[0]
        for cells in static[1:]:
            assert "tokens/s" in cells[3] or (cells[3], cells[4], cells[5]) == ("skipped", "time budget", "n/a"), cells
    assert not any(cells[5] == "FAIL" for cells in table)


def test_static_cells_past_the_time_budget_are_skipped_not_failed(device_check):
    """The load-dependent outcome, forced: with no time budget, every static-decode cell says "skipped" for the time
    budget (status n/a, not FAIL), which the smoke test above accepts for every cell but the first."""
    tokenizer = device_check.build_tokenizer(device_check.SMOKE.vocab_size)
    rows = device_check.static_decode_rows(device_check.SMOKE, "cpu", tokenizer, budget_s=0.0)
    if rows[0]["result"] == "not available in this build":
        pytest.skip("static-shape decoding is not in this build")
    cells = len(device_check.SMOKE.static_batches) * 2 * 3  # eager and compiled x batches x 1, 2, 4 steps per block
    assert [(r["result"], r["detail"], r["status"]) for r in rows] == [("skipped", "time budget", "n/a")] * cells


def test_failure_reports_leave_out_debug_logs(tmp_path):
    """A failing test's report shows the warnings it logged, not DEBUG records (torch's `torch.__trace` logger writes
    hundreds of them): `log_level` in pyproject.toml's pytest settings."""
    import subprocess

    (tmp_path / "test_inner.py").write_text(
        "import logging\n\n"
        "def test_fails():\n"
        "    chatty = logging.getLogger('torch.__trace_like')\n"
        "    chatty.setLevel(logging.DEBUG)\n"
        "    chatty.debug('%s-MARKER', 'DEBUGREC')\n"  # the record's text is not in the test's source
        "    logging.getLogger('t3d_trl.inner').warning('%s-MARKER', 'WARNREC')\n"
        "    assert False\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(SCRIPT.parents[1] / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:]
    assert "WARNREC-MARKER" in result.stdout and "DEBUGREC-MARKER" not in result.stdout
