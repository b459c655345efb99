"""``t3d-trl rollout``: roll a block diffusion teacher out over prompts and record its trajectories.

```bash
t3d-trl rollout --config rollout
python -m t3d_trl.scripts.rollout --config rollout --max_samples 100
accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli rollout --config rollout.yaml
```

See ``docs/cli.md`` (``t3d-trl rollout``) and ``docs/rollouts.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .arguments import GenerationArguments, ModelArguments, RolloutArguments
from .utils import (
    format_prompts,
    load_dataset_from_args,
    load_model,
    load_tokenizer,
    make_script_parser,
)

HELP = (
    "Roll a block diffusion teacher out over prompts and record its trajectories (token ids and the step that "
    "committed each token)."
)
EXAMPLES = """examples:
  t3d-trl rollout --config rollout
  t3d-trl rollout --model_name_or_path JetLM/SDAR-1.7B-Chat --dataset_name DigitalLearningGmbH/MATH-lighteval \\
      --prompt_column problem --as_chat --block_size 4 --steps_per_block 4 --temperature 0.1 \\
      --max_new_tokens 2000 --dtype bfloat16 --output_dir rollouts/sdar-1.7b-math
  accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli rollout --config rollout.yaml"""


def main(model_args: ModelArguments, rollout_args: RolloutArguments, generation_args: GenerationArguments) -> Any:
    """Roll the teacher out over the prompts and save the trajectories.

    Under ``accelerate launch`` the batches are shared out between the processes (``generate_trajectories``). The
    trajectories land in ``<output_dir>/dataset`` (``save_to_disk`` format); with ``--push_to_hub`` they are pushed
    with a dataset card.

    Args:
        model_args: the teacher.
        rollout_args: the prompts, the output directory, the batches.
        generation_args: the teacher's decoding settings.

    Returns:
        The trajectory dataset.
    """
    from ..rollout import check_rollout_settings, generate_trajectories, push_trajectories_to_hub
    from ..rollout.loop import _default_state

    # what can be checked without the model, before anything is loaded
    if rollout_args.push_to_hub and not rollout_args.hub_dataset_id:
        raise ValueError("--push_to_hub needs --hub_dataset_id (the dataset repository, `user/name`).")
    check_rollout_settings(
        batch_size=rollout_args.batch_size,
        num_generations=rollout_args.num_generations,
        seed=rollout_args.seed,
        max_prompt_length=rollout_args.max_prompt_length,
        output_dir=rollout_args.output_dir,
    )
    if rollout_args.num_generations > 1 and generation_args.temperature == 0:
        raise ValueError(
            f"--num_generations {rollout_args.num_generations} needs sampling, but --temperature is 0 (greedy): the "
            "samples of a prompt would be identical. Give --temperature > 0 (the official rollout uses 0.1)."
        )
    state = _default_state()  # sees a multi-process CPU launch too
    tokenizer = load_tokenizer(model_args, rollout_args.trust_remote_code)
    with state.main_process_first():  # one process writes the datasets cache, the others read it
        dataset = load_dataset_from_args(rollout_args)
        dataset = format_prompts(
            dataset, rollout_args.prompt_column, rollout_args.prompt_template, rollout_args.as_chat
        )
    model = load_model(model_args, rollout_args.model_family, tokenizer, state.device, rollout_args.trust_remote_code)
    start = time.perf_counter()
    trajectories = generate_trajectories(
        model,
        tokenizer,
        dataset,
        generation_args.to_dict(),
        prompt_column=rollout_args.prompt_column,
        batch_size=rollout_args.batch_size,
        num_generations=rollout_args.num_generations,
        max_prompt_length=rollout_args.max_prompt_length,
        output_dir=rollout_args.output_dir,
        seed=rollout_args.seed,
        accelerator=state,
    )
    if state.is_main_process:
        tokens = sum(len(ids) for ids in trajectories["completion_ids"])
        forwards = sum(trajectories["nfe"])
        samples = rollout_args.num_generations
        rows = (
            f"{len(trajectories) // samples} prompts x {samples} samples"
            if samples > 1
            else f"{len(trajectories)} prompts"
        )
        print(
            f"Rolled out {rows} in {time.perf_counter() - start:.1f} s ({tokens} completion tokens, {forwards} teacher "
            f"forwards); trajectories saved to {os.path.join(rollout_args.output_dir, 'dataset')}"
        )
        if rollout_args.push_to_hub:
            push_trajectories_to_hub(trajectories, rollout_args.hub_dataset_id, private=rollout_args.hub_private_repo)
            print(f"Pushed to https://huggingface.co/datasets/{rollout_args.hub_dataset_id}")
    state.wait_for_everyone()
    return trajectories


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> Any:
    """The parser of ``t3d-trl rollout``: model, rollout and decoding flags (see :func:`make_script_parser`)."""
    dataclass_types = (ModelArguments, RolloutArguments, GenerationArguments)
    return make_script_parser("rollout", dataclass_types, HELP, EXAMPLES, subparsers, prog)


if __name__ == "__main__":  # the same program as `t3d-trl rollout` (one-line errors, --debug, --verbose)
    import sys

    from ..cli import main as cli_main

    sys.exit(cli_main(["rollout", *sys.argv[1:]]))
