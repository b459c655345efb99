"""Tests for t3d_trl.trajectory: trajectory states, hashed sampling, token replacement."""

from __future__ import annotations

import math

import pytest
import torch

from t3d_trl.trajectory import (
    hash_uniform,
    random_state_mask,
    random_token_replacement,
    sample_current_block,
    sample_mask_ratios,
    trajectory_state_mask,
    within_block_steps,
)


def _random_rollouts(seed: int, batch: int = 6, block: int = 4, distinct: bool = False):
    """Random teacher step maps: blocks of `block` tokens decoded in order, steps increasing block by block."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 19, (batch,), generator=generator)
    prompt = torch.randint(0, 7, (batch,), generator=generator)
    width = int(lengths.max())
    column = torch.arange(width)[None]
    valid = column < lengths[:, None]
    blocks = (prompt[:, None] + column) // block
    steps_per_block = block if distinct else 2
    if distinct:
        within = torch.argsort(torch.rand(batch, width, generator=generator), dim=1)  # distinct inside a block
    else:
        within = torch.randint(0, steps_per_block, (batch, width), generator=generator)
    steps = blocks * (width + 1) * steps_per_block + within
    return steps, blocks, valid


def test_hash_uniform_is_deterministic_and_uniform():
    keys = torch.arange(50_000)
    first = hash_uniform(7, 3, keys)
    assert first.dtype == torch.float64
    assert torch.equal(first, hash_uniform(7, 3, keys))
    assert torch.equal(first[123:456], hash_uniform(7, 3, keys[123:456]))
    assert 0.0 <= float(first.min()) and float(first.max()) < 1.0
    assert abs(float(first.mean()) - 0.5) < 0.01
    assert abs(float((first < 0.1).float().mean()) - 0.1) < 0.01
    assert not torch.equal(first, hash_uniform(8, 3, keys))
    assert not torch.equal(first, hash_uniform(7, 4, keys))
    # Broadcasting over two keys gives one draw per pair, equal to the scalar calls.
    grid = hash_uniform(7, 5, torch.tensor([[1], [2]]), torch.tensor([[10, 11, 12]]))
    assert grid.shape == (2, 3)
    assert float(grid[1, 2]) == float(hash_uniform(7, 5, 2, 12))


def test_sample_mask_ratios_follows_r_power_8():
    ratios = (1.0, 0.75, 0.5, 0.25)
    drawn = sample_mask_ratios(torch.arange(200_000), seed=42, ratios=ratios, power=8.0)
    weights = torch.tensor(ratios, dtype=torch.float64) ** 8
    expected = weights / weights.sum()
    assert torch.allclose(expected, torch.tensor([0.906, 0.091, 0.0035, 0.0000138], dtype=torch.float64), atol=1e-3)
    for ratio, probability in zip(ratios, expected.tolist()):
        frequency = float((drawn == ratio).double().mean())
        assert abs(frequency - probability) < 4 * math.sqrt(probability * (1 - probability) / drawn.numel()) + 1e-5
    # Deterministic per (seed, example_index), whatever the batch.
    assert torch.equal(sample_mask_ratios(torch.tensor([5, 9]), 42), drawn[[5, 9]])


def test_within_block_steps_hand_example():
    step_map = torch.tensor([[0, 0, 1, 1, 2, 3, 3, 3, 9], [5, 4, 6, 7, 0, 0, 0, 0, 0]])
    block = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 3], [3, 3, 4, 4, 4, 5, 5, 5, 5]])
    valid = torch.tensor([[True] * 8 + [False], [True, True, True, True, False, False, False, False, False]])
    sigma, steps_in_block = within_block_steps(step_map, block, valid)
    assert sigma.tolist() == [[0, 0, 1, 0, 1, 2, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0, 0]]
    # Row 0: block 0 steps {0,1} → S=2; block 1 {1,2,3} → 3; block 2 {3} → 1; block 3 has no valid token → 1.
    # Row 1: block 3 {4,5} → 2; block 4 {6,7} (the padding token is ignored) → 2; block 5 empty → 1.
    assert steps_in_block.tolist() == [[2, 2, 2, 3, 3, 3, 1, 1, 1], [2, 2, 2, 2, 2, 1, 1, 1, 1]]
    weights = (steps_in_block - sigma).double() / steps_in_block
    assert weights[0, :3].tolist() == [1.0, 1.0, 0.5]


@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.25, 0.0])
def test_trajectory_state_is_a_prefix_in_time_of_every_block(ratio):
    steps, blocks, valid = _random_rollouts(seed=int(ratio * 100), distinct=True)
    masked = trajectory_state_mask(steps, blocks, valid, torch.full((steps.shape[0],), ratio))
    assert not bool((masked & ~valid).any())
    for row in range(steps.shape[0]):
        for block in blocks[row][valid[row]].unique().tolist():
            members = valid[row] & (blocks[row] == block)
            n = int(members.sum())
            block_steps, block_masked = steps[row][members], masked[row][members]
            assert int(block_masked.sum()) == math.floor(ratio * n)
            # Visible ⇔ committed before some cut inside the block.
            cuts = [int(s) for s in block_steps] + [int(block_steps.max()) + 1]
            assert any(torch.equal(~block_masked, block_steps < cut) for cut in cuts)


def test_trajectory_state_with_ties_masks_latest_then_rightmost():
    steps, blocks, valid = _random_rollouts(seed=3, distinct=False)
    ratio = torch.tensor([0.75, 0.5, 0.25, 0.75, 0.5, 0.25])
    masked = trajectory_state_mask(steps, blocks, valid, ratio)
    for row in range(steps.shape[0]):
        for block in blocks[row][valid[row]].unique().tolist():
            members = torch.nonzero(valid[row] & (blocks[row] == block)).flatten()
            block_masked = masked[row, members]
            assert int(block_masked.sum()) == math.floor(float(ratio[row]) * members.numel())
            keys = [(int(steps[row, i]), int(i)) for i in members]
            if block_masked.any() and (~block_masked).any():
                visible = [k for k, m in zip(keys, block_masked.tolist()) if not m]
                hidden = [k for k, m in zip(keys, block_masked.tolist()) if m]
                assert max(visible) < min(hidden)  # (step, position) order


def test_trajectory_state_earliest_order_and_full_mask():
    steps = torch.tensor([[3, 0, 2, 1, 5, 4, 7, 6]])
    blocks = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    valid = torch.ones_like(steps, dtype=torch.bool)
    latest = trajectory_state_mask(steps, blocks, valid, 0.5)
    earliest = trajectory_state_mask(steps, blocks, valid, 0.5, order="earliest")
    assert latest.tolist() == [[True, False, True, False, False, False, True, True]]
    assert earliest.tolist() == [[False, True, False, True, True, True, False, False]]
    assert bool(trajectory_state_mask(steps, blocks, valid, 1.0).all())
    with pytest.raises(ValueError, match="order"):
        trajectory_state_mask(steps, blocks, valid, 0.5, order="random")


def test_random_state_mask_rate_and_at_least_one():
    valid = torch.ones(4000, 16, dtype=torch.bool)
    valid[:, 12:] = False
    example_index = torch.arange(4000)
    mask, t = random_state_mask(valid, example_index, seed=1)
    assert t.shape == (4000,) and float(t.min()) > 0 and float(t.max()) <= 1
    assert not bool((mask & ~valid).any())
    assert bool(mask.any(dim=1).all())
    # Mean masked fraction ≈ E[t] = 1/2 (plus the forced token of rows where none was drawn).
    assert abs(float(mask[:, :12].float().mean()) - 0.5) < 0.02
    again, _ = random_state_mask(valid[[7, 3]], example_index[[7, 3]], seed=1)
    assert torch.equal(again, mask[[7, 3]])


def test_random_token_replacement_as_the_official_code():
    # In every example with n masked positions: exactly max(1, floor(ratio · n)) (at most n) of them get a random token,
    # drawn from the given token ids only; the others get the mask token; unmasked positions are untouched.
    batch, length, mask_id = 300, 64, 5
    allowed = torch.tensor([0, 1, 2, 3, 4, 6, 7, 8])  # e.g. the tokenizer's vocabulary without its special tokens
    input_ids = torch.randint(10, 20, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = (
        torch.rand(batch, length, generator=torch.Generator().manual_seed(1))
        < torch.linspace(0.01, 0.9, batch)[:, None]
    )
    mask[0] = False
    mask[1, :] = False
    mask[1, 3] = True  # one masked position: it is the random one
    out = random_token_replacement(input_ids, mask, torch.arange(batch), 3, 0.1, allowed, mask_id)
    assert torch.equal(out[~mask], input_ids[~mask])
    replaced = mask & (out != mask_id)
    n = mask.sum(1)
    expected = torch.where(n > 0, torch.minimum(n, (0.1 * n).floor().long().clamp_min(1)), torch.zeros_like(n))
    assert torch.equal(replaced.sum(1), expected)
    assert bool(torch.isin(out[replaced], allowed).all())
    counts = torch.bincount(out[replaced], minlength=9)
    assert bool((counts[allowed] > 0).all())  # every allowed id is drawn
    # a uniformly random subset: every column is replaced about equally often among its masked occurrences
    share = replaced.sum(0).float() / mask.sum(0).clamp_min(1)
    assert float(share.max() - share.min()) < 0.15
    plain = random_token_replacement(input_ids, mask, torch.arange(batch), 3, 0.0, None, mask_id)
    assert bool((plain[mask] == mask_id).all())
    again = random_token_replacement(input_ids[[7, 3]], mask[[7, 3]], torch.tensor([7, 3]), 3, 0.1, allowed, mask_id)
    assert torch.equal(again, out[[7, 3]])  # a function of (seed, example), whatever the batch
    with pytest.raises(ValueError, match="token_ids"):
        random_token_replacement(input_ids, mask, torch.arange(batch), 3, 0.1, None, mask_id)


def test_sample_current_block_range():
    num_blocks = torch.tensor([1, 2, 3, 7] * 500)
    chosen = sample_current_block(torch.arange(2000), 0, num_blocks)
    assert bool(((chosen >= 0) & (chosen < num_blocks)).all())
    assert set(chosen[num_blocks == 7].tolist()) == set(range(7))
