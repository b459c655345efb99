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
``anchor``            KL(teacher ‖ student) at partly filled trajectory states (:func:`~t3d_trl.losses.anchor_loss`)  no
====================  ===========================================================================  ==============

An objective declares what it needs when it is registered: the reference (``needs_reference``), the frozen teacher
(``needs_teacher``: the initial model, apart from DDO's refreshed reference), the states it trains on by default
(``state_sampling``), the registered window statistics it reads beyond the log-probabilities (``statistics``, e.g.
dParallel's entropy; see :func:`t3d_trl.statistics.register_statistic`), the extra states of every example it reads
besides the main one (``states``: dParallel's complementary state, the anchor's partly filled ones; see
:mod:`t3d_trl.states`), whether it reads the main state at all (``main_state``), and its own hyperparameters
(``fields``, a dataclass set through ``T3DConfig.objective_kwargs[name]``). A new objective is then one function
``(inputs: ObjectiveInputs) -> (loss [b], metrics)`` and one :func:`register_objective` call, in one module
(``docs/design.md``, "Adding an objective"); nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .checks import check_number
from .losses import (
    anchor_loss,
    certainty_forcing_loss,
    ddo_loss,
    masked_mean,
    path_loss,
    sequence_logps,
    sft_loss,
    td_loss,
)
from .registry import Registry
from .states import MAIN_STATE, check_ratios, merge_states, state_requests
from .statistics import StatisticsRequest, TokenStatistics, window_chunks

__all__ = [
    "OBJECTIVES",
    "TEACHER_PROBABILITIES",
    "AnchorConfig",
    "DParallelConfig",
    "Objective",
    "ObjectiveInputs",
    "ReferenceTerms",
    "TeacherTerms",
    "compute_objectives",
    "extra_states",
    "objective_names",
    "objective_params",
    "reference_request",
    "reference_terms",
    "register_objective",
    "student_request",
    "teacher_states",
    "teacher_terms",
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


@dataclass
class TeacherTerms:
    """What the frozen teacher gives on one state: its probabilities ``p_T`` ``[b, W, V]`` (at least float32) and
    their entropy ``H(p_T)`` ``[b, W]``. The probabilities are one vocabulary-wide tensor over the window (see
    ``docs/training.md``, "The anchor", for its memory)."""

    probabilities: Tensor
    entropy: Tensor


@torch.no_grad()
def teacher_terms(logits: Tensor, chunk_size: int | None = None, inplace: bool = False) -> TeacherTerms:
    """The teacher terms of window logits ``[b, W, V]``: ``p_T = softmax(ℓ)`` (half precision upcast to float32) and
    ``H(p_T) = −Σ_v p_T,v log p_T,v`` (``0 · log 0 = 0``), computed ``chunk_size`` window tokens at a time.

    With ``inplace`` and float32 (or float64) logits the probabilities overwrite the logits (the returned
    ``probabilities`` is the same tensor), so the terms take no memory beyond the logits and one chunk; the trainer
    does so with the teacher forward's own logits, which nothing else reads.
    """
    exact = logits.dtype in (torch.float32, torch.float64)
    dtype = logits.dtype if exact else torch.float32
    probabilities = logits if inplace and exact else torch.empty(logits.shape, dtype=dtype, device=logits.device)
    entropy = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)
    for part in window_chunks(logits.shape[0], logits.shape[1], chunk_size):
        chunk = torch.softmax(logits[:, part].to(dtype), dim=-1)
        entropy[:, part] = torch.special.entr(chunk).sum(-1)
        probabilities[:, part] = chunk
    return TeacherTerms(probabilities, entropy)


class _TeacherProbabilities:
    """The placeholder of :data:`TEACHER_PROBABILITIES`."""

    def __repr__(self) -> str:
        return "TEACHER_PROBABILITIES"


#: a statistic parameter an objective declares for the teacher's probabilities on the same state: the trainer
#: substitutes :attr:`TeacherTerms.probabilities` (the anchor's ``{"soft_cross_entropy": {"targets": ...}}``)
TEACHER_PROBABILITIES = _TeacherProbabilities()


def student_request(
    batch: dict,
    config: Any,
    reference: ReferenceTerms | None = None,
    state: str = MAIN_STATE,
    teacher: TeacherTerms | None = None,
) -> StatisticsRequest:
    """What the student's forward on ``state`` (the main state, or an extra one) computes for the objectives of
    ``config.loss_type``: the labels' logits, on the main state the fake tokens' logits when an objective reads the
    reference, and the registered statistics the objectives that read ``state`` declare, with
    :data:`TEACHER_PROBABILITIES` replaced by the teacher's probabilities on that state.

    Raises:
        ValueError: when two objectives ask for the same statistic with different parameters, or a statistic asks for
            the teacher's probabilities and ``teacher`` is not given.
    """
    extra: dict[str, dict[str, Any]] = {}
    for name in config.loss_type:
        objective, params = OBJECTIVES[name], objective_params(config, name)
        if not objective.reads(state, params):
            continue
        for statistic, parameters in objective.statistics_for(params).items():
            if statistic in extra and extra[statistic] != dict(parameters):
                raise ValueError(
                    f"The objectives {config.loss_type} ask for the statistic {statistic!r} with different "
                    f"parameters: {extra[statistic]} and {dict(parameters)}."
                )
            extra[statistic] = dict(parameters)
    for statistic, parameters in extra.items():
        for key, value in parameters.items():
            if value is TEACHER_PROBABILITIES:
                if teacher is None:
                    raise ValueError(
                        f"The statistic {statistic!r} on the {state!r} state needs the teacher's probabilities "
                        "(TEACHER_PROBABILITIES), but no teacher terms were given for that state."
                    )
                parameters[key] = teacher.probabilities
    fake_tokens = reference.fake_tokens if reference is not None and state == MAIN_STATE else None
    return StatisticsRequest(labels=batch["labels"], fake_tokens=fake_tokens, extra=extra)


@dataclass
class ObjectiveInputs:
    """Everything an objective may read.

    Attributes:
        scores: the student's window statistics (:class:`~t3d_trl.statistics.TokenStatistics`).
        batch: the collator's batch (``labels``, ``loss_mask``, ``path_weights`` on the window...).
        config: the training arguments (:class:`~t3d_trl.T3DConfig`).
        reference: the reference terms, for objectives with ``needs_reference``.
        states: the student's window statistics on every extra state (``{name: TokenStatistics}``; their loss masks
            are ``batch[f"{name}_loss_mask"]``), for objectives that declare them (``states``).
        teacher: the teacher's terms on the states where it ran (``{name: TeacherTerms}``, ``"main"`` for the main
            state), for objectives with ``needs_teacher``.
        params: the objective's own hyperparameters (an instance of its ``fields``), or ``None``.
    """

    scores: TokenStatistics
    batch: dict
    config: Any
    reference: ReferenceTerms | None = None
    states: dict[str, TokenStatistics] = field(default_factory=dict)
    teacher: dict[str, TeacherTerms] = field(default_factory=dict)
    params: Any = None


ObjectiveFunction = Callable[[ObjectiveInputs], tuple[Tensor, dict[str, Tensor]]]
#: what an objective reads, given its hyperparameters: a fixed value or a function of them
Declared = Any


def _declared(value: Declared, params: Any) -> Any:
    return value(params) if callable(value) else value


@dataclass(frozen=True)
class Objective:
    """A registered objective and what it needs (see the module docstring).

    Attributes:
        name: the ``loss_type`` value.
        function: ``(inputs: ObjectiveInputs) -> (loss [b], metrics)``.
        needs_reference: whether ``inputs.reference`` (a :class:`ReferenceTerms`) must be given.
        state_sampling: the states it trains on by default: ``"trajectory"`` or ``"random"``.
        weight_field: the :class:`~t3d_trl.T3DConfig` field holding its default weight (``None``: 1).
        fields: a dataclass of its hyperparameters (defaults and ``metadata={"help": ...}``), set through
            ``T3DConfig.objective_kwargs[name]`` and given as ``inputs.params``; ``None`` when it has none.
        statistics: the registered statistics it reads (``{name: parameters}``), or a function of its hyperparameters
            that returns them; computed on every state it reads. A parameter :data:`TEACHER_PROBABILITIES` stands for
            the teacher's probabilities on that state.
        states: the extra states it reads (:mod:`t3d_trl.states`): names, ``{name: state parameters}``, or a function
            of its hyperparameters returning either; the student runs one more forward on each.
        needs_teacher: whether it reads the frozen teacher (the initial model) on the states it reads
            (``inputs.teacher``); the teacher runs one forward per such state.
        main_state: whether it reads the main state (its statistics are computed there; with ``needs_teacher`` the
            teacher runs there too). The anchor reads only its extra state.
    """

    name: str
    function: ObjectiveFunction
    needs_reference: bool = False
    state_sampling: str = "trajectory"
    weight_field: str | None = None
    fields: type | None = None
    statistics: Declared = field(default_factory=dict)
    states: Declared = ()
    needs_teacher: bool = False
    main_state: bool = True

    def statistics_for(self, params: Any) -> Mapping[str, Mapping[str, Any]]:
        """The statistics it reads with hyperparameters ``params``."""
        return _declared(self.statistics, params) or {}

    def states_for(self, params: Any) -> dict[str, dict[str, Any]]:
        """The extra states it reads with hyperparameters ``params``, ``{name: parameters}`` with the builders'
        defaults filled in (:func:`t3d_trl.states.state_requests`)."""
        return state_requests(_declared(self.states, params))

    def reads(self, state: str, params: Any) -> bool:
        """Whether it reads ``state`` (``"main"``, or an extra state) with hyperparameters ``params``."""
        return self.main_state if state == MAIN_STATE else state in self.states_for(params)


#: registered objectives by name
OBJECTIVES: Registry[Objective] = Registry(
    "objective", hint="register one with t3d_trl.register_objective; see docs/design.md, 'Adding an objective'"
)


def register_objective(
    name: str,
    function: ObjectiveFunction,
    *,
    needs_reference: bool = False,
    state_sampling: str = "trajectory",
    weight_field: str | None = None,
    fields: type | None = None,
    statistics: Declared = None,
    states: Declared = (),
    needs_teacher: bool = False,
    main_state: bool = True,
    overwrite: bool = False,
) -> Objective:
    """Register ``function`` as the objective ``name`` (a ``loss_type`` value of :class:`~t3d_trl.T3DConfig`).

    Args:
        name: the ``loss_type`` value.
        function: ``(inputs: ObjectiveInputs) -> (loss [b], metrics)``.
        needs_reference: whether it reads the reference terms (the reference model is loaded only then).
        state_sampling: ``"trajectory"`` or ``"random"``, the states it trains on by default.
        weight_field: the config field holding its default weight.
        fields: a dataclass of its hyperparameters (``T3DConfig.objective_kwargs[name]`` sets them).
        statistics: the registered statistics it reads, ``{name: parameters}`` or a function of its hyperparameters;
            computed on every state it reads (:data:`TEACHER_PROBABILITIES` as a parameter: the teacher's
            probabilities on that state).
        states: the extra states it reads: names, ``{name: parameters}``, or a function of its hyperparameters.
        needs_teacher: whether it reads the frozen teacher's terms on the states it reads.
        main_state: whether it reads the main state.
        overwrite: replace an objective registered under ``name`` (not a built-in one).

    Raises:
        ValueError: if ``name`` is taken (unless ``overwrite=True``), ``state_sampling`` is unknown, ``fields`` is
            not a dataclass whose every field has a default, or the objective reads no state at all.
    """
    if state_sampling not in ("trajectory", "random"):
        raise ValueError(f"state_sampling must be 'trajectory' or 'random', got {state_sampling!r}.")
    if fields is not None:
        if not dataclasses.is_dataclass(fields) or not isinstance(fields, type):
            raise ValueError(f"`fields` of the objective {name!r} must be a dataclass type, got {fields!r}.")
        fields()  # every field has a default, and the defaults pass the dataclass's own checks
    if not main_state and not callable(states) and not states:
        raise ValueError(f"The objective {name!r} reads neither the main state (main_state=False) nor an extra state.")
    objective = Objective(
        name,
        function,
        needs_reference=needs_reference,
        state_sampling=state_sampling,
        weight_field=weight_field,
        fields=fields,
        statistics=statistics or {},
        states=states,
        needs_teacher=needs_teacher,
        main_state=main_state,
    )
    return OBJECTIVES.register(name, objective, overwrite=overwrite)


def objective_names() -> tuple[str, ...]:
    """The registered objective names."""
    return OBJECTIVES.names()


def objective_params(config: Any, name: str) -> Any:
    """The hyperparameters of the objective ``name`` under ``config``: its ``fields`` dataclass built from
    ``config.objective_kwargs[name]`` (defaults for the rest), or ``None`` for an objective without fields.

    Raises:
        ValueError: naming the objective, the unknown keys and the accepted ones.
    """
    objective = OBJECTIVES.get_entry(name)
    given = dict((getattr(config, "objective_kwargs", None) or {}).get(name) or {})
    if objective.fields is None:
        if given:
            raise ValueError(f"The objective {name!r} has no hyperparameters, but objective_kwargs sets {given}.")
        return None
    accepted = [f.name for f in dataclasses.fields(objective.fields) if f.init]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"objective_kwargs[{name!r}] sets {unknown}; the objective {name!r} takes {accepted}.")
    return objective.fields(**given)


def extra_states(config: Any) -> dict[str, dict[str, Any]]:
    """The extra states the objectives of ``config.loss_type`` read, ``{name: parameters}``: what the collator builds
    besides the main state (``T3DConfig.extra_states``).

    Raises:
        ValueError: when two objectives read the same state with different parameters, or name an unknown state.
    """
    return merge_states(
        {name: OBJECTIVES[name].states_for(objective_params(config, name)) for name in config.loss_type}
    )


def teacher_states(config: Any) -> tuple[str, ...]:
    """The states (``"main"`` first when read, then the extra states in order) the teacher runs on: those read by an
    objective of ``config.loss_type`` with ``needs_teacher``."""
    names = [MAIN_STATE, *extra_states(config)]
    needing = [
        (OBJECTIVES[name], objective_params(config, name))
        for name in config.loss_type
        if OBJECTIVES[name].needs_teacher
    ]
    return tuple(state for state in names if any(objective.reads(state, params) for objective, params in needing))


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


@dataclass
class DParallelConfig:
    """Hyperparameters of the ``dparallel`` objective (``T3DConfig.objective_kwargs["dparallel"]``), as published."""

    entropy_weight: float = field(
        default=2.0,
        metadata={
            "help": "Weight of the entropy penalty on already-correct masked tokens (dParallel's LLaDA code: 2)."
        },
    )
    entropy_temperature: float = field(
        default=0.5, metadata={"help": "The entropy is that of softmax(logits / T); dParallel's code uses T = 0.5."}
    )
    complementary_masks: bool = field(
        default=True,
        metadata={
            "help": "A second student forward on the complementary state (the tokens the state leaves visible masked, "
            "and the masked ones visible), its losses added to the first."
        },
    )

    def __post_init__(self) -> None:
        check_number("entropy_weight", self.entropy_weight, 0.0, False, None, False, False)
        check_number("entropy_temperature", self.entropy_temperature, 0.0, True, None, False, False)
        if not isinstance(self.complementary_masks, bool):
            raise ValueError(f"`complementary_masks` must be True or False, got {self.complementary_masks!r}.")


def _certainty_forcing(
    scores: TokenStatistics, labels: Tensor, loss_mask: Tensor, params: DParallelConfig
) -> tuple[Tensor, Tensor]:
    """One pass of dParallel: (CE + w · H_T over the correct positions, H_T over them) per example."""
    correct = loss_mask & (scores.predictions == labels)
    entropy = scores["entropy"]  # at params.entropy_temperature (declared at registration)
    loss = certainty_forcing_loss(scores.label_log_probs, entropy, correct, loss_mask, params.entropy_weight)
    return loss, masked_mean(entropy, correct)


def _dparallel(inputs: ObjectiveInputs):
    """dParallel as published: CE + w · H_T on the state, plus the same on the complementary state
    (``complementary_masks``)."""
    batch, params = inputs.batch, inputs.params
    loss, entropy = _certainty_forcing(inputs.scores, batch["labels"], batch["loss_mask"], params)
    if params.complementary_masks:
        other, other_entropy = _certainty_forcing(
            inputs.states["complement"], batch["labels"], batch["complement_loss_mask"], params
        )
        loss, entropy = loss + other, entropy + other_entropy
    return loss, {"loss/dparallel": loss, "loss/entropy": entropy}


@dataclass
class AnchorConfig:
    """Hyperparameters of the ``anchor`` objective (``T3DConfig.objective_kwargs["anchor"]``); its weight is its
    ``loss_weights`` entry."""

    mask_ratios: tuple[float, ...] = field(
        default=(0.75, 0.5, 0.25),
        metadata={
            "help": "Ratios r of the anchor's partly filled trajectory states: per example r is drawn uniformly from "
            "them and the ⌊r·n⌋ latest-decoded tokens of every block are masked (the states one-token-per-step "
            "decoding passes through)."
        },
    )

    def __post_init__(self) -> None:
        self.mask_ratios = check_ratios("mask_ratios of the objective 'anchor'", self.mask_ratios)


def _anchor(inputs: ObjectiveInputs):
    """KL(p_T ‖ p_θ) per example, over the masked tokens of its partly filled state (:func:`anchor_loss`)."""
    loss = anchor_loss(
        inputs.states["partial"]["soft_cross_entropy"],
        inputs.teacher["partial"].entropy,
        inputs.batch["partial_loss_mask"],
    )
    return loss, {"loss/anchor": loss}


for _objective in (
    Objective("ddo", _ddo, needs_reference=True),
    Objective("path", _path, weight_field="lambda_path"),
    Objective("td", _td),
    Objective("sft", _sft, state_sampling="random"),
    Objective(
        "dparallel",
        _dparallel,
        fields=DParallelConfig,
        statistics=lambda params: {"entropy": {"temperature": params.entropy_temperature}},
        states=lambda params: ("complement",) if params.complementary_masks else (),
    ),
    Objective(
        "anchor",
        _anchor,
        fields=AnchorConfig,
        statistics={"soft_cross_entropy": {"targets": TEACHER_PROBABILITIES}},
        states=lambda params: {"partial": {"ratios": params.mask_ratios}},
        needs_teacher=True,
        main_state=False,
    ),
):
    OBJECTIVES.register(_objective.name, _objective, builtin=True)


# ------------------------------------------------------------------------------------------------ assembly
def compute_objectives(
    statistics: TokenStatistics,
    batch: dict,
    config: Any,
    reference: ReferenceTerms | None = None,
    states: Mapping[str, TokenStatistics] | None = None,
    teacher: Mapping[str, TeacherTerms] | None = None,
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
        states: the student's window statistics on every extra state the objectives read
            (``{name}_input_ids`` of the batch, :func:`student_request` with ``state=name``).
        teacher: the teacher's terms on every state the teacher runs on (:func:`teacher_states`).

    Returns:
        ``(loss, metrics)``.

    Raises:
        ValueError: when an objective's reference terms, extra states or teacher terms are not given.
    """
    scores = statistics
    states, teacher = dict(states or {}), dict(teacher or {})
    total = torch.zeros((), device=scores.values.device)
    metrics: dict[str, Tensor] = {}
    for name, weight in zip(config.loss_type, config.loss_weights):
        objective = OBJECTIVES[name]
        if objective.needs_reference and reference is None:
            raise ValueError(f"The {name!r} objective needs the reference terms, but none were given.")
        params = objective_params(config, name)
        read = list(objective.states_for(params))
        missing = [state for state in read if state not in states]
        if missing:
            raise ValueError(
                f"The {name!r} objective reads the training states {missing}, but the student's statistics on them "
                f"were not given (given: {sorted(states) or 'none'})."
            )
        needed = ([MAIN_STATE] if objective.main_state else []) + read if objective.needs_teacher else []
        missing = [state for state in needed if state not in teacher]
        if missing:
            raise ValueError(
                f"The {name!r} objective needs the teacher's terms on the states {missing}, but they were not given."
            )
        inputs = ObjectiveInputs(scores, batch, config, reference, states, teacher, params)
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
