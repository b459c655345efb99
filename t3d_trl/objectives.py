"""Training objectives as a registry: one student and one reference forward give every requested objective.

:func:`compute_objectives` takes the student's window statistics, the batch of the trajectory collator and the
training config, and returns the weighted total loss and the metrics of every objective in ``config.loss_type``.
Each quantity an objective needs is computed once, in one pass over the window
(:class:`~t3d_trl.statistics.TokenStatistics`, computed in chunks from the last hidden states by default): the
student's log-normaliser ``log Z_i = log Σ_v exp(logit_{i,v})`` serves the label and the fake-token log-probs, and
the reference's serves its own two, so a T3D step computes two full-vocabulary normalisers (the official scheme
computes four).

Registered objectives (see ``docs/training.md``):

====================  ===========================================================================  ==============
name                  per-example loss (pure maths in :mod:`t3d_trl.losses`)                       reference
====================  ===========================================================================  ==============
``ddo``               trajectory DDO, real + α · fake (:func:`~t3d_trl.losses.ddo_loss`)            yes
``path``              step-weighted path consistency (:func:`~t3d_trl.losses.path_loss`)            no
``td``                Naive TD, forward KL on trajectory states (:func:`~t3d_trl.losses.td_loss`)   no
``sft``               masked-diffusion cross-entropy on random masks (:func:`~t3d_trl.losses.sft_loss`)  no
``dparallel``         certainty-forcing distillation (:func:`~t3d_trl.losses.certainty_forcing_loss`)  no
====================  ===========================================================================  ==============

A new objective is one function ``(inputs: ObjectiveInputs) -> (loss [b], metrics)`` and one
:func:`register_objective` call (``docs/design.md``, "Adding an objective").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .losses import (
    certainty_forcing_loss,
    ddo_loss,
    masked_mean,
    path_loss,
    sequence_logps,
    sft_loss,
    td_loss,
)
from .statistics import StatisticsRequest, TokenStatistics

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveInputs",
    "ReferenceTerms",
    "compute_objectives",
    "objective_names",
    "reference_request",
    "reference_terms",
    "register_objective",
    "student_request",
]


@dataclass
class ReferenceTerms:
    """What DDO needs from the reference θ_ref: the fake tokens x̂ ``[b, W]`` and the sequence log-probs
    ``log p_ref(x0 | x_t)`` and ``log p_ref(x̂ | x_t)`` ``[b]`` (from a live forward or precomputed columns)."""

    fake_tokens: Tensor
    real_logps: Tensor
    fake_logps: Tensor


def reference_request(batch: dict, config: Any, generator: torch.Generator | None = None) -> StatisticsRequest:
    """What the reference's forward computes: the labels' logits and fake tokens drawn at
    ``config.reference_temperature`` (0: the argmax), with their logits."""
    return StatisticsRequest(
        labels=batch["labels"], draw_fake_temperature=float(config.reference_temperature), generator=generator
    )


def reference_terms(statistics: TokenStatistics, loss_mask: Tensor, normalization: str = "mean") -> ReferenceTerms:
    """The reference terms from the reference's window statistics (:func:`reference_request`): its fake tokens and its
    sequence log-probs of the labels and of the fake tokens, sharing one log-normaliser."""
    with torch.no_grad():
        real_logps = sequence_logps(statistics.label_log_probs, loss_mask, normalization)
        fake_logps = sequence_logps(statistics.fake_log_probs, loss_mask, normalization)
    return ReferenceTerms(statistics.fake_tokens, real_logps, fake_logps)


def student_request(batch: dict, config: Any, reference: ReferenceTerms | None = None) -> StatisticsRequest:
    """What the student's forward computes for the objectives of ``config.loss_type``: the labels' logits, the fake
    tokens' logits when an objective reads the reference, the entropy at the temperature an objective asks for."""
    objectives = [OBJECTIVES[name] for name in config.loss_type]
    fields = {objective.entropy_temperature_field for objective in objectives} - {None}
    if len(fields) > 1:
        raise ValueError(f"The objectives {config.loss_type} ask for entropies at different temperatures {fields}.")
    return StatisticsRequest(
        labels=batch["labels"],
        fake_tokens=reference.fake_tokens if reference is not None else None,
        entropy_temperature=float(getattr(config, fields.pop())) if fields else None,
    )


@dataclass
class ObjectiveInputs:
    """Everything an objective may read.

    Attributes:
        scores: the student's window statistics (:class:`~t3d_trl.statistics.TokenStatistics`).
        batch: the collator's batch (``labels``, ``loss_mask``, ``path_weights`` on the window...).
        config: the training arguments (:class:`~t3d_trl.T3DConfig`).
        reference: the reference terms, for objectives with ``needs_reference``.
        complement: the student's scores on the complementary state (``complement_loss_mask`` in the batch), for
            objectives with ``needs_complement`` when the collator makes complementary masks.
    """

    scores: TokenStatistics
    batch: dict
    config: Any
    reference: ReferenceTerms | None = None
    complement: TokenStatistics | None = None


ObjectiveFunction = Callable[[ObjectiveInputs], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class Objective:
    """A registered objective.

    Attributes:
        name: the ``loss_type`` value.
        function: ``(inputs: ObjectiveInputs) -> (loss [b], metrics)``.
        needs_reference: whether ``inputs.reference`` (a :class:`ReferenceTerms`) must be given.
        needs_complement: whether it reads the complementary state's scores (given when the trainer's config
            enables them, see :meth:`~t3d_trl.T3DConfig.uses_complement`).
        entropy_temperature_field: the config field holding the temperature of the entropy it reads (``None``: it
            reads no entropy).
        state_sampling: the states it trains on by default: ``"trajectory"`` or ``"random"``.
        weight_field: the config field holding its default weight (``None``: 1).
    """

    name: str
    function: ObjectiveFunction
    needs_reference: bool = False
    state_sampling: str = "trajectory"
    weight_field: str | None = None
    needs_complement: bool = False
    entropy_temperature_field: str | None = None


#: registered objectives by name
OBJECTIVES: dict[str, Objective] = {}


def register_objective(
    name: str,
    function: ObjectiveFunction,
    *,
    needs_reference: bool = False,
    state_sampling: str = "trajectory",
    weight_field: str | None = None,
    needs_complement: bool = False,
    entropy_temperature_field: str | None = None,
    overwrite: bool = False,
) -> Objective:
    """Register ``function`` as the objective ``name`` (a ``loss_type`` value of :class:`~t3d_trl.T3DConfig`).

    Raises:
        ValueError: if ``name`` is taken (unless ``overwrite=True``) or ``state_sampling`` is unknown.
    """
    if name in OBJECTIVES and not overwrite:
        raise ValueError(f"An objective named {name!r} is already registered; pass overwrite=True to replace it.")
    if state_sampling not in ("trajectory", "random"):
        raise ValueError(f"state_sampling must be 'trajectory' or 'random', got {state_sampling!r}.")
    objective = Objective(
        name, function, needs_reference, state_sampling, weight_field, needs_complement, entropy_temperature_field
    )
    OBJECTIVES[name] = objective
    return objective


def objective_names() -> tuple[str, ...]:
    """The registered objective names."""
    return tuple(OBJECTIVES)


# ------------------------------------------------------------------------------------------------ the objectives
def _ddo(inputs: ObjectiveInputs):
    scores, reference, config = inputs.scores, inputs.reference, inputs.config
    loss_mask, normalization = inputs.batch["loss_mask"], config.logps_normalization
    policy_real = sequence_logps(scores.label_log_probs, loss_mask, normalization)
    policy_fake = sequence_logps(scores.fake_log_probs, loss_mask, normalization)
    loss, real, fake = ddo_loss(
        policy_real, policy_fake, reference.real_logps, reference.fake_logps, config.beta, config.alpha
    )
    metrics = {
        "loss/ddo": loss,
        "loss/real": real,
        "loss/fake": fake,
        "logps/real": policy_real,
        "logps/fake": policy_fake,
        "ref_logps/real": reference.real_logps,
        "ref_logps/fake": reference.fake_logps,
        "margins/real": policy_real - reference.real_logps,
        "margins/fake": policy_fake - reference.fake_logps,
        # share of the masked positions where the fake token x̂ is the label x0 (there the real and fake terms pull
        # the same token up and down): high agreement leaves DDO little to discriminate
        "fake_agreement": masked_mean((reference.fake_tokens == inputs.batch["labels"]).float(), loss_mask),
    }
    return loss, metrics


def _path(inputs: ObjectiveInputs):
    batch = inputs.batch
    loss = path_loss(inputs.scores.label_log_probs, batch["path_weights"], batch["loss_mask"])
    return loss, {"loss/path": loss}


def _td(inputs: ObjectiveInputs):
    loss = td_loss(inputs.scores.label_log_probs, inputs.batch["loss_mask"])
    return loss, {"loss/td": loss}


def _sft(inputs: ObjectiveInputs):
    loss = sft_loss(inputs.scores.label_log_probs, inputs.batch["loss_mask"])
    return loss, {"loss/sft": loss}


def _certainty_forcing(
    scores: TokenStatistics, labels: Tensor, loss_mask: Tensor, config: Any
) -> tuple[Tensor, Tensor]:
    """One pass of dParallel: (CE + w · H_T over the correct positions, H_T over them) per example."""
    correct = loss_mask & (scores.predictions == labels)
    entropy = scores.entropy  # at config.dparallel_entropy_temperature (student_request)
    loss = certainty_forcing_loss(scores.label_log_probs, entropy, correct, loss_mask, config.dparallel_entropy_weight)
    return loss, masked_mean(entropy, correct)


def _dparallel(inputs: ObjectiveInputs):
    """dParallel as published: CE + w · H_T on the state, plus the same on the complementary state when given."""
    batch, config = inputs.batch, inputs.config
    loss, entropy = _certainty_forcing(inputs.scores, batch["labels"], batch["loss_mask"], config)
    if inputs.complement is not None:
        other, other_entropy = _certainty_forcing(
            inputs.complement, batch["labels"], batch["complement_loss_mask"], config
        )
        loss, entropy = loss + other, entropy + other_entropy
    return loss, {"loss/dparallel": loss, "loss/entropy": entropy}


register_objective("ddo", _ddo, needs_reference=True)
register_objective("path", _path, weight_field="lambda_path")
register_objective("td", _td)
register_objective("sft", _sft, state_sampling="random")
register_objective(
    "dparallel", _dparallel, needs_complement=True, entropy_temperature_field="dparallel_entropy_temperature"
)


# ------------------------------------------------------------------------------------------------ assembly
def compute_objectives(
    statistics: TokenStatistics,
    batch: dict,
    config: Any,
    reference: ReferenceTerms | None = None,
    complement: TokenStatistics | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted sum of the objectives of ``config.loss_type`` and their metrics.

    ``loss = Σ_k weight_k · mean_b loss_k`` with ``weight_k = config.loss_weights[k]``. Metrics are batch means
    (scalar tensors, detached): every objective's own, plus ``token_accuracy`` (argmax = label over the masked
    positions), ``mask_ratio`` and ``num_masked_tokens``.

    Args:
        statistics: the student's window statistics for :func:`student_request`.
        batch: a batch of :class:`~t3d_trl.collator.DataCollatorForTrajectory` (``labels``, ``loss_mask``,
            ``path_weights``, ``mask_ratio``).
        config: the training arguments (:class:`~t3d_trl.T3DConfig`).
        reference: the reference terms, required when an objective needs them.
        complement: the student's window statistics on the complementary state (``complement_input_ids``).

    Returns:
        ``(loss, metrics)``.
    """
    scores = statistics
    inputs = ObjectiveInputs(scores, batch, config, reference, complement)
    total = torch.zeros((), device=scores.values.device)
    metrics: dict[str, Tensor] = {}
    for name, weight in zip(config.loss_type, config.loss_weights):
        objective = OBJECTIVES[name]
        if objective.needs_reference and reference is None:
            raise ValueError(f"The {name!r} objective needs the reference terms, but none were given.")
        loss, values = objective.function(inputs)
        total = total + weight * loss.mean()
        metrics.update({key: value.detach().float().mean() for key, value in values.items()})
    loss_mask = batch["loss_mask"]
    with torch.no_grad():
        correct = (scores.predictions == batch["labels"]) & loss_mask
        metrics["token_accuracy"] = correct.sum() / loss_mask.sum().clamp(min=1)
        metrics["mask_ratio"] = batch["mask_ratio"].float().mean()
        metrics["num_masked_tokens"] = loss_mask.sum(-1).float().mean()
    return total, metrics
