"""Multi-stage recipes built from the library's stages (rollouts and training).

* :func:`redi`: ReDi (rectified discrete flow, the "ReDi" row of the T3D paper's table, self-generated data: "SD ✓"):
  rounds of *roll the model out → train it with the masked-diffusion loss on random masks of its own outputs → roll
  the new model out*. Unlike T3D it ignores the decoding trajectory (the steps at which tokens were committed); unlike
  the paper's SFT baseline it trains on the model's own outputs, not on the dataset's reference answers.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["redi"]


def redi(
    model: Any,
    processing_class: Any,
    prompts: Any,
    args: Any,
    generation_config: Any = None,
    *,
    rounds: int = 2,
    batch_size: int = 16,
    prompt_column: str = "prompt",
) -> Any:
    """Run ``rounds`` rounds of ReDi on ``model`` and return it (trained in place).

    Round ``r``: :func:`t3d_trl.generate_trajectories` over ``prompts`` with ``generation_config`` (seed
    ``args.seed + r``), then :class:`t3d_trl.T3DTrainer` with ``loss_type=["sft"]`` (random masks of the rollouts'
    completions) and ``args``' other settings, written under ``<args.output_dir>/round<r>``.

    Args:
        model: the block diffusion LM (patched for few-step generation on the fly).
        processing_class: its tokenizer.
        prompts: a dataset (or list of dicts) with a ``prompt_column``.
        args: a :class:`~t3d_trl.T3DConfig`; its objective is replaced by ``["sft"]`` on random states.
        generation_config: the rollouts' decoding settings (see :func:`t3d_trl.generate_trajectories`).
        rounds: how many rollout-and-train rounds (ReDi's "rectification" iterations).
        batch_size: rollout batch size.
        prompt_column: the prompt column of ``prompts``.

    Returns:
        ``model`` after the last round, in eval mode.

    Raises:
        ValueError: for ``rounds`` below 1.
    """
    from .rollout import generate_trajectories
    from .trainer import T3DTrainer

    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"`rounds` must be a positive integer, got {rounds!r}.")
    for round_index in range(rounds):
        model.eval()
        trajectories = generate_trajectories(
            model,
            processing_class,
            prompts,
            generation_config,
            prompt_column=prompt_column,
            batch_size=batch_size,
            seed=args.seed + round_index,
            progress=not args.disable_tqdm,
        )
        round_args = copy.deepcopy(args)
        round_args.output_dir = os.path.join(args.output_dir, f"round{round_index}")
        round_args.loss_type, round_args.loss_weights, round_args.state_sampling = ["sft"], [1.0], "random"
        round_args.sync_ref_model = False
        trainer = T3DTrainer(model, args=round_args, train_dataset=trajectories, processing_class=processing_class)
        trainer.train()
        trainer.release_wrappers()
        model = trainer.model
        logger.info("ReDi round %d of %d done (%d self-generated rows)", round_index + 1, rounds, len(trajectories))
    return model.eval()
