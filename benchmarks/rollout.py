"""Overhead of `generate_trajectories` over a plain `model.generate` call.

A small Qwen3-shaped block diffusion model (hidden 128, 4 layers, vocab 100, float32, random weights, built from a
config) decodes 64 prompts with block size 4, 4 steps per block and 64 new tokens, greedily, in one batch of 64:

* ``generate``: ``model.generate(input_ids, attention_mask, return_dict_in_generate=False)`` on prompts that are
  already tokenised and padded (only the call is timed);
* ``rollout``: ``generate_trajectories(model, tokenizer, dataset, batch_size=64)`` from the text prompts (times
  tokenisation, batching, the same decoding with ``return_dict_in_generate=True``, cutting at EOS, decoding the
  completions and building the ``datasets.Dataset``).

The two are repeated in interleaved order (``generate, rollout, rollout, generate, ...``) after one warm-up each,
and the ratio of the medians (and of the best runs) is printed. On a shared virtual machine the speed of a whole
decode drifts by 10-20 % from run to run, more than the 5 % being measured, so the target (<= 1.05) is judged on
the paired figure: inside every rollout run, the time spent in its own ``model.generate`` call is measured too, and
``rollout / its generate`` (median over runs) is the cost of recording trajectories with the decoding held equal.
Runs on CPU in well under two minutes::

    python benchmarks/rollout.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import time

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from t3d_trl import patch_model
from t3d_trl.rollout import generate_trajectories, resolve_generation_config
from t3d_trl.testing import PRINTABLE_ASCII, tiny_qwen3, tiny_tokenizer

SETTINGS = {"block_size": 4, "steps_per_block": 4, "max_new_tokens": 64, "temperature": 0.0}
NUM_PROMPTS = 64
TARGET = 1.05


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: 4 special tokens and the 95 printable ASCII characters (vocab 99)."""
    return tiny_tokenizer(characters=PRINTABLE_ASCII, chat_template=None)


def build_model(vocab_size: int = 100) -> Qwen3ForCausalLM:
    return tiny_qwen3(
        seed=0,
        dtype=torch.float32,
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        head_dim=32,
        max_position_embeddings=512,
    )


def build_prompts(count: int = NUM_PROMPTS) -> list[str]:
    rng = random.Random(0)
    alphabet = string.ascii_lowercase + string.digits + " +-=?"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(8, 48))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (after one warm-up)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (default 1: steadier timings on a shared CPU)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = build_tokenizer()
    model = patch_model(build_model(), tokenizer)
    prompts = build_prompts()
    dataset = Dataset.from_dict({"prompt": prompts})
    config = resolve_generation_config(model, SETTINGS)  # the settings generate_trajectories decodes with

    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, padding=True, return_tensors="pt")

    def plain() -> float:
        start = time.perf_counter()
        model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            generation_config=config,
            return_dict_in_generate=False,
        )
        return time.perf_counter() - start

    inner: list[float] = []  # time spent in model.generate inside each rollout run
    generate = model.generate

    def timed_generate(*call_args, **call_kwargs):
        start = time.perf_counter()
        try:
            return generate(*call_args, **call_kwargs)
        finally:
            inner[-1] += time.perf_counter() - start

    def rollout() -> float:
        inner.append(0.0)
        model.generate = timed_generate
        try:
            start = time.perf_counter()
            generate_trajectories(model, tokenizer, dataset, SETTINGS, batch_size=NUM_PROMPTS, progress=False)
            return time.perf_counter() - start
        finally:
            model.generate = generate

    plain(), rollout()  # warm-up
    inner.clear()
    times: dict[str, list[float]] = {"generate": [], "rollout": []}
    for repeat in range(args.repeats):
        order = (("generate", plain), ("rollout", rollout))
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(run())

    result = generate_trajectories(model, tokenizer, dataset, SETTINGS, batch_size=NUM_PROMPTS, progress=False)
    tokens = sum(len(ids) for ids in result["completion_ids"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["rollout"] / medians["generate"]
    best_ratio = min(times["rollout"]) / min(times["generate"])  # less sensitive to other load on the machine
    print(
        f"{NUM_PROMPTS} prompts, {tokens} completion tokens, block {SETTINGS['block_size']}, "
        f"{SETTINGS['steps_per_block']} steps/block, {SETTINGS['max_new_tokens']} new tokens, "
        f"{torch.get_num_threads()} threads"
    )
    for name, values in times.items():
        print(f"{name:>9}: median {medians[name]:.3f} s  (runs: {', '.join(f'{v:.3f}' for v in values)})")
    paired = statistics.median(total / own for total, own in zip(times["rollout"], inner))
    print(
        f"generate inside rollout: median {statistics.median(inner):.3f} s  (runs: {', '.join(f'{v:.3f}' for v in inner)})"
    )
    print(f"rollout / generate = {ratio:.3f} (medians), {best_ratio:.3f} (best runs): unpaired, for reference")
    print(
        f"rollout / its own generate call = {paired:.3f} (median of {len(inner)} paired runs; "
        f"{1000 * statistics.median(t - g for t, g in zip(times['rollout'], inner)):.0f} ms outside generate)  "
        f"(target <= {TARGET})  {'OK' if paired <= TARGET else 'OVER TARGET'}"
    )


if __name__ == "__main__":
    main()
