"""Cost of one T3D optimizer step against the official four-forward scheme, and collator throughput.

Training step. A small Qwen3-shaped block diffusion model (hidden 256, 4 layers, intermediate 768, vocab 512,
float32, ``sdpa``, random weights, built from a config) is trained on one fixed batch collated by the trainer's own
``DataCollatorForTrajectory`` (8 synthetic trajectories, prompt 64 + completion 128 tokens, teacher block 4 with one
token per step, so the layout ``[prompt ; x0 ; x_t]`` has 320 tokens and a 128-token noisy window). Two ways to make
one optimizer step of T3D (``loss_type=["ddo", "path"]``) are compared on the same model, reference and optimizer:

* ``t3d``: ``trainer.training_step(trainer.model, batch)`` of a ``T3DTrainer`` followed by ``optimizer.step()``:
  one student forward with gradients and one reference forward without (docs/training.md, "The method");
* ``official``: the official scheme, written here with the same ``t3d_trl.losses`` functions and the same
  training forward (``TrainingLayout.forward``): four full forwards on the same input: the reference twice without gradients (one
  gives x̂ and log p_ref(x0|x_t), the other log p_ref(x̂|x_t)) and the student twice with gradients (one gives the
  real term and the path loss, the other the fake term), one backward through both student graphs, then
  ``optimizer.step()``.

After warm-up the two run interleaved (``t3d, official, official, t3d, ...``); the ratio of the median wall times is
the result (target ``t3d / official <= 0.5``). Peak memory of a step: on CUDA, ``torch.cuda.max_memory_allocated``
minus the memory allocated before the step; on CPU, each variant runs in a fresh subprocess (with a fixed glibc mmap
threshold, so freed tensors go back to the OS) that reports the growth of its peak resident set (``VmHWM``, reset
just before the steps; ``ru_maxrss`` where it cannot be reset) over the resident set just before its steps (model,
reference, optimizer state and batch already allocated). After the timed steps, both variants' losses are computed
at the same weights; they must agree (the two schemes optimise the same objective).
Target: a T3D step's peak memory at most 0.3x the official scheme's at a real vocabulary (``--vocab 151936``, SDAR's),
where the logits dominate: T3D computes the log-probabilities it needs in chunks over the window from the last hidden
states, while the official scheme materialises four full-vocabulary logits tensors.

Collator. Examples per second of ``DataCollatorForTrajectory`` on batches of 16 trajectories of prompt 128 +
completion 192 tokens (a 512-token layout), from Python-list rows as a ``datasets.Dataset`` yields them, with the
official state sampling (``r^8`` ratios, 10% random tokens), for ``attention_layout="dense"`` (the ``[b, 1, N, N]``
boolean mask for ``sdpa``) and ``"deferred"`` (T3DTrainer's collation: only the per-token vectors; the mask is built
on the device). Target
>= 2,000 examples/s.

``--anchor`` adds a third step, T3D with the ``anchor`` objective (``["ddo", "path", "anchor"]``, weights 1, 0.2,
0.05), timed and measured like the others, and prints its time and peak memory against the T3D step's (no target).

Runs in about 2 minutes on 2 idle CPU cores (``--quick``: about one; on a loaded machine longer, and the wall-time
ratio becomes noisy: the CPU-time ratio is printed too); ``--profile`` adds operator tables::

    python benchmarks/training_step.py [--quick] [--repeats 5] [--threads 1] [--device auto] [--no-memory] [--profile] [--strict]
        [--anchor]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import datasets
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM
from transformers.utils import logging as hf_logging

from t3d_trl import DataCollatorForTrajectory, T3DConfig, T3DTrainer
from t3d_trl.losses import ddo_loss, path_loss, sequence_logps
from t3d_trl.testing import SPECIAL_TOKENS, synthetic_trajectories, tiny_qwen3, tiny_tokenizer

VOCAB_SIZE = 512
BLOCK_SIZE = 4
STEP = {"batch": 8, "prompt": 64, "completion": 128}
COLLATOR = {"batch": 16, "prompt": 128, "completion": 192}
STEP_TARGET = 0.5
MEMORY_TARGET = 0.3  # at a real vocabulary (--vocab 151936, SDAR's)
COLLATOR_TARGET = 2000.0
LOGITS_CHUNK_SIZE: int | None = None  # --logits-chunk-size; None keeps T3DConfig's default


# ---------------------------------------------------------------------------------------------------- set-up
def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A tokenizer with pad/eos/mask/bos and ``vocab_size − 4`` entries ``w4 .. w{V-1}`` (the rows are token ids:
    it only gives the trainer its special tokens and vocabulary size)."""
    return tiny_tokenizer(characters=[f"w{i}" for i in range(len(SPECIAL_TOKENS), vocab_size)], chat_template=None)


def build_model(vocab_size: int = VOCAB_SIZE) -> Qwen3ForCausalLM:
    return tiny_qwen3(
        seed=0,
        dtype=torch.float32,
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        head_dim=64,
        max_position_embeddings=1024,
    )


def synthetic_rows(
    count: int, prompt_length: int, completion_length: int, block_size: int = BLOCK_SIZE, seed: int = 0
) -> list[dict]:
    """Trajectory rows with random tokens and valid step maps: a teacher decoding one token per step, in a random
    order inside each block (blocks aligned to absolute positions), block after block."""
    return synthetic_trajectories(
        count,
        (prompt_length, prompt_length),
        (completion_length, completion_length),
        VOCAB_SIZE,
        block_size,
        seed=seed,
    )


def build_trainer(device: str, output_dir: str, anchor: bool = False) -> tuple[T3DTrainer, dict]:
    """A ``T3DTrainer`` (the library defaults: ``["ddo", "path"]``, β 0.1, α 0.5, λ 0.2, no random tokens; with
    ``anchor``, ``["ddo", "path", "anchor"]`` at weights 1, 0.2, 0.05) with its optimizer, and one batch from its own
    collator, already on ``device``."""
    tokenizer = build_tokenizer(VOCAB_SIZE)
    dataset = Dataset.from_list(synthetic_rows(STEP["batch"], STEP["prompt"], STEP["completion"]))
    args = T3DConfig(
        output_dir=output_dir,
        per_device_train_batch_size=STEP["batch"],
        learning_rate=1e-5,
        weight_decay=0.01,
        max_steps=1000,
        use_cpu=device == "cpu",
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **({} if LOGITS_CHUNK_SIZE is None else {"logits_chunk_size": LOGITS_CHUNK_SIZE}),
        **({"loss_type": ["ddo", "path", "anchor"], "loss_weights": [1.0, 0.2, 0.05]} if anchor else {}),
    )
    trainer = T3DTrainer(build_model(VOCAB_SIZE), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    # set by Trainer's training loop; training_step divides the loss by it
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(STEP["batch"])])
    batch = {k: v.to(trainer.args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return trainer, batch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log p(index_i) = ℓ_{i, index_i} − logsumexp_v ℓ_{i, v}`` from whole logits (the official scheme's way)."""
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return picked.float() - torch.logsumexp(logits.float(), dim=-1)


def sample_fake_tokens(ref_logits: torch.Tensor, loss_mask: torch.Tensor, labels: torch.Tensor, temperature: float):
    """x̂: the reference's argmax (or a draw at ``temperature``) at the masked positions, the labels elsewhere."""
    with torch.no_grad():
        if temperature == 0:
            draws = ref_logits.argmax(-1)
        else:
            probs = torch.softmax(ref_logits.float() / temperature, dim=-1)
            draws = torch.multinomial(probs.flatten(0, 1), 1).view(labels.shape)
        return torch.where(loss_mask, draws, labels)


def make_steps(trainer: T3DTrainer, batch: dict):
    """The two optimizer steps, as closures over the same model, reference and optimizer, and a check that both
    compute the same loss."""
    model, ref_model, optimizer, args = trainer.model, trainer.ref_model, trainer.optimizer, trainer.args
    layout = trainer.layout
    accepted = set(inspect.signature(model.forward).parameters)
    labels, loss_mask, weights = batch["labels"], batch["loss_mask"], batch["path_weights"]
    norm = args.logps_normalization
    lambda_path = args.loss_weights[args.loss_type.index("path")]

    def t3d_step() -> None:
        trainer.training_step(model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()

    def official_loss() -> torch.Tensor:
        with torch.no_grad():  # reference forward 1: x̂ and log p_ref(x0 | x_t)
            ref_logits = layout.forward(ref_model, batch, accepted)
            fake = sample_fake_tokens(ref_logits, loss_mask, labels, args.reference_temperature)
            ref_real = sequence_logps(selective_log_softmax(ref_logits, labels), loss_mask, norm)
            del ref_logits
            ref_logits = layout.forward(ref_model, batch, accepted)  # reference forward 2: log p_ref(x̂)
            ref_fake = sequence_logps(selective_log_softmax(ref_logits, fake), loss_mask, norm)
            del ref_logits
        real_logps = selective_log_softmax(layout.forward(model, batch, accepted), labels)  # student 1
        policy_real = sequence_logps(real_logps, loss_mask, norm)
        fake_logits = layout.forward(model, batch, accepted)  # student forward 2: the fake term
        policy_fake = sequence_logps(selective_log_softmax(fake_logits, fake), loss_mask, norm)
        ddo, _, _ = ddo_loss(policy_real, policy_fake, ref_real, ref_fake, args.beta, args.alpha)
        return ddo.mean() + lambda_path * path_loss(real_logps, weights, loss_mask).mean()

    def official_step() -> None:
        model.train()
        official_loss().backward()  # one backward through both student graphs
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def loss_gap() -> float:
        """|T3DTrainer.compute_loss − the official scheme's loss| at the current weights (both the same objective)."""
        model.train()
        with torch.no_grad():
            ours = trainer.compute_loss(model, batch)
            theirs = official_loss()
        trainer._metrics["train"].clear()
        return abs(float(ours) - float(theirs))

    def normalisers() -> dict[str, float]:
        """Full-vocabulary log-normalisers (logsumexp over the vocabulary) each scheme's loss computes per window
        position, counted in the forward passes of one loss evaluation (with gradients, as in training)."""
        counts = {}
        original = torch.logsumexp
        for name, compute in (("t3d", lambda: trainer.compute_loss(model, batch)), ("official", official_loss)):
            total = [0]

            def counting(input, dim, keepdim=False, total=total, **kwargs):
                out = original(input, dim, keepdim=keepdim, **kwargs)
                if input.shape[-1] == VOCAB_SIZE:
                    total[0] += out.numel()
                return out

            torch.logsumexp = counting
            try:
                model.train()
                compute()
            finally:
                torch.logsumexp = original
            trainer._metrics["train"].clear()
            counts[name] = total[0] / (batch["loss_mask"].shape[0] * batch["loss_mask"].shape[1])
        return counts

    return {"t3d": t3d_step, "official": official_step}, loss_gap, normalisers


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- measuring
def time_steps(steps: dict, device: str, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Wall and process CPU seconds of each step, interleaved ``a, b, b, a, ...`` after ``warmup`` rounds."""
    for _ in range(warmup):
        for run in steps.values():
            run()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps.items())
    for repeat in range(repeats):
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def _proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), or ``None``."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _max_rss() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0); ``False`` where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _init_optimizer_state(trainer: T3DTrainer) -> None:
    """Allocate the optimizer state with a zero-gradient step, so that it is part of the baseline."""
    for param in trainer.model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


#: the variant of the ``--anchor`` measurement: T3D's step with the anchor objective
ANCHOR_VARIANT = "t3d+anchor"


def anchor_step(device: str, output_dir: str) -> Any:
    """One optimizer step of T3D with the anchor (a trainer of its own, the same model and data): the T3D step plus
    a teacher forward without gradients and a student forward with gradients on the partly filled state."""
    trainer, batch = build_trainer(device, output_dir, anchor=True)
    return trainer, make_steps(trainer, batch)[0]["t3d"]


def memory_worker(variant: str, steps: int) -> None:
    """Subprocess entry: growth of the resident set's peak over ``steps`` steps of ``variant`` (CPU).

    The baseline is the RSS just before the steps (model, reference, optimizer state and batch allocated). The peak
    is ``VmHWM`` after resetting it to the current RSS (``/proc/self/clear_refs``); where that is impossible, the
    ``ru_maxrss`` growth. ``ru_maxrss`` alone is not enough: after ``fork`` + ``exec`` it starts from the parent's
    RSS at the fork, so the steps of a small child may never raise it.
    """
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as output_dir:
        if variant == ANCHOR_VARIANT:
            trainer, run = anchor_step("cpu", output_dir)
        else:
            trainer, batch = build_trainer("cpu", output_dir)
            run = make_steps(trainer, batch)[0][variant]
        _init_optimizer_state(trainer)
        gc.collect()
        reset = _reset_peak_rss()
        rss_kib = _proc_status_kib("VmRSS")
        before = rss_kib * 1024 if rss_kib is not None else _max_rss()
        max_rss_before = _max_rss()
        for _ in range(steps):
            run()
        hwm_kib = _proc_status_kib("VmHWM")
        max_rss = _max_rss()
    peak = hwm_kib * 1024 if reset and hwm_kib is not None else max_rss
    report = {"variant": variant, "rss_before": before, "peak": peak, "source": "VmHWM" if reset else "ru_maxrss"}
    report.update(max_rss_before=max_rss_before, max_rss=max_rss)
    print(json.dumps(report))


def cpu_memory(variant: str, steps: int, threads: int) -> dict:
    """Run :func:`memory_worker` in a fresh process; glibc's fixed mmap threshold returns freed tensors to the OS,
    so the RSS follows live memory."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    command = [sys.executable, os.path.abspath(__file__), "--memory-worker", variant, "--memory-steps", str(steps)]
    command += ["--threads", str(threads), "--vocab", str(VOCAB_SIZE)]
    if LOGITS_CHUNK_SIZE is not None:
        command += ["--logits-chunk-size", str(LOGITS_CHUNK_SIZE)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["delta"] = result["peak"] - result["rss_before"]
    return result


def cuda_memory(steps: dict) -> dict[str, int]:
    deltas = {}
    for name, run in steps.items():
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        deltas[name] = torch.cuda.max_memory_allocated() - before
    return deltas


def collator_inputs(layout: str) -> tuple[DataCollatorForTrajectory, list[list[dict]]]:
    """The collator with the official state sampling and 8 batches of ``COLLATOR``-shaped Python-list rows."""
    rows = synthetic_rows(COLLATOR["batch"] * 8, COLLATOR["prompt"], COLLATOR["completion"], seed=1)
    for index, row in enumerate(rows):
        row["example_index"] = index
    batches = [rows[i : i + COLLATOR["batch"]] for i in range(0, len(rows), COLLATOR["batch"])]
    collator = DataCollatorForTrajectory(
        mask_token_id=2,
        pad_token_id=0,
        eos_token_id=1,
        block_size=BLOCK_SIZE,
        num_eos_tokens=2,
        random_token_ratio=0.1,
        vocab_size=VOCAB_SIZE,
        attention_layout=layout,
    )
    return collator, batches


def collator_throughput(layout: str, seconds: float) -> tuple[float, float, int, int]:
    """Examples per second (wall clock, process CPU) of the collator on ``COLLATOR``-shaped batches; also the layout
    length and window."""
    collator, batches = collator_inputs(layout)
    sample = collator(batches[0])
    for batch in batches:  # warm-up
        collator(batch)
    calls, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while True:
        collator(batches[calls % len(batches)])
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 20:
            break
    examples = calls * COLLATOR["batch"]
    cpu = time.process_time() - start_cpu
    return examples / elapsed, examples / cpu, sample["input_ids"].shape[1], int(sample["logits_to_keep"])


def print_profile(title: str, run, calls: int, rows: int = 12) -> None:
    """The ``torch.profiler`` table of ``calls`` runs (self CPU time, top ``rows`` operators)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            run()
    events = prof.key_averages()
    total_ops = sum(event.count for event in events)
    print(f"--- profile: {title} ({calls} calls, {total_ops / calls:.0f} operator calls per call)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    global VOCAB_SIZE, LOGITS_CHUNK_SIZE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 s per collator layout (< 1.5 minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps of each variant (default 5, quick 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: steadier timings on a shared CPU, and the setting of DataLoader "
        "workers; 0 keeps torch's default)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of the steps and collator")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    parser.add_argument(
        "--vocab",
        type=int,
        default=VOCAB_SIZE,
        help="vocabulary size of the model (default 512; 151936 is SDAR's, where the memory target applies)",
    )
    parser.add_argument(
        "--logits-chunk-size",
        type=int,
        default=None,
        help="T3DConfig.logits_chunk_size of the T3D step (default: T3DConfig's; 0: the whole window of logits)",
    )
    parser.add_argument(
        "--anchor",
        action="store_true",
        help="also time and measure T3D with the anchor objective (a teacher and a student forward more per step)",
    )
    parser.add_argument("--memory-worker", choices=("t3d", "official", ANCHOR_VARIANT), help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    VOCAB_SIZE, LOGITS_CHUNK_SIZE = args.vocab, args.logits_chunk_size
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.memory_steps)
        return
    hf_logging.set_verbosity_error()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    repeats = args.repeats or (2 if args.quick else 5)
    collator_seconds = 1.0 if args.quick else 3.0
    results: list[bool] = []

    with tempfile.TemporaryDirectory() as output_dir:
        trainer, batch = build_trainer(device, output_dir)
        steps, loss_gap, normalisers = make_steps(trainer, batch)
        normaliser_counts = normalisers()
        if args.anchor:
            anchor_trainer, steps[ANCHOR_VARIANT] = anchor_step(device, output_dir)
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        times, cpu_times = time_steps(steps, device, warmup=1, repeats=repeats)
        gap = loss_gap()  # after some steps, so that the student differs from the reference
        memory = cuda_memory(steps) if device == "cuda" and not args.no_memory else None
        if args.profile:
            for name, run in steps.items():
                print_profile(f"{name} step", run, 1)
        width, window = batch["input_ids"].shape[1], int(batch["logits_to_keep"])
        masked = int(batch["loss_mask"].sum())
        del trainer, batch, steps, loss_gap, normalisers
        if args.anchor:
            del anchor_trainer
    gc.collect()

    print(
        f"training step: batch {STEP['batch']}, prompt {STEP['prompt']} + completion {STEP['completion']} tokens, "
        f"layout {width} tokens, window {window}, {masked} masked targets, block {BLOCK_SIZE}, hidden 256, 4 layers, "
        f"vocab {VOCAB_SIZE}, float32, sdpa, {device}, {torch.get_num_threads()} thread(s), {repeats} repeats"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    for name, values in times.items():
        print(
            f"  {name:>8}: median {medians[name]:.3f} s wall, {cpu_medians[name]:.3f} s CPU  "
            f"(wall runs: {', '.join(f'{v:.3f}' for v in values)})"
        )
    if args.anchor:
        print(
            f"  {ANCHOR_VARIANT} / t3d = {medians[ANCHOR_VARIANT] / medians['t3d']:.3f} (wall medians), "
            f"{cpu_medians[ANCHOR_VARIANT] / cpu_medians['t3d']:.3f} (CPU medians)  (no target)"
        )
    print(
        f"  normalisers (full-vocabulary logsumexp per window position, in a loss's forward passes): t3d "
        f"{normaliser_counts['t3d']:g}, official {normaliser_counts['official']:g} "
        f"(ratio {normaliser_counts['t3d'] / normaliser_counts['official']:.2f}; the student's chunks are recomputed "
        "once more in the backward)"
    )
    results.append(gap <= 1e-4)
    print(f"  same objective: |loss(t3d) − loss(official)| = {gap:.1e} at the trained weights  {verdict(gap <= 1e-4)}")
    ratio = medians["t3d"] / medians["official"]
    best_ratio = min(times["t3d"]) / min(times["official"])
    cpu_ratio = cpu_medians["t3d"] / cpu_medians["official"]
    results.append(ratio <= STEP_TARGET)
    print(
        f"  time   t3d / official = {ratio:.3f} (wall medians), {best_ratio:.3f} (best wall runs), {cpu_ratio:.3f} "
        f"(CPU medians)  (target <= {STEP_TARGET})  {verdict(ratio <= STEP_TARGET)}"
    )
    if load_before > os.cpu_count():
        print(
            f"  warning: load average {load_before:.1f} on {os.cpu_count()} cores when timing started; wall times "
            "are disturbed by other processes (the CPU-time ratio much less)"
        )

    if not args.no_memory:
        if device == "cuda":
            deltas, how = memory, "torch.cuda.max_memory_allocated − allocated before the step"
        else:
            memory_steps = 1 if args.quick else 2
            variants = ("t3d", "official", *((ANCHOR_VARIANT,) if args.anchor else ()))
            reports = {name: cpu_memory(name, memory_steps, args.threads) for name in variants}
            deltas = {name: report["delta"] for name, report in reports.items()}
            source = {report["source"] for report in reports.values()}
            how = f"peak RSS growth over {memory_steps} step(s) in a fresh process ({'/'.join(sorted(source))})"
        for name, delta in deltas.items():
            print(f"  {name:>8}: peak memory of a step {delta / 2**20:8.1f} MiB  ({how})")
        memory_ratio = deltas["t3d"] / max(deltas["official"], 1)
        if VOCAB_SIZE >= 32768:
            results.append(memory_ratio <= MEMORY_TARGET)
            target = f"(target <= {MEMORY_TARGET} at a real vocabulary)  {verdict(memory_ratio <= MEMORY_TARGET)}"
        else:
            target = f"(the target <= {MEMORY_TARGET} applies with --vocab 151936)"
        print(f"  memory t3d / official = {memory_ratio:.3f}  {target}")
        if args.anchor:
            print(
                f"  memory {ANCHOR_VARIANT} / t3d = {deltas[ANCHOR_VARIANT] / max(deltas['t3d'], 1):.3f} (no target; "
                "the teacher's copy of the model, allocated before the step, is not counted)"
            )

    print(
        f"collator: batch {COLLATOR['batch']}, prompt {COLLATOR['prompt']} + completion {COLLATOR['completion']} "
        f"tokens, block {BLOCK_SIZE}, official state sampling, {torch.get_num_threads()} thread(s)"
    )
    # "deferred" is what T3DTrainer collates (the mask is built on the device); "dense" also materialises the
    # [b, 1, N, N] mask on the host, for standalone use, and has no target
    for layout in ("deferred", "dense"):
        rate, cpu_rate, length, window = collator_throughput(layout, collator_seconds)
        target = f"(target >= {COLLATOR_TARGET:.0f})  {verdict(rate >= COLLATOR_TARGET)}"
        if layout == "deferred":
            results.append(rate >= COLLATOR_TARGET)
        else:
            target = "(no target: the N² mask is built on the host)"
        print(
            f"  {layout:>8}: {rate:8.0f} examples/s wall, {cpu_rate:8.0f} per CPU second  (layout {length} tokens, "
            f"window {window})  {target}"
        )
        if args.profile:
            collator, batches = collator_inputs(layout)
            print_profile(f"collator {layout}", lambda collator=collator, batches=batches: collator(batches[0]), 10)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if load > os.cpu_count():
        print(
            f"  warning: load average {load:.1f} on {os.cpu_count()} cores; with 1 thread the per-CPU-second rate is "
            "what an idle core gives"
        )
    print(f"overall: {verdict(all(results))}")
    if args.strict and not all(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
