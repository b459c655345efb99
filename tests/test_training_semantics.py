"""Training semantics from the references' descriptions: the official T3D trainer's random tokens and response-aligned
blocks, and dParallel's certainty-forcing loss as published (entropy of softmax(logits / 0.5), weight 2, a second
pass on the complementary mask, the two passes summed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from t3d_trl import T3DTrainer
from t3d_trl.collator import DataCollatorForTrajectory
from t3d_trl.masks import CLEAN, NOISY
from t3d_trl.objectives import ReferenceTerms, compute_objectives, student_request
from t3d_trl.statistics import window_statistics
from t3d_trl.testing import rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer

PAD, EOS, MASK, VOCAB = 0, 1, 39, 40
BLOCK = 4
# P = 5, C = 6 ending with EOS; teacher steps per completion token.
ROW = {
    "prompt_ids": [11, 12, 13, 14, 15],
    "completion_ids": [21, 22, 23, 24, 25, EOS],
    "step_map": [0, 0, 1, 2, 3, 2],
    "example_index": 0,
}


def _rule(q_block, q_stream, k_block, k_stream):
    if q_stream == CLEAN:
        return k_stream == CLEAN and k_block <= q_block
    return k_block < q_block if k_stream == CLEAN else k_block == q_block


def test_response_alignment_layout_by_hand():
    collator = DataCollatorForTrajectory(
        mask_token_id=MASK,
        pad_token_id=PAD,
        eos_token_id=EOS,
        block_size=BLOCK,
        mask_ratios=(0.5,),
        block_alignment="response",
    )
    batch = collator([ROW])
    # Blocks start at the response: block 0 = j0..j3, block 1 = j4, j5 (the EOS) and 2 appended EOS; no prompt tail in
    # the noisy stream. The prompt's blocks count backwards from its end: positions 0..4 → blocks -2, -1, -1, -1, -1.
    completion = [21, 22, 23, 24, 25, EOS, EOS, EOS]
    # r = 0.5, latest-decoded first: block 0 (steps 0,0,1,2) → j3, j2; block 1 (steps 3, 2, EOS, EOS) → j7, j6.
    noisy = [21, 22, MASK, MASK, 25, EOS, MASK, MASK]
    assert batch["input_ids"][0].tolist() == ROW["prompt_ids"] + completion + noisy
    assert batch["position_ids"][0].tolist() == list(range(13)) + list(range(5, 13))
    assert batch["block_ids"][0].tolist() == [-2, -1, -1, -1, -1] + [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4
    assert batch["stream_ids"][0].tolist() == [CLEAN] * 13 + [NOISY] * 8
    assert batch["logits_to_keep"] == 8
    assert batch["labels"][0].tolist() == completion
    assert batch["loss_mask"][0].tolist() == [False, False, True, True, False, False, True, True]
    blocks, streams = batch["block_ids"][0].tolist(), batch["stream_ids"][0].tolist()
    mask = batch["attention_mask"][0, 0]
    for q in range(21):
        for k in range(21):
            assert bool(mask[q, k]) == _rule(blocks[q], streams[q], blocks[k], streams[k]), (q, k)
    # a noisy block-1 query sees the prompt and clean block 0, not clean block 1, and its own noisy block only
    assert mask[17].tolist() == [True] * 9 + [False] * 8 + [True] * 4


def test_response_alignment_noisy_logits_equal_the_blockwise_forward_float64():
    model = tiny_qwen3(vocab_size=VOCAB, max_position_embeddings=128)
    collator = DataCollatorForTrajectory(
        mask_token_id=MASK,
        pad_token_id=PAD,
        eos_token_id=EOS,
        block_size=BLOCK,
        mask_ratios=(0.75,),
        block_alignment="response",
    )
    batch = collator([ROW])
    with torch.no_grad():
        logits = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=8,
        ).logits[0]
    prompt, x0 = ROW["prompt_ids"], batch["labels"][0].tolist()
    noisy = batch["input_ids"][0, -8:].tolist()
    for block in range(2):
        sequence = prompt + x0[: block * BLOCK] + noisy[block * BLOCK : (block + 1) * BLOCK]
        blocks = torch.tensor([(position - len(prompt)) // BLOCK for position in range(len(sequence))])
        attention = (blocks[None, :] <= blocks[:, None])[None, None]
        with torch.no_grad():
            direct = model(
                torch.tensor([sequence]), attention_mask=attention, position_ids=torch.arange(len(sequence))[None]
            ).logits[0, -BLOCK:]
        torch.testing.assert_close(logits[block * BLOCK : (block + 1) * BLOCK], direct, atol=1e-10, rtol=0)


def test_trainer_draws_random_tokens_from_the_tokenizer_vocabulary(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, ["abc", "hello wor", "xyz", "k"] * 4)
    args = tiny_t3d_config(tmp_path, random_token_ratio=0.1, max_steps=1, loss_type=["td"])
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32, vocab_size=64),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([dict(row, example_index=index) for index, row in enumerate(trainer.train_dataset)])
    window = batch["input_ids"][:, -batch["logits_to_keep"] :]
    masked = batch["loss_mask"]
    random = masked & (window != tokenizer.mask_token_id)
    special = torch.tensor(tokenizer.all_special_ids)
    assert bool((random.sum(1) >= 1).all())  # at least one random token per example
    assert bool((window[random] < tokenizer.vocab_size).all())  # never an embedding row past the tokenizer (64 > 48)
    assert not bool(torch.isin(window[random], special).any())  # never a special token


def _entropy(row, temperature):
    scaled = [value / temperature for value in row]
    top = max(scaled)
    z = sum(math.exp(v - top) for v in scaled)
    probs = [math.exp(v - top) / z for v in scaled]
    return -sum(p * math.log(p) for p in probs)


def _log_prob(row, index):
    top = max(row)
    return row[index] - top - math.log(sum(math.exp(v - top) for v in row))


def test_dparallel_loss_as_published_on_a_hand_case():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.4, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 2.0]]
    complement_logits = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 2.0, 0.0]]
    labels = [0, 1, 1, 0]
    state, complement = [True, True, False, False], [False, False, True, True]
    batch = {
        "labels": torch.tensor([labels]),
        "loss_mask": torch.tensor([state]),
        "complement_loss_mask": torch.tensor([complement]),
        "path_weights": torch.zeros(1, 4),
        "mask_ratio": torch.tensor([0.5]),
    }
    config = SimpleNamespace(
        loss_type=["dparallel"],
        loss_weights=[1.0],
        objective_kwargs={"dparallel": {"entropy_weight": 2.0, "entropy_temperature": 0.5}},
    )
    request = student_request(batch, config)
    assert request.extra == {"entropy": {"temperature": 0.5}}  # declared by the objective, at its own temperature
    loss, metrics = compute_objectives(
        window_statistics(torch.tensor([logits], dtype=torch.float64), request),
        batch,
        config,
        states={"complement": window_statistics(torch.tensor([complement_logits], dtype=torch.float64), request)},
    )

    def one_pass(values, mask):
        positions = [i for i in range(4) if mask[i]]
        ce = -sum(_log_prob(values[i], labels[i]) for i in positions) / len(positions)
        correct = [i for i in positions if max(range(3), key=lambda v: values[i][v]) == labels[i]]
        entropy = sum(_entropy(values[i], 0.5) for i in correct) / len(correct) if correct else 0.0
        return ce, entropy

    ce, h = one_pass(logits, state)  # position 0 correct, position 1 not
    ce_c, h_c = one_pass(complement_logits, complement)  # positions 2 and 3 both wrong (argmax 2 and 1)
    expected = ce + ce_c + 2.0 * (h + h_c)
    assert float(loss) == pytest.approx(expected, rel=1e-9)
    assert float(metrics["loss/entropy"]) == pytest.approx(h + h_c, rel=1e-6)  # metrics are float32
    assert h > 0 and h_c == 0.0  # the entropy term only where the student is already right


@pytest.mark.parametrize("complementary", [True, False])
def test_dparallel_trains_with_its_second_pass_and_logs_the_entropy(tmp_path, complementary):
    tokenizer = tiny_tokenizer()
    rows = rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, ["abc", "hello wor", "xyz", "k"])
    args = tiny_t3d_config(
        tmp_path,
        loss_type=["dparallel"],
        max_steps=2,
        mask_ratios=[0.5],
        objective_kwargs={"dparallel": {"complementary_masks": complementary}},
    )
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    forwards = []
    trainer.model.register_forward_pre_hook(lambda *a: forwards.append(1))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert "loss/entropy" in logs[0] and "loss/dparallel" in logs[0]
    assert len(forwards) == 2 * (2 if complementary else 1)


def test_redi_trains_rounds_on_the_models_own_outputs(tmp_path):
    from t3d_trl import patch_model, redi

    tokenizer = tiny_tokenizer()
    model = patch_model(tiny_qwen3(dtype=torch.float32), tokenizer, block_size=4, max_new_tokens=8)
    prompts = Dataset.from_list([{"prompt": p} for p in ["abc", "hello wor", "xyz", "k"]])
    seen = []
    original_init = T3DTrainer.__init__

    def spy(self, model, *args, train_dataset=None, **kwargs):
        seen.append((list(kwargs["args"].loss_type), list(train_dataset["completion_ids"])))
        original_init(self, model, *args, train_dataset=train_dataset, **kwargs)

    T3DTrainer.__init__ = spy
    try:
        before = [p.detach().clone() for p in model.parameters()]
        args = tiny_t3d_config(tmp_path, max_steps=6, learning_rate=5e-2)
        trained = redi(model, tokenizer, prompts, args, {"temperature": 0}, rounds=2, batch_size=2)
    finally:
        T3DTrainer.__init__ = original_init
    assert trained is model and len(seen) == 2
    assert all(loss == ["sft"] for loss, _ in seen)
    assert seen[0][1] != seen[1][1]  # greedy rollouts differ only because round 2 rolls out the trained model
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="rounds"):
        redi(model, tokenizer, prompts, tiny_t3d_config(tmp_path), rounds=0)


def test_ddo_logs_the_share_of_fake_tokens_equal_to_the_labels():
    labels = torch.tensor([[0, 1, 1, 0], [2, 2, 0, 1]])
    fake = torch.tensor([[0, 2, 1, 1], [2, 0, 0, 0]])  # row 0: 2 of 3 masked agree; row 1: 1 of 2 masked agree
    loss_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    batch = {"labels": labels, "loss_mask": loss_mask, "path_weights": torch.zeros(2, 4), "mask_ratio": torch.ones(2)}
    config = SimpleNamespace(
        loss_type=["ddo"], loss_weights=[1.0], logps_normalization="mean", beta=1.0, alpha=1.0, reference_temperature=0
    )
    reference = ReferenceTerms(fake, torch.zeros(2), torch.zeros(2))
    statistics = window_statistics(torch.randn(2, 4, 3, dtype=torch.float64), student_request(batch, config, reference))
    _, metrics = compute_objectives(statistics, batch, config, reference=reference)
    assert float(metrics["fake_agreement"]) == pytest.approx((2 / 3 + 1 / 2) / 2)
