"""The checks that need a CUDA device, as one script that prints one table (about 6 minutes on one H200).

Models are Qwen3-shaped with random weights, built from a config on the device (nothing is downloaded): hidden 1024,
24 layers, 16 heads of 128, 8 key-value heads, intermediate 3072, vocabulary 151,936, tied embeddings (about 0.53 B
parameters). Rows of the table:

(a) bf16 vs fp32 greedy few-step decoding, the same weights: token agreement at 1, 2 and 4 steps per block (8 random
    prompts of 64 tokens, 128 new tokens, block 4);
(b) one T3D optimizer step (one student forward and backward, one reference forward, AdamW) at a 2,560-token layout
    ``[prompt ; x0 ; x_t]`` (prompt 512 + completion 1,024), batch 4, bf16 weights: step time and peak memory
    (``torch.cuda.max_memory_allocated``), sdpa with the dense ``[b, 1, N, N]`` mask vs flex attention with the
    BlockMask of ``t3d_trl.masks.layout_block_mask``;
(c) the same T3D step vs the official four-forward scheme (``benchmarks/training_step.py``'s ``make_steps``), and the
    two losses at the same weights;
(d) eager vs compiled decoding with a static cache (``generate(..., cache_implementation="static")``) at batch 1, 16,
    64 and 1, 2, 4 steps per block: "not available in this build" until t3d-trl's ``generate`` accepts it;
(e) ``pytest -m gpu`` (flex attention decoding and the flex training step against sdpa, compiled);
(f) FSDP1 on one GPU: tests/scripts/train_sharded.py (reference refresh on FlatParameters, ``ref_model.pt``,
    resuming) against the same script without FSDP (FSDP1 refuses CPU devices, so CI runs FSDP2 and ZeRO-3 only).

    python benchmarks/device_check.py               # on a GPU: prints the table, exits 1 if a row FAILs
    python benchmarks/device_check.py --cpu-smoke   # tiny models on CPU (< 1 minute): the script's own check

The table is Markdown: paste it with the GPU's name into benchmarks/README.md ("Device check").
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/training_step.py

from training_step import build_tokenizer, make_steps, synthetic_rows, time_steps  # noqa: E402

COLUMNS = ("row", "check", "setting", "result", "detail", "status")


@dataclass(frozen=True)
class Shapes:
    """Model and workload sizes of one run."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    prompt: int  # training layout: prompt + 2 x completion tokens
    completion: int
    train_batch: int
    decode_prompts: int
    decode_prompt_length: int
    decode_new_tokens: int
    block_size: int = 4
    repeats: int = 3
    static_batches: tuple[int, ...] = (1, 16, 64)


FULL = Shapes(1024, 24, 16, 8, 128, 3072, 151_936, 512, 1024, 4, 8, 64, 128)
SMOKE = Shapes(64, 2, 4, 2, 16, 128, 512, 24, 48, 2, 2, 8, 8, repeats=1, static_batches=(1, 2))


def row(name: str, check: str, setting: str, result: str, detail: str = "", status: str = "info") -> dict:
    return dict(zip(COLUMNS, (name, check, setting, result, detail, status)))


def markdown_table(rows: list[dict]) -> str:
    """The rows as one Markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for entry in rows:
        lines.append("| " + " | ".join(str(entry.get(c, "")).replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines)


def build_model(shapes: Shapes, device: str, dtype: torch.dtype, kernel: str = "sdpa", seed: int = 0):
    """A random Qwen3 of ``shapes``, initialised directly on ``device`` (the same weights for the same seed)."""
    from transformers import Qwen3ForCausalLM

    from t3d_trl.testing import tiny_qwen3_config

    config = tiny_qwen3_config(
        vocab_size=shapes.vocab_size,
        hidden_size=shapes.hidden_size,
        intermediate_size=shapes.intermediate_size,
        num_hidden_layers=shapes.num_layers,
        num_attention_heads=shapes.num_heads,
        num_key_value_heads=shapes.num_kv_heads,
        head_dim=shapes.head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attn_implementation=kernel,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.to(dtype).eval()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ (a) bf16 vs fp32 decoding
def decode_agreement(shapes: Shapes, device: str, tokenizer) -> list[dict]:
    """Greedy few-step decoding of the same random prompts by the fp32 model and its bf16 copy: the fraction of
    generated positions where the two agree (a position one of them did not generate counts as a disagreement)."""
    from t3d_trl import patch_model

    fp32 = patch_model(
        build_model(shapes, device, torch.float32),
        tokenizer,
        block_size=shapes.block_size,
        max_new_tokens=shapes.decode_new_tokens,
    )
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(
        4, min(shapes.vocab_size, 512), (shapes.decode_prompts, shapes.decode_prompt_length), generator=generator
    ).to(device)
    rows = []
    for steps in (1, 2, 4):
        outputs, seconds = {}, {}
        for name, model in (("fp32", fp32), ("bf16", bf16)):
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = model.generate(prompts, steps_per_block=steps)[:, prompts.shape[1] :]
            synchronize(device)
            seconds[name] = time.perf_counter() - start
        width = max(o.shape[1] for o in outputs.values())
        padded = [torch.nn.functional.pad(o, (0, width - o.shape[1]), value=-1) for o in outputs.values()]
        agreement = (padded[0] == padded[1]).float().mean().item()
        rows.append(
            row(
                "a",
                "bf16 vs fp32 decoding",
                f"steps/block {steps}",
                f"{agreement:.3f} token agreement",
                f"{shapes.decode_prompts} prompts x {shapes.decode_new_tokens} tokens; fp32 "
                f"{seconds['fp32']:.2f} s, bf16 {seconds['bf16']:.2f} s",
            )
        )
    del fp32, bf16
    return rows


# ---------------------------------------------------------------------------- (b), (c) training step and memory
def training_setup(shapes: Shapes, device: str, kernel: str, tokenizer, output_dir: str):
    """A T3DTrainer (official defaults) on a random model of ``shapes`` with ``kernel``, its optimizer, and one
    collated batch of synthetic trajectories on ``device`` (the layout the trainer's own collator builds)."""
    from datasets import Dataset

    from t3d_trl import T3DConfig, T3DTrainer

    rows = synthetic_rows(shapes.train_batch, shapes.prompt, shapes.completion)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    args = T3DConfig(
        output_dir=output_dir,
        per_device_train_batch_size=shapes.train_batch,
        learning_rate=1e-5,
        max_steps=1000,
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = T3DTrainer(
        build_model(shapes, device, dtype, kernel),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(shapes.train_batch)])
    batch = {k: v.to(trainer.args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return trainer, batch


def gib(value: float) -> str:
    return "n/a (CPU)" if math.isnan(value) else f"{value:.1f} GiB"


def peak_memory(run, device: str) -> tuple[float, float]:
    """(GiB allocated before, GiB peak of ``torch.cuda.max_memory_allocated`` during ``run``); NaN on CPU."""
    if device != "cuda":
        run()
        return float("nan"), float("nan")
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return before / 2**30, torch.cuda.max_memory_allocated() / 2**30


def training_rows(shapes: Shapes, device: str, tokenizer) -> list[dict]:
    layout = f"N {shapes.prompt + 2 * shapes.completion}, batch {shapes.train_batch}"
    rows, comparison, medians = [], [], {}
    for kernel in ("sdpa", "flex_attention"):
        mask = "dense [b,1,N,N] mask" if kernel == "sdpa" else "flex BlockMask"
        if kernel == "flex_attention" and device != "cuda":
            rows.append(
                row("b", "T3D step", f"{mask}, {layout}", "skipped", "flex attention has no backward on CPU", "n/a")
            )
            continue
        with tempfile.TemporaryDirectory() as output_dir:
            try:
                trainer, batch = training_setup(shapes, device, kernel, tokenizer, output_dir)
                steps, loss_gap, _ = make_steps(trainer, batch)
                if kernel != "sdpa":
                    steps = {"t3d": steps["t3d"]}
                wall, _ = time_steps(steps, device, warmup=1, repeats=shapes.repeats)  # warm-up: flex compiles
                memory = {name: peak_memory(run, device) for name, run in steps.items()}
                gap = loss_gap() if "official" in steps else None
            except torch.cuda.OutOfMemoryError:
                rows.append(row("b", "T3D step", f"{mask}, {layout}", "out of memory", "", "FAIL"))
                continue
            finally:
                trainer = batch = steps = loss_gap = None
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
        for name, values in wall.items():
            medians[(kernel, name)] = statistics.median(values)
        tokens = shapes.train_batch * (shapes.prompt + 2 * shapes.completion)
        t3d = medians[(kernel, "t3d")]
        before, peak = memory["t3d"]
        rows.append(
            row(
                "b",
                "T3D step",
                f"{mask}, {layout}",
                f"{1000 * t3d:.0f} ms, peak {gib(peak)}",
                f"{tokens / t3d:,.0f} tokens/s; {gib(before)} resident before the step",
                "PASS",
            )
        )
        if gap is not None:
            official = medians[(kernel, "official")]
            ok = math.isfinite(gap) and gap < 5e-2
            comparison.append(
                row(
                    "c",
                    "T3D step vs official 4 forwards",
                    f"sdpa, {layout}",
                    f"{t3d / official:.2f}x time",
                    f"T3D {1000 * t3d:.0f} ms, peak {gib(peak)}; "
                    f"official {1000 * official:.0f} ms, peak {gib(memory['official'][1])}; "
                    f"loss gap {gap:.1e}",
                    "PASS" if ok else "FAIL",
                )
            )
    if ("flex_attention", "t3d") in medians:
        ratio = medians[("flex_attention", "t3d")] / medians[("sdpa", "t3d")]
        rows.append(row("b", "flex / dense step time", layout, f"{ratio:.2f}x"))
    return rows + comparison


# ------------------------------------------------------------------------- (d) static-cache decoding (placeholder)
def static_decode_rows(shapes: Shapes, device: str, tokenizer, budget_s: float) -> list[dict]:
    """(d) STATIC-CACHE DECODING: eager vs compiled tokens/s at batch ``shapes.static_batches`` and 1, 2, 4 steps per
    block, through ``model.generate(..., cache_implementation="static")``.

    "eager" passes ``disable_compile=True``; "compiled" leaves the compilation to ``generate`` (transformers compiles
    the forward of a static cache by default). While t3d-trl's ``generate`` refuses the option, the row says "not
    available in this build". Cells that would run past ``budget_s`` are skipped.
    """
    from t3d_trl import patch_model

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = patch_model(
        build_model(shapes, device, dtype),
        tokenizer,
        block_size=shapes.block_size,
        max_new_tokens=shapes.decode_new_tokens,
    )
    prompt = torch.randint(4, 512, (1, shapes.decode_prompt_length), generator=torch.Generator().manual_seed(1))
    try:
        model.generate(
            prompt.to(device), steps_per_block=1, max_new_tokens=shapes.block_size, cache_implementation="static"
        )
    except (ValueError, TypeError, NotImplementedError) as error:
        reason = str(error).split(". ")[0][:90]
        return [
            row(
                "d",
                "static-cache decode, eager vs compiled",
                "batch " + "/".join(map(str, shapes.static_batches)) + ", steps/block 1/2/4",
                "not available in this build",
                reason,
                "n/a",
            )
        ]
    rows, start = [], time.perf_counter()
    for variant, extra in (("eager", {"disable_compile": True}), ("compiled", {})):
        for batch in shapes.static_batches:
            ids = prompt.expand(batch, -1).to(device)
            for steps in (1, 2, 4):
                setting = f"{variant}, batch {batch}, steps/block {steps}"
                if time.perf_counter() - start > budget_s:
                    rows.append(row("d", "static-cache decode", setting, "skipped", "time budget", "n/a"))
                    continue
                try:
                    model.generate(ids, steps_per_block=steps, cache_implementation="static", **extra)  # warm-up
                    synchronize(device)
                    begin = time.perf_counter()
                    out = model.generate(ids, steps_per_block=steps, cache_implementation="static", **extra)
                    synchronize(device)
                    seconds = time.perf_counter() - begin
                except Exception as error:  # noqa: BLE001 - the row reports it, the table goes on
                    rows.append(row("d", "static-cache decode", setting, "error", str(error)[:90], "FAIL"))
                    continue
                new = batch * (out.shape[1] - ids.shape[1])
                rows.append(
                    row(
                        "d",
                        "static-cache decode",
                        setting,
                        f"{new / seconds:,.0f} tokens/s",
                        f"{seconds:.2f} s for {new} tokens",
                    )
                )
    return rows


# ------------------------------------------------------------------------------------------------ (e) and (f)
def gpu_tests_row(smoke: bool) -> dict:
    if smoke:
        return row("e", "pytest -m gpu", "tests/", "skipped", "--cpu-smoke", "n/a")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return row(
        "e",
        "pytest -m gpu",
        "tests/",
        "PASS" if done.returncode == 0 else "FAIL",
        summary,
        "PASS" if done.returncode == 0 else "FAIL",
    )


def fsdp1_row(smoke: bool) -> dict:
    """tests/scripts/train_sharded.py under FSDP1 on one GPU (FlatParameters, the refresh, ref_model.pt and resuming)
    against the same script without FSDP."""
    setting = "1 process, accelerate fsdp.yaml with fsdp_version 1"
    if smoke:
        return row("f", "FSDP1 refresh and resume", setting, "skipped", "FSDP1 refuses CPU devices", "n/a")
    script = str(ROOT / "tests" / "scripts" / "train_sharded.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "examples" / "accelerate_configs" / "fsdp.yaml"),
            "--fsdp_version",
            "1",
            "--num_processes",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        results = {}
        for name, command in (("plain", [sys.executable]), ("fsdp1", launch)):
            out = os.path.join(tmp, name)
            done = subprocess.run(
                command + [script, out, "8", "cuda"], env=env, capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                return row("f", "FSDP1 refresh and resume", setting, "FAIL", done.stderr.strip()[-90:], "FAIL")
            results[name] = json.loads(Path(out, "result.json").read_text())
    plain, fsdp = results["plain"], results["fsdp1"]
    loss_gap = max(abs(fsdp["logs"][s]["loss"] - plain["logs"][s]["loss"]) for s in ("1", "2", "3"))
    resumed_gap = abs(fsdp["resumed_logs"]["3"]["loss"] - plain["logs"]["3"]["loss"])
    ok = (
        fsdp["distributed_type"] == "DistributedType.FSDP"
        and loss_gap < 1e-4
        and resumed_gap < 1e-4
        and abs(fsdp["logs"]["3"]["loss/real"] - math.log(2)) < 1e-5
        and fsdp["max_ref_student_diff"] == 0.0
        and fsdp["ref_checkpoint_full"]
        and fsdp["ref_checkpoint_max_diff"] == 0.0
    )
    return row(
        "f",
        "FSDP1 refresh and resume",
        setting,
        "PASS" if ok else "FAIL",
        f"loss gap {loss_gap:.1e}, resumed {resumed_gap:.1e}, step-3 loss/real "
        f"{fsdp['logs']['3']['loss/real']:.6f}, ref param {fsdp['ref_param_type']}",
        "PASS" if ok else "FAIL",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU: check the script itself")
    parser.add_argument("--static-budget", type=float, default=120.0, help="seconds for the (d) cells")
    args = parser.parse_args(argv)
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.set_verbosity_error()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke to check the script on CPU")
        return 1
    device, shapes = ("cpu", SMOKE) if args.cpu_smoke else ("cuda", FULL)
    start = time.perf_counter()
    tokenizer = build_tokenizer(shapes.vocab_size)
    rows: list[dict] = []
    sections = (
        ("a", "bf16 vs fp32 decoding", lambda: decode_agreement(shapes, device, tokenizer)),
        ("b", "T3D step", lambda: training_rows(shapes, device, tokenizer)),
        ("d", "static-cache decode", lambda: static_decode_rows(shapes, device, tokenizer, args.static_budget)),
        ("e", "pytest -m gpu", lambda: [gpu_tests_row(args.cpu_smoke)]),
        ("f", "FSDP1 refresh and resume", lambda: [fsdp1_row(args.cpu_smoke)]),
    )
    for name, check, run in sections:
        try:
            rows += run()
        except Exception as error:  # noqa: BLE001 - one failing section must not cost the rest of the table
            rows.append(row(name, check, "", "error", f"{type(error).__name__}: {str(error)[:120]}", "FAIL"))
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (--cpu-smoke)"
    params = sum(p.numel() for p in build_model(shapes, "meta", torch.float32).parameters())
    print(
        f"device check: {name}; torch {torch.__version__}; Qwen3-shaped random model of {params / 1e6:,.1f} M "
        f"parameters (hidden {shapes.hidden_size}, {shapes.num_layers} layers); {time.perf_counter() - start:.0f} s"
    )
    print(markdown_table(rows))
    return 1 if any(entry["status"] == "FAIL" for entry in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
