"""A tiny teacher for offline smoke runs of the examples: the demo's character tokenizer and a small Qwen3 model,
briefly trained as a block diffusion LM on the demo tasks' ground-truth answers (nothing is downloaded)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TINY_TASKS", "tiny_prompts", "tiny_teacher"]

TINY_TASKS = ("words", "sums", "perm")


def tiny_prompts(num_prompts: int = 96, seed: int = 0, tasks: tuple[str, ...] = TINY_TASKS) -> Any:
    """``num_prompts`` demo prompts (tasks in turn; the small tasks' few distinct prompts are repeated), with their
    ``reference`` and ``scorer`` (registered by importing :mod:`t3d_trl.demo.tasks`), so they also serve as an
    evaluation set."""
    from datasets import Dataset

    from ..demo.tasks import evaluation_prompts

    per_task = {name: evaluation_prompts(name, num_prompts, seed + 1000) for name in tasks}
    rows = []
    for index in range(num_prompts):
        name = tasks[index % len(tasks)]
        distinct = per_task[name]
        row = distinct[(index // len(tasks)) % len(distinct)]
        rows.append({"prompt": row["prompt"], "task": name, "reference": row["reference"], "scorer": row["scorer"]})
    return Dataset.from_list(rows)


def tiny_teacher(
    output_dir: str,
    steps: int = 150,
    seed: int = 0,
    use_cpu: bool = False,
    hidden_size: int = 64,
    num_layers: int = 2,
    batch_size: int = 32,
    tasks: tuple[str, ...] = TINY_TASKS,
) -> tuple[Any, Any]:
    """The demo tokenizer and a tiny Qwen3 teacher trained for ``steps`` optimizer steps with the ``sft`` objective.

    Works under ``accelerate launch`` (the steps are data parallel). ``steps=0`` returns the untrained model.

    Returns:
        ``(teacher, tokenizer)``; the teacher is in eval mode on the training device.
    """
    from ..demo.pipeline import DemoConfig, build_teacher, build_tokenizer, ground_truth_dataset
    from ..trainer import T3DConfig, T3DTrainer

    tokenizer = build_tokenizer()
    teacher = build_teacher(tokenizer, DemoConfig(hidden_size=hidden_size, num_layers=num_layers), seed)
    if steps > 0:
        args = T3DConfig(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=2e-3,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 20),
            weight_decay=0.01,
            loss_type=["sft"],
            sync_ref_model=False,
            random_token_ratio=0.0,
            num_eos_tokens=1,
            max_prompt_length=None,
            max_completion_length=None,
            logging_steps=max(1, steps // 5),
            save_strategy="no",
            report_to="none",
            use_cpu=use_cpu,
            seed=seed,
            disable_tqdm=True,
        )
        dataset = ground_truth_dataset(tokenizer, tasks, steps * batch_size, seed, block_size=4)
        trainer = T3DTrainer(teacher, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        trainer.release_wrappers()  # the DDP wrapper must not outlive the process group (see its docstring)
        logger.info("Tiny teacher trained for %d steps (last loss %s)", steps,
                    next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None))
    teacher.eval()
    return teacher, tokenizer
