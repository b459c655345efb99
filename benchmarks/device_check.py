"""Checks that need a CUDA device, as one short script for a lent GPU machine.

Runs the GPU-marked tests (flex attention decoding equal to sdpa, static-shape decoding captured as a CUDA graph
equal to the dynamic path), a bf16 decode of a tiny model with the KV cache against the no-cache path, and a few bf16
T3D training steps with the layout mask built on the device; prints PASS/FAIL per check and exits non-zero on a
failure.

    python benchmarks/device_check.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def check(name: str, passed: bool, detail: str = "") -> bool:
    print(f"[{'PASS' if passed else 'FAIL'}] {name} {detail}".rstrip(), flush=True)
    return passed


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    from datasets import Dataset

    from t3d_trl import T3DConfig, T3DTrainer, patch_model
    from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_tokenizer

    results = []
    gpu_tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")], cwd=ROOT)
    results.append(check("pytest -m gpu", gpu_tests.returncode == 0))

    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    model = patch_model(tiny_qwen3(dtype=torch.bfloat16).cuda(), tokenizer, block_size=4, max_new_tokens=64)
    batch = tokenizer(["abc", "hello wor", "what is 2+3?"], return_tensors="pt", padding=True).to("cuda")
    start = time.perf_counter()
    cached = model.generate(**batch, steps_per_block=2, return_dict_in_generate=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    plain = model.generate(**batch, steps_per_block=2, use_cache=False, return_dict_in_generate=True)
    agree = (cached.sequences == plain.sequences).float().mean().item()
    results.append(check("bf16 cached vs no-cache decoding", agree > 0.9, f"(token agreement {agree:.3f}, {elapsed:.2f}s)"))

    rows = Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tiny_tokenizer(), ["abc", "hello wor"] * 4))
    for kernel in ("sdpa", "flex_attention"):
        student = tiny_qwen3(dtype=torch.bfloat16)
        student.set_attn_implementation(kernel)
        with tempfile.TemporaryDirectory() as output:
            args = T3DConfig(output, max_steps=3, per_device_train_batch_size=4, logging_steps=1, report_to=[],
                             save_strategy="no", bf16=True, learning_rate=1e-3)
            trainer = T3DTrainer(student, args=args, train_dataset=rows, processing_class=tokenizer)
            trainer.train()
        first = next(h for h in trainer.state.log_history if "loss/real" in h)
        results.append(check(f"bf16 training step ({kernel})", abs(first["loss/real"] - 0.693147) < 1e-2,
                             f"(first loss/real {first['loss/real']:.4f})"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
