"""Worker of ``tests/test_rollout.py::test_two_process_rollout_equals_one_process``.

Run as ``accelerate launch --multi_gpu --num_processes 2 tests/scripts/rollout_2proc.py OUT`` with no GPU
visible: torchrun starts two CPU processes (``accelerate launch --cpu`` starts only one unless MPI is set up). It
rolls out the tiny teacher of :func:`build` greedily (with an ``output_dir``) and with sampling (``NUM_GENERATIONS``
samples per prompt), and writes every process's rows to ``OUT/{greedy,sampled}_rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

from t3d_trl.testing import tiny_qwen3, tiny_tokenizer

PROMPTS = ["abc", "hello world", "x", "what is 2+2?", "zz top", "a b c d e f g", "q", "seven"]
GREEDY = {"max_new_tokens": 8, "steps_per_block": 2}
SAMPLED = {"max_new_tokens": 8, "steps_per_block": 2, "temperature": 1.0}
BATCH_SIZE = 2
SEED = 3
NUM_GENERATIONS = 2


def build():
    """The tiny teacher (EOS made likely, so completions have different lengths), its tokenizer and the prompts."""
    tokenizer = tiny_tokenizer()
    model = tiny_qwen3(seed=0)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = model.lm_head.weight[tokenizer.convert_tokens_to_ids("3")] * 1.01
    dataset = Dataset.from_dict({"prompt": PROMPTS, "id": list(range(len(PROMPTS)))})
    return model, tokenizer, dataset


def main(out: Path) -> None:
    from accelerate import PartialState

    from t3d_trl.rollout import generate_trajectories

    model, tokenizer, dataset = build()  # on CPU; generate_trajectories sets up the (gloo) process group itself
    greedy = generate_trajectories(
        model, tokenizer, dataset, GREEDY, batch_size=BATCH_SIZE, output_dir=out / "greedy_dir", progress=False
    )
    sampled = generate_trajectories(
        model,
        tokenizer,
        dataset,
        SAMPLED,
        batch_size=BATCH_SIZE,
        seed=SEED,
        num_generations=NUM_GENERATIONS,
        progress=False,
    )
    state = PartialState()  # the state generate_trajectories initialised
    for name, result in (("greedy", greedy), ("sampled", sampled)):
        (out / f"{name}_rank{state.process_index}.json").write_text(json.dumps(result.to_list()))
    (out / f"world_size_rank{state.process_index}.txt").write_text(str(state.num_processes))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
