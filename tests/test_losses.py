"""Tests for t3d_trl.losses against hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from t3d_trl.losses import (
    certainty_forcing_loss,
    ddo_loss,
    path_loss,
    path_weights,
    sequence_logps,
    sft_loss,
    td_loss,
)

LOG2 = math.log(2.0)


def _close(actual: torch.Tensor, expected: list[float], atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# sequence_logps


def test_sequence_logps_mean_and_sum() -> None:
    token_logps = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, float("nan"), -1.5]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    _close(sequence_logps(token_logps, mask), [-1.5, -1.0])
    _close(sequence_logps(token_logps, mask, normalization="sum"), [-3.0, -2.0])


@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_sequence_logps_empty_mask_is_zero(normalization: str) -> None:
    token_logps = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    mask = torch.tensor([[False, False], [True, False]])
    out = sequence_logps(token_logps, mask, normalization=normalization)
    _close(out.detach(), [0.0, -3.0])
    out.sum().backward()
    assert torch.isfinite(token_logps.grad).all()


def test_sequence_logps_invalid_normalization() -> None:
    with pytest.raises(ValueError, match=r"'token'.*'mean', 'sum'"):
        sequence_logps(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), normalization="token")


# ddo_loss


def test_ddo_loss_hand_values() -> None:
    # beta = 0.5: real margin 0.5 * (-1 - (-5)) = 2; fake margin 0.5 * (-2 - (-4)) = 1.
    loss, real, fake = ddo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-2.0]),
        torch.tensor([-5.0]),
        torch.tensor([-4.0]),
        beta=0.5,
        alpha=0.25,
    )
    expected_real = math.log(1.0 + math.exp(-2.0))
    expected_fake = 0.25 * math.log(1.0 + math.exp(1.0))
    _close(real, [expected_real])
    _close(fake, [expected_fake])
    _close(loss, [expected_real + expected_fake])


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_ddo_loss_at_reference(beta: float, alpha: float) -> None:
    real_logps = torch.tensor([-3.0, -0.2, -50.0])
    fake_logps = torch.tensor([-1.0, -7.0, -0.01])
    loss, real, fake = ddo_loss(real_logps, fake_logps, real_logps.clone(), fake_logps.clone(), beta, alpha)
    _close(real, [LOG2] * 3)
    _close(fake, [alpha * LOG2] * 3)
    _close(loss, [(1 + alpha) * LOG2] * 3)


def test_ddo_loss_stable_for_large_margins() -> None:
    zero = torch.tensor([0.0])
    loss, real, fake = ddo_loss(torch.tensor([1e4]), torch.tensor([-1e4]), zero, zero, beta=1.0, alpha=1.0)
    assert torch.isfinite(loss).all()
    _close(real, [0.0])
    _close(fake, [0.0])


def test_ddo_loss_gradients_reach_policy_only() -> None:
    gen = torch.Generator().manual_seed(0)
    policy_logits = torch.randn(2, 4, 6, generator=gen).requires_grad_()
    ref_logits = torch.randn(2, 4, 6, generator=gen).requires_grad_()
    labels = torch.randint(0, 6, (2, 4), generator=gen)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    ref = ref_logits.detach()
    fake = torch.where(mask, ref.argmax(-1), labels)  # the reference's argmax at the masked positions

    def logps(logits, tokens):
        return sequence_logps(logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0], mask)

    loss, _, _ = ddo_loss(
        logps(policy_logits, labels), logps(policy_logits, fake), logps(ref, labels), logps(ref, fake)
    )
    loss.mean().backward()
    assert policy_logits.grad is not None
    assert torch.isfinite(policy_logits.grad).all()
    assert policy_logits.grad[mask].abs().sum() > 0
    assert policy_logits.grad[~mask].abs().sum() == 0
    assert ref_logits.grad is None


# path_weights / path_loss


def test_path_weights_int_steps() -> None:
    decode_step = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    _close(path_weights(decode_step, 4), [[1.0, 0.75, 0.5, 0.25], [0.25, 0.5, 0.75, 1.0]])


def test_path_weights_match_decode_order_formula() -> None:
    block = 8
    order = torch.tensor([[3, 1, 8, 2, 5, 4, 7, 6]])  # π, 1-based, one token per step
    _close(path_weights(order - 1, block), [[(block - p + 1) / block for p in order[0].tolist()]])


@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_path_weights_per_example_steps(shape: tuple[int, ...]) -> None:
    decode_step = torch.tensor([[0, 1, 1], [0, 0, 3]])
    steps = torch.tensor([2, 4]).view(shape)
    _close(path_weights(decode_step, steps), [[1.0, 0.5, 0.5], [1.0, 1.0, 0.25]])


def test_path_loss_hand_values() -> None:
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -1.0, float("-inf")]])
    weights = torch.tensor([[1.0, 0.5, 0.25], [0.25, 0.75, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # Row 0: (1*1 + 0.5*2) / 1.5; row 1: (0.25*4 + 0.75*1) / 1.
    _close(path_loss(token_logps, weights, mask), [2.0 / 1.5, 1.75])


def test_path_loss_empty_mask_and_zero_weight() -> None:
    token_logps = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-1.0, -1.0]], requires_grad=True)
    weights = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.5]])
    mask = torch.tensor([[False, False], [True, True], [True, False]])
    out = path_loss(token_logps, weights, mask)
    _close(out.detach(), [0.0, 0.0, 1.0])
    out.sum().backward()
    assert torch.isfinite(token_logps.grad).all()


# td_loss / sft_loss


@pytest.mark.parametrize("loss_fn", [td_loss, sft_loss])
def test_td_and_sft_hand_values(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    token_logps = torch.tensor([[-1.0, -2.0, -6.0], [-0.5, -9.0, -1.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    out = loss_fn(token_logps, mask)
    _close(out.detach(), [3.0, 0.5, 0.0])
    out.sum().backward()
    assert torch.isfinite(token_logps.grad).all()


# certainty_forcing_loss (dParallel)


def test_certainty_forcing_loss_hand_values() -> None:
    # Every position has p = (0.25, 0.75), argmax 1, entropy H; row 0 predicts position 0 right, row 1 nothing.
    token_logps = torch.tensor([[math.log(0.75), math.log(0.25), 0.0], [math.log(0.25), math.log(0.25), 0.0]])
    token_logps.requires_grad_()
    entropy_value = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    entropy = torch.full((2, 3), entropy_value)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    correct = torch.tensor([[True, False, False], [False, False, False]])
    td_row0 = -(math.log(0.75) + math.log(0.25)) / 2
    td_row1 = -math.log(0.25)
    out = certainty_forcing_loss(token_logps, entropy, correct, mask, entropy_weight=0.5)
    _close(out.detach(), [td_row0 + 0.5 * entropy_value, td_row1])  # no correct position: no entropy term
    _close(certainty_forcing_loss(token_logps, entropy, correct, mask, 0.0).detach(), [td_row0, td_row1])
    out.sum().backward()
    assert torch.isfinite(token_logps.grad).all()
    assert token_logps.grad[~mask].abs().sum() == 0
