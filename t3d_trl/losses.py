"""Objectives for trajectory self-distillation (T3D) and its baselines.

Pure, vectorised functions over batched tensors. Shapes used throughout:

* ``logits``: ``[B, L, V]``, the model's predictions for x0 at every position of
  the noisy state x_t (no shift: position i predicts token i);
* ``labels``: ``[B, L]`` long, the teacher tokens x0;
* ``loss_mask``: ``[B, L]`` bool, the set M of masked, non-padding completion
  positions of x_t.

Every reduction is over M only; values outside M are never read, so they may
be arbitrary (even ``inf``/``NaN``). A row whose M is empty yields 0.

T3D = trajectory DDO (:func:`ddo_loss`) + λ · path loss (:func:`path_loss`);
:func:`td_loss`, :func:`sft_loss` and :func:`certainty_forcing_loss` (dParallel) are
the paper's baselines (arXiv 2602.12262, Table 1); :func:`anchor_loss` keeps a
student's predictions at partly filled states near the teacher's (``docs/training.md``,
"The anchor"). The log-probabilities they take come from the window statistics of one
forward (:mod:`t3d_trl.statistics`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "anchor_loss",
    "certainty_forcing_loss",
    "ddo_loss",
    "masked_mean",
    "masked_sum",
    "path_loss",
    "path_weights",
    "sequence_logps",
    "sft_loss",
    "td_loss",
]

_NORMALIZATIONS = ("mean", "sum")


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Σ_{i: mask_i} values_i over the last dimension (NaN-safe outside the mask)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """(1/|mask|) Σ_{i: mask_i} values_i over the last dimension; 0 for an empty mask."""
    count = mask.sum(-1).clamp_min(1).to(values.dtype)
    return masked_sum(values, mask) / count


def sequence_logps(token_logps: Tensor, loss_mask: Tensor, normalization: str = "mean") -> Tensor:
    """Sequence log-likelihood log p(x | x_t) over the masked positions M.

    "mean" (official T3D): log p(x | x_t) = (1/|M|) Σ_{i∈M} token_logps_i
    "sum":                 log p(x | x_t) = Σ_{i∈M} token_logps_i

    Args:
        token_logps: Per-token log-probabilities log p(x_i | x_t), shape ``[B, L]``.
        loss_mask: Bool mask of M, shape ``[B, L]``.
        normalization: ``"mean"`` or ``"sum"``.

    Returns:
        Per-example log-likelihoods, shape ``[B]``; 0 for rows with empty M.

    Raises:
        ValueError: If ``normalization`` is not one of ``"mean"``, ``"sum"``.
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {normalization!r}; expected one of {', '.join(map(repr, _NORMALIZATIONS))}."
        )
    if normalization == "mean":
        return masked_mean(token_logps, loss_mask)
    return masked_sum(token_logps, loss_mask)


def ddo_loss(
    policy_real_logps: Tensor,
    policy_fake_logps: Tensor,
    ref_real_logps: Tensor,
    ref_fake_logps: Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Trajectory direct discriminative optimisation (DDO) loss.

    real = −log σ(β [log p_θ(x0|x_t) − log p_ref(x0|x_t)])
    fake = −α log(1 − σ(β [log p_θ(x̂|x_t) − log p_ref(x̂|x_t)]))
         = −α log σ(−β [log p_θ(x̂|x_t) − log p_ref(x̂|x_t)])
    loss = real + fake

    With θ = θ_ref, real = log 2 and fake = α log 2. The reference
    log-probabilities should carry no gradient (stop-gradient θ_ref).

    Args:
        policy_real_logps: log p_θ(x0 | x_t), shape ``[B]``.
        policy_fake_logps: log p_θ(x̂ | x_t), shape ``[B]``.
        ref_real_logps: log p_ref(x0 | x_t), shape ``[B]``.
        ref_fake_logps: log p_ref(x̂ | x_t), shape ``[B]``.
        beta: Inverse temperature β of the implicit discriminator.
        alpha: Weight α of the fake term.

    Returns:
        ``(loss, real_loss, fake_loss)``, each of shape ``[B]``.
    """
    real_margin = beta * (policy_real_logps - ref_real_logps)
    fake_margin = beta * (policy_fake_logps - ref_fake_logps)
    real_loss = -F.logsigmoid(real_margin)
    fake_loss = -alpha * F.logsigmoid(-fake_margin)
    return real_loss + fake_loss, real_loss, fake_loss


def path_weights(decode_step: Tensor, steps_per_block: int | Tensor) -> Tensor:
    """Path-consistency weights from the teacher's within-block decode steps.

    w_i = (S − σ_i) / S

    where σ_i is the 0-based within-block decode step of token i and S the
    steps per block. With one token per step (S = B, σ_i = π_i − 1) this is
    (B − π_i + 1) / B, π_i the 1-based decode order: earlier-decoded tokens
    weigh more.

    Args:
        decode_step: σ, shape ``[B, L]`` (any integer or float dtype).
        steps_per_block: S as a Python int, or a per-example tensor of shape
            ``[B]`` or ``[B, 1]``.

    Returns:
        Weights of the broadcast shape of ``decode_step`` and S, in the default
        floating dtype.
    """
    steps = torch.as_tensor(steps_per_block, dtype=torch.get_default_dtype(), device=decode_step.device)
    if steps.ndim == 1 and decode_step.ndim > 1:
        steps = steps.view(-1, *([1] * (decode_step.ndim - 1)))
    return (steps - decode_step.to(steps.dtype)) / steps


def path_loss(token_logps: Tensor, weights: Tensor, loss_mask: Tensor) -> Tensor:
    """Weighted path-consistency loss over the masked positions M.

    L_path = Σ_{i∈M} w_i · (−log p_θ(x0_i | x_t)) / Σ_{i∈M} w_i

    Args:
        token_logps: log p_θ(x0_i | x_t), shape ``[B, L]``.
        weights: w_i (see :func:`path_weights`), shape ``[B, L]``.
        loss_mask: Bool mask of M, shape ``[B, L]``.

    Returns:
        Per-example losses, shape ``[B]``; 0 for rows with empty M or
        Σ_{i∈M} w_i = 0.
    """
    weights = weights.to(token_logps.dtype)
    numerator = masked_sum(-weights * token_logps, loss_mask)
    denominator = masked_sum(weights, loss_mask)
    nonzero = denominator != 0
    safe_denominator = torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, numerator / safe_denominator, torch.zeros_like(numerator))


def td_loss(token_logps: Tensor, loss_mask: Tensor) -> Tensor:
    """Naive trajectory distillation (forward KL to the teacher's trajectory).

    L_TD = −(1/|M|) Σ_{i∈M} log p_θ(x0_i | x_t)

    with x_t a state on the teacher's decoding trajectory.

    Args:
        token_logps: log p_θ(x0_i | x_t), shape ``[B, L]``.
        loss_mask: Bool mask of M, shape ``[B, L]``.

    Returns:
        Per-example losses, shape ``[B]``; 0 for rows with empty M.
    """
    return -masked_mean(token_logps, loss_mask)


def sft_loss(token_logps: Tensor, loss_mask: Tensor) -> Tensor:
    """Masked-diffusion cross-entropy on random masks of the teacher's final output.

    L_SFT = −(1/|M|) Σ_{i∈M} log p_θ(x0_i | x_t)

    The formula is that of :func:`td_loss`; the difference is the state
    distribution: here x_t is a random masking of the teacher's final output x0
    rather than a state on its decoding trajectory. The data collator supplies
    those states.

    Args:
        token_logps: log p_θ(x0_i | x_t), shape ``[B, L]``.
        loss_mask: Bool mask of M, shape ``[B, L]``.

    Returns:
        Per-example losses, shape ``[B]``; 0 for rows with empty M.
    """
    return -masked_mean(token_logps, loss_mask)


def certainty_forcing_loss(
    token_logps: Tensor, entropy: Tensor, correct: Tensor, loss_mask: Tensor, entropy_weight: float = 1.0
) -> Tensor:
    """Certainty-forcing distillation (dParallel, arXiv 2509.26488) from per-token quantities.

    L = −(1/|M|) Σ_{i∈M} log p_θ(x0_i | x_t) + entropy_weight · (1/|C|) Σ_{i∈C} H_i

    with C ⊆ M the positions the student already predicts correctly. The entropy term is 0 for rows with empty C.

    Args:
        token_logps: log p_θ(x0_i | x_t), shape ``[B, L]``.
        entropy: H_i, the student's predictive entropy, shape ``[B, L]``.
        correct: Bool mask of C, shape ``[B, L]``.
        loss_mask: Bool mask of M, shape ``[B, L]``.
        entropy_weight: Weight of the entropy term.

    Returns:
        Per-example losses, shape ``[B]``; 0 for rows with empty M.
    """
    return td_loss(token_logps, loss_mask) + entropy_weight * masked_mean(entropy, correct & loss_mask)


def anchor_loss(soft_cross_entropy: Tensor, teacher_entropy: Tensor, loss_mask: Tensor) -> Tensor:
    """The anchor: the student's drift from the teacher at partly filled trajectory states, per example.

    L_anchor = (1/|M|) Σ_{i∈M} KL(p_T(· | x_t) ‖ p_θ(· | x_t))_i
             = (1/|M|) Σ_{i∈M} [ −Σ_v p_T,v log p_θ,v − H(p_T)_i ]

    with x_t a trajectory state whose blocks are partly filled (the states one-token-per-step decoding visits), p_T
    the frozen teacher's (the initial model's) distribution and M its masked, trained positions. The soft
    cross-entropy ``−Σ_v p_T,v log p_θ,v`` comes from the student's window statistics
    (:func:`t3d_trl.statistics.soft_cross_entropy`), the teacher's entropy H(p_T) from its forward.

    Args:
        soft_cross_entropy: −Σ_v p_T,v log p_θ,v at every position, shape ``[B, L]``.
        teacher_entropy: H(p_T) at every position, shape ``[B, L]``.
        loss_mask: Bool mask of M, shape ``[B, L]``.

    Returns:
        Per-example losses, shape ``[B]``; 0 for rows with empty M.
    """
    return masked_mean(soft_cross_entropy - teacher_entropy, loss_mask)
