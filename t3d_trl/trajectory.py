"""Trajectory states of a teacher rollout: which completion tokens are masked in the student's input x_t.

A teacher rollout records, for every completion token ``i``, the 0-based denoising step ``step_i`` (counted over
the whole completion) at which the teacher committed it (``docs/design.md``, "Trajectory states"). A *trajectory
state* of a block keeps the tokens committed before some step ``s`` visible and masks the rest; ``s = 0`` is the
fully masked block a 1-step student sees at inference.

All functions here are pure and vectorised over ``[batch, length]`` tensors (no Python loop over rows or tokens).
The per-example randomness comes from a counter-based hash (:func:`hash_uniform`), so the state of an example
depends only on ``(seed, example_index)``: it is the same whatever batch the example lands in, on any process,
and when reference log-probabilities are precomputed in a separate pass.

Tensor conventions: ``step_map``, ``block`` and ``valid`` are ``[batch, L]`` tensors over completion tokens (any
alignment: the functions only compare tokens of the same row and block); ``valid`` is ``False`` at padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "KEY_PARTIAL_RATIO",
    "KEY_STATE_RATIO",
    "hash_uniform",
    "random_state_mask",
    "random_token_replacement",
    "sample_current_block",
    "sample_mask_ratios",
    "trajectory_state_mask",
    "within_block_steps",
]

# splitmix64 constants, written as signed int64 (two's complement) so that torch int64 arithmetic wraps like uint64.
_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)

# Stream keys: one independent hash stream per random decision.
#: the hash stream of the main state's mask ratio (:func:`sample_mask_ratios`)
KEY_STATE_RATIO = 1
_KEY_RANDOM_T = 2
_KEY_RANDOM_TOKEN = 3
_KEY_REPLACE = 4
_KEY_REPLACE_TOKEN = 5
_KEY_BLOCK = 6
#: the hash stream of the ``"partial"`` extra state's ratio (:mod:`t3d_trl.states`): a draw apart from the main state's
KEY_PARTIAL_RATIO = 7


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 values seen as uint64: ``(x >> bits) & (2^(64-bits) − 1)``."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic):

    ``z ← (z ⊕ (z ≫ 30))·0xBF58476D1CE4E5B9; z ← (z ⊕ (z ≫ 27))·0x94D049BB133111EB; z ← z ⊕ (z ≫ 31)``.
    """
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def hash_uniform(seed: int | Tensor, *keys: int | Tensor) -> Tensor:
    """Counter-based uniform draws in ``[0, 1)``: a deterministic function of ``(seed, *keys)``.

    ``h_0 = mix(seed + γ)``, ``h_{j+1} = mix(h_j ⊕ mix(key_j + γ))`` with ``mix`` the splitmix64 finaliser and
    ``γ = 0x9E3779B97F4A7C15``; the draw is ``u = (h ≫ 11) · 2^-53`` (the top 53 bits as a float64).

    Keys broadcast against each other (e.g. ``example_index[:, None]`` and ``torch.arange(L)[None]`` give one draw
    per token). The same ``(seed, keys)`` always gives the same number, on any device and in any batch.

    Args:
        seed: integer seed (Python int or integer tensor).
        *keys: integer keys (Python ints or integer tensors, broadcastable).

    Returns:
        A float64 tensor of the broadcast shape of the keys, values in ``[0, 1)``.
    """
    device = next((key.device for key in (seed, *keys) if isinstance(key, Tensor)), None)
    state = _mix(torch.as_tensor(seed, dtype=torch.int64, device=device) + _GOLDEN)
    for key in keys:
        key = torch.as_tensor(key, device=device).to(torch.int64)
        state = _mix(state ^ _mix(key + _GOLDEN))
    return _shift_right(state, 11).to(torch.float64) * (2.0**-53)


def sample_mask_ratios(
    example_index: Tensor,
    seed: int,
    ratios: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
    power: float = 8.0,
    *,
    key: int = KEY_STATE_RATIO,
) -> Tensor:
    """One mask ratio per example, ``P(r) = r^power / Σ_r' r'^power``, hashed on ``(seed, example_index)``.

    With the official ratios ``(1, 0.75, 0.5, 0.25)`` and ``power = 8`` the probabilities are about
    ``0.906, 0.091, 0.004, 0.00002``. The draw inverts the cumulative distribution at ``u = hash_uniform(seed,
    key, example_index)``: ``r = ratios[min{j : u < CDF_j}]``.

    Args:
        example_index: ``[batch]`` integer index of each example in the dataset.
        seed: seed of the hash.
        ratios: candidate ratios ``r ∈ [0, 1]``.
        power: exponent of the sampling weights.
        key: the hash stream (:data:`KEY_STATE_RATIO` for the main state; another key gives an independent draw).

    Returns:
        A float32 tensor ``[batch]`` of ratios.
    """
    values = torch.as_tensor(ratios, dtype=torch.float64, device=example_index.device)
    if values.numel() == 0 or bool(((values < 0) | (values > 1)).any()):
        raise ValueError(f"mask ratios must be a non-empty sequence of values in [0, 1], got {tuple(ratios)}.")
    weights = values.pow(power)
    if float(weights.sum()) <= 0:
        raise ValueError(f"mask ratios {tuple(ratios)} with power {power} give no positive sampling weight.")
    cdf = torch.cumsum(weights / weights.sum(), 0)
    uniform = hash_uniform(seed, key, example_index)
    choice = torch.searchsorted(cdf, uniform, right=True).clamp_max(values.numel() - 1)
    return values[choice].to(torch.float32)


def _group_ids(block: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, int]:
    """Dense ids of (row, block) groups: ``g = row · span + (block − b_min)``, ``b_min``/``span`` over valid tokens.

    Returns:
        ``(valid_groups, token_groups, n_groups)``, int64 ``[batch, L]``: ``valid_groups`` sends invalid tokens to
        the extra id ``n_groups``; ``token_groups`` gives every token whose block holds valid tokens of some row its
        group id (and ``n_groups`` otherwise).
    """
    batch = block.shape[0]
    block = block.to(torch.int64)
    if not bool(valid.any()):
        dump = torch.zeros_like(block)
        return dump, dump, 0
    low = block[valid].min()
    span = int(block[valid].max() - low) + 1
    rows = torch.arange(batch, device=block.device)[:, None]
    n_groups = batch * span
    in_range = (block >= low) & (block - low < span)
    dump = torch.full_like(block, n_groups)
    token_groups = torch.where(in_range, rows * span + (block - low), dump)
    return torch.where(valid, token_groups, dump), token_groups, n_groups


def within_block_steps(step_map: Tensor, block: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Within-block decode step σ and steps per block S of every completion token.

    For the tokens ``i`` of a block ``β`` (same row, same block id, ``valid``):
    ``σ_i = step_i − min_{j∈β} step_j`` and ``S_β = max_{j∈β} step_j − min_{j∈β} step_j + 1``, computed with
    ``scatter_reduce`` (``amin``/``amax``) over the block ids. They define the path weights ``w_i = (S − σ_i)/S``.

    Tokens with ``valid`` false take ``σ = 0`` and the ``S`` of their block (``1`` if the block has no valid
    token), so a caller can give them a weight of its choice (e.g. ``σ = S − 1`` for appended EOS tokens).

    Args:
        step_map: ``[batch, L]`` teacher denoising step of each token.
        block: ``[batch, L]`` block id of each token (the *training* blocks).
        valid: ``[batch, L]`` bool, ``False`` at padding and at tokens excluded from the statistics.

    Returns:
        ``(sigma, steps_in_block)``, two int64 tensors ``[batch, L]``.
    """
    steps = step_map.to(torch.int64)
    valid_groups, token_groups, n_groups = _group_ids(block, valid)
    if n_groups == 0:
        return torch.zeros_like(steps), torch.ones_like(steps)
    big = torch.iinfo(torch.int64).max
    flat_groups, flat_steps = valid_groups.reshape(-1), steps.reshape(-1)
    low_step = torch.full((n_groups + 1,), big, dtype=torch.int64, device=steps.device)
    high_step = torch.full((n_groups + 1,), -big, dtype=torch.int64, device=steps.device)
    low_step = low_step.scatter_reduce(0, flat_groups, flat_steps, reduce="amin", include_self=True)
    high_step = high_step.scatter_reduce(0, flat_groups, flat_steps, reduce="amax", include_self=True)
    empty = high_step < low_step  # groups without a valid token
    empty[n_groups] = True  # the padding bucket: tokens of blocks that hold no valid token read S = 1
    low_step = torch.where(empty, torch.zeros_like(low_step), low_step)
    high_step = torch.where(empty, torch.zeros_like(high_step), high_step)
    token_low, token_high = low_step[token_groups], high_step[token_groups]
    sigma = torch.where(valid, steps - token_low, torch.zeros_like(steps))
    return sigma, token_high - token_low + 1


def _within_block_rank(step_map: Tensor, block: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Rank of every valid token in its block by ``(step, position)`` ascending, and the block's valid count.

    One stable ``torch.sort`` on the composite key ``(g · R + step') · L + position`` (``g`` the dense group id,
    ``step'`` the step relative to the smallest valid step, ``R`` the step range), then
    ``rank = sorted index − first sorted index of the group``.

    Returns:
        ``(rank, count)``, int64 ``[batch, L]``; meaningless at invalid tokens.
    """
    batch, length = step_map.shape
    groups, _, n_groups = _group_ids(block, valid)
    if n_groups == 0:
        zeros = torch.zeros((batch, length), dtype=torch.int64, device=step_map.device)
        return zeros, zeros
    steps = step_map.to(torch.int64)
    low = steps[valid].min()
    rel = torch.where(valid, steps - low, torch.zeros_like(steps))
    step_range = int(rel.max()) + 1
    if (n_groups + 1) * step_range * length >= 2**62:
        raise ValueError("trajectory_state_mask: step range too large for the composite sort key.")
    position = torch.arange(length, device=step_map.device).expand(batch, length)
    key = (groups * step_range + rel) * length + position
    order = torch.sort(key.reshape(-1), stable=True).indices
    sorted_groups = groups.reshape(-1)[order]
    count = torch.bincount(groups.reshape(-1), minlength=n_groups + 1)
    start = torch.cumsum(count, 0) - count
    sorted_rank = torch.arange(order.numel(), device=order.device) - start[sorted_groups]
    rank = torch.empty_like(sorted_rank).scatter_(0, order, sorted_rank)
    return rank.view(batch, length), count[groups]


def trajectory_state_mask(
    step_map: Tensor,
    block: Tensor,
    valid: Tensor,
    ratio: Tensor | float,
    order: str = "latest",
) -> Tensor:
    """Mask of a trajectory state: in every block, the ``⌊r·n⌋`` latest-decoded of its ``n`` valid tokens.

    Ranking the valid tokens of a block by ``(step, position)`` ascending (``ρ_i ∈ {0..n−1}``), token ``i`` is
    masked iff ``ρ_i ≥ n − ⌊r·n⌋`` (``order="latest"``: largest step first, ties broken by larger position first).
    The visible tokens are then exactly those the teacher committed before some cut inside the block (up to ties
    within one step), a real intermediate state of its trajectory; ``r = 1`` masks the whole block.
    ``order="earliest"`` masks ``ρ_i < ⌊r·n⌋`` instead (the official T3D code: earliest-decoded first).

    Args:
        step_map: ``[batch, L]`` teacher step of each token.
        block: ``[batch, L]`` block id of each token.
        valid: ``[batch, L]`` bool, ``False`` at padding (never masked).
        ratio: ``[batch]`` per-example ratio ``r`` (or a float for all rows).
        order: ``"latest"`` or ``"earliest"``.

    Returns:
        A bool tensor ``[batch, L]``, ``True`` where the token is masked.
    """
    if order not in ("latest", "earliest"):
        raise ValueError(f"order must be 'latest' or 'earliest', got {order!r}.")
    rank, count = _within_block_rank(step_map, block, valid)
    ratio = torch.as_tensor(ratio, dtype=torch.float64, device=step_map.device)
    ratio = ratio.reshape(-1, 1) if ratio.ndim else ratio
    num_masked = torch.floor(ratio * count.to(torch.float64) + 1e-9).to(torch.int64)
    if order == "latest":
        masked = rank >= count - num_masked
    else:
        masked = rank < num_masked
    return masked & valid


def random_state_mask(
    valid: Tensor,
    example_index: Tensor,
    seed: int,
    token_index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The SFT / MDLM state: each valid token masked with probability ``t``, ``t ~ U(0, 1]`` per example.

    ``t = 1 − hash_uniform(seed, key, example_index)`` and token ``i`` is masked iff
    ``hash_uniform(seed, key', example_index, token_index_i) < t``. A row with no masked token masks the valid
    token of smallest draw, so at least one token of every non-empty row is masked.

    Args:
        valid: ``[batch, L]`` bool, ``False`` at padding.
        example_index: ``[batch]`` dataset index of each example.
        seed: seed of the hash.
        token_index: ``[batch, L]`` key of each token (its index in the completion); defaults to the column index,
            which is batch independent when rows are aligned at the start of their completion.

    Returns:
        ``(mask, t)``: a bool ``[batch, L]`` mask and the float32 ``[batch]`` masking probabilities.
    """
    batch, length = valid.shape
    if token_index is None:
        token_index = torch.arange(length, device=valid.device).expand(batch, length)
    t = 1.0 - hash_uniform(seed, _KEY_RANDOM_T, example_index)
    draws = hash_uniform(seed, _KEY_RANDOM_TOKEN, example_index[:, None], token_index)
    mask = (draws < t[:, None]) & valid
    smallest = torch.where(valid, draws, torch.full_like(draws, 2.0)).argmin(dim=1, keepdim=True)
    forced = torch.zeros_like(mask).scatter_(1, smallest, True) & valid
    needs_one = ~mask.any(dim=1, keepdim=True)
    return mask | (forced & needs_one), t.to(torch.float32)


def random_token_replacement(
    input_ids: Tensor,
    mask: Tensor,
    example_index: Tensor,
    seed: int,
    ratio: float,
    token_ids: Tensor | None,
    mask_token_id: int,
    token_index: Tensor | None = None,
) -> Tensor:
    """Put the mask token at masked positions, replacing some of them by random tokens (the official ``random_ratio``).

    In a row with ``n > 0`` masked positions and ``ratio > 0``, exactly ``m = min(n, max(1, ⌊ratio · n⌋))`` of them,
    a uniformly random subset (the ``m`` smallest of the per-token draws ``u_i = hash_uniform(seed, key, example,
    token_index_i)``), get a token drawn uniformly from ``token_ids`` (the tokenizer's own vocabulary, not the padded
    embedding rows) and the others the mask token: at least one random token per example, as in the official code.
    Unmasked positions keep ``input_ids``.

    Args:
        input_ids: ``[batch, L]`` clean token ids.
        mask: ``[batch, L]`` bool, positions to corrupt.
        example_index: ``[batch]`` dataset index of each example.
        seed: seed of the hash.
        ratio: fraction of masked positions given a random token instead of the mask token.
        token_ids: 1D tensor of the ids random tokens are drawn from; required when ``ratio > 0``.
        mask_token_id: id of the mask token.
        token_index: ``[batch, L]`` per-token hash key; defaults to the column index.

    Returns:
        The corrupted ids, same shape and dtype as ``input_ids``.
    """
    noisy = torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)
    if ratio <= 0:
        return noisy
    if token_ids is None or token_ids.numel() == 0:
        raise ValueError("random_token_replacement needs `token_ids` (the ids to draw from) when ratio > 0.")
    batch, length = input_ids.shape
    if token_index is None:
        token_index = torch.arange(length, device=input_ids.device).expand(batch, length)
    example = example_index[:, None]
    draws = hash_uniform(seed, _KEY_REPLACE, example, token_index).masked_fill(~mask, 2.0)
    count = mask.sum(1, keepdim=True)
    replaced_count = torch.minimum(count, torch.floor(ratio * count.to(torch.float64)).to(torch.int64).clamp_min(1))
    rank = torch.empty_like(token_index).scatter_(
        1, draws.argsort(dim=1, stable=True), torch.arange(length, device=mask.device).expand(batch, length)
    )
    replace = mask & (rank < replaced_count)
    pick = hash_uniform(seed, _KEY_REPLACE_TOKEN, example, token_index)
    token_ids = token_ids.to(device=input_ids.device, dtype=torch.int64)
    choice = torch.floor(pick * token_ids.numel()).to(torch.int64).clamp_max(token_ids.numel() - 1)
    return torch.where(replace, token_ids[choice].to(input_ids.dtype), noisy)


def sample_current_block(example_index: Tensor, seed: int, num_blocks: Tensor) -> Tensor:
    """One block index ``c ∈ {0 .. n_blocks − 1}`` per example: ``c = ⌊u · n_blocks⌋``, ``u`` hashed.

    Args:
        example_index: ``[batch]`` dataset index of each example.
        seed: seed of the hash.
        num_blocks: ``[batch]`` number of blocks of each completion (≥ 1).

    Returns:
        An int64 tensor ``[batch]``.
    """
    uniform = hash_uniform(seed, _KEY_BLOCK, example_index)
    blocks = num_blocks.to(torch.int64).clamp_min(1)
    return torch.minimum(torch.floor(uniform * blocks).to(torch.int64), blocks - 1)
