"""``t3d-trl train``: distil a model on teacher trajectories with :class:`~t3d_trl.T3DTrainer`.

```bash
t3d-trl train --config train
python -m t3d_trl.scripts.train --config train --learning_rate 1e-5
accelerate launch --config_file examples/accelerate_configs/deepspeed_zero1.yaml -m t3d_trl.cli train \\
    --config train.yaml
```

See ``docs/cli.md`` (``t3d-trl train``) and ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from .arguments import LoraArguments, ModelArguments, TrainDatasetArguments
from .utils import (
    load_dataset_from_args,
    load_tokenizer,
    make_script_parser,
    model_init_kwargs,
    peft_config_from_args,
)

if TYPE_CHECKING:
    from ..trainer import T3DConfig, T3DTrainer

HELP = (
    "Distil a model on trajectories with T3DTrainer (T3D, or a baseline `--loss_type`); every T3DConfig / "
    "TrainingArguments field is a flag."
)
EXAMPLES = """examples:
  t3d-trl train --config train
  accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml -m t3d_trl.cli train \\
      --model_name_or_path JetLM/SDAR-1.7B-Chat --dataset_path rollouts/sdar-1.7b-math \\
      --block_size 8 --learning_rate 1e-5 --bf16 --gradient_checkpointing --output_dir SDAR-1.7B-Chat-T3D"""


def main(
    script_args: TrainDatasetArguments, model_args: ModelArguments, lora_args: LoraArguments, training_args: T3DConfig
) -> T3DTrainer:
    """Distil the model on a trajectory dataset with :class:`~t3d_trl.T3DTrainer`, save it to
    ``training_args.output_dir`` (weights, tokenizer, few-step ``generation_config.json``, ``custom_generate/``,
    model card), push it with ``--push_to_hub``, then end the run (:meth:`~t3d_trl.T3DTrainer.end`: the trackers
    finish and the process group is destroyed).

    Args:
        script_args: the trajectories.
        model_args: the model, which initialises the student.
        lora_args: LoRA instead of full training (``--use_peft``).
        training_args: the training settings.

    Returns:
        The trainer.
    """
    from ..trainer import T3DTrainer

    if model_args.model_name_or_path is None:
        raise ValueError("No model: pass --model_name_or_path (the teacher, which initialises the student).")
    init_kwargs = model_init_kwargs(model_args)
    init_kwargs.update(training_args.model_init_kwargs or {})  # explicit --model_init_kwargs win
    training_args.model_init_kwargs = init_kwargs
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    with training_args.main_process_first(desc="loading the trajectories"):
        train_dataset = load_dataset_from_args(script_args)
        eval_dataset = None
        if script_args.eval_split is not None:
            eval_args = dataclasses.replace(script_args, dataset_split=script_args.eval_split)
            eval_dataset = load_dataset_from_args(eval_args)
    trainer = T3DTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config_from_args(lora_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    trainer.end()  # release the DDP / DeepSpeed wrappers, finish the trackers, destroy the process group
    return trainer


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> Any:
    """The parser of ``t3d-trl train``: dataset, model and LoRA flags and every :class:`~t3d_trl.T3DConfig` field
    (see :func:`make_script_parser`)."""
    from ..trainer import T3DConfig

    dataclass_types = (TrainDatasetArguments, ModelArguments, LoraArguments, T3DConfig)
    return make_script_parser("train", dataclass_types, HELP, EXAMPLES, subparsers, prog)


if __name__ == "__main__":  # the same program as `t3d-trl train` (one-line errors, --debug, --verbose)
    import sys

    from ..cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
