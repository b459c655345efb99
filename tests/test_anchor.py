"""The anchor objective and what it is built on: extra training states (the collator's registry of state builders),
the frozen teacher, per-position statistic parameters sliced per chunk, and the soft cross-entropy statistic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import test_trainer
import torch
from transformers import TrainerCallback

from t3d_trl import DataCollatorForTrajectory, T3DTrainer
from t3d_trl.layouts import training_layout
from t3d_trl.losses import anchor_loss
from t3d_trl.models.families import get_family
from t3d_trl.objectives import (
    OBJECTIVES,
    TEACHER_PROBABILITIES,
    compute_objectives,
    register_objective,
    student_request,
    teacher_states,
    teacher_terms,
)
from t3d_trl.states import STATE_BUILDERS, register_state, state_requests
from t3d_trl.statistics import StatisticsRequest, window_statistics
from t3d_trl.testing import tiny_qwen3, tiny_t3d_config
from t3d_trl.trajectory import KEY_PARTIAL_RATIO, sample_mask_ratios

PAD, EOS, MASK = 0, 1, 39
# P = 5 (absolute grid, block 4: the prompt's last token shares block 1 with j0..j2), C = 6 ending with EOS, one EOS
# appended (j6, step 4); blocks: {j0, j1, j2} (steps 0, 0, 1) and {j3, j4, j5, j6} (steps 2, 3, 2, 4)
ROW = {
    "prompt_ids": [11, 12, 13, 14, 15],
    "completion_ids": [21, 22, 23, 24, 25, EOS],
    "step_map": [0, 0, 1, 2, 3, 2],
    "example_index": 0,
}
# the trainer tests' fixtures: the tiny tokenizer and its rollouts of eight prompts
tokenizer, trajectories = test_trainer.tokenizer, test_trainer.trajectories


def collator(**kwargs) -> DataCollatorForTrajectory:
    return DataCollatorForTrajectory(mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS, block_size=4, **kwargs)


# ------------------------------------------------------------------------------------------------ pure maths
def test_anchor_loss_is_the_mean_kl_over_the_masked_tokens_by_hand():
    teacher = [[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    student_logits = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.3, 0.1, 0.0]]
    mask = torch.tensor([[True, True, False]])

    def kl(p, logits):
        z = math.log(sum(math.exp(v) for v in logits))
        return sum(pv * (math.log(pv) - (lv - z)) for pv, lv in zip(p, logits) if pv > 0)

    logits = torch.tensor([student_logits], dtype=torch.float64)
    targets = torch.tensor([teacher], dtype=torch.float64)
    request = StatisticsRequest(
        labels=torch.zeros(1, 3, dtype=torch.long), extra={"soft_cross_entropy": {"targets": targets}}
    )
    scores = window_statistics(logits, request)
    entropy = teacher_terms(torch.log(targets.clamp_min(1e-300))).entropy  # softmax(log p) = p
    soft_ce = scores["soft_cross_entropy"].clone()
    soft_ce[0, 2] = float("nan")  # outside the mask nothing is read
    loss = anchor_loss(soft_ce, entropy, mask)
    expected = (kl(teacher[0], student_logits[0]) + kl(teacher[1], student_logits[1])) / 2
    assert float(loss[0]) == pytest.approx(expected, rel=1e-12)
    assert float(anchor_loss(soft_ce, entropy, torch.zeros_like(mask))[0]) == 0.0  # no masked token: 0
    assert float(entropy[0, 1]) == pytest.approx(math.log(2), rel=1e-12)  # 0 · log 0 = 0


@pytest.mark.parametrize("chunk_size", [1, 4, 9])
def test_soft_cross_entropy_in_chunks_equals_the_whole_window_with_gradients(chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.softmax(torch.randn(3, 5, 11, dtype=torch.float64), -1)
    request = StatisticsRequest(
        labels=torch.randint(0, 11, (3, 5)), extra={"soft_cross_entropy": {"targets": targets}, "entropy": {}}
    )
    chunked = window_statistics(logits, request, chunk_size)["soft_cross_entropy"]
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), logits)
    whole = -(targets * torch.log_softmax(logits, -1)).sum(-1)
    (grad_whole,) = torch.autograd.grad(whole.sum(), logits)
    torch.testing.assert_close(chunked, whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_chunked, grad_whole, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_teacher_terms_in_chunks_and_in_place_equal_the_whole_softmax(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 5, 13, dtype=torch.float64)).to(dtype)
    logits[0, 0, 3] = float("-inf")  # a token the teacher never gives: probability 0, no NaN in the entropy
    exact = torch.softmax(logits.double(), -1)
    expected_entropy = -(exact * torch.log(exact).nan_to_num(neginf=0.0)).sum(-1)
    whole = teacher_terms(logits.clone())
    chunked = teacher_terms(logits.clone(), chunk_size=4)
    source = logits.clone()
    in_place = teacher_terms(source, chunk_size=3, inplace=True)
    tolerance = {"atol": 1e-12, "rtol": 0} if dtype == torch.float64 else {"atol": 1e-6, "rtol": 1e-5}
    for terms in (whole, chunked, in_place):
        torch.testing.assert_close(terms.probabilities.double(), exact, **tolerance)
        torch.testing.assert_close(terms.entropy.double(), expected_entropy, **tolerance)
    assert (in_place.probabilities is source) == (dtype == torch.float64)  # half precision gets a float32 buffer
    assert in_place.probabilities.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_per_position_parameters_are_sliced_and_padded_like_the_labels():
    targets = torch.rand(2, 5, 7)
    request = StatisticsRequest(
        labels=torch.zeros(2, 5, dtype=torch.long), extra={"soft_cross_entropy": {"targets": targets}}
    )
    part = request.chunk(slice(1, 3))
    assert torch.equal(part.extra["soft_cross_entropy"]["targets"], targets[:, 1:3])
    shifted = request.shifted()
    padded = shifted.extra["soft_cross_entropy"]["targets"]
    assert padded.shape == (2, 6, 7) and torch.equal(padded[:, :5], targets) and not bool(padded[:, 5].any())
    with pytest.raises(ValueError, match="needs `targets`"):
        window_statistics(
            torch.zeros(1, 2, 3),
            StatisticsRequest(torch.zeros(1, 2, dtype=torch.long), extra={"soft_cross_entropy": {}}),
        )


# ------------------------------------------------------------------------------------------------ extra states
def test_the_partial_state_masks_the_latest_decoded_tokens_of_every_block():
    batch = collator(mask_ratios=(1.0,), extra_states={"partial": {"ratios": (0.5,)}})([ROW])
    M = MASK
    # the main state masks both blocks whole; the partial one the ⌊0.5·n⌋ latest: j2 (step 1) in block 1, j4 and
    # the appended EOS j6 (steps 3, 4) in block 2. The window starts with the prompt's tail (15).
    assert batch["input_ids"][0, -8:].tolist() == [15, M, M, M, M, M, M, M]
    assert batch["partial_input_ids"][0, -8:].tolist() == [15, 21, 22, M, 24, M, EOS, M]
    assert batch["partial_loss_mask"][0].tolist() == [False, False, False, True, False, True, False, True]
    # everything else is the main state's: the same columns, positions and labels
    assert torch.equal(batch["partial_input_ids"][0, :-8], batch["input_ids"][0, :-8])
    assert batch["partial_input_ids"].shape == batch["input_ids"].shape


def test_the_complement_state_flips_the_main_state():
    batch = collator(mask_ratios=(0.5,), extra_states=("complement",))([ROW])
    M = MASK
    assert batch["input_ids"][0, -8:].tolist() == [15, 21, 22, M, 24, M, EOS, M]
    assert batch["complement_input_ids"][0, -8:].tolist() == [15, M, M, 23, M, 25, M, EOS]
    assert batch["complement_loss_mask"][0].tolist() == [False, True, True, False, True, False, True, False]


def test_the_partial_ratio_is_drawn_uniformly_apart_from_the_main_state():
    index = torch.arange(6000)
    ratios = (0.75, 0.5, 0.25)
    partial = sample_mask_ratios(index, 42, ratios, 0.0, key=KEY_PARTIAL_RATIO)
    main = sample_mask_ratios(index, 42, ratios, 0.0)
    for ratio in ratios:
        assert abs(float((partial == ratio).float().mean()) - 1 / 3) < 0.03
    assert abs(float((partial == main).float().mean()) - 1 / 3) < 0.03  # independent draws, not the same one


def test_state_declarations_are_checked():
    assert state_requests(("partial",)) == {"partial": {"ratios": (0.75, 0.5, 0.25)}}
    assert state_requests({"partial": {"ratios": [0.5]}}) == {"partial": {"ratios": (0.5,)}}
    with pytest.raises(ValueError, match="Unknown training state 'partly'"):
        state_requests(("partly",))
    with pytest.raises(ValueError, match="takes \\['ratios'\\], got \\['ratio'\\]"):
        state_requests({"partial": {"ratio": (0.5,)}})
    with pytest.raises(ValueError, match=r"ratios of the training state 'partial'\[1\]` must be a number > 0.0"):
        state_requests({"partial": {"ratios": (0.5, 0.0)}})
    with pytest.raises(ValueError, match="main state"):
        register_state("main", lambda context: (context.state, context.state))
    with pytest.raises(ValueError, match="mask_ratios of the objective 'anchor'"):
        tiny_t3d_config("unused", loss_type=["anchor"], objective_kwargs={"anchor": {"mask_ratios": []}})
    assert "partial" in STATE_BUILDERS and STATE_BUILDERS.is_builtin("complement")


def test_two_objectives_reading_one_state_with_other_parameters_are_refused():
    register_objective(
        "toy_half_anchor",
        lambda inputs: (inputs.scores.label_log_probs.sum(-1), {}),
        states={"partial": {"ratios": (0.5,)}},
    )
    try:
        with pytest.raises(ValueError, match="'anchor' and 'toy_half_anchor' read the training state 'partial'"):
            tiny_t3d_config("unused", loss_type=["anchor", "toy_half_anchor"])
        same = tiny_t3d_config(
            "unused", loss_type=["anchor", "toy_half_anchor"], objective_kwargs={"anchor": {"mask_ratios": [0.5]}}
        )
        assert same.extra_states == {"partial": {"ratios": (0.5,)}}  # built once, read by both
    finally:
        OBJECTIVES.unregister("toy_half_anchor")


def test_what_the_config_derives_from_the_objectives():
    t3d = tiny_t3d_config("unused")
    assert t3d.extra_states == {} and not t3d.uses_teacher and teacher_states(t3d) == ()
    anchored = tiny_t3d_config("unused", loss_type=["ddo", "path", "anchor"], loss_weights=[1.0, 0.2, 0.05])
    assert anchored.extra_states == {"partial": {"ratios": (0.75, 0.5, 0.25)}}
    assert anchored.uses_teacher and teacher_states(anchored) == ("partial",)  # not on the main state
    dparallel = tiny_t3d_config("unused", loss_type=["dparallel"])
    assert dparallel.extra_states == {"complement": {}} and not dparallel.uses_teacher
    single = tiny_t3d_config(
        "unused", loss_type=["dparallel"], objective_kwargs={"dparallel": {"complementary_masks": False}}
    )
    assert single.extra_states == {}


def test_objectives_refuse_missing_states_and_teacher_terms():
    config = SimpleNamespace(loss_type=["anchor"], loss_weights=[1.0], objective_kwargs=None)
    batch = {"labels": torch.zeros(1, 3, dtype=torch.long), "loss_mask": torch.ones(1, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="needs the teacher's probabilities"):
        student_request(batch, config, state="partial")
    scores = window_statistics(torch.zeros(1, 3, 4), student_request(batch, config))
    with pytest.raises(ValueError, match=r"reads the training states \['partial'\]"):
        compute_objectives(scores, batch, config)
    with pytest.raises(ValueError, match=r"needs the teacher's terms on the states \['partial'\]"):
        compute_objectives(scores, batch, config, states={"partial": scores})
    with pytest.raises(ValueError, match="reads neither the main state"):
        register_objective("toy_nothing", lambda inputs: None, main_state=False)
    assert repr(TEACHER_PROBABILITIES) == "TEACHER_PROBABILITIES"


# ------------------------------------------------------------------------------------------------ in the trainer
def _trainer(path, trajectories, tokenizer, peft_config=None, **overrides) -> T3DTrainer:
    """A float32 tiny student trained on the module's trajectories with ``tiny_t3d_config(path, **overrides)``."""
    return T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(path, **overrides),
        train_dataset=trajectories,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _perturbed_trainer(tmp_path, trajectories, tokenizer, chunk, loss_type=("anchor",)):
    args = tiny_t3d_config(tmp_path / str(chunk), loss_type=list(loss_type), logits_chunk_size=chunk, max_steps=1)
    trainer = T3DTrainer(tiny_qwen3(), args=args, train_dataset=trajectories, processing_class=tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():  # the student leaves the teacher, which stays the initial model
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return trainer


@pytest.mark.parametrize("chunk", [0, 3])
def test_anchor_equals_the_prototypes_whole_logits_kl_float64(tmp_path, trajectories, tokenizer, chunk):
    trainer = _perturbed_trainer(tmp_path, trajectories, tokenizer, chunk)
    rows = [dict(r, example_index=i) for i, r in enumerate(trainer.train_dataset)]
    batch = trainer.data_collator(rows)
    model = trainer.model.train()
    loss = trainer.compute_loss(model, batch)
    (grads,) = [torch.autograd.grad(loss, list(model.parameters()))]

    # the phase-1 prototype: the whole window logits of the teacher (the initial model) and the student on the
    # partial state, KL(p_T || p_θ) per masked token, averaged per example over the partial loss mask
    teacher = tiny_qwen3()
    for mine, initial in zip(trainer.teacher_model.parameters(), teacher.parameters()):
        assert torch.equal(mine, initial)
    layout = training_layout(get_family(teacher))
    partial = {**batch, "input_ids": batch["partial_input_ids"]}
    with torch.no_grad():
        target = torch.log_softmax(layout.forward(teacher, partial), -1)
    student = torch.log_softmax(layout.forward(model, partial), -1)
    kl = (target.exp() * (target - student)).sum(-1)
    mask = batch["partial_loss_mask"]
    expected = ((kl * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    (expected_grads,) = [torch.autograd.grad(expected, list(model.parameters()))]
    assert float(expected.detach()) > 1e-3  # the student did move
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    for mine, reference in zip(grads, expected_grads):
        torch.testing.assert_close(mine, reference, atol=1e-10, rtol=1e-8)


class Interrupt(TrainerCallback):
    """Stops a run after its fourth step, as a crash would (its checkpoint of step 3 is kept)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt


@pytest.mark.parametrize("sync", [True, False])
def test_t3d_with_the_anchor_trains_with_a_fixed_or_a_refreshed_reference(tmp_path, trajectories, tokenizer, sync):
    initial = tiny_qwen3(dtype=torch.float32)
    trainer = _trainer(
        tmp_path,
        trajectories,
        tokenizer,
        loss_type=["ddo", "path", "anchor"],
        loss_weights=[1.0, 0.2, 0.5],
        max_steps=4,
        sync_ref_model=sync,
        ref_model_sync_steps=2,
    )
    assert (trainer.teacher_model is trainer.ref_model) == (not sync)  # a fixed reference is the teacher
    student_forwards, teacher_forwards = [], []
    trainer.model.register_forward_pre_hook(lambda *a: student_forwards.append(1))
    trainer.teacher_model.register_forward_pre_hook(lambda *a: teacher_forwards.append(1))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["loss/anchor"] == pytest.approx(0.0, abs=1e-6)  # the student starts as the teacher
    assert logs[-1]["loss/anchor"] > 1e-6 and "loss/real" in logs[-1]
    assert len(student_forwards) == 2 * 4  # the main state and the partial one
    assert len(teacher_forwards) == 4 * (1 if sync else 2)  # the fixed reference is also the teacher's model
    for mine, original in zip(trainer.teacher_model.parameters(), initial.parameters()):
        assert torch.equal(mine, original)  # the teacher stays the initial model, refreshes or not


def test_naive_td_with_the_anchor_keeps_its_own_teacher_and_precomputed_reference_keeps_it(
    tmp_path, trajectories, tokenizer
):
    td = _trainer(tmp_path / "td", trajectories, tokenizer, loss_type=["td", "anchor"], max_steps=2)
    assert td.ref_model is None and td.teacher_model is not None and td.teacher_model is not td.model
    td.train()
    precomputed = _trainer(
        tmp_path / "pre",
        trajectories,
        tokenizer,
        loss_type=["ddo", "path", "anchor"],
        sync_ref_model=False,
        precompute_ref_log_probs=True,
        max_steps=2,
    )
    assert precomputed.ref_model is None and precomputed.teacher_model is not None
    precomputed.train()
    assert "loss/anchor" in precomputed.state.log_history[0]


def test_the_anchor_trains_with_lora_against_the_adapter_free_base(tmp_path, trajectories, tokenizer):
    from peft import LoraConfig

    trainer = _trainer(
        tmp_path,
        trajectories,
        tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        loss_type=["ddo", "path", "anchor"],
        max_steps=4,
        ref_model_sync_steps=2,
    )
    assert trainer.teacher_model is None  # the base with its adapters disabled
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["loss/anchor"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at the identity
    assert logs[-1]["loss/anchor"] > 1e-7


def test_a_run_with_the_anchor_resumes_exactly(tmp_path, trajectories, tokenizer):
    common = dict(loss_type=["td", "anchor"], max_steps=6, save_strategy="steps", save_steps=3, learning_rate=1e-2)
    full = _trainer(tmp_path / "full", trajectories, tokenizer, **common)
    full.train()
    cut = _trainer(tmp_path / "cut", trajectories, tokenizer, **common)
    cut.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = _trainer(tmp_path / "cut", trajectories, tokenizer, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    expected = {log["step"]: log for log in full.state.log_history if "loss" in log}
    resumed_logs = [log for log in resumed.state.log_history if "loss" in log and log["step"] > 3]
    assert [log["step"] for log in resumed_logs] == [4, 5, 6]
    for log in resumed_logs:
        assert log["loss/anchor"] > 0
        for key in ("loss", "loss/td", "loss/anchor"):
            assert log[key] == pytest.approx(expected[log["step"]][key], abs=1e-6), (log["step"], key)
