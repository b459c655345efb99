"""Non-finite numbers (NaN, ±inf) in a model's weights or in a training loss: found, named and refused.

One NaN weight poisons every forward: a block diffusion model then predicts NaN logits everywhere, decodes token 0 at
every position, and trains on a NaN loss that ``transformers.Trainer`` logs as 0 (its ``logging_nan_inf_filter``)
while the gradient norm is NaN. So :func:`t3d_trl.patch_model` and :class:`t3d_trl.T3DTrainer` refuse a model whose
weights are not finite (:func:`check_finite_weights`), and the trainer stops at the first micro-step whose loss is not
finite, before the optimizer applies it (:func:`check_finite_loss`). See ``docs/errors.md`` ("Training").
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["check_finite_loss", "check_finite_weights", "non_finite_tensors"]


def _checked(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds floating-point values this process can read (not on the meta device, not a sharded
    ``DTensor``, whose other shards live on other processes)."""
    if not tensor.is_floating_point() or tensor.device.type == "meta" or tensor.numel() == 0:
        return False
    return type(tensor).__name__ != "DTensor"


def non_finite_tensors(module: torch.nn.Module) -> list[tuple[str, int]]:
    """The parameters and floating-point buffers of ``module`` holding NaN or ±inf, as ``(name, count)``, in
    ``named_parameters`` then ``named_buffers`` order (tensors this process cannot read are skipped)."""
    found = []
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if _checked(tensor):
                bad = int((~torch.isfinite(tensor)).sum())
                if bad:
                    found.append((name, bad))
    return found


def _describe(found: list[tuple[str, int]]) -> str:
    name, count = found[0]
    more = f", and {len(found) - 1} more tensor(s)" if len(found) > 1 else ""
    return f"{count} NaN/inf value(s) in `{name}`{more}"


def check_finite_weights(module: torch.nn.Module, what: str = "The model") -> None:
    """Refuse a model whose weights hold NaN or ±inf.

    Args:
        module: the model (its parameters and floating-point buffers are read once, no copy).
        what: how the message names it (``"The model"``, ``"`ref_model`"``...).

    Raises:
        ValueError: naming the first damaged tensor and how many there are.
    """
    found = non_finite_tensors(module)
    if found:
        raise ValueError(
            f"{what} has non-finite weights: {_describe(found)}. A model with a NaN weight predicts NaN logits, "
            "decodes token 0 everywhere and trains on a NaN loss. Reload the checkpoint, or find where the weights "
            "were damaged (an overflow in float16, a failed conversion or merge, a run that diverged)."
        )


def check_finite_loss(loss: torch.Tensor, state: Any, accelerator: Any = None, model: Any = None) -> None:
    """Stop training at a micro-step whose loss is NaN or ±inf, before its gradients reach the optimizer.

    Every process takes the same decision (the flags are gathered), so a multi-process run stops everywhere.

    Args:
        loss: the micro-step's loss.
        state: the ``TrainerState`` (its ``global_step`` and ``epoch`` name the step).
        accelerator: the run's ``Accelerator`` (``None``: one process).
        model: the student, read only to say in the message whether its weights are already non-finite.

    Raises:
        ValueError: naming the step, the value and what to do.
    """
    finite = torch.isfinite(loss.detach().float()).reshape(1)
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        finite = accelerator.gather(finite)
    if bool(finite.all()):
        return
    value = loss.detach().float().item()
    step = int(getattr(state, "global_step", 0)) + 1
    epoch = getattr(state, "epoch", None)
    where = f"optimizer step {step}" + (f" (epoch {float(epoch):.2f})" if epoch is not None else "")
    on = f"is {value}" if not math.isfinite(value) else "is not finite on another process"
    weights = non_finite_tensors(model) if model is not None else []
    cause = (
        f"The student's weights are already non-finite ({_describe(weights)}): an earlier optimizer step wrote them "
        "(a NaN or infinite gradient), so resume from a checkpoint saved before that."
        if weights
        else "The weights are still finite: the forward overflowed (float16 without a loss scale, a learning rate "
        "too high for the last steps, extreme logits)."
    )
    raise ValueError(
        f"The training loss {on} at {where}; training stops before the optimizer applies it (transformers would log "
        f"it as 0 and go on). {cause} Lower `learning_rate`, train in bfloat16 or float32, or keep `max_grad_norm` "
        "set, then resume from the last checkpoint (`resume_from_checkpoint=True`)."
    )
