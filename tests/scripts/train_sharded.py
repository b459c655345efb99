"""Three T3D optimizer steps on a tiny model, the reference refreshed after step 2; writes what the test compares.

Run it alone (one process, no sharding) or under ``accelerate launch`` with FSDP (``--config_file
examples/accelerate_configs/fsdp.yaml``, 2 processes, gloo) or DeepSpeed. Accelerate enables FSDP and DeepSpeed only
with accelerators (on CPU its state stays ``MULTI_CPU``); :func:`allow_sharding_on_cpu` flips the state after it is
built, so that the same code paths as on GPUs (``fully_shard`` / ``FullyShardedDataParallel`` / ZeRO-3, the
Trainer's FSDP checkpointing, TRL's ``prepare_fsdp`` / ``prepare_deepspeed``) run on CPU processes over gloo.

Writes ``OUTPUT_DIR/result.json`` (rank 0): the logged metrics of each step, what the reference's parameters are
(``DTensor``, ``FlatParameter``...), the largest difference between the reference's and the student's full
(gathered) parameters right after the refresh, whether the checkpoint's ``ref_model.pt`` holds that full state, and
the metrics of step 3 of a run resumed from the step-2 checkpoint.

Usage: python train_sharded.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE [cpu|cuda]   (``cuda``: benchmarks/device_check.py's
single-GPU FSDP1 run; FSDP1 refuses CPU devices)
"""

import json
import os
import sys

import torch
from datasets import Dataset
from transformers import TrainerCallback

from t3d_trl import T3DTrainer
from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer
from t3d_trl.trainer.callbacks import state_module

PROMPTS = ["abc", "hello wor", "what is 2+3?", "abcdefgh", "xyz", "12+34=", "k", "the cat"]
SYNC_STEPS = 2


def allow_sharding_on_cpu() -> None:
    """Let accelerate run FSDP / DeepSpeed on CPU processes (gloo): it would otherwise fall back to plain DDP."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        import importlib

        # DeepSpeed's CPU accelerator would first compile a shared-memory all-reduce (minutes); gloo suffices
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    original = AcceleratorState.__init__
    if getattr(original, "_t3d_cpu_sharding", False):
        return

    def __init__(self, *args, **kwargs):
        initialized = AcceleratorState._shared_state != {}
        original(self, *args, **kwargs)
        if initialized or self.distributed_type != DistributedType.MULTI_CPU:
            return
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin")
        elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            plugin = kwargs.get("deepspeed_plugin")
            self.distributed_type = DistributedType.DEEPSPEED
            plugin.set_mixed_precision(self._mixed_precision)
            plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = plugin
        else:
            return
        # every later AcceleratorState() copies PartialState's fields over its own
        PartialState._shared_state["distributed_type"] = self.distributed_type

    __init__._t3d_cpu_sharding = True
    AcceleratorState.__init__ = __init__


def full_state(model) -> dict[str, torch.Tensor]:
    """The model's full (gathered) state dict on CPU, on every rank, whatever the wrapping."""
    if hasattr(model, "ds_id") or any(hasattr(p, "ds_id") for p in model.parameters()):
        import deepspeed

        params = dict(model.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {name: p.detach().cpu().clone() for name, p in params.items()}
    if not torch.distributed.is_initialized():
        return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    state = get_model_state_dict(model, options=options)
    return {name: value.detach().cpu().clone() for name, value in state.items()}


def fsdp_units(model) -> int:
    """How many modules of ``model`` are FSDP units (FSDP2 ``fully_shard`` or FSDP1 wrappers)."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return sum(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


class ProbeAfterRefresh(TrainerCallback):
    """At the refresh step (after the sync callback): the largest |θ_ref − θ| over the full parameters."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.result = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != SYNC_STEPS:
            return
        # FSDP1 wrappers are kept (the root wrapper owns parameters), DeepSpeed engines removed
        accelerator = self.trainer.accelerator
        ref = full_state(state_module(self.trainer.ref_model, accelerator))
        student = full_state(state_module(model, accelerator))
        self.result["ref_names_equal"] = sorted(ref) == sorted(student)
        self.result["max_ref_student_diff"] = max((ref[k] - student[k]).abs().max().item() for k in ref)
        self.result["num_ref_params"] = len(ref)
        self.student_state = student


def build_trainer(output_dir: str, per_device_batch_size: int, device: str = "cpu", **overrides) -> T3DTrainer:
    tokenizer = tiny_tokenizer()
    trajectories = Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, PROMPTS))
    args = tiny_t3d_config(
        output_dir,
        per_device_train_batch_size=per_device_batch_size,
        max_steps=3,
        ref_model_sync_steps=SYNC_STEPS,
        random_token_ratio=0.1,
        dataloader_drop_last=True,
        save_strategy="steps",
        save_steps=SYNC_STEPS,
        save_only_model=False,
        use_cpu=device == "cpu",
        **overrides,
    )
    return T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )


def step_logs(trainer) -> dict[int, dict]:
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def main(output_dir: str, per_device_batch_size: int, device: str = "cpu") -> None:
    if device == "cpu":
        allow_sharding_on_cpu()
    trainer = build_trainer(output_dir, per_device_batch_size, device)
    probe = ProbeAfterRefresh(trainer)
    trainer.add_callback(probe)  # after the sync callback
    ref_model = state_module(trainer.ref_model, trainer.accelerator)
    ref_param = next(ref_model.parameters())
    result = {
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "ref_param_type": type(ref_param).__name__,
        "ref_fsdp_units": fsdp_units(ref_model),
        "ref_param_local_numel": sum(
            p.numel() if not hasattr(p, "to_local") else p.to_local().numel() for p in ref_model.parameters()
        ),
    }
    trainer.train()
    result["logs"] = step_logs(trainer)
    result.update(probe.result)
    is_main = trainer.is_world_process_zero()
    checkpoint = os.path.join(output_dir, f"checkpoint-{SYNC_STEPS}")
    if is_main:
        saved = torch.load(os.path.join(checkpoint, "ref_model.pt"), map_location="cpu", weights_only=True)
        student = probe.student_state
        result["ref_checkpoint_full"] = sorted(saved) == sorted(student) and all(
            saved[k].shape == student[k].shape for k in saved
        )
        result["ref_checkpoint_max_diff"] = max((saved[k] - student[k]).abs().max().item() for k in saved)
    trainer.release_wrappers()

    resumed = build_trainer(output_dir, per_device_batch_size, device)
    resumed.train(resume_from_checkpoint=checkpoint)
    result["resumed_logs"] = step_logs(resumed)
    resumed.end()
    if is_main:
        with open(os.path.join(output_dir, "result.json"), "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
