"""Trajectories that cross blocks: states, layout, path weights, EOS fill, reference refresh and evaluation.

Every expectation here is written from the algorithm's description (docs/design.md), on hand-made teacher trajectories
whose completion spans several blocks, not from the library's code:

* a teacher rollout commits the blocks of its completion one after the other; ``step_map`` counts denoising steps over
  the whole completion, so the first step of the second block is not 0;
* a training state masks, in *every* training block, the ⌊r·n⌋ latest-decoded of its n completion tokens; the layout
  ``[prompt ; x0 ; x_t]`` noises every block of ``x_t`` independently, and the noisy block k sees the *clean* blocks
  < k (the teacher's final tokens, which is what the teacher had committed when it decoded block k) and itself only;
* hence the noisy stream's logits of block k must equal, in float64, those of the inference-time forward of block k
  (a prefix cache of the clean earlier blocks, then the noisy block), for every block, not only the first;
* path weights are ``w_i = (S − σ_i)/S`` with σ the *within-block* step; appended EOS count as decoded last.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from datasets import Dataset
from transformers import DynamicCache, Qwen3ForCausalLM

from t3d_trl import T3DTrainer, patch_model
from t3d_trl.collator import DataCollatorForTrajectory
from t3d_trl.data import prepare_trajectory_dataset
from t3d_trl.evaluation import DecodingSetting, evaluate_few_step
from t3d_trl.generation import DiffusionGenerationConfig
from t3d_trl.masks import CLEAN, NOISY
from t3d_trl.rollout import generate_trajectories
from t3d_trl.testing import tiny_qwen3, tiny_qwen3_config, tiny_t3d_config, tiny_tokenizer

PAD, EOS, MASK = 0, 1, 2  # the tiny tokenizer's special ids
VOCAB = 48
TEACHER_BLOCK = 4
ORDER = (2, 0, 3, 1)  # the teacher's decode order inside a block of 4: position 1 first, then 3, 0, 2


# ---------------------------------------------------------------------------------------------------------------------
# Hand-made teacher rollouts
# ---------------------------------------------------------------------------------------------------------------------


def teacher_rollout(
    prompt_len: int,
    completion_len: int,
    tokens_per_step: int = 1,
    ends_with_eos: bool = True,
    example_index: int = 0,
    first_token: int = 10,
) -> dict:
    """A teacher rollout with blocks of 4 on the absolute grid, each block decoded in the order ``ORDER`` (positions
    absent from a partial block are skipped), ``tokens_per_step`` tokens per step, steps counted over the whole
    completion. The completion's last token is EOS when ``ends_with_eos`` (otherwise it was cut at the token limit)."""
    prompt = [first_token + 20 + (i % 8) for i in range(prompt_len)]
    completion = [first_token + (i % 20) for i in range(completion_len)]
    if ends_with_eos:
        completion[-1] = EOS
    positions = range(prompt_len, prompt_len + completion_len)
    steps = [0] * completion_len
    step = 0
    for block in sorted({p // TEACHER_BLOCK for p in positions}):
        present = [p for p in positions if p // TEACHER_BLOCK == block]
        present.sort(key=lambda p: ORDER[p % TEACHER_BLOCK])
        for rank, p in enumerate(present):
            steps[p - prompt_len] = step + rank // tokens_per_step
        step += math.ceil(len(present) / tokens_per_step)
    return {"prompt_ids": prompt, "completion_ids": completion, "step_map": steps, "example_index": example_index}


def collator(block_size: int, ratio: float = 1.0, **overrides) -> DataCollatorForTrajectory:
    values = {
        "mask_token_id": MASK,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "block_size": block_size,
        "mask_ratios": (ratio,),
    }
    values.update(overrides)
    return DataCollatorForTrajectory(**values)


def row_layout(batch: dict, r: int) -> dict:
    """One row of a collated batch as a dictionary ``(stream, position) -> column`` plus its per-column tensors."""
    valid = batch["valid"][r]
    columns = {}
    for column in torch.nonzero(valid).flatten().tolist():
        key = (int(batch["stream_ids"][r, column]), int(batch["position_ids"][r, column]))
        assert key not in columns, f"two columns hold stream/position {key}"
        columns[key] = column
    return columns


def ended(row: dict) -> bool:
    return row["completion_ids"][-1] == EOS


def completed(row: dict, block_size: int) -> list[int]:
    """x0: the completion completed to a block boundary, with EOS after a completion that ended with EOS, with open
    slots (the mask token, never trained, always masked) after one cut at the token limit."""
    p, completion = len(row["prompt_ids"]), list(row["completion_ids"])
    fill = (-(p + len(completion))) % block_size
    return completion + [EOS if ended(row) else MASK] * fill


def expected_masked(row: dict, block_size: int, ratio: float) -> set[int]:
    """Completion indices masked by the state of ratio ``ratio``: per training block, the ⌊r·n⌋ latest-decoded of its
    n tokens with a target (appended EOS fill counts as decoded after every real token; ties: larger position later);
    the open slots after a cut completion are masked on top, outside the count."""
    p, steps = len(row["prompt_ids"]), list(row["step_map"])
    fill = (-(p + len(steps))) % block_size
    real = len(steps)
    steps += [max(steps) + 1] * fill
    ranked = len(steps) if ended(row) else real
    masked = set(range(ranked, len(steps)))
    for block in sorted({(p + j) // block_size for j in range(len(steps))}):
        members = [j for j in range(ranked) if (p + j) // block_size == block]
        members.sort(key=lambda j: (steps[j], j))
        count = math.floor(ratio * len(members) + 1e-9)
        masked |= set(members[len(members) - count :])
    return masked


# ---------------------------------------------------------------------------------------------------------------------
# (a) trajectory states in every block
# ---------------------------------------------------------------------------------------------------------------------


def test_state_by_hand_three_blocks():
    """P = 8, a 12-token completion ending with EOS (3 teacher blocks), r = 1/2, training blocks of 4 and 8."""
    row = teacher_rollout(8, 12)
    # Block by block (completion index: step): [0:2 1:0 2:3 3:1] [4:6 5:4 6:7 7:5] [8:10 9:8 10:11 11:9].
    assert row["step_map"] == [2, 0, 3, 1, 6, 4, 7, 5, 10, 8, 11, 9]
    x0 = row["completion_ids"]
    assert x0 == list(range(10, 21)) + [EOS]
    # B = 4: the 2 latest-decoded tokens of *every* block are masked: indices 0, 2 | 4, 6 | 8, 10.
    batch = collator(4, 0.5)([row])
    columns = row_layout(batch, 0)
    noisy = [int(batch["input_ids"][0, columns[(NOISY, 8 + j)]]) for j in range(12)]
    clean = [int(batch["input_ids"][0, columns[(CLEAN, 8 + j)]]) for j in range(12)]
    M = MASK
    assert noisy == [M, 11, M, 13, M, 15, M, 17, M, 19, M, EOS]
    assert clean == x0  # the clean stream holds the teacher's final tokens of every block
    assert [int(batch["input_ids"][0, columns[(CLEAN, j)]]) for j in range(8)] == row["prompt_ids"]
    assert (NOISY, 7) not in columns  # a prompt that ends on a block boundary has no noisy tail
    # B = 8: 8 + 12 = 20 → 4 EOS appended (indices 12..15, decoded last). Block 1 = indices 0..7 (steps 2,0,3,1,6,4,
    # 7,5): the 4 latest are 4..7, the whole second teacher block; block 2 = 8..15: the 4 latest are the EOS fill.
    batch = collator(8, 0.5)([row])
    columns = row_layout(batch, 0)
    noisy = [int(batch["input_ids"][0, columns[(NOISY, 8 + j)]]) for j in range(16)]
    assert noisy == [10, 11, 12, 13, M, M, M, M, 18, 19, 20, EOS, M, M, M, M]


@pytest.mark.parametrize("prompt_len", [8, 6, 5])
@pytest.mark.parametrize("block_size", [4, 8])
@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.25])
@pytest.mark.parametrize("tokens_per_step", [1, 2])
def test_every_training_block_masks_its_latest_decoded_tokens(prompt_len, block_size, ratio, tokens_per_step):
    rows = [
        teacher_rollout(prompt_len, 13, tokens_per_step, example_index=0),
        teacher_rollout(prompt_len + 3, 9, tokens_per_step, ends_with_eos=False, example_index=1, first_token=12),
    ]
    batch = collator(block_size, ratio)(rows)
    window = batch["logits_to_keep"]
    for r, row in enumerate(rows):
        p, completion = len(row["prompt_ids"]), row["completion_ids"]
        columns = row_layout(batch, r)
        x0 = completed(row, block_size)
        length = len(x0)
        masked = expected_masked(row, block_size, ratio)
        for j in range(length):
            noisy_column, clean_column = columns[(NOISY, p + j)], columns[(CLEAN, p + j)]
            assert int(batch["input_ids"][r, clean_column]) == x0[j]
            assert int(batch["input_ids"][r, noisy_column]) == (MASK if j in masked else x0[j]), (r, j)
            label_column = noisy_column - (batch["input_ids"].shape[1] - window)
            assert int(batch["labels"][r, label_column]) == x0[j]
        # every block holding completion tokens is noised, not only the first or the last
        blocks = {(p + j) // block_size for j in range(length)}
        ranked = length if ended(row) else len(completion)  # open slots are outside the state's count
        for block in blocks:
            members = [j for j in range(ranked) if (p + j) // block_size == block]
            assert len(masked & set(members)) == math.floor(ratio * len(members) + 1e-9)
        # the prompt's tail (its tokens in the first decoded block) is copied, unmasked, into the noisy stream
        tail = p % block_size
        for position in range(p - tail, p):
            assert int(batch["input_ids"][r, columns[(NOISY, position)]]) == row["prompt_ids"][position]
        assert (NOISY, p - tail - 1) not in columns


def test_latest_decoded_state_is_a_state_of_the_teachers_trajectory():
    """With one token per step and r = (B − s)/B, the visible tokens of every block are those the teacher had
    committed after s steps of that block: a real intermediate state, in every block at once."""
    row = teacher_rollout(8, 12)
    p = 8
    for s in range(4):
        batch = collator(4, (4 - s) / 4)([row])
        columns = row_layout(batch, 0)
        for block in range(3):
            first_step = 4 * block  # steps are counted over the whole completion: block 2 starts at step 4
            for j in range(4 * block, 4 * block + 4):
                visible = int(batch["input_ids"][0, columns[(NOISY, p + j)]]) != MASK
                assert visible == (row["step_map"][j] < first_step + s)


# ---------------------------------------------------------------------------------------------------------------------
# (b) the attention layout of multi-block completions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len,block_size", [(8, 4), (6, 4), (5, 4), (8, 8), (6, 8), (13, 8)])
def test_noisy_block_sees_clean_earlier_blocks_and_itself_only(prompt_len, block_size):
    rows = [teacher_rollout(prompt_len, 14), teacher_rollout(prompt_len + 2, 7, example_index=1, first_token=11)]
    batch = collator(block_size, 0.75)(rows)
    mask = batch["attention_mask"][:, 0]
    for r in range(len(rows)):
        columns = row_layout(batch, r)
        by_column = {column: key for key, column in columns.items()}
        for (stream, position), column in columns.items():
            block = position // block_size
            if stream == NOISY:
                expected = {(CLEAN, q) for q in range(block * block_size)} | {
                    (NOISY, q) for q in range(block * block_size, (block + 1) * block_size) if (NOISY, q) in columns
                }
            else:
                expected = {(CLEAN, q) for q in range((block + 1) * block_size) if (CLEAN, q) in columns}
            seen = {by_column[k] for k in torch.nonzero(mask[r, column]).flatten().tolist() if k in by_column}
            assert seen == expected, (r, stream, position)
            # and no padding column is visible from a real query
            assert all(k in by_column for k in torch.nonzero(mask[r, column]).flatten().tolist())


def test_noisy_logits_of_a_block_depend_on_clean_earlier_blocks_only():
    """Functional form of the layout: perturbing the noisy copy of another block, or a clean block at or after k,
    leaves block k's noisy logits unchanged; perturbing a clean earlier block changes them."""
    model = tiny_qwen3(vocab_size=VOCAB)
    row = teacher_rollout(6, 14)
    batch = collator(4, 0.75)([row])
    columns = row_layout(batch, 0)

    def noisy_logits(input_ids):
        with torch.no_grad():
            return model(input_ids, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits[
                0
            ]

    base = noisy_logits(batch["input_ids"])
    p = 6
    for block in (1, 2, 3, 4):  # completion positions 6..19 lie in blocks 1..4
        block_columns = [columns[(NOISY, q)] for q in range(4 * block, 4 * block + 4) if (NOISY, q) in columns]
        for stream, other in ((NOISY, b) for b in (1, 2, 3, 4) if b != block):
            ids = batch["input_ids"].clone()
            for q in range(max(4 * other, p), 4 * other + 4):
                ids[0, columns[(stream, q)]] = 40
            assert torch.equal(noisy_logits(ids)[block_columns], base[block_columns])
        for other in range(block, 5):  # clean blocks at or after k are invisible
            ids = batch["input_ids"].clone()
            for q in range(max(4 * other, p), 4 * other + 4):
                ids[0, columns[(CLEAN, q)]] = 40
            assert torch.equal(noisy_logits(ids)[block_columns], base[block_columns])
        if block > 1:  # the clean previous block is visible
            ids = batch["input_ids"].clone()
            ids[0, columns[(CLEAN, 4 * block - 1)]] = 40
            assert not torch.allclose(noisy_logits(ids)[block_columns], base[block_columns])


# ---------------------------------------------------------------------------------------------------------------------
# (a)+(b) the strongest check: training logits = inference-time block forward, every block, float64
# ---------------------------------------------------------------------------------------------------------------------


def blockwise_inference_logits(model, prompt: list[int], x0: list[int], noisy: list[int], block_size: int):
    """Logits of every decoded block as inference computes them: block by block, the clean earlier blocks are stored
    in a prefix KV cache (each clean block attending to the cache and to itself), then the noisy block is run against
    the cache without being stored. Returns ``{position: logits}`` for the completion positions."""
    p = len(prompt)
    clean = prompt + x0
    first = p // block_size
    last = (len(clean) - 1) // block_size
    cache = DynamicCache(config=model.config)
    stored = 0
    out = {}
    for block in range(first, last + 1):
        start, end = block * block_size, (block + 1) * block_size
        # store the clean tokens of the blocks before this one (whole prompt blocks first, then decoded blocks)
        while stored < start:
            chunk_end = min(start, (stored // block_size + 1) * block_size)
            ids = torch.tensor([clean[stored:chunk_end]])
            positions = torch.arange(stored, chunk_end)
            visible = torch.ones(1, 1, chunk_end - stored, chunk_end, dtype=torch.bool)  # cache + its own block
            with torch.no_grad():
                model(ids, attention_mask=visible, position_ids=positions[None], past_key_values=cache, use_cache=True)
            stored = chunk_end
        # the noisy block: the prompt's tail (if any) and the state of the completion's tokens of this block
        tokens = [clean[q] if q < p else noisy[q - p] for q in range(start, min(end, len(clean)))]
        positions = torch.arange(start, start + len(tokens))
        visible = torch.ones(1, 1, len(tokens), start + len(tokens), dtype=torch.bool)
        with torch.no_grad():
            logits = model(
                torch.tensor([tokens]),
                attention_mask=visible,
                position_ids=positions[None],
                past_key_values=cache,
                use_cache=True,
            ).logits[0]
        cache.crop(-len(tokens))  # the noisy block is never stored
        for i, q in enumerate(range(start, start + len(tokens))):
            if q >= p:
                out[q] = logits[i]
    return out


@pytest.mark.parametrize("prompt_len,block_size", [(8, 4), (6, 4), (5, 4), (8, 8), (6, 8), (13, 8)])
@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.25])
def test_training_logits_equal_cached_block_forward_in_every_block(prompt_len, block_size, ratio):
    model = tiny_qwen3(vocab_size=VOCAB)  # float64
    rows = [
        teacher_rollout(prompt_len, 15),
        teacher_rollout(prompt_len + 1, 10, tokens_per_step=2, example_index=1, ends_with_eos=False, first_token=13),
    ]
    batch = collator(block_size, ratio)(rows)
    with torch.no_grad():
        logits = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    checked_blocks = set()
    for r, row in enumerate(rows):
        columns = row_layout(batch, r)
        p = len(row["prompt_ids"])
        length = batch["valid"][r].sum().item()
        c_full = (length - p - p % block_size) // 2
        x0 = [int(batch["input_ids"][r, columns[(CLEAN, p + j)]]) for j in range(c_full)]
        noisy = [int(batch["input_ids"][r, columns[(NOISY, p + j)]]) for j in range(c_full)]
        reference = blockwise_inference_logits(model, list(row["prompt_ids"]), x0, noisy, block_size)
        assert sorted(reference) == list(range(p, p + c_full))
        for q, expected in reference.items():
            torch.testing.assert_close(logits[r, columns[(NOISY, q)]], expected, atol=1e-12, rtol=0)
            checked_blocks.add((r, q // block_size))
    # several blocks per row were compared, including every block after the first
    assert len([b for b in checked_blocks if b[0] == 0]) >= 2 and len([b for b in checked_blocks if b[0] == 1]) >= 2


@pytest.mark.parametrize("prompt", ["abcdefgh", "hello "])  # P = 8 (block aligned) and P = 6 (a tail of 2)
def test_rollout_states_reproduce_the_teachers_own_forwards(prompt):
    """End to end: roll a teacher out (one token per step, blocks of 4, no EOS so the completion spans 3-4 blocks),
    record the logits of every forward the decoding engine ran, then collate its trajectory at r = 1, 3/4, 1/2, 1/4:
    the student's noisy logits of *every* block equal the teacher's own forward at that state (float64), and the path
    weights are those of the within-block step."""
    tokenizer = tiny_tokenizer()
    model = patch_model(tiny_qwen3(vocab_size=VOCAB, seed=3), mask_token_id=MASK, pad_token_id=PAD)  # no EOS
    captured = []

    def hook(module, args, kwargs, output):
        ids, positions = kwargs["input_ids"], kwargs["position_ids"]
        captured.append((tuple(positions[0, -4:].tolist()), tuple(ids[0, -4:].tolist()), output.logits[0, -4:].clone()))

    config = DiffusionGenerationConfig(
        block_size=4,
        steps_per_block=4,
        max_new_tokens=12 + (8 - len(prompt)),
        mask_token_id=MASK,
        eos_token_id=None,
        pad_token_id=PAD,
    )
    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        rollouts = generate_trajectories(
            model, tokenizer, Dataset.from_list([{"prompt": prompt}]), config, batch_size=1, progress=False
        )
    finally:
        handle.remove()
    dataset, _ = prepare_trajectory_dataset(rollouts, tokenizer)
    row = dataset[0]
    p, completion, steps = len(row["prompt_ids"]), row["completion_ids"], row["step_map"]
    assert (p + len(completion)) % 4 == 0 and len(completion) >= 12  # several whole blocks, no EOS fill
    first_block = p // 4
    blocks = sorted({(p + j) // 4 for j in range(len(completion))})
    for block in blocks:  # steps count over the whole completion: block k starts where block k - 1 ended
        members = [j for j in range(len(completion)) if (p + j) // 4 == block]
        steps_before = min(steps[j] for j in members)
        assert sorted(steps[j] for j in members) == list(range(steps_before, steps_before + len(members)))
        assert block == first_block or steps_before > 0
    found = 0
    for ratio in (1.0, 0.75, 0.5, 0.25):
        batch = collator(4, ratio)([row])
        with torch.no_grad():
            logits = model(
                batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
            ).logits[0]
        columns = row_layout(batch, 0)
        for block in range(first_block, (p + len(completion)) // 4):
            positions = tuple(range(4 * block, 4 * block + 4))
            ids = tuple(int(batch["input_ids"][0, columns[(NOISY, q)]]) for q in positions)
            if MASK not in ids:
                continue  # nothing masked: no state to denoise (the teacher stored this block instead)
            matches = [c for c in captured if c[0] == positions and c[1] == ids]
            assert matches, f"the teacher never ran block {block} in state {ids}"
            student = torch.stack([logits[columns[(NOISY, q)]] for q in positions])
            torch.testing.assert_close(student, matches[0][2], atol=1e-12, rtol=0)
            found += 1
        # w_i = (S − σ_i)/S with σ the within-block step (one token per step: S = number of steps of the block)
        window = batch["logits_to_keep"]
        offset = batch["input_ids"].shape[1] - window
        for j in range(len(completion)):
            members = [i for i in range(len(completion)) if (p + i) // 4 == (p + j) // 4]
            sigma = steps[j] - min(steps[i] for i in members)
            s = max(steps[i] for i in members) - min(steps[i] for i in members) + 1
            weight = float(batch["path_weights"][0, columns[(NOISY, p + j)] - offset])
            assert weight == pytest.approx((s - sigma) / s)
    assert found >= 3 * 3


# ---------------------------------------------------------------------------------------------------------------------
# (c) path weights with the within-block step
# ---------------------------------------------------------------------------------------------------------------------


def weights_by_index(batch: dict, r: int, row: dict) -> list[float]:
    columns = row_layout(batch, r)
    offset = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    p = len(row["prompt_ids"])
    count = sum(1 for (stream, q) in columns if stream == NOISY and q >= p)
    return [float(batch["path_weights"][r, columns[(NOISY, p + j)] - offset]) for j in range(count)]


def test_path_weights_by_hand_one_token_per_step():
    row = teacher_rollout(8, 12)  # steps [2,0,3,1] [6,4,7,5] [10,8,11,9]
    w = weights_by_index(collator(4)([row]), 0, row)
    # σ = within-block step: [2,0,3,1] in every block (block 2's first-decoded token has step 4 but σ = 0)
    expected_block = [(4 - s) / 4 for s in (2, 0, 3, 1)]  # [.5, 1, .25, .75]
    assert w == expected_block * 3
    # training blocks of 8 over the teacher's blocks of 4: σ counts over the training block, S = 8 steps; the 4
    # appended EOS (8 + 12 = 20 → 24) take the last step's weight 1/S
    w8 = weights_by_index(collator(8)([row]), 0, row)
    assert w8[:8] == [(8 - s) / 8 for s in (2, 0, 3, 1, 6, 4, 7, 5)]
    assert w8[8:12] == [(4 - s) / 4 for s in (2, 0, 3, 1)]  # block 2 holds one teacher block: S = 4
    assert w8[12:] == [0.25] * 4


def test_path_weights_by_hand_two_tokens_per_step_and_eos_fill():
    row = teacher_rollout(8, 10, tokens_per_step=2)
    # blocks of 4 in the order ORDER, 2 per step: [1,0,1,0] [3,2,3,2] [4,4] (the last block holds indices 8, 9)
    assert row["step_map"] == [1, 0, 1, 0, 3, 2, 3, 2, 4, 4]
    w = weights_by_index(collator(4)([row]), 0, row)
    # S = 2 in the first two blocks; the last block has one step (S = 1) and its 2 EOS fill take weight 1/S = 1
    assert w == [0.5, 1, 0.5, 1, 0.5, 1, 0.5, 1, 1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------------------------------
# (d) the EOS fill and which tokens are trained
# ---------------------------------------------------------------------------------------------------------------------


def trained_indices(batch: dict, r: int, row: dict) -> list[int]:
    columns = row_layout(batch, r)
    offset = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    p = len(row["prompt_ids"])
    count = sum(1 for (stream, q) in columns if stream == NOISY and q >= p)
    return [j for j in range(count) if bool(batch["loss_mask"][r, columns[(NOISY, p + j)] - offset])]


@pytest.mark.parametrize("num_eos", [0, 1, 2])
def test_eos_fill_of_a_finished_completion(num_eos):
    """A completion that ended (its last token is the teacher's EOS) mid-block: EOS fill completes the last block
    only, the first ``num_eos`` fill tokens are trained, every teacher token of every block is trained at r = 1."""
    row = teacher_rollout(8, 10)  # 8 + 10 = 18 → 2 EOS appended (indices 10, 11)
    batch = collator(4, 1.0, num_eos_tokens=num_eos)([row])
    columns = row_layout(batch, 0)
    assert [int(batch["input_ids"][0, columns[(CLEAN, 8 + j)]]) for j in range(12)] == row["completion_ids"] + [EOS] * 2
    assert (CLEAN, 20) not in columns
    assert trained_indices(batch, 0, row) == list(range(10 + num_eos))
    # a finished completion that ends on a block boundary gets no fill, and its own EOS is trained
    aligned = teacher_rollout(8, 12)
    batch = collator(4, 1.0, num_eos_tokens=num_eos)([aligned])
    assert batch["logits_to_keep"] == 12 and trained_indices(batch, 0, aligned) == list(range(12))


def test_truncated_block_aligned_completion_gets_no_eos():
    row = teacher_rollout(8, 12, ends_with_eos=False)  # cut at max_new_tokens = 12: no EOS anywhere
    batch = collator(4, 1.0)([row])
    assert EOS not in batch["input_ids"][0].tolist()
    assert trained_indices(batch, 0, row) == list(range(12))


def test_truncated_completion_gets_no_eos_targets():
    """A completion cut at the token limit (no EOS) that does not end on a block boundary: the teacher never said the
    answer ends there, so the slots that complete its block are not trained as EOS targets (docs/design.md; the
    official ``post_num`` applies only when the completion ended)."""
    row = teacher_rollout(8, 10, ends_with_eos=False)  # e.g. max_new_tokens = 10: 18 → 2 fill positions
    batch = collator(4, 1.0, num_eos_tokens=2)([row])
    assert trained_indices(batch, 0, row) == list(range(10))


# ---------------------------------------------------------------------------------------------------------------------
# (e) the reference refresh on multi-block data
# ---------------------------------------------------------------------------------------------------------------------


def test_ddo_is_log_two_after_every_refresh_on_multi_block_trajectories(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = []
    for index, (p, c, tps, eos) in enumerate(
        [
            (8, 12, 1, True),
            (6, 14, 1, True),
            (8, 9, 2, False),
            (5, 15, 2, True),
            (8, 16, 1, False),
            (7, 11, 1, True),
            (8, 10, 2, True),
            (9, 13, 1, True),
        ]
    ):
        row = teacher_rollout(p, c, tps, ends_with_eos=eos, example_index=index, first_token=10 + index)
        row.pop("example_index")
        rows.append({**row, "block_size": TEACHER_BLOCK, "steps_per_block": TEACHER_BLOCK // tps})
    trajectories = Dataset.from_list(rows)
    args = tiny_t3d_config(tmp_path, max_steps=7, ref_model_sync_steps=3, block_size=4)
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 7
    for log in logs:
        assert log["num_masked_tokens"] > 8  # several blocks per example are masked at once
        if (log["step"] - 1) % 3 == 0:  # θ = θ_ref on the step after each refresh (and the first)
            assert log["loss/real"] == pytest.approx(math.log(2), abs=1e-6)
            assert log["loss/fake"] == pytest.approx(0.5 * math.log(2), abs=1e-6)
            assert log["margins/real"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert abs(log["margins/real"]) > 1e-6


def test_sequence_logps_average_over_every_block(tmp_path):
    """log p(x0|x_t) is the mean over the masked tokens of *all* blocks, each from its own block's cached forward."""
    tokenizer = tiny_tokenizer()
    model = tiny_qwen3(vocab_size=VOCAB)
    row = teacher_rollout(6, 13)
    plain = dict(row)
    plain.pop("example_index")
    trajectories = Dataset.from_list([{**plain, "block_size": 4, "steps_per_block": 4}])
    args = tiny_t3d_config(
        tmp_path, max_steps=1, loss_type=["td"], block_size=4, per_device_train_batch_size=1, mask_ratios=[0.5]
    )
    trainer = T3DTrainer(model, args=args, train_dataset=trajectories, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    columns = row_layout(batch, 0)
    loss = trainer.compute_loss(model, {k: v for k, v in batch.items()})
    c_full = 14  # 6 + 13 = 19 → 1 EOS appended
    x0 = [int(batch["input_ids"][0, columns[(CLEAN, 6 + j)]]) for j in range(c_full)]
    noisy = [int(batch["input_ids"][0, columns[(NOISY, 6 + j)]]) for j in range(c_full)]
    reference = blockwise_inference_logits(model, list(row["prompt_ids"]), x0, noisy, 4)
    masked = [j for j in range(c_full) if noisy[j] == MASK and j < 13 + args.num_eos_tokens]
    assert {(6 + j) // 4 for j in masked} == {1, 2, 3, 4}
    logps = [torch.log_softmax(reference[6 + j], -1)[x0[j]] for j in masked]
    assert float(loss.detach()) == pytest.approx(-float(torch.stack(logps).mean()), abs=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# (f) evaluation of multi-block answers
# ---------------------------------------------------------------------------------------------------------------------


class OracleQwen3(Qwen3ForCausalLM):
    """A Qwen3 model whose logits are replaced by a fixed answer read by absolute position (prompts of length 8):
    position 8 + j predicts ``ANSWER[j]`` (then junk), with confidences that rise to the right, so every block is
    decoded right to left and the answer's EOS lies inside the last block, followed by junk tokens."""

    ANSWER: ClassVar[list[int]] = []

    def forward(self, input_ids=None, position_ids=None, logits_to_keep=0, **kwargs):
        out = super().forward(input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)
        n = out.logits.shape[1]
        index = (position_ids[:, -n:] - 8).clamp(min=0)
        table = torch.tensor(self.ANSWER + [40] * 16)
        target = table[index.clamp(max=table.numel() - 1)]
        logits = torch.zeros_like(out.logits)
        logits.scatter_(-1, target[..., None], (10.0 + 0.1 * index.to(logits.dtype))[..., None])
        out.logits = logits
        return out


@pytest.mark.parametrize("block_size", [4, 8])
def test_evaluate_few_step_decodes_and_scores_multi_block_answers(block_size):
    tokenizer = tiny_tokenizer()
    answer = "abc-def-gh"  # 10 characters + EOS: 3 blocks of 4 (EOS at index 10), 2 blocks of 8
    OracleQwen3.ANSWER = tokenizer(answer)["input_ids"] + [EOS]
    model = OracleQwen3(tiny_qwen3_config()).eval()
    patch_model(model, tokenizer, block_size=block_size)
    tokenizer.padding_side = "left"
    dataset = Dataset.from_list(
        [
            {"prompt": "question", "reference": answer},
            {"prompt": "other q=", "reference": "abc-def-gi"},
            {"prompt": "3rd one=", "reference": answer},
        ]
    )
    settings = [DecodingSetting(block_size=block_size, steps_per_block=block_size // tps) for tps in (1, 2, 4)]
    results = evaluate_few_step(model, tokenizer, dataset, settings, batch_size=2, max_new_tokens=16, progress=False)
    blocks = -(-11 // block_size)
    for result, setting in zip(results, settings):
        assert result.num_correct == 2 and result.accuracy == pytest.approx(2 / 3)
        assert result.avg_gen_length == 11  # the answer and its EOS; the junk after EOS in the last block is dropped
        assert result.avg_nfe == blocks * setting.steps_per_block


# ---------------------------------------------------------------------------------------------------------------------
# The multi-block demo tasks
# ---------------------------------------------------------------------------------------------------------------------


def test_multiblock_scorers_on_handmade_answers():
    from t3d_trl.demo.tasks import is_sep_permutation, is_walk, is_wordplay

    assert is_wordplay("cat-tac-atc", "cat|dog") and is_wordplay(" dog-god-ogd ", "cat|dog")
    assert not is_wordplay("cat-tac-tca", "cat|dog") and not is_wordplay("cat-god-ogd", "cat|dog")
    assert is_walk("34323234545", "3>5") and is_walk("31356420235", "3>5") and is_walk("02020202020", "0>0")
    assert not is_walk("34323234543", "3>5") and not is_walk("3432323454", "3>4") and not is_walk("34323234555", "3>5")
    assert not is_walk("-1010101010", "0>0") and not is_walk("31356420535", "3>5")
    assert is_sep_permutation("c-a-e-b-d", "abcde") and not is_sep_permutation("c-a-e-b-b", "abcde")
    assert not is_sep_permutation("ca-e-b-d", "abcde") and not is_sep_permutation("c-a-e-b-d-f", "abcde")
    assert not is_sep_permutation("c-a-e-bd", "abcde")


def test_two_block_scorers_on_handmade_answers():
    from t3d_trl.demo.tasks import is_echo, is_pairs, is_short_walk, is_walk

    # echo: a permutation of the group, then the same permutation
    assert is_echo("gbd-gbd", "bdg") and is_echo(" bdg-bdg ", "bdg")
    assert not is_echo("gbd-dbg", "bdg")  # the second block reversed
    assert not is_echo("gbd-gdb", "bdg")  # the second block another permutation
    assert not is_echo("gbb-gbb", "bdg") and not is_echo("gba-gba", "bdg")  # a letter twice; one outside the group
    assert not is_echo("gbd", "bdg") and not is_echo("gbd-gbd-", "bdg") and not is_echo("gbdgbd", "bdg")
    # pairs: two pairs that together use each letter of the group once
    assert is_pairs("gb-de", "bdeg") and is_pairs("de-gb", "bdeg")
    assert not is_pairs("gb-gd", "bdeg")  # a letter of the first block again in the second
    assert not is_pairs("gbd-e", "bdeg") and not is_pairs("g-bde", "bdeg")  # pairs of the wrong size
    assert not is_pairs("gb-da", "bdeg") and not is_pairs("gb-de-", "bdeg") and not is_pairs("gbde", "bdeg")
    # walk7: seven digits from s to e, steps of 1 or 2; the eleven-digit walk is another task
    assert is_short_walk("3135645", "3>5") and is_short_walk("9879864", "9>4")
    assert not is_short_walk("3135865", "3>5")  # a step of 3 across the block boundary (5 -> 8)
    assert not is_short_walk("3135646", "3>5") and not is_short_walk("313564", "3>4")  # wrong end; too short
    assert not is_short_walk("31356420235", "3>5") and not is_walk("3135645", "3>5")


@pytest.mark.parametrize(
    ("name", "distinct_prompts"),
    [("wordplay", 5), ("walk", 100), ("perm5", 252), ("echo", 56), ("pairs", 70), ("walk7", 100)],
)
def test_multiblock_tasks_cross_blocks_and_are_multimodal(name, distinct_prompts):
    from t3d_trl.demo.tasks import TASKS, evaluation_prompts, training_pairs
    from t3d_trl.evaluation import get_scorer
    from t3d_trl.testing import task_tokenizer

    tokenizer = task_tokenizer()
    task = TASKS[name]
    assert task.blocks > 1
    scorer = get_scorer(task.scorer)
    rng = __import__("random").Random(0)
    answers: dict[str, set[str]] = {}
    references: dict[str, str] = {}
    for _ in range(2000):
        prompt, answer, reference = task.sample(rng)
        ids = tokenizer(prompt)["input_ids"]
        assert len(ids) == 8 and tokenizer.decode(ids) == prompt  # answers start on a block boundary (4 and 8)
        answer_ids = tokenizer(answer)["input_ids"]
        assert tokenizer.decode(answer_ids) == answer and 0 not in answer_ids  # every character is in the vocabulary
        # after 8 prompt tokens, the answer and its EOS fill `blocks` blocks of 4: more than one, so more than one
        # block of 4 and at least one block of 8
        assert 4 * (task.blocks - 1) < len(answer_ids) + 1 <= 4 * task.blocks
        assert scorer(answer, reference)
        answers.setdefault(prompt, set()).add(answer)
        references[prompt] = reference
    assert sum(len(a) > 1 for a in answers.values()) >= min(len(answers), 50)  # several valid answers per prompt
    # a choice in the first block constrains the later blocks: swapping the first block between two valid answers of
    # the same prompt gives an invalid answer
    prompt = max(answers, key=lambda p: len(answers[p]))
    reference = references[prompt]
    mixed = [a[:4] + b[4:] for a in answers[prompt] for b in answers[prompt] if a[:4] != b[:4]]
    assert mixed and sum(not scorer(m, reference) for m in mixed) > 0
    rows = evaluation_prompts(name, 20, seed=1)
    assert len({r["prompt"] for r in rows}) == len(rows) == min(20, distinct_prompts)
    assert all(r["task"] == name for r in training_pairs([name], 5, seed=2))
