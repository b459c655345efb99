"""Remasking strategies: which masked positions of a block a denoising step commits.

Each strategy maps the step's per-position ``confidence`` and ``entropy`` ``[batch, B]``, the ``masked`` positions
``[batch, B]`` and the scheduled count ``k`` to a boolean ``commit`` mask. Committed positions are always masked
positions, and a row with masks left commits at least one.

Strategies live in a registry (:data:`REMASKING`) and are built from a generation config by name
(:func:`remasking_strategy`). A strategy's settings are fields of the generation config, declared in its
:attr:`RemaskingStrategy.parameters` with their defaults, so a new strategy with a parameter is one class and one
:func:`register_remasking` call (see ``docs/design.md``, "Adding a remasking strategy").
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch

from ..registry import Registry


def num_transfer_tokens(block_size: int, steps_per_block: int) -> list[int]:
    """The static schedule: ``k_j = B // S + [j < B % S]`` tokens at step ``j`` (so ``Σ_j k_j = B``)."""
    base, extra = divmod(block_size, steps_per_block)
    return [base + (1 if step < extra else 0) for step in range(steps_per_block)]


def _rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in its row by decreasing score, ties broken by position (leftmost first)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(
        -1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    )


def top_k_commit(scores: torch.Tensor, masked: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Commit the ``min(k, #masked)`` masked positions with the highest ``scores`` (leftmost on ties)."""
    ranked = _rank_descending(scores.masked_fill(~masked, float("-inf")))
    k = torch.as_tensor(k, device=scores.device).reshape(-1, 1) if torch.is_tensor(k) else k
    return masked & (ranked < k)


class RemaskingStrategy(abc.ABC):
    """Base class: ``select`` returns the positions a step commits.

    Subclasses set :attr:`name`, declare the generation-config fields they read in :attr:`parameters` (field name →
    default) and receive them as keyword arguments of ``__init__``; :meth:`check_parameters` validates them.
    """

    #: registry name (the value of ``remasking`` in the generation config)
    name: ClassVar[str] = ""
    #: generation-config fields the strategy reads, with their defaults
    parameters: ClassVar[dict[str, Any]] = {}
    #: whether ``select`` follows the static ``k``-per-step schedule (and so ends a block in ``S`` steps)
    follows_schedule: ClassVar[bool] = True

    @classmethod
    def check_parameters(cls, values: dict[str, Any]) -> None:
        """Raise a `ValueError` naming the field, the value and what is accepted for an invalid parameter."""

    @classmethod
    def from_config(cls, config: Any) -> RemaskingStrategy:
        """The strategy with its parameters read from ``config`` (a generation config)."""
        return cls(**{field: getattr(config, field, default) for field, default in cls.parameters.items()})

    @abc.abstractmethod
    def select(
        self,
        confidence: torch.Tensor,
        entropy: torch.Tensor,
        masked: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The boolean ``[batch, B]`` mask of masked positions to commit this step."""


class LowConfidenceStatic(RemaskingStrategy):
    """Commit the ``k`` most confident masked positions (SDAR's ``low_confidence_static``)."""

    name = "low_confidence_static"

    def select(self, confidence, entropy, masked, k, generator=None):
        return top_k_commit(confidence, masked, k)


def _check_probability(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")


class LowConfidenceDynamic(RemaskingStrategy):
    """Commit every masked position with confidence above ``confidence_threshold``; if fewer than ``k``, the ``k``
    most confident."""

    name = "low_confidence_dynamic"
    parameters = {"confidence_threshold": 0.9}

    def __init__(self, confidence_threshold: float = 0.9) -> None:
        self.threshold = confidence_threshold

    @classmethod
    def check_parameters(cls, values):
        _check_probability("confidence_threshold", values["confidence_threshold"])

    def select(self, confidence, entropy, masked, k, generator=None):
        above = masked & (confidence > self.threshold)
        enough = above.sum(-1, keepdim=True) >= k
        return torch.where(enough, above, top_k_commit(confidence, masked, k))


class RandomRemasking(RemaskingStrategy):
    """Commit ``k`` masked positions drawn uniformly at random (LLaDA's ``"random"`` remasking).

    Every masked position gets a fresh score ``u ~ U[0, 1)`` (from ``generator`` when given) and the ``k`` highest
    are committed: a uniformly random ``k``-subset of the masked positions, whatever the model's confidence. The
    tokens written are still the sampled ones (the argmax when greedy).
    """

    name = "random"

    def select(self, confidence, entropy, masked, k, generator=None):
        scores = torch.rand(masked.shape, generator=generator, device=masked.device)
        return top_k_commit(scores, masked, k)


class Sequential(RemaskingStrategy):
    """Commit the ``k`` leftmost masked positions (autoregressive order inside the block)."""

    name = "sequential"

    def select(self, confidence, entropy, masked, k, generator=None):
        return masked & (masked.cumsum(-1) <= k)


class EntropyBounded(RemaskingStrategy):
    """Commit the lowest-entropy masked positions whose cumulative entropy stays within ``entropy_bound`` (at least
    one).

    With masked positions sorted by entropy ``H_(1) <= H_(2) <= ...``, commit ``(j)`` iff ``j = 1`` or
    ``Σ_{i<=j} H_(i) <= bound``. The step count per block is adaptive (at most ``B``).
    """

    name = "entropy_bounded"
    parameters = {"entropy_bound": 1.0}
    follows_schedule = False

    def __init__(self, entropy_bound: float = 1.0) -> None:
        self.bound = entropy_bound

    @classmethod
    def check_parameters(cls, values):
        bound = values["entropy_bound"]
        if not isinstance(bound, (int, float)) or math.isnan(bound) or bound <= 0:
            raise ValueError(f"`entropy_bound` must be a positive number of nats, got {bound!r}.")

    def select(self, confidence, entropy, masked, k, generator=None):
        entropy = entropy.masked_fill(~masked, float("inf"))
        sorted_entropy, order = torch.sort(entropy, dim=-1, stable=True)
        cumulative = sorted_entropy.cumsum(-1)
        first = torch.zeros_like(cumulative, dtype=torch.bool)
        first[:, 0] = True
        keep_sorted = (cumulative <= self.bound) | first
        keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
        return keep & masked


#: registered strategies by name (with aliases: other names accepted for a strategy, e.g. the reference
#: implementations')
REMASKING: Registry[type[RemaskingStrategy]] = Registry(
    "remasking strategy", hint="register one with t3d_trl.register_remasking"
)


def register_remasking(
    strategy: type[RemaskingStrategy], aliases: tuple[str, ...] = (), *, overwrite: bool = False
) -> type[RemaskingStrategy]:
    """Register a :class:`RemaskingStrategy` subclass under its ``name`` (and ``aliases``).

    Args:
        strategy: the strategy class.
        aliases: further accepted names.
        overwrite: replace a strategy registered under the name or an alias (not a built-in one).

    Raises:
        ValueError: if the name or an alias is taken (see :class:`~t3d_trl.registry.Registry`), or a parameter clashes
            with another strategy's default.
    """
    known = {
        field: default
        for name, other in REMASKING.items()
        if name != strategy.name
        for field, default in other.parameters.items()
    }
    for field, default in strategy.parameters.items():
        if field in known and known[field] != default:
            raise ValueError(f"Remasking parameter {field!r} already has the default {known[field]!r}.")
    return REMASKING.register(strategy.name, strategy, aliases=aliases, overwrite=overwrite)


def remasking_names() -> tuple[str, ...]:
    """Every accepted ``remasking`` value: registered names, then aliases."""
    return REMASKING.choices()


def remasking_parameters() -> dict[str, Any]:
    """The generation-config fields of every registered strategy, with their defaults."""
    return {field: default for strategy in REMASKING.values() for field, default in strategy.parameters.items()}


for _strategy, _aliases in (
    (LowConfidenceStatic, ("low_confidence",)),  # LLaDA's name
    (LowConfidenceDynamic, ()),
    (Sequential, ()),
    (EntropyBounded, ()),
    (RandomRemasking, ()),
):
    REMASKING.register(_strategy.name, _strategy, aliases=_aliases, builtin=True)


def remasking_class(name: str) -> type[RemaskingStrategy]:
    """The strategy registered as ``name`` (or under the alias ``name``).

    Raises:
        ValueError: naming the accepted values.
    """
    return REMASKING.get_entry(name)


def get_remasking_strategy(name: str, **parameters: Any) -> RemaskingStrategy:
    """Instantiate the strategy called ``name`` with ``parameters`` (its declared fields; others are refused)."""
    cls = remasking_class(name)
    unknown = sorted(set(parameters) - set(cls.parameters))
    if unknown:
        raise ValueError(
            f"Remasking strategy {name!r} takes {sorted(cls.parameters) or 'no parameters'}, got {unknown}."
        )
    values = {**cls.parameters, **parameters}
    cls.check_parameters(values)
    return cls(**values)


def remasking_strategy(config: Any) -> RemaskingStrategy:
    """The strategy a generation config asks for (``config.remasking``), with its parameters from the config."""
    return remasking_class(config.remasking).from_config(config)
