# /// script
# dependencies = ["t3d-trl", "deepspeed"]
# ///
"""Distil a block diffusion LM (SDAR) into a few-step decoder with T3D: teacher rollouts, then training.

The script rolls the teacher out over the prompts of a dataset (or takes an existing trajectory dataset with
``--trajectories_path``), trains the student (initialised from the teacher) with :class:`t3d_trl.T3DTrainer`, saves
it (weights, tokenizer, few-step ``generation_config.json``, ``custom_generate/``, model card) and, with
``--push_to_hub``, pushes it. The two stages are the ``main`` functions of the ``t3d-trl rollout`` and ``t3d-trl
train`` scripts (:mod:`t3d_trl.scripts.rollout`, :mod:`t3d_trl.scripts.train`), run one after the other in one
launch. Flags come in three groups, parsed by ``trl.TrlParser`` (a ``--config file.yaml`` works too): the script's
own (dataset, rollout), the model's (``ModelArguments``) and every field of :class:`t3d_trl.T3DConfig` /
``TrainingArguments``.

# The official T3D recipe: SDAR-4B-Chat on MATH, 8 GPUs, DeepSpeed ZeRO-1 (docs/training.md,
# "The official optimisation, with the library's defaults")

```bash
accelerate launch --config_file examples/accelerate_configs/deepspeed_zero1.yaml examples/sdar.py \\
    --model_name_or_path JetLM/SDAR-4B-Chat --dtype bfloat16 \\
    --dataset_name DigitalLearningGmbH/MATH-lighteval --dataset_split train \\
    --prompt_column problem --prompt_template math --as_chat \\
    --rollout_block_size 4 --rollout_steps_per_block 4 --rollout_temperature 0.1 \\
    --rollout_remasking low_confidence_static --rollout_max_new_tokens 2000 --rollout_batch_size 16 \\
    --block_size 8 --max_prompt_length 512 --max_completion_length 1024 \\
    --learning_rate 1e-5 --weight_decay 0.01 --max_grad_norm 1.0 \\
    --lr_scheduler_type cosine_with_min_lr --lr_scheduler_kwargs '{"min_lr_rate": 0.1}' --warmup_steps 20 \\
    --per_device_train_batch_size 1 --gradient_accumulation_steps 32 \\
    --bf16 --gradient_checkpointing --num_train_epochs 30 \\
    --logging_steps 1 --save_steps 500 --report_to none \\
    --output_dir SDAR-4B-Chat-T3D
```

T3D's objective defaults are the official ones (``--loss_type ddo path --beta 0.1 --alpha 0.5 --lambda_path 0.2
--reference_temperature 0``, reference refreshed every 10 optimizer steps: ``--ref_model_sync_steps 10``). The
rollouts are written, resumably, to ``<output_dir>/rollouts`` (``--rollout_dir``): a rerun reads the finished
batches back. The same recipe as a YAML file: ``t3d_trl/configs/sdar_t3d.yaml``
(``accelerate launch ... examples/sdar.py --config sdar_t3d``).

Other accelerate configs (``examples/accelerate_configs/``, 8 processes each; change ``num_processes``):

* ``ddp.yaml`` — plain data parallelism (small models, or LoRA: ``--use_peft --lora_r 64``);
* ``deepspeed_zero1.yaml`` — the official setting: optimizer states sharded;
* ``deepspeed_zero2.yaml`` — gradients sharded too;
* ``deepspeed_zero3.yaml`` — parameters sharded too. ZeRO-3 loads the model sharded, which cannot generate: roll
  out first with the ``t3d-trl rollout`` command under ``ddp.yaml``, then train with
  ``--trajectories_path <rollout dir>``;
* ``fsdp.yaml`` — PyTorch FSDP2 (full sharding of the transformer layers; the full state dict is gathered on save).

Two stages instead of one (rollouts on one cluster, training on another, or the same rollouts for several runs)::

    accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli rollout \\
        --config rollout --model_name_or_path JetLM/SDAR-4B-Chat --output_dir rollouts/math
    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero3.yaml examples/sdar.py \\
        --model_name_or_path JetLM/SDAR-4B-Chat --trajectories_path rollouts/math [training flags as above]

# Tiny offline run (no download, a CPU is enough)

Without ``--model_name_or_path`` the script builds the demo's character tokenizer and a tiny Qwen3 teacher from a
config (``t3d_trl.testing.tiny_teacher``), trains it for ``--tiny_teacher_steps`` steps as a block diffusion LM on
the demo tasks' ground-truth answers, saves it to ``<output_dir>/teacher`` with ``--max_samples`` demo prompts in
``<output_dir>/prompts.jsonl`` (with references and scorer names), then rolls it out (8 new tokens each) and trains
T3D on the result, as with a real teacher. Besides the student and the rollouts it writes ``trajectories/``
(the bundled configs of ``t3d_trl/configs/`` run the same stages on what ``t3d-trl demo`` writes: docs/cli.md)::

    python examples/sdar.py --max_steps 20 --output_dir tiny-t3d
    CUDA_VISIBLE_DEVICES="" accelerate launch --multi_gpu --num_processes 2 examples/sdar.py \\
        --use_cpu --max_steps 5 --output_dir tiny-t3d

On a machine without GPUs, ``accelerate launch --cpu --num_processes 2`` starts a single process (accelerate needs
MPI for several CPU processes); ``--multi_gpu --num_processes 2`` with no visible GPU starts two processes that
talk over gloo, and ``--use_cpu`` keeps the Trainer on the CPU.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import PartialState
from trl import TrlParser

from t3d_trl import T3DConfig, patch_model
from t3d_trl.scripts import (
    DatasetArguments,
    GenerationArguments,
    LoraArguments,
    ModelArguments,
    RolloutArguments,
    TrainDatasetArguments,
    escape_help_percent,
    setup_logging,
)
from t3d_trl.scripts import rollout as rollout_script
from t3d_trl.scripts import train as train_script
from t3d_trl.scripts.utils import BUNDLED_CONFIGS
from t3d_trl.testing import tiny_prompts, tiny_teacher

logger = logging.getLogger("examples.sdar")


@dataclass
class ScriptArguments(DatasetArguments):
    """The prompts (``--dataset_name`` / ``--dataset_path``), the teacher's rollout settings, or an existing
    trajectory dataset (``--trajectories_path``)."""

    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts (text or messages)."})
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Template applied to text prompts (`{prompt}` placeholder), or `math` for the GSM8K/MATH500 "
            "evaluation prompt."
        },
    )
    as_chat: bool = field(default=False, metadata={"help": "Wrap text prompts as a user message (chat template)."})
    trajectories_path: str | None = field(
        default=None,
        metadata={
            "help": "Train on existing trajectories instead of rolling out: a `t3d-trl rollout` output "
            "directory, a `save_to_disk` directory, a data file or a Hub dataset id."
        },
    )
    rollout_dir: str | None = field(
        default=None, metadata={"help": "Resumable rollout directory (default `<output_dir>/rollouts`)."}
    )
    rollout_block_size: int = field(default=4, metadata={"help": "Teacher block size (official 4)."})
    rollout_steps_per_block: int = field(default=4, metadata={"help": "Teacher steps per block (official 4)."})
    rollout_remasking: str = field(default="low_confidence_static", metadata={"help": "Teacher remasking strategy."})
    rollout_temperature: float = field(default=0.1, metadata={"help": "Teacher sampling temperature (official 0.1)."})
    rollout_top_k: int | None = field(default=None, metadata={"help": "Teacher top-k."})
    rollout_top_p: float | None = field(default=None, metadata={"help": "Teacher top-p."})
    rollout_max_new_tokens: int = field(default=2000, metadata={"help": "Teacher token budget (official 2000)."})
    rollout_batch_size: int = field(default=16, metadata={"help": "Prompts per teacher `generate` call."})
    rollout_max_prompt_length: int | None = field(
        default=None, metadata={"help": "Refuse prompts longer than this before rolling out."}
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Also push the trajectories to this Hub dataset repository."}
    )
    tiny_teacher_steps: int = field(
        default=60,
        metadata={"help": "Without --model_name_or_path: training steps of the tiny offline teacher (0: untrained)."},
    )


def rollout_settings(script_args: ScriptArguments, tiny: bool) -> GenerationArguments:
    """The teacher's decoding settings (the ``--rollout_*`` flags) as ``t3d-trl rollout`` takes them."""
    settings = GenerationArguments(
        block_size=script_args.rollout_block_size,
        steps_per_block=script_args.rollout_steps_per_block,
        remasking=script_args.rollout_remasking,
        temperature=script_args.rollout_temperature,
        top_k=script_args.rollout_top_k,
        top_p=script_args.rollout_top_p,
        max_new_tokens=script_args.rollout_max_new_tokens,
    )
    if tiny:  # the tiny teacher's answers are 3-4 characters and its positions stop at 64
        settings.max_new_tokens = min(settings.max_new_tokens, 8)
    return settings


def prepare_tiny_teacher(
    script_args: ScriptArguments, model_args: ModelArguments, training_args: T3DConfig, state: PartialState
) -> tuple[ScriptArguments, ModelArguments]:
    """Train the tiny offline teacher, save it with its prompts, and point the rollout at them.

    Returns:
        The script and model arguments of a rollout of ``<output_dir>/teacher`` over ``<output_dir>/prompts.jsonl``.
    """
    if script_args.trajectories_path is not None:
        raise ValueError("--trajectories_path needs --model_name_or_path (the model the trajectories came from).")
    teacher_dir = os.path.join(training_args.output_dir, "teacher")
    prompts_path = os.path.join(training_args.output_dir, "prompts.jsonl")
    teacher, tokenizer = tiny_teacher(
        teacher_dir, steps=script_args.tiny_teacher_steps, seed=training_args.seed, use_cpu=training_args.use_cpu
    )
    # the saved teacher (and so the student) decodes with the rollout's block settings, greedily by default
    settings = rollout_settings(script_args, tiny=True).to_dict()
    patch_model(teacher, tokenizer, **{k: v for k, v in settings.items() if k not in ("temperature", "top_k", "top_p")})
    if state.is_main_process:
        teacher.save_pretrained(teacher_dir)
        tokenizer.save_pretrained(teacher_dir)
        tiny_prompts(script_args.max_samples or 96, seed=training_args.seed).to_json(prompts_path)
    state.wait_for_everyone()
    del teacher  # the stages load it back from teacher_dir
    gc.collect()
    script_args = dataclasses.replace(script_args, dataset_name=None, dataset_path=prompts_path, max_samples=None)
    return script_args, dataclasses.replace(model_args, model_name_or_path=teacher_dir)


def roll_out(
    script_args: ScriptArguments, model_args: ModelArguments, training_args: T3DConfig, tiny: bool
) -> tuple[str, Any]:
    """``t3d-trl rollout``'s ``main`` with the script's flags; returns the rollout directory and the trajectories."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "Under DeepSpeed ZeRO-3 the teacher would be loaded sharded and cannot generate. Roll out first "
            "(accelerate launch --config_file examples/accelerate_configs/ddp.yaml -m t3d_trl.cli rollout "
            "...), then pass --trajectories_path."
        )
    rollout_dir = script_args.rollout_dir or os.path.join(training_args.output_dir, "rollouts")
    rollout_args = RolloutArguments(
        dataset_name=script_args.dataset_name,
        dataset_path=script_args.dataset_path,
        dataset_config=script_args.dataset_config,
        dataset_split=script_args.dataset_split,
        max_samples=script_args.max_samples,
        output_dir=rollout_dir,
        prompt_column=script_args.prompt_column,
        prompt_template=script_args.prompt_template,
        as_chat=script_args.as_chat,
        model_family=training_args.model_family,
        batch_size=script_args.rollout_batch_size,
        max_prompt_length=script_args.rollout_max_prompt_length,
        seed=training_args.seed,
        push_to_hub=script_args.hub_dataset_id is not None,
        hub_dataset_id=script_args.hub_dataset_id,
    )
    trajectories = rollout_script.main(model_args, rollout_args, rollout_settings(script_args, tiny))
    gc.collect()  # the teacher is gone; the student is loaded afresh by the trainer (sharded under ZeRO / FSDP)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rollout_dir, trajectories


def main(script_args: ScriptArguments, model_args: ModelArguments, lora_args: LoraArguments, training_args: T3DConfig):
    """Roll out (unless ``--trajectories_path``), then train, save and push the student."""
    state = PartialState()  # set up by T3DConfig (gloo processes with --use_cpu)
    tiny = model_args.model_name_or_path is None
    if tiny:
        script_args, model_args = prepare_tiny_teacher(script_args, model_args, training_args, state)

    if script_args.trajectories_path is not None:
        source = script_args.trajectories_path
        if os.path.exists(source):  # the model card names the prompts' dataset, else the trajectories
            trajectories_args = TrainDatasetArguments(
                dataset_path=source, dataset_name=script_args.dataset_name or source
            )
        else:  # a Hub dataset id
            trajectories_args = TrainDatasetArguments(dataset_name=source)
    else:
        rollout_dir, trajectories = roll_out(script_args, model_args, training_args, tiny)
        if tiny and state.is_main_process:  # kept for inspection (load_from_disk)
            trajectories.save_to_disk(os.path.join(training_args.output_dir, "trajectories"))
        trajectories_args = TrainDatasetArguments(dataset_path=rollout_dir, dataset_name=script_args.dataset_name)

    # the student starts from the teacher (the reference is a frozen copy); `main` ends the run
    train_script.main(trajectories_args, model_args, lora_args, training_args)


#: ``--recipe`` name -> the YAML file it reads
RECIPES = {
    "paper": str(BUNDLED_CONFIGS / "sdar_t3d_paper.yaml"),
}


def with_recipe(argv: list[str]) -> list[str]:
    """``argv`` with ``--recipe NAME`` replaced by ``--config <the recipe's YAML>`` (flags still override it).

    ``--recipe paper`` runs the official T3D code's settings (``t3d_trl/configs/sdar_t3d_paper.yaml``, each with its
    source); without ``--recipe`` the library's defaults apply.
    """
    if "--recipe" not in argv and not any(arg.startswith("--recipe=") for arg in argv):
        return argv
    index = next(i for i, arg in enumerate(argv) if arg == "--recipe" or arg.startswith("--recipe="))
    name = argv[index].partition("=")[2] if "=" in argv[index] else (argv[index + 1] if index + 1 < len(argv) else "")
    rest = argv[:index] + argv[index + (1 if "=" in argv[index] else 2) :]
    if name not in RECIPES:
        raise SystemExit(f"examples/sdar.py: error: --recipe must be one of {sorted(RECIPES)}, got {name!r}.")
    if "--config" in rest or any(arg.startswith("--config=") for arg in rest):
        raise SystemExit("examples/sdar.py: error: --recipe and --config cannot be combined (the recipe is a config).")
    return ["--config", RECIPES[name], *rest]


def make_parser() -> TrlParser:
    parser = TrlParser((ScriptArguments, ModelArguments, LoraArguments, T3DConfig), prog="examples/sdar.py")
    parser.epilog = "--recipe paper: the official T3D code's settings (t3d_trl/configs/sdar_t3d_paper.yaml)."
    return escape_help_percent(parser)


if __name__ == "__main__":
    import sys

    setup_logging()
    main(*make_parser().parse_args_and_config(with_recipe(sys.argv[1:])))
