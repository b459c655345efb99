"""Remasking strategies: which masked positions of a block a denoising step commits.

Each strategy maps the step's per-position ``confidence`` and ``entropy`` ``[batch, B]``, the ``masked`` positions
``[batch, B]`` and the scheduled count ``k`` to a boolean ``commit`` mask. Committed positions are always masked
positions, and a row with masks left commits at least one.
"""

from __future__ import annotations

import abc

import torch


def num_transfer_tokens(block_size: int, steps_per_block: int) -> list[int]:
    """The static schedule: ``k_j = B // S + [j < B % S]`` tokens at step ``j`` (so ``Σ_j k_j = B``)."""
    base, extra = divmod(block_size, steps_per_block)
    return [base + (1 if step < extra else 0) for step in range(steps_per_block)]


def _rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in its row by decreasing score, ties broken by position (leftmost first)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))


def top_k_commit(scores: torch.Tensor, masked: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Commit the ``min(k, #masked)`` masked positions with the highest ``scores`` (leftmost on ties)."""
    ranked = _rank_descending(scores.masked_fill(~masked, float("-inf")))
    k = torch.as_tensor(k, device=scores.device).reshape(-1, 1) if torch.is_tensor(k) else k
    return masked & (ranked < k)


class RemaskingStrategy(abc.ABC):
    """Base class: ``select`` returns the positions a step commits."""

    name: str = ""
    #: whether ``select`` follows the static ``k``-per-step schedule (and so ends a block in ``S`` steps)
    follows_schedule: bool = True

    @abc.abstractmethod
    def select(self, confidence: torch.Tensor, entropy: torch.Tensor, masked: torch.Tensor, k: int) -> torch.Tensor:
        """The boolean ``[batch, B]`` mask of masked positions to commit this step."""


class LowConfidenceStatic(RemaskingStrategy):
    """Commit the ``k`` most confident masked positions (SDAR's ``low_confidence_static``)."""

    name = "low_confidence_static"

    def select(self, confidence, entropy, masked, k):
        return top_k_commit(confidence, masked, k)


class LowConfidenceDynamic(RemaskingStrategy):
    """Commit every masked position with confidence above ``threshold``; if fewer than ``k``, the ``k`` most confident."""

    name = "low_confidence_dynamic"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def select(self, confidence, entropy, masked, k):
        above = masked & (confidence > self.threshold)
        enough = above.sum(-1, keepdim=True) >= k
        return torch.where(enough, above, top_k_commit(confidence, masked, k))


class Sequential(RemaskingStrategy):
    """Commit the ``k`` leftmost masked positions (autoregressive order inside the block)."""

    name = "sequential"

    def select(self, confidence, entropy, masked, k):
        return masked & (masked.cumsum(-1) <= k)


class EntropyBounded(RemaskingStrategy):
    """Commit the lowest-entropy masked positions whose cumulative entropy stays within ``bound`` (at least one).

    With masked positions sorted by entropy ``H_(1) <= H_(2) <= ...``, commit ``(j)`` iff ``j = 1`` or
    ``Σ_{i<=j} H_(i) <= bound``. The step count per block is adaptive (at most ``B``).
    """

    name = "entropy_bounded"
    follows_schedule = False

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def select(self, confidence, entropy, masked, k):
        entropy = entropy.masked_fill(~masked, float("inf"))
        sorted_entropy, order = torch.sort(entropy, dim=-1, stable=True)
        cumulative = sorted_entropy.cumsum(-1)
        first = torch.zeros_like(cumulative, dtype=torch.bool)
        first[:, 0] = True
        keep_sorted = (cumulative <= self.bound) | first
        keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
        return keep & masked


def get_remasking_strategy(name: str, confidence_threshold: float = 0.9, entropy_bound: float = 1.0) -> RemaskingStrategy:
    """Instantiate the strategy called ``name`` with its parameter."""
    if name == "low_confidence_static":
        return LowConfidenceStatic()
    if name == "low_confidence_dynamic":
        return LowConfidenceDynamic(confidence_threshold)
    if name == "sequential":
        return Sequential()
    if name == "entropy_bounded":
        return EntropyBounded(entropy_bound)
    raise ValueError(
        f"Unknown remasking strategy {name!r}; choose one of low_confidence_static, low_confidence_dynamic, "
        "sequential, entropy_bounded."
    )
