"""One T3D optimizer step on a tiny model; writes the first step's logged metrics (run under accelerate launch).

Usage: python train_2proc.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE
"""

import json
import os
import sys

import torch
from datasets import Dataset

from t3d_trl import T3DTrainer
from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer

PROMPTS = ["abc", "hello wor", "what is 2+3?", "abcdefgh", "xyz", "12+34=", "k", "the cat"]


def main(output_dir: str, per_device_batch_size: int) -> None:
    tokenizer = tiny_tokenizer()
    trajectories = Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, PROMPTS))
    args = tiny_t3d_config(
        output_dir,
        per_device_train_batch_size=per_device_batch_size,
        max_steps=1,
        random_token_ratio=0.1,
        dataloader_drop_last=True,
    )
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )
    trainer.train()
    is_main = trainer.is_world_process_zero()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    log["world_size"] = trainer.accelerator.num_processes
    log["wrapped_before_end"] = _live_ddp_wrappers()
    # a DDP wrapper alive after the process group is destroyed can deadlock the process at exit
    trainer.end()
    log["wrapped_after_end"] = _live_ddp_wrappers()
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "first_step.json"), "w") as handle:
            json.dump(log, handle)


def _live_ddp_wrappers() -> int:
    import gc

    from torch.nn.parallel import DistributedDataParallel

    gc.collect()
    return sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
