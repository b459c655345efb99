"""Sharded training on two CPU processes (gloo): FSDP2 and DeepSpeed ZeRO-3 give the one-process losses, and the
reference refresh, its checkpoint (``ref_model.pt``) and resuming work on sharded parameters.

Both runs use tests/scripts/train_sharded.py (three optimizer steps, the reference refreshed after step 2, a
checkpoint at step 2, then a run resumed from it) with the example accelerate configs; that script lets accelerate
run FSDP / DeepSpeed on CPU, which it otherwise only does on accelerators. FSDP1 refuses CPU devices in torch ("FSDP
needs a non-CPU accelerator device"): ``benchmarks/device_check.py`` covers it on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from t3d_trl.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_sharded.py"
CONFIGS = ROOT / "examples" / "accelerate_configs"
KEYS = ("loss", "loss/real", "loss/fake", "loss/path", "logps/real", "ref_logps/real")
# the workers import this checkout's t3d_trl
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def run_script(output_dir: Path, per_device_batch_size: int, launch: list[str] | None = None) -> dict:
    command = [sys.executable, str(SCRIPT), str(output_dir), str(per_device_batch_size)]
    if launch is not None:  # the module, not the `accelerate` script: it may live in another environment's bin/
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *launch,
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *command[1:],
        ]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((output_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    return run_script(tmp_path_factory.mktemp("one"), 8)


def check_against_one_process(sharded: dict, one: dict) -> None:
    assert sharded["world_size"] == 2 and one["world_size"] == 1
    # same data, seed and global batch: the same losses at every step
    for step in ("1", "2", "3"):
        for key in KEYS:
            assert sharded["logs"][step][key] == pytest.approx(one["logs"][step][key], abs=1e-5), (step, key)
    # the refresh after step 2 copied the student into the sharded reference: θ = θ_ref on step 3
    assert sharded["logs"]["3"]["loss/real"] == pytest.approx(math.log(2), abs=1e-6)
    assert sharded["logs"]["3"]["margins/real"] == pytest.approx(0.0, abs=1e-6)
    assert sharded["logs"]["2"]["margins/real"] != pytest.approx(0.0, abs=1e-4)  # (not trivially so)
    assert sharded["ref_names_equal"] and sharded["num_ref_params"] == one["num_ref_params"]
    assert sharded["max_ref_student_diff"] == 0.0  # gathered reference == gathered student
    # ref_model.pt holds the full reference (the student of step 2), not one rank's shards
    assert sharded["ref_checkpoint_full"] and sharded["ref_checkpoint_max_diff"] == 0.0
    # resumed from checkpoint-2, step 3 is the uninterrupted run's (the reference was restored, sharded)
    for key in KEYS:
        assert sharded["resumed_logs"]["3"][key] == pytest.approx(one["logs"]["3"][key], abs=1e-5), key


@pytest.mark.slow
def test_fsdp2_two_processes_give_the_one_process_losses_and_refresh_the_sharded_reference(tmp_path, one_process):
    sharded = run_script(tmp_path, 4, ["--config_file", str(CONFIGS / "fsdp.yaml")])
    assert sharded["distributed_type"] == "DistributedType.FSDP"
    # the reference is sharded by fully_shard, one unit per decoder layer plus the root
    assert sharded["ref_param_type"] == "DTensor" and sharded["ref_fsdp_units"] == 3
    assert sharded["ref_param_local_numel"] < 0.6 * one_process["ref_param_local_numel"]
    check_against_one_process(sharded, one_process)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install deepspeed, or the dev extras on Linux)",
)
def test_zero3_two_processes_give_the_one_process_losses_and_refresh_the_sharded_reference(tmp_path, one_process):
    sharded = run_script(tmp_path, 4, ["--config_file", str(CONFIGS / "deepspeed_zero3.yaml")])
    assert sharded["distributed_type"] == "DistributedType.DEEPSPEED"
    assert sharded["ref_param_local_numel"] == 0  # partitioned: the parameters hold no data outside a forward
    check_against_one_process(sharded, one_process)
