"""Throughput of few-step block diffusion decoding: KV cache, fused store pass, batching, static shapes and compile.

A small Qwen3-shaped model (hidden 256, intermediate 512, 4 layers, 4 heads, vocab 512, ``sdpa``, float32, random
weights, built from a config; nothing is downloaded) decodes 16-token prompts into 256 new tokens with block size 4,
greedily, at batch 1 and 16 and ``steps_per_block`` S in {1, 2, 4}, with five implementations of one semantics:

* ``(a) fused``: the default engine: prefix KV cache, the store pass of block k fused into the first denoising
  forward of block k+1 (``diffusion_generate(...)``): S forwards per block;
* ``(b) store pass``: the same cache with a separate store forward before every block
  (``diffusion_generate(..., fuse_store=False)``): S + 1 forwards per block;
* ``(c) no cache``: the plain implementation that recomputes the whole sequence at every step
  (``diffusion_generate(..., use_cache=False)``);
* ``(d) static``: static shapes (``cache_implementation="static"``, ``disable_compile=True``): a fixed-capacity cache,
  ``2B`` queries per forward, the batch kept whole; not compiled;
* ``(e) static compiled``: the same with the forward compiled by ``torch.compile`` (transformers' default
  ``CompileConfig()``, inductor). Its graph is compiled in the warm-up (the time is printed) and ``max_cache_len`` is
  set so that the warm-up and the timed decodes have the same shapes; the graphs compiled by the warm-up and by the
  timed decodes are counted (``torch._dynamo`` counters).

No EOS is set (``eos_token_id=None``), so every row decodes all 256 tokens (64 blocks) and
``tokens/s = batch * 256 / seconds``.

Method: every variant is warmed up on a short decode, then all are timed side by side in interleaved rounds (the
order alternates between rounds) and the best run is kept. Runs longer than ``--max-repeat-seconds`` are timed once
(a long run already averages out short disturbances). The no-cache variant at S > 1 costs about S times its S = 1
run; it is run only when that estimate fits in what is left of ``--budget`` seconds, so that the default run ends in
about four minutes on two cores even on a slow or busy machine, plus the compilation of (e) (skipped cells are
marked; ``--budget 0`` means no limit).

Both wall-clock and process CPU time are recorded. ``--clock auto`` (the default) reports wall-clock figures unless
the run used one thread and the process got less than 90 % of a core over the run (other jobs on the machine), in
which case CPU time, which such contention disturbs much less, is reported and both tables are printed.
``--threads auto`` uses every available core when the machine is idle and one thread when other jobs keep it busy:
OpenMP threads that wait for a descheduled peer can make a small forward ten times slower with 2 threads than 1.

Targets (printed with PASS/FAIL; every ratio is measured side by side in the same run):

* forwards per block: exactly S for (a), (d), (e) and S + 1 for (b);
* cached (a) / no-cache (c) tokens/s >= 3x over every configuration, and >= 10x at batch 16;
* batch-16 / batch-1 tokens/s of (a) >= 6x at every S, and at S = 2 and 4;
* fused (a) / store pass (b) tokens/s >= 0.95 (S + 1) / S at batch 1 (a fused block costs S forwards, not S + 1);
* static compiled (e) / fused (a) tokens/s >= 1.5x at batch 1;
* graphs compiled by the timed decodes of (e): 0 (the warm-up compiles one per batch size; every decode then runs
  that one graph).

Usage::

    python benchmarks/generation.py             # the full table (about 4 minutes on 2 cores, plus compilation)
    python benchmarks/generation.py --quick     # smoke run: 32 new tokens, one round (seconds)
    python benchmarks/generation.py --threads 2 --clock wall --budget 0 --repeats 5
    python benchmarks/generation.py --profile   # where the time of (a) and (b) goes; cProfile of the engine
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass, field

import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, Qwen3ForCausalLM

import t3d_trl
from t3d_trl import DiffusionGenerationConfig, patch_model
from t3d_trl.generation import diffusion_generate
from t3d_trl.testing import tiny_qwen3

VOCAB_SIZE = 512
MASK_TOKEN_ID = VOCAB_SIZE - 1
PROMPT_TOKEN_RANGE = (0, VOCAB_SIZE - 16)
BLOCK_SIZE = 4
#: variant -> (name, arguments of diffusion_generate, generation-config fields)
VARIANTS = {
    "a": ("fused", {}, {}),
    "b": ("store pass", {"fuse_store": False}, {}),
    "c": ("no cache", {"use_cache": False}, {}),
    "d": ("static", {}, {"cache_implementation": "static", "disable_compile": True}),
    "e": ("static compiled", {}, {"cache_implementation": "static", "compile_config": CompileConfig()}),
}
STATIC_VARIANTS = ("d", "e")
TARGET_CACHE_SPEEDUP = 3.0
TARGET_CACHE_SPEEDUP_BATCH_16 = 10.0
TARGET_BATCH_SPEEDUP = 6.0
TARGET_FUSED_SHARE = 0.95  # of the (S + 1) / S forward ratio
TARGET_COMPILED_SPEEDUP = 1.5


def build_model(hidden_size: int = 256, num_layers: int = 4) -> Qwen3ForCausalLM:
    model = tiny_qwen3(
        seed=0,
        dtype=torch.float32,
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_key_value_heads=4,
        head_dim=hidden_size // 4,
        max_position_embeddings=1024,
        eos_token_id=None,
        pad_token_id=None,
        bos_token_id=None,
    )
    # eos_token_id=None: the engine never stops early and every row decodes max_new_tokens
    return patch_model(model, mask_token_id=MASK_TOKEN_ID, eos_token_id=None, block_size=BLOCK_SIZE)


def build_prompts(batch_size: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch_size)
    return torch.randint(*PROMPT_TOKEN_RANGE, (batch_size, length), generator=generator)


@dataclass
class Measurement:
    batch_size: int
    steps: int
    variant: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    nfe: int = 0
    new_tokens: int = 0
    sequences: torch.Tensor | None = None

    @property
    def measured(self) -> bool:
        return bool(self.wall)

    def seconds(self, clock: str) -> float:
        return min(self.wall if clock == "wall" else self.cpu)

    def tokens_per_second(self, clock: str) -> float:
        return self.batch_size * self.new_tokens / self.seconds(clock)

    def blocks(self, prompt_length: int) -> int:
        return (prompt_length % BLOCK_SIZE + self.new_tokens + BLOCK_SIZE - 1) // BLOCK_SIZE


def decode(model, input_ids, steps, new_tokens, variant, max_cache_len=None):
    """One ``diffusion_generate`` call; returns (wall seconds, CPU seconds, output)."""
    _, arguments, fields = VARIANTS[variant]
    if variant in STATIC_VARIANTS and max_cache_len:
        fields = {**fields, "max_cache_len": max_cache_len}  # the warm-up compiles the shapes of the timed decodes
    config = DiffusionGenerationConfig.from_generation_config(
        model.generation_config,
        steps_per_block=steps,
        max_new_tokens=new_tokens,
        return_dict_in_generate=True,
        **fields,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    out = diffusion_generate(model, model.diffusion_family, input_ids, None, config, **arguments)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def static_capacity(args) -> int:
    """Slots of the static cache of the timed decodes (canvas, scratch block, rounding), the warm-up's too."""
    return args.prompt_length + args.new_tokens + 2 * BLOCK_SIZE


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_threads(requested: str) -> tuple[int, str]:
    cores = available_cores()
    if requested != "auto":
        return int(requested), "as requested"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cores, int(cores - load + 0.5)))
    return threads, f"auto: {cores} core(s), 1-minute load average {load:.1f} from other jobs"


def run(args) -> tuple[dict, float]:
    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    args.thread_count = threads
    model = build_model(args.hidden_size, args.layers)
    print(
        f"t3d-trl {t3d_trl.__version__}, torch {torch.__version__}, {platform.machine()}, {threads} thread(s) ({why})\n"
        f"model: Qwen3 hidden {args.hidden_size}, intermediate {2 * args.hidden_size}, {args.layers} layers, 4 heads, "
        f"vocab {VOCAB_SIZE}, float32, sdpa, random weights; block {BLOCK_SIZE}, {args.prompt_length}-token prompts, "
        f"{args.new_tokens} new tokens, greedy, "
        f"no EOS; best of {args.repeats} interleaved round(s)"
    )
    prompts = {b: build_prompts(b, args.prompt_length) for b in args.batch_sizes}
    results = {(b, s, v): Measurement(b, s, v) for v in args.variants for b in args.batch_sizes for s in args.steps}
    args.compile_log = {}
    for b in args.batch_sizes:  # warm-up: every code path once, on a short decode
        for v in args.variants:
            graphs, started = compiled_graphs(), time.perf_counter()
            decode(model, prompts[b], min(2, max(args.steps)), 8, v, static_capacity(args))
            if v == "e":
                args.compile_log[b] = (compiled_graphs() - graphs, time.perf_counter() - started)
                print(
                    f"  warm-up of (e) at batch {b}: {args.compile_log[b][0]} graph(s) compiled in "
                    f"{args.compile_log[b][1]:.0f} s",
                    flush=True,
                )
    args.graphs_before_timing = compiled_graphs()
    started = time.perf_counter()

    def remaining() -> float:
        return float("inf") if args.budget <= 0 else args.budget - (time.perf_counter() - started)

    def estimate(m: Measurement) -> float | None:
        if m.measured:
            return min(m.wall)
        first = results.get((m.batch_size, min(args.steps), m.variant))
        if m.variant == "c" and first is not None and first.measured and m.steps > first.steps:
            return min(first.wall) * m.steps / first.steps  # no cache: every step recomputes the same lengths
        return None

    # cheap configurations first, the no-cache runs at S > 1 last (they are the ones the budget may drop)
    ordered = sorted(results.values(), key=lambda m: (m.variant == "c" and m.steps > min(args.steps), m.batch_size))
    for round_index in range(args.repeats):
        order = ordered if round_index % 2 == 0 else ordered[::-1]
        if round_index % 2:  # keep the expensive runs at the end of every round
            order = sorted(order, key=lambda m: m.variant == "c" and m.steps > min(args.steps))
        for m in order:
            if m.measured and min(m.wall) > args.max_repeat_seconds:
                continue
            guess = estimate(m)
            if guess is not None and guess > remaining():
                continue
            wall, cpu, out = decode(
                model, prompts[m.batch_size], m.steps, args.new_tokens, m.variant, static_capacity(args)
            )
            m.wall.append(wall)
            m.cpu.append(cpu)
            m.new_tokens = out.sequences.shape[1] - args.prompt_length
            m.sequences = out.sequences
            m.nfe = int(out.nfe.max())
            if int(out.nfe.min()) != m.nfe:
                raise RuntimeError(f"rows of one batch spent different forwards: {out.nfe.tolist()}")
        print(f"  round {round_index + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", flush=True)
    args.graphs_while_timing = compiled_graphs() - args.graphs_before_timing
    measured = [m for m in results.values() if m.measured]
    share = sum(sum(m.cpu) for m in measured) / max(1e-9, sum(sum(m.wall) for m in measured)) / threads
    return results, share


def print_table(results, args, clock: str) -> None:
    title = "wall-clock" if clock == "wall" else "process CPU time"
    print(f"\ntokens/s by {title} (best run), forwards per block, timed runs n")
    header = f"{'batch':>5} {'S':>2} |" + "|".join(f" {'(' + v + ') ' + VARIANTS[v][0]:<25}" for v in args.variants)
    print(header)
    print(f"{'':>5} {'':>2} |" + "|".join(f" {'tok/s':>9} {'fwd/blk':>8} {'n':>3}   " for _ in args.variants))
    print("-" * len(header))
    for b in args.batch_sizes:
        for s in args.steps:
            cells = []
            for v in args.variants:
                m = results[(b, s, v)]
                if m.measured:
                    cells.append(
                        f" {m.tokens_per_second(clock):9.1f} {m.nfe / m.blocks(args.prompt_length):8.2f} "
                        f"{len(m.wall):3d}   "
                    )
                else:
                    cells.append(f" {'skipped (budget)':>22}   ")
            print(f"{b:5d} {s:2d} |" + "|".join(cells))


def ratios_of(measured, clock, numerator: str, denominator: str) -> dict:
    """tokens/s of variant ``numerator`` over ``denominator`` for every (batch, S) where both were measured."""
    return {
        (b, s): m.tokens_per_second(clock) / measured[(b, s, denominator)].tokens_per_second(clock)
        for (b, s, v), m in measured.items()
        if v == numerator and (b, s, denominator) in measured
    }


def report(results, args, clock: str) -> bool:
    all_pass = True

    def verdict(ok: bool) -> str:
        nonlocal all_pass
        all_pass &= ok
        return "PASS" if ok else "FAIL"

    def listed(ratios: dict) -> str:
        return ", ".join(f"b{b} S{s} {r:.2f}x" for (b, s), r in sorted(ratios.items()))

    print()
    measured = {key: m for key, m in results.items() if m.measured}
    lines, ok = [], True
    for (b, s, v), m in measured.items():
        expected = {"a": s, "b": s + 1, "d": s, "e": s}.get(v)
        if expected is not None:
            per_block = m.nfe / m.blocks(args.prompt_length)
            ok &= m.nfe == expected * m.blocks(args.prompt_length)
            lines.append(f"({v}) b{b} S{s}: {per_block:g}")
    if lines and args.prompt_length % BLOCK_SIZE:
        print(
            "[n/a] forwards per block: a prompt tail shares the first block, so it takes fewer steps; use a "
            f"--prompt-length that is a multiple of {BLOCK_SIZE} for this target"
        )
    elif lines:
        print("  forwards per block: " + ", ".join(lines))
        print(f"[{verdict(ok)}] forwards per block = S for (a), (d), (e) and S+1 for (b)")

    ratios = ratios_of(measured, clock, "a", "c")
    if ratios:
        print("  cached (a) / no-cache (c) tokens/s: " + listed(ratios))
        worst = min(ratios, key=ratios.get)
        print(
            f"[{verdict(ratios[worst] >= TARGET_CACHE_SPEEDUP)}] cached / no-cache tokens/s >= "
            f"{TARGET_CACHE_SPEEDUP:g}x (worst {ratios[worst]:.2f}x at batch {worst[0]}, S={worst[1]})"
        )
        at_16 = {key: r for key, r in ratios.items() if key[0] == 16}
        if at_16:
            worst = min(at_16, key=at_16.get)
            print(
                f"[{verdict(at_16[worst] >= TARGET_CACHE_SPEEDUP_BATCH_16)}] cached / no-cache tokens/s at batch 16 "
                f">= {TARGET_CACHE_SPEEDUP_BATCH_16:g}x (worst {at_16[worst]:.2f}x at S={worst[1]})"
            )

    fused = ratios_of(measured, clock, "a", "b")
    if fused:
        print("  fused (a) / store pass (b) tokens/s: " + listed(fused))
        at_1 = {key: r for key, r in fused.items() if key[0] == 1}
        for (_, s), r in sorted(at_1.items()):
            target = TARGET_FUSED_SHARE * (s + 1) / s
            print(
                f"[{verdict(r >= target)}] fused / store pass tokens/s at batch 1, S={s}: {r:.2f}x >= "
                f"{TARGET_FUSED_SHARE:g} x (S+1)/S = {target:.2f}x"
            )

    big, small = max(args.batch_sizes), min(args.batch_sizes)
    scaling = {}
    for s in args.steps:
        hi, lo = measured.get((big, s, "a")), measured.get((small, s, "a"))
        if big != small and hi and lo:
            scaling[s] = hi.tokens_per_second(clock) / lo.tokens_per_second(clock)
    if scaling:
        print(
            f"  batch-{big} / batch-{small} tokens/s of (a): " + ", ".join(f"S{s} {r:.2f}x" for s, r in scaling.items())
        )
        worst = min(scaling, key=scaling.get)
        if (small, big) == (1, 16):  # the target is stated for these two batch sizes
            print(
                f"[{verdict(scaling[worst] >= TARGET_BATCH_SPEEDUP)}] batch-16 / batch-1 tokens/s of (a) >= "
                f"{TARGET_BATCH_SPEEDUP:g}x (worst {scaling[worst]:.2f}x at S={worst})"
            )
            for s in (2, 4):
                if s in scaling:
                    print(
                        f"[{verdict(scaling[s] >= TARGET_BATCH_SPEEDUP)}] batch-16 / batch-1 tokens/s of (a) at "
                        f"S={s}: {scaling[s]:.2f}x >= {TARGET_BATCH_SPEEDUP:g}x"
                    )

    for numerator, denominator in (("d", "a"), ("e", "d")):
        ratios = ratios_of(measured, clock, numerator, denominator)
        if ratios:
            print(
                f"  ({numerator}) {VARIANTS[numerator][0]} / ({denominator}) {VARIANTS[denominator][0]} tokens/s: "
                + listed(ratios)
            )
    compiled = ratios_of(measured, clock, "e", "a")
    if compiled:
        print("  (e) static compiled / (a) fused tokens/s: " + listed(compiled))
        at_1 = {key: r for key, r in compiled.items() if key[0] == 1}
        if at_1:
            worst = min(at_1, key=at_1.get)
            print(
                f"[{verdict(at_1[worst] >= TARGET_COMPILED_SPEEDUP)}] static compiled / fused (eager) tokens/s at "
                f"batch 1 >= {TARGET_COMPILED_SPEEDUP:g}x (worst {at_1[worst]:.2f}x at S={worst[1]})"
            )
    if "e" in args.variants and args.compile_log:
        timed = sum(len(m.wall) for (b, s, v), m in measured.items() if v == "e")
        warm = ", ".join(f"batch {b}: {n} in {t:.0f} s" for b, (n, t) in args.compile_log.items())
        print(
            f"  graphs compiled by the warm-up of (e): {warm}; by its {timed} timed decodes: {args.graphs_while_timing}"
        )
        one_each = all(n == 1 for n, _ in args.compile_log.values())
        print(
            f"[{verdict(one_each and args.graphs_while_timing == 0)}] one compiled graph per decode after warm-up "
            f"(the warm-up compiles one per batch size, the timed decodes none)"
        )

    for b in args.batch_sizes:  # one semantics: the variants should decode the same tokens
        for s in args.steps:
            runs = [results[(b, s, v)] for v in args.variants if results[(b, s, v)].measured]
            agree = [float((m.sequences == runs[0].sequences).float().mean()) for m in runs[1:]]
            if any(x < 1.0 for x in agree):
                print(
                    f"  note: batch {b} S={s}: token agreement with ({runs[0].variant}) "
                    f"{', '.join(f'{x:.3f}' for x in agree)} (float32 rounding can flip near-tied argmaxes)"
                )
    return all_pass


def profile(args) -> None:
    """Where the time of the cached engine goes: CPU time per kind of forward of (a) and (b) (the fused forward
    against the B-query forwards), mask building and the rest of the loop, at batch 1; then cProfile of (a)."""
    import cProfile
    import pstats

    threads, _ = choose_threads(args.threads)
    torch.set_num_threads(threads)
    model = build_model(args.hidden_size, args.layers)
    family = model.diffusion_family
    spent: dict = {}

    def timed(name, method):
        def run(*positional, **keywords):
            started = time.process_time()
            result = method(*positional, **keywords)
            key = name(*positional, **keywords)
            total, count = spent.get(key, (0.0, 0))
            spent[key] = (total + time.process_time() - started, count + 1)
            return result

        return run

    def forward_kind(model, input_ids, *rest, num_tokens_to_store=0, num_logits=None):
        queries, stored = input_ids.shape[1], num_tokens_to_store
        if num_logits is None:
            return f"store forward ({queries} queries)"
        return f"fused forward ({queries} queries)" if stored else f"denoising forward ({queries} queries)"

    family.block_forward = timed(forward_kind, family.block_forward)
    family.decode_mask = timed(lambda *a, **k: "mask building", family.decode_mask)
    ids = build_prompts(1, args.prompt_length)
    print(f"=== CPU time of (a) and (b) at batch 1, {args.new_tokens} new tokens, {threads} thread(s), best of 3 ===")
    for s in args.steps:
        for v in "ab":
            decode(model, ids, s, 8, v)
            best = None
            for _ in range(3):
                spent.clear()
                _, cpu, _ = decode(model, ids, s, args.new_tokens, v)
                if best is None or cpu < best[0]:
                    best = (cpu, dict(spent))
            cpu, parts = best
            rest = cpu - sum(total for total, _ in parts.values())
            cells = [f"{key} {1e3 * total / count:.2f} ms x{count}" for key, (total, count) in sorted(parts.items())]
            print(f"S={s} ({v}) {1e3 * cpu:.0f} ms: " + "; ".join(cells) + f"; rest of the loop {1e3 * rest:.0f} ms")
    del family.block_forward, family.decode_mask
    for b in args.batch_sizes:
        ids = build_prompts(b, args.prompt_length)
        decode(model, ids, 1, 8, "a")
        profiler = cProfile.Profile()
        profiler.enable()
        decode(model, ids, 1, args.new_tokens, "a")
        profiler.disable()
        print(f"\n=== cProfile, variant (a), batch {b}, S=1, {args.new_tokens} new tokens, {threads} thread(s) ===")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 new tokens, one round")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="new tokens per row (default 256; 32 with --quick)"
    )
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=256, help="model width (intermediate = 2x; default 256)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--variants", default="abcde", help="which of a, b, c, d, e to run (default abcde)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds, best kept (default 3; 1 with --quick)")
    parser.add_argument(
        "--max-repeat-seconds",
        type=float,
        default=4.0,
        help="a configuration whose run takes longer is timed once (default 4)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=150.0,
        help="seconds for the timed part; no-cache runs at S>1 that would not fit are skipped "
        "(default 150; 0 = no limit)",
    )
    parser.add_argument("--threads", default="auto", help="torch threads, or 'auto' (default)")
    parser.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="what tokens/s and the targets are computed from: wall-clock, or process CPU time (meaningful "
        "with one thread); default auto, see above",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="where the time of (a) and (b) goes, and cProfile of (a), instead of benchmarking",
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    args = parser.parse_args(argv)
    args.new_tokens = args.new_tokens or (32 if args.quick else 256)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.variants = [v for v in VARIANTS if v in args.variants]
    if args.profile:
        profile(args)
        return 0
    started = time.perf_counter()
    results, share = run(args)
    clock = args.clock
    if clock == "auto":
        clock = "cpu" if args.thread_count == 1 and share < 0.9 else "wall"
    print(
        f"\nCPU share: the process ran {100 * share:.0f}% of the time on its {args.thread_count} thread(s); "
        f"figures below use {'wall-clock' if clock == 'wall' else 'process CPU'} time"
        + (" (other jobs were competing for the cores)" if clock == "cpu" and args.clock == "auto" else "")
    )
    if clock == "cpu":
        print_table(results, args, "wall")
    print_table(results, args, clock)
    ok = report(results, args, clock)
    if args.quick:
        print("\n(--quick is a smoke run: the targets are stated for 256 new tokens, where the cache matters more)")
    print(f"\n{'all targets PASS' if ok else 'some targets FAIL'} ({time.perf_counter() - started:.0f} s in all)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
