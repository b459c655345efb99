"""Extra training states: further noisy states of every example, besides the main one, that objectives read.

The collator (:class:`~t3d_trl.collator.DataCollatorForTrajectory`) draws one *main* state per example (a trajectory
state, or a random mask). An objective may also read the student (and the teacher) on other states of the same
example: dParallel's complementary state, the anchor's partly filled trajectory states. Each such state is built by a
registered *state builder* from the tensors the collator has for the main state (:class:`StateContext`), as two
boolean masks over the completion tokens: the tokens it noises and the tokens that carry a loss. The collator then
lays it out with the family's :class:`~t3d_trl.layouts.TrainingLayout` like the main state and adds
``{name}_input_ids`` and ``{name}_loss_mask`` to the batch; every other tensor of the batch (positions, blocks,
labels, the attention layout) is the main state's, since only the noisy tokens differ.

Registered builders (``docs/design.md``, "Extra training states are built by a registry"):

================  =====================================================================================================
name              state
================  =====================================================================================================
``complement``    the main state flipped: in the trained blocks, the tokens it masks are visible and the visible ones
                  masked (dParallel's second pass)
``partial``       a trajectory state with the ``⌊r·n⌋`` latest-decoded tokens of each block masked, ``r`` drawn
                  uniformly per example from ``ratios`` (default ``(0.75, 0.5, 0.25)``) on a hash stream of its own
                  (the anchor objective's)
================  =====================================================================================================

Objectives declare the states they read (``register_objective(..., states=...)``); :class:`~t3d_trl.T3DConfig`
derives what the collator builds from the objectives of ``loss_type`` (``T3DConfig.extra_states``). Everything is
vectorised over ``[batch, C']``, like the main state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .checks import check_number
from .layouts import TrainingLayout
from .registry import Registry
from .trajectory import KEY_PARTIAL_RATIO, sample_mask_ratios, trajectory_state_mask

__all__ = [
    "MAIN_STATE",
    "STATE_BUILDERS",
    "StateBuilder",
    "StateContext",
    "build_state",
    "check_ratios",
    "complement_state",
    "merge_states",
    "partial_state",
    "register_state",
    "state_requests",
]


#: the name that stands for the main state where states are named (``ObjectiveInputs.teacher``); no builder takes it
MAIN_STATE = "main"


@dataclass(frozen=True)
class StateContext:
    """What a state builder may read: the collator's per-completion-token tensors ``[b, C']`` (aligned at the
    completion start, the block fill included) and the main state.

    Attributes:
        steps: the teacher's denoising step of every token (appended EOS tokens: the last step + 1).
        block: the training block of every token.
        valid: tokens with a known target (``False`` at padding and in the open slots after a cut completion).
        trained: tokens that may carry a loss (the first ``num_eos_tokens`` appended EOS tokens included).
        state: the tokens the main state's draw masks, before the layout's own state rule
            (:meth:`~t3d_trl.layouts.TrainingLayout.trajectory_state`).
        example_index: ``[b]`` the dataset index of every example (a key of the per-example hash).
        seed: the seed of the per-example hash.
        state_sampling: ``"trajectory"`` or ``"random"``, how the main state was drawn.
        layout: the family's training layout, whose ``trajectory_state`` turns a drawn mask into the tokens noised and
            trained.
    """

    steps: Tensor
    block: Tensor
    valid: Tensor
    trained: Tensor
    state: Tensor
    example_index: Tensor
    seed: int
    state_sampling: str
    layout: type[TrainingLayout]


#: ``(context, **parameters) -> (noised [b, C'] bool, loss [b, C'] bool)``
StateFunction = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class StateBuilder:
    """A registered state builder.

    Attributes:
        name: the state's name: the batch keys are ``{name}_input_ids`` and ``{name}_loss_mask``.
        function: ``(context: StateContext, **parameters) -> (noised, loss)``, two bool ``[b, C']`` masks.
        parameters: the parameters it takes, with their defaults.
        check: ``(parameters) -> parameters``: validates (and normalises) the parameters, raising a `ValueError`
            that names the state, the parameter and what is accepted; ``None`` accepts any value.
    """

    name: str
    function: StateFunction
    parameters: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None


#: registered state builders by name
STATE_BUILDERS: Registry[StateBuilder] = Registry(
    "training state", hint="register one with t3d_trl.states.register_state; see docs/design.md"
)


def register_state(
    name: str,
    function: StateFunction,
    *,
    parameters: Mapping[str, Any] | None = None,
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> StateBuilder:
    """Make ``function(context, **parameters) -> (noised, loss)`` an extra state objectives can declare by ``name``.

    Args:
        name: the state's name (the batch keys ``{name}_input_ids``, ``{name}_loss_mask``).
        function: the builder; both masks it returns are ``[b, C']`` bool over the completion tokens.
        parameters: the keyword arguments it takes, with their defaults.
        check: validates and normalises given parameters (all of them, defaults filled in); raise `ValueError`.
        overwrite: replace a state registered under ``name`` (not a built-in one).
    """
    if name == MAIN_STATE:
        raise ValueError(
            f"{MAIN_STATE!r} names the collator's main state; register the extra state under another name."
        )
    builder = StateBuilder(name, function, dict(parameters or {}), check)
    return STATE_BUILDERS.register(name, builder, overwrite=overwrite)


def state_requests(states: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``{name: parameters}`` of the extra states ``states`` (names, or names mapped to their parameters), each
    with its builder's defaults filled in and checked.

    Raises:
        ValueError: for an unknown state, a parameter the builder does not take, or a value its check refuses.
    """
    if states is None:
        return {}
    if isinstance(states, str):
        raise ValueError(
            f"Extra states must be a sequence of names or a mapping of names to parameters, got {states!r}."
        )
    items = states.items() if isinstance(states, Mapping) else ((name, None) for name in states)
    requests: dict[str, dict[str, Any]] = {}
    for name, given in items:
        builder = STATE_BUILDERS.get_entry(name)
        given = dict(given or {})
        unknown = sorted(set(given) - set(builder.parameters))
        if unknown:
            raise ValueError(
                f"The training state {builder.name!r} takes {sorted(builder.parameters) or 'no parameters'}, got "
                f"{unknown}."
            )
        values = {**builder.parameters, **given}
        requests[builder.name] = builder.check(values) if builder.check is not None else values
    return requests


def merge_states(
    declared: Mapping[str, Mapping[str, dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """One ``{state: parameters}`` from the states each reader (an objective) declares: a state read by several
    readers is built once.

    Args:
        declared: ``{reader: {state: parameters}}`` (each already through :func:`state_requests`).

    Raises:
        ValueError: when two readers ask for the same state with different parameters, naming both.
    """
    merged: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for reader, states in declared.items():
        for name, parameters in states.items():
            if name in merged and merged[name] != parameters:
                raise ValueError(
                    f"{owner[name]!r} and {reader!r} read the training state {name!r} with different parameters "
                    f"({merged[name]} and {parameters}); one state of a name is built per batch."
                )
            merged.setdefault(name, dict(parameters))
            owner.setdefault(name, reader)
    return merged


# ------------------------------------------------------------------------------------------------ built-in states
def complement_state(context: StateContext) -> tuple[Tensor, Tensor]:
    """The main state flipped: ``valid ∧ ¬state`` noised; with trajectory states the layout's rule decides what is
    trained (every block on block-causal models, the current block on bidirectional ones), with random masks every
    flipped trained token."""
    flipped = context.valid & ~context.state
    if context.state_sampling == "trajectory":
        return context.layout.trajectory_state(
            flipped, context.trained, context.block, context.valid, context.example_index, context.seed
        )
    return flipped, flipped & context.trained


def partial_state(context: StateContext, ratios: Sequence[float] = (0.75, 0.5, 0.25)) -> tuple[Tensor, Tensor]:
    """A partly filled trajectory state: ``r`` drawn uniformly per example from ``ratios`` (hash stream
    :data:`~t3d_trl.trajectory.KEY_PARTIAL_RATIO`, independent of the main state's ratio) and, in every block of
    ``n`` tokens, the ``⌊r·n⌋`` latest-decoded masked (:func:`~t3d_trl.trajectory.trajectory_state_mask`); the
    layout's rule decides what is trained. These are the states one-token-per-step decoding passes through."""
    ratio = sample_mask_ratios(context.example_index, context.seed, ratios, 0.0, key=KEY_PARTIAL_RATIO)
    drawn = trajectory_state_mask(context.steps, context.block, context.valid, ratio, order="latest")
    return context.layout.trajectory_state(
        drawn, context.trained, context.block, context.valid, context.example_index, context.seed
    )


def check_ratios(name: str, ratios: Any) -> tuple[float, ...]:
    """``ratios`` as a tuple of floats, each in ``(0, 1]``; a `ValueError` naming ``name`` otherwise (an empty or
    non-sequence value, a ratio of 0 that masks nothing, NaN)."""
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or not ratios:
        raise ValueError(f"`{name}` must be a non-empty list of ratios in (0, 1], got {ratios!r}.")
    for index, ratio in enumerate(ratios):
        check_number(f"{name}[{index}]", ratio, 0.0, True, 1.0, False, False)
    return tuple(float(ratio) for ratio in ratios)


def _check_partial(values: dict[str, Any]) -> dict[str, Any]:
    return {"ratios": check_ratios("ratios of the training state 'partial'", values["ratios"])}


STATE_BUILDERS.register("complement", StateBuilder("complement", complement_state), builtin=True)
STATE_BUILDERS.register(
    "partial",
    StateBuilder("partial", partial_state, {"ratios": (0.75, 0.5, 0.25)}, _check_partial),
    builtin=True,
)


def build_state(name: str, parameters: Mapping[str, Any], context: StateContext) -> tuple[Tensor, Tensor]:
    """The ``(noised, loss)`` masks of the registered state ``name`` with ``parameters`` (see
    :func:`state_requests`)."""
    noised, loss = STATE_BUILDERS.get_entry(name).function(context, **parameters)
    return noised.to(torch.bool), loss.to(torch.bool)
