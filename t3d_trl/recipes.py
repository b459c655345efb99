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
from collections.abc import Callable
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
    trajectories: Any = None,
    train: Callable[[Any, Any, Any], Any] | None = None,
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
        trajectories: the first round's rollouts when they exist already (e.g. the teacher's own, rolled out with the
            same settings); the later rounds roll the model out.
        train: ``train(model, dataset, round_args) -> trainer`` runs one round's training and returns the trainer,
            whose ``model`` goes on (default: a :class:`~t3d_trl.T3DTrainer` with ``round_args``, trained); a caller
            that needs its own collator or callbacks passes its own.

    Returns:
        ``model`` after the last round, in eval mode.

    Raises:
        ValueError: for ``rounds`` below 1.
    """
    from .rollout import generate_trajectories
    from .trainer import T3DTrainer

    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"`rounds` must be a positive integer, got {rounds!r}.")

    def default_train(model: Any, dataset: Any, round_args: Any) -> Any:
        trainer = T3DTrainer(model, args=round_args, train_dataset=dataset, processing_class=processing_class)
        trainer.train()
        return trainer

    for round_index in range(rounds):
        model.eval()
        if round_index > 0 or trajectories is None:
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
        trainer = (train or default_train)(model, trajectories, round_args)
        trainer.release_wrappers()
        model = trainer.model
        logger.info("ReDi round %d of %d done (%d self-generated rows)", round_index + 1, rounds, len(trajectories))
    return model.eval()
