"""Tests for t3d_trl.collator.DataCollatorForTrajectory: layouts checked entry by entry, and a float64 forward."""

from __future__ import annotations

import pytest
import torch

from t3d_trl.collator import DataCollatorForTrajectory
from t3d_trl.masks import CLEAN, NOISY, layout_block_mask, to_additive_mask
from t3d_trl.testing import tiny_qwen3
from t3d_trl.trajectory import sample_current_block

PAD, EOS, MASK, VOCAB = 0, 1, 39, 40
BLOCK = 4

# Row A: P = 5 (tail 1), C = 6 ending with the teacher's EOS; teacher blocks of 4 at absolute positions, 2 steps each.
ROW_A = {
    "prompt_ids": [11, 12, 13, 14, 15],
    "completion_ids": [21, 22, 23, 24, 25, EOS],
    "step_map": [0, 0, 1, 2, 3, 2],
    "example_index": 0,
}
# Row B: P = 2 (tail 2), C = 7 without EOS.
ROW_B = {
    "prompt_ids": [16, 17],
    "completion_ids": [31, 32, 33, 34, 35, 36, 37],
    "step_map": [1, 0, 2, 3, 3, 2, 4],
    "example_index": 1,
}
ROW_C = {
    "prompt_ids": [2, 3, 4, 5, 6, 7, 8, 9, 10],
    "completion_ids": [26, 27, 28, 29, 30],
    "step_map": [0, 1, 1, 0, 2],
    "example_index": 2,
}


def _collator(**overrides) -> DataCollatorForTrajectory:
    values = dict(mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS, block_size=BLOCK, mask_ratios=(0.5,))
    values.update(overrides)
    return DataCollatorForTrajectory(**values)


def _completed(row: dict, origin: int) -> tuple[list[int], int]:
    """The completion completed to a block boundary (blocks counted from ``origin``): with EOS after a completion that
    ends with EOS, with the mask token (open slots, never trained) after one cut without EOS; and how many of its
    tokens may be trained on with ``num_eos`` trained EOS tokens (returned as the number of real tokens)."""
    completion = list(row["completion_ids"])
    fill = EOS if completion[-1] == EOS else MASK
    while (origin + len(completion)) % BLOCK:
        completion.append(fill)
    return completion, len(row["completion_ids"])


def _expected_layout(row: dict, masked: list[int], num_eos: int = 2):
    """The layout of one row built token by token from docs/training.md, "The training layout" (no padding)."""
    prompt = list(row["prompt_ids"])
    p = len(prompt)
    completion, real = _completed(row, p)
    ended = row["completion_ids"][-1] == EOS
    tail = p % BLOCK
    noisy = [MASK if j in masked or j >= real and not ended else tok for j, tok in enumerate(completion)]
    ids = prompt + completion + prompt[p - tail :] + noisy
    positions = list(range(p + len(completion))) + list(range(p - tail, p + len(completion)))
    streams = [CLEAN] * (p + len(completion)) + [NOISY] * (tail + len(completion))
    labels = prompt[p - tail :] + completion
    trained = [j < real + (num_eos if ended else 0) for j in range(len(completion))]
    loss = [False] * tail + [j in masked and trained[j] for j in range(len(completion))]
    return ids, positions, streams, labels, loss


def _left_pad(values: list, length: int, fill) -> list:
    return [fill] * (length - len(values)) + values


def _rule(q_block, q_stream, q_valid, k_block, k_stream, k_valid, same):
    """The attention rule of docs/training.md, "The training layout", for one (query, key) pair."""
    if not q_valid:
        return same
    if not k_valid:
        return False
    if q_stream == CLEAN:
        return k_stream == CLEAN and k_block <= q_block
    if k_stream == CLEAN:
        return k_block < q_block
    return k_block == q_block


def test_block_causal_layout_entry_by_entry():
    batch = _collator()([ROW_A, ROW_B])
    # r = 0.5, latest-decoded first. A: training block 1 = j0..2 (steps 0,0,1) → j2; block 2 = j3..6 (steps 2,3,2,
    # EOS) → EOS j6 and step-3 j4. B (cut without EOS): block 0 = j0,1 (1,0) → j0; block 1 = j2..5 (2,3,3,2) → j3,j4;
    # block 2 = j6 (step 4) and the open slots j7..9, which are masked in every state and outside the ranking → none.
    masked = {0: [2, 4, 6], 1: [0, 3, 4]}
    total, window = 24, 12
    assert batch["input_ids"].shape == (2, total)
    assert batch["logits_to_keep"] == window
    for row_index, row in enumerate((ROW_A, ROW_B)):
        ids, positions, streams, labels, loss = _expected_layout(row, masked[row_index])
        assert batch["input_ids"][row_index].tolist() == _left_pad(ids, total, PAD)
        assert batch["position_ids"][row_index].tolist() == _left_pad(positions, total, 0)
        assert batch["stream_ids"][row_index].tolist() == _left_pad(streams, total, CLEAN)
        assert batch["valid"][row_index].tolist() == _left_pad([True] * len(ids), total, False)
        assert batch["block_ids"][row_index].tolist() == [p // BLOCK for p in _left_pad(positions, total, 0)]
        window_ids = _left_pad(ids, total, PAD)[total - window :]
        expected_labels = window_ids[: window - len(labels)] + labels
        assert batch["labels"][row_index].tolist() == expected_labels
        assert batch["loss_mask"][row_index].tolist() == _left_pad(loss, window, False)
    assert batch["example_index"].tolist() == [0, 1]
    assert batch["mask_ratio"].tolist() == [0.5, 0.5]

    # The attention mask, entry by entry, from the rule.
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, total, total) and mask.dtype == torch.bool
    for r in range(2):
        blocks, streams, valid = (batch[k][r].tolist() for k in ("block_ids", "stream_ids", "valid"))
        for q in range(total):
            for k in range(total):
                expected = _rule(blocks[q], streams[q], valid[q], blocks[k], streams[k], valid[k], q == k)
                assert bool(mask[r, 0, q, k]) == expected, (r, q, k)
    assert bool(mask.any(dim=-1).all()), "a query row sees no key"


def test_path_weights_hand_values():
    batch = _collator()([ROW_A, ROW_B])
    weights = batch["path_weights"]
    assert weights.dtype == torch.float32
    # A: window = [pad ×4, tail, j0..j6]; block 1 steps 0,0,1 → S=2 → 1, 1, .5; block 2 steps 2,3,2 → S=2 → 1, .5, 1;
    # the appended EOS takes the last step's weight 1/S = .5.
    assert weights[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0.5, 1, 0.5, 1, 0.5]
    # B: window = [tail ×2, j0..j9]; block 0 steps 1,0 → .5, 1; block 1 steps 2,3,3,2 → 1,.5,.5,1; block 2 step 4 → S=1;
    # the open slots j7..j9 after the cut have no target and no weight.
    assert weights[1].tolist() == [0, 0, 0.5, 1, 1, 0.5, 0.5, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("num_eos", [0, 1, 2, 5])
def test_eos_completion_and_num_eos_tokens(num_eos):
    batch = _collator(mask_ratios=(1.0,), num_eos_tokens=num_eos)([ROW_A, ROW_B])
    # r = 1 masks every completion token; the loss covers the real ones and the first num_eos appended EOS.
    # A ends with the teacher's EOS and appends 1 EOS (5 + 6 = 11 → 12). B was cut without EOS: its block is completed
    # with 3 open slots (2 + 7 = 9 → 12) that hold the mask token and are never trained, whatever num_eos is.
    loss = batch["loss_mask"]
    assert loss[0].tolist() == [False] * 5 + [True] * 6 + [min(num_eos, 1) > 0]
    assert loss[1].tolist() == [False] * 2 + [True] * 7 + [False] * 3
    assert EOS not in batch["labels"][1].tolist() and EOS not in batch["input_ids"][1].tolist()
    window = batch["input_ids"][:, -batch["logits_to_keep"] :]
    assert window[1].tolist() == [16, 17] + [MASK] * 10
    # A completion that already ends on a block boundary gets no EOS.
    row = {"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 10, 11, 12], "step_map": [0, 0, 1, 1, 2]}
    row["example_index"] = 4
    single = _collator(mask_ratios=(1.0,), num_eos_tokens=num_eos)([row])
    assert single["logits_to_keep"] == 3 + 5
    assert EOS not in single["input_ids"][0].tolist()


@pytest.mark.parametrize("layout", ["dense", "eager", "flex"])
def test_attention_layouts(layout):
    dense = _collator()([ROW_A, ROW_B, ROW_C])
    batch = _collator(attention_layout=layout)([ROW_A, ROW_B, ROW_C])
    for key in ("input_ids", "position_ids", "block_ids", "stream_ids", "valid", "labels", "loss_mask"):
        assert torch.equal(batch[key], dense[key])
    if layout == "dense":
        assert batch["attention_mask"].dtype == torch.bool
    elif layout == "eager":
        assert batch["attention_mask"].dtype == torch.float32
        assert torch.equal(batch["attention_mask"], to_additive_mask(dense["attention_mask"], torch.float32))
        assert float(batch["attention_mask"].max()) == 0.0
    else:
        assert "attention_mask" not in batch
        block_mask = layout_block_mask(batch["block_ids"], batch["stream_ids"], batch["valid"])
        size, length = batch["input_ids"].shape
        rows = torch.arange(size)[:, None, None]
        queries, keys = torch.arange(length)[None, :, None], torch.arange(length)[None, None, :]
        grid = block_mask.mask_mod(rows, torch.zeros((), dtype=torch.long), queries, keys)
        assert block_mask.shape == (size, 1, length, length)
        # Equal on every real query row (padding queries' outputs are never read; each sees at least one key).
        real_queries = batch["valid"][:, :, None].expand(-1, -1, length)
        assert torch.equal(grid[real_queries], dense["attention_mask"][:, 0][real_queries])
        assert bool(grid.any(dim=-1).all())


def test_bidirectional_layout():
    collator = _collator(family="bidirectional", seed=5)  # seed 5: current block c = first for A, last for B
    batch = collator([ROW_A, ROW_B])
    # Blocks start at the completion (the response grid of bidirectional decoding): A (C = 6, ends with EOS) gets
    # 2 EOS → C' = 8; B (C = 7, cut) gets 1 open slot → C' = 8.
    assert batch["attention_mask"].shape == (2, 13) and batch["attention_mask"].dtype == torch.int64
    assert torch.equal(batch["attention_mask"].bool(), batch["valid"])
    assert batch["logits_to_keep"] == 8
    # Row A: [prompt (5) ; x_t (8)]; row B: [pad ×3 ; prompt (2) ; x_t (8)].
    assert batch["input_ids"][0, :5].tolist() == ROW_A["prompt_ids"]
    assert batch["input_ids"][1, 3:5].tolist() == ROW_B["prompt_ids"]
    assert batch["position_ids"].tolist() == [list(range(13)), [0, 0, 0] + list(range(10))]
    # Step cut: blocks before the current block c visible, c in the r = 0.5 state, later blocks fully masked.
    current = sample_current_block(torch.tensor([0, 1]), 5, torch.tensor([2, 2]))
    assert current.tolist() == [0, 1]
    # masked j per training block at r = 0.5: A block 0 = j0..3 (steps 0,0,1,2) → j2, j3; block 1 = j4..7 (steps 3, 2,
    # EOS, EOS) → j6, j7. B block 0 (steps 1,0,2,3) → j2, j3; block 1 = j4..6 (steps 3,2,4; j7 open) → j6.
    state = {0: {0: [2, 3], 1: [6, 7]}, 1: {0: [2, 3], 1: [6]}}
    for r, row in enumerate((ROW_A, ROW_B)):
        c = int(current[r])
        completion, real = _completed(row, 0)
        ended = row["completion_ids"][-1] == EOS
        expected_ids, expected_loss = [], []
        for j, token in enumerate(completion):
            block = j // BLOCK
            open_slot = j >= real and not ended
            masked = block > c or (block == c and j in state[r][block]) or open_slot
            expected_ids.append(MASK if masked else token)
            trained = j < real + (2 if ended else 0)
            expected_loss.append(block == c and j in state[r][block] and trained)
        assert batch["input_ids"][r, -8:].tolist() == expected_ids
        assert batch["loss_mask"][r].tolist() == expected_loss
        assert batch["labels"][r].tolist() == completion


def test_state_is_independent_of_batch_composition():
    for overrides in (
        {"mask_ratios": (1.0, 0.75, 0.5), "mask_ratio_power": 1.0, "random_token_ratio": 0.3, "vocab_size": VOCAB},
        {"state_sampling": "random"},
        {"family": "bidirectional", "mask_ratios": (0.75, 0.5), "mask_ratio_power": 0.0},
    ):
        collator = _collator(**overrides)
        rows = [dict(ROW_C, example_index=index) for index in range(12)]
        together = collator(rows)
        for index in (0, 5, 11):
            alone = collator([ROW_A, rows[index], ROW_B])
            for key in ("labels", "loss_mask", "path_weights"):
                width = together[key].shape[1]
                assert torch.equal(together[key][index], alone[key][1, -width:]), (overrides, key)
            length = together["input_ids"].shape[1]
            assert torch.equal(together["input_ids"][index], alone["input_ids"][1, -length:])
            assert together["mask_ratio"][index] == alone["mask_ratio"][1]
        # Different examples do get different states.
        window = together["input_ids"][:, -together["logits_to_keep"] :]
        assert len({tuple(w.tolist()) for w in window}) > 1


def test_random_state_sampling_masks_at_least_one_token():
    batch = _collator(state_sampling="random")([dict(ROW_A, example_index=i) for i in range(20)])
    assert bool(batch["loss_mask"].any(dim=1).all())
    assert len(set(batch["mask_ratio"].tolist())) > 1


def test_invalid_options():
    with pytest.raises(ValueError, match="family"):
        _collator(family="encoder")
    with pytest.raises(ValueError, match="vocab_size"):
        _collator(random_token_ratio=0.1)
    with pytest.raises(ValueError, match="prepare_trajectory_dataset"):
        _collator()([{"prompt_ids": [1], "completion_ids": [2]}])
    with pytest.raises(ValueError, match="differ in length"):
        _collator()([dict(ROW_A, step_map=[0, 1])])


def test_noisy_window_logits_equal_blockwise_forward_float64():
    model = tiny_qwen3(vocab_size=VOCAB, max_position_embeddings=128)
    rows = [ROW_A, ROW_B, ROW_C]
    collator = _collator(mask_ratios=(1.0, 0.75, 0.5), mask_ratio_power=0.0)
    batch = collator(rows)
    window = batch["logits_to_keep"]
    with torch.no_grad():
        logits = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=window,
        ).logits
    assert logits.shape == (3, window, VOCAB) and torch.isfinite(logits).all()
    checked = 0
    for r, row in enumerate(rows):
        prompt = list(row["prompt_ids"])
        p = len(prompt)
        tail = p % BLOCK
        row_window = batch["input_ids"][r, -window:].tolist()
        completion_len = len(_completed(row, p)[0])
        noisy = row_window[window - tail - completion_len :]  # prompt tail + x_t
        x0 = batch["labels"][r, window - completion_len :].tolist()
        clean = prompt + x0  # the plain clean sequence, positions 0 .. P + C' - 1
        for block in range(p // BLOCK, (p + completion_len) // BLOCK):
            start = block * BLOCK
            # [prompt ; x0 of the blocks before] + the noisy block, positions 0 .. (block + 1)·B − 1.
            block_tokens = noisy[start - (p - tail) : start - (p - tail) + BLOCK]
            sequence = torch.tensor([clean[:start] + block_tokens])
            positions = torch.arange(sequence.shape[1])
            blocks = positions // BLOCK
            mask = (blocks[None, :] <= blocks[:, None])[None, None]
            with torch.no_grad():
                direct = model(sequence, attention_mask=mask, position_ids=positions[None]).logits[0, start:]
            columns = window - tail - completion_len + (start - (p - tail)) + torch.arange(BLOCK)
            torch.testing.assert_close(logits[r, columns], direct, atol=1e-10, rtol=0)
            checked += 1
    assert checked == 2 + 3 + 2


def test_non_integer_ids_are_refused_naming_the_row():
    with pytest.raises(ValueError, match=r"Batch row 1: `completion_ids` must hold integers, got torch.float32"):
        _collator()([ROW_A, dict(ROW_B, completion_ids=[31.0, 32.5, 33.0, 34.0, 35.0, 36.0, 37.0])])
    with pytest.raises(ValueError, match=r"`mask_ratios\[1\]` must be a number >= 0.0 and <= 1.0, got nan"):
        _collator(mask_ratios=(0.5, float("nan")))
