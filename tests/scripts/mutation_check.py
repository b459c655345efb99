"""Mutation check of the multi-block tests: each fault below, injected into a copy of the package, must make
``tests/test_multiblock.py`` fail (and the unchanged copy must pass).

The faults are the ways trajectories that cross blocks could plausibly be mishandled: the noisy stream seeing noisy
or clean copies of blocks it must not, the trajectory state taken in the first block only or from the wrong end of the
decoding order, path weights from the global instead of the within-block step, and noisy positions shifted by a block.

    python tests/scripts/mutation_check.py            # a line per fault: caught / NOT CAUGHT, about a minute on CPU

Exit status 1 when a fault is not caught or the unchanged copy fails. Not part of CI (it runs the test file once per
fault); run it after changing the collator, the masks or those tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (name, file under t3d_trl/, text, replacement); the first is the control (no change)
FAULTS: list[tuple[str, str, str, str]] = [
    ("control (no fault)", "masks.py", "CLEAN = 0", "CLEAN = 0"),
    ("noisy block sees noisy earlier blocks", "masks.py", "(k_noisy & (kb == qb))", "(k_noisy & (kb <= qb))"),
    ("noisy block sees its clean twin", "masks.py", "(~k_noisy & (kb < qb))", "(~k_noisy & (kb <= qb))"),
    ("earliest-decoded tokens masked", "collator.py", 'state_order: str = "latest"', 'state_order: str = "earliest"'),
    (
        "path weights from the global step",
        "collator.py",
        "sigma, steps_in_block = within_block_steps(steps, block, real)",
        "sigma, steps_in_block = within_block_steps(steps, block, real); sigma = steps",
    ),
    (
        "state in the first block only",
        "collator.py",
        "drawn = trajectory_state_mask(steps, block, valid, ratio, order=self.state_order)",
        "drawn = trajectory_state_mask(steps, block, valid, ratio, order=self.state_order) & (block == block[:, :1])",
    ),
    (
        "noisy positions shifted by one block",
        "layouts.py",
        "torch.where(noisy_stream, offset - c - t, torch.zeros_like(offset))",
        "torch.where(noisy_stream, offset - c - t + block_size, torch.zeros_like(offset))",
    ),
]


def run_fault(name: str, filename: str, text: str, replacement: str) -> bool:
    """Whether ``tests/test_multiblock.py`` passes on a copy of the package with ``text`` replaced."""
    with tempfile.TemporaryDirectory() as directory:
        copy = Path(directory)
        shutil.copytree(ROOT / "t3d_trl", copy / "t3d_trl")
        shutil.copytree(ROOT / "tests", copy / "tests")
        path = copy / "t3d_trl" / filename
        source = path.read_text()
        if text not in source:
            raise SystemExit(f"mutation_check: {filename} no longer contains {text!r} ({name}); update FAULTS.")
        path.write_text(source.replace(text, replacement, 1))
        process = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_multiblock.py"],
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
        )
        return process.returncode == 0


def main() -> int:
    failures = 0
    for index, (name, filename, text, replacement) in enumerate(FAULTS):
        passed = run_fault(name, filename, text, replacement)
        expected = index == 0  # the control must pass, every fault must fail
        verdict = ("passes" if passed else "FAILS") if index == 0 else ("NOT CAUGHT" if passed else "caught")
        failures += passed != expected
        print(f"{name:<40} {verdict}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
