"""T3DTrainer: objectives, reference handling, LoRA, saving, resuming and bad input on tiny models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback

from t3d_trl import T3DTrainer, patch_model
from t3d_trl.testing import free_port, rollout_rows, tiny_qwen3, tiny_t3d_config, tiny_tokenizer

PROMPTS = ["abc", "hello wor", "what is 2+3?", "abcdefgh", "xyz", "12+34=", "k", "the cat"]
SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def trajectories(tokenizer):
    return Dataset.from_list(rollout_rows(tiny_qwen3(dtype=torch.float32), tokenizer, PROMPTS))


def step_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


class RecordParameters(TrainerCallback):
    """Records a copy of chosen parameters after every optimizer step."""

    def __init__(self, getter):
        self.getter = getter
        self.history = []

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append([p.detach().clone() for p in self.getter()])


def test_ddo_is_log_two_at_every_refresh(tmp_path, tokenizer, trajectories):
    args = tiny_t3d_config(tmp_path, max_steps=7, ref_model_sync_steps=3)
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )
    trainer.train()
    logs = step_logs(trainer)
    for log in logs:
        at_refresh = (log["step"] - 1) % 3 == 0  # θ = θ_ref on the step after a refresh (and on the first)
        if at_refresh:
            assert log["loss/real"] == pytest.approx(math.log(2), abs=1e-6)
            assert log["loss/fake"] == pytest.approx(0.5 * math.log(2), abs=1e-6)
            assert log["margins/real"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert abs(log["margins/real"]) > 1e-6
    assert {
        "loss/ddo",
        "loss/path",
        "logps/real",
        "logps/fake",
        "ref_logps/real",
        "ref_logps/fake",
        "margins/fake",
        "fake_agreement",
        "token_accuracy",
        "mask_ratio",
    } <= set(logs[0])


def test_reference_changes_only_at_sync_steps_and_gets_no_gradient(tmp_path, tokenizer, trajectories):
    args = tiny_t3d_config(tmp_path, max_steps=7, ref_model_sync_steps=3)
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )
    previous = [p.detach().clone() for p in trainer.ref_model.parameters()]
    reference = RecordParameters(lambda: trainer.ref_model.parameters())
    student = RecordParameters(lambda: trainer.model.parameters())
    trainer.add_callback(reference)  # runs after the sync callback
    trainer.add_callback(student)
    trainer.train()
    assert all(p.grad is None and not p.requires_grad for p in trainer.ref_model.parameters())
    for step, (ref_params, student_params) in enumerate(zip(reference.history, student.history), start=1):
        changed = any(not torch.equal(a, b) for a, b in zip(previous, ref_params))
        assert changed == (step % 3 == 0), f"step {step}"
        if step % 3 == 0:  # a hard copy of the student
            assert all(torch.equal(a, b) for a, b in zip(ref_params, student_params))
        previous = ref_params


def test_training_raises_one_step_accuracy_on_training_prompts(tmp_path, tokenizer, trajectories):
    def one_step_agreement(model):
        patch_model(model, tokenizer, block_size=4)
        hits = total = 0
        for row in trajectories:
            out = model.generate(
                torch.tensor([row["prompt_ids"]]), steps_per_block=1, max_new_tokens=12, return_dict_in_generate=True
            )
            generated = out.sequences[0, len(row["prompt_ids"]) :].tolist()
            target = row["completion_ids"]
            n = min(len(generated), len(target))
            hits += sum(a == b for a, b in zip(generated[:n], target[:n]))
            total += len(target)
        return hits / total

    student = tiny_qwen3(dtype=torch.float32)
    before = one_step_agreement(student)
    args = tiny_t3d_config(
        tmp_path, max_steps=60, learning_rate=1e-2, ref_model_sync_steps=10, per_device_train_batch_size=8
    )
    trainer = T3DTrainer(student, args=args, train_dataset=trajectories, processing_class=tokenizer)
    trainer.train()
    logs = step_logs(trainer)
    first = sum(log["loss"] for log in logs[:5]) / 5
    last = sum(log["loss"] for log in logs[-5:]) / 5
    assert last < first
    after = one_step_agreement(trainer.model)
    assert after > before + 0.05, (before, after)


@pytest.mark.parametrize("loss_type", [["td"], ["sft"], ["dparallel"], ["path"]])
def test_baseline_objectives_train_without_reference(tmp_path, tokenizer, trajectories, loss_type):
    args = tiny_t3d_config(tmp_path, loss_type=loss_type, max_steps=3)
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )
    assert trainer.ref_model is None and trainer.sync_callback is None
    trainer.train()
    logs = step_logs(trainer)
    assert f"loss/{loss_type[0]}" in logs[0] and "loss/real" not in logs[0]
    if loss_type == ["sft"]:
        assert trainer.data_collator.state_sampling == "random"


def test_lora_changes_only_adapter_weights_and_syncs_ref_adapter(tmp_path, tokenizer, trajectories):
    from peft import LoraConfig

    model = tiny_qwen3(dtype=torch.float32)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    args = tiny_t3d_config(tmp_path, max_steps=5, ref_model_sync_steps=2)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")
    trainer = T3DTrainer(
        model, args=args, train_dataset=trajectories, processing_class=tokenizer, peft_config=peft_config
    )
    peft_model = trainer.model
    ref_params = lambda: [p for n, p in sorted(peft_model.named_parameters()) if ".ref." in n]  # noqa: E731
    assert ref_params() and all(not p.requires_grad for p in ref_params())
    recorder = RecordParameters(ref_params)
    trainer.add_callback(recorder)
    trainer.train()
    logs = step_logs(trainer)
    assert logs[0]["loss/real"] == pytest.approx(math.log(2), abs=1e-6)  # the ref adapter starts as a copy
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            assert torch.equal(value, base_before[original]), name
    default = {n: p for n, p in peft_model.named_parameters() if ".default." in n}
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in default.values())
    previous = None
    for step, params in enumerate(recorder.history, start=1):
        if previous is not None:
            changed = any(not torch.equal(a, b) for a, b in zip(previous, params))
            assert changed == (step % 2 == 0), f"step {step}"
        previous = params


def test_lora_save_adapter_and_merged(tmp_path, tokenizer, trajectories):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")
    for merged in (False, True):
        out = tmp_path / ("merged" if merged else "adapter")
        args = tiny_t3d_config(out, max_steps=2, save_merged_model=merged)
        trainer = T3DTrainer(
            tiny_qwen3(dtype=torch.float32),
            args=args,
            train_dataset=trajectories,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
        trainer.save_model()
        files = set(os.listdir(out))
        assert {"generation_config.json", "README.md", "custom_generate"} <= files
        assert ("adapter_config.json" in files) != merged
        assert "ref" not in files  # the reference adapter is training state, not part of the model
        if merged:
            loaded = patch_model(AutoModelForCausalLM.from_pretrained(out))
            assert loaded.generation_config.block_size == 4
            assert loaded.generation_config.mask_token_id == tokenizer.mask_token_id
            loaded.generate(torch.tensor([tokenizer("abc")["input_ids"]]), steps_per_block=1, max_new_tokens=8)


def test_save_model_writes_card_and_generation_config(tmp_path, tokenizer, trajectories):
    args = tiny_t3d_config(tmp_path, max_steps=1, block_size=8)
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32), args=args, train_dataset=trajectories, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "T3D" in card and "2602.12262" in card and "t3d-trl" in card
    config = json.loads((tmp_path / "generation_config.json").read_text())["block_diffusion"]
    assert config["block_size"] == 8 and config["mask_token_id"] == tokenizer.mask_token_id
    loaded = patch_model(AutoModelForCausalLM.from_pretrained(tmp_path))
    assert loaded.generation_config.block_size == 8


def test_precomputed_reference_matches_live_reference(tmp_path, tokenizer, trajectories):
    common = dict(max_steps=3, sync_ref_model=False)
    live = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "a", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
    )
    live.train()
    pre = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "b", precompute_ref_log_probs=True, **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
    )
    assert pre.ref_model is None and "ref_real_logps" in pre.train_dataset.column_names
    pre.train()
    for a, b in zip(step_logs(live), step_logs(pre)):
        for key in ("loss", "loss/real", "loss/fake", "ref_logps/real", "ref_logps/fake", "fake_agreement"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_evaluate_with_a_precomputed_reference_matches_the_live_reference(tmp_path, tokenizer, trajectories):
    """The precompute covers every split the shared collator serves: evaluate() on one eval set and on a dict of them
    gives the live reference's numbers (it failed with KeyError: 'ref_fake_tokens')."""
    common = dict(max_steps=1, sync_ref_model=False)
    split = {"held_out": trajectories.select(range(3)), "all": trajectories}
    live = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "a", **common),
        train_dataset=trajectories,
        eval_dataset=split,
        processing_class=tokenizer,
    )
    pre = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "b", precompute_ref_log_probs=True, **common),
        train_dataset=trajectories,
        eval_dataset=split,
        processing_class=tokenizer,
    )
    assert all("ref_fake_tokens" in dataset.column_names for dataset in pre.eval_dataset.values())
    for name in split:
        expected = live.evaluate(eval_dataset=name, metric_key_prefix=name)
        measured = pre.evaluate(eval_dataset=name, metric_key_prefix=name)
        for key in ("loss", "loss/real", "loss/fake", "ref_logps/real"):
            assert measured[f"{name}_{key}"] == pytest.approx(expected[f"{name}_{key}"], abs=1e-5), (name, key)
    single = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "c", precompute_ref_log_probs=True, **common),
        train_dataset=trajectories,
        eval_dataset=trajectories,
        processing_class=tokenizer,
    )
    assert single.evaluate()["eval_loss/real"] == pytest.approx(math.log(2), abs=1e-5)  # θ = θ_ref before training


def test_precomputed_reference_with_different_completion_lengths(tmp_path, tokenizer, trajectories):
    cut = trajectories.map(
        lambda row, index: {k: row[k][: 3 + index % 3 * 4] for k in ("completion_ids", "step_map")}, with_indices=True
    )
    args = tiny_t3d_config(
        tmp_path, max_steps=2, sync_ref_model=False, precompute_ref_log_probs=True, per_device_train_batch_size=3
    )
    trainer = T3DTrainer(tiny_qwen3(dtype=torch.float32), args=args, train_dataset=cut, processing_class=tokenizer)
    noisy_lengths = [len(row["ref_fake_tokens"]) for row in trainer.train_dataset]
    prompt_tails = [len(row["prompt_ids"]) % 4 for row in trainer.train_dataset]
    completions = [len(row["completion_ids"]) for row in trainer.train_dataset]
    for noisy, tail, completion in zip(noisy_lengths, prompt_tails, completions):
        assert noisy == tail + completion + (-(tail + completion)) % 4  # the row's own noisy stream, open slots too
    trainer.train()


def test_peft_with_a_separate_reference_is_refused(tmp_path, tokenizer, trajectories):
    from peft import LoraConfig

    with pytest.raises(ValueError, match="ref_model=None"):
        T3DTrainer(
            tiny_qwen3(dtype=torch.float32),
            ref_model=tiny_qwen3(seed=1, dtype=torch.float32),
            args=tiny_t3d_config(tmp_path),
            train_dataset=trajectories,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        )


def test_precompute_with_sync_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync_ref_model=False"):
        tiny_t3d_config(tmp_path, precompute_ref_log_probs=True, sync_ref_model=True)
    with pytest.raises(ValueError, match="reference_temperature"):
        tiny_t3d_config(tmp_path, precompute_ref_log_probs=True, sync_ref_model=False, reference_temperature=0.5)


@pytest.mark.parametrize("lora", [False, True])
def test_resume_from_checkpoint_continues_exactly(tmp_path, tokenizer, trajectories, lora):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian") if lora else None
    common = dict(max_steps=8, ref_model_sync_steps=3, save_strategy="steps", save_steps=4)
    full = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "full", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    full.train()
    first = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "cut", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
        peft_config=peft_config,
    )

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise KeyboardInterrupt

    first.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "cut", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-4"))
    expected = {log["step"]: log for log in step_logs(full)}
    for log in step_logs(resumed):
        for key in ("loss", "loss/real", "loss/path"):
            assert log[key] == pytest.approx(expected[log["step"]][key], abs=1e-5), (log["step"], key)


def test_eval_loop_logs_the_same_metrics(tmp_path, tokenizer, trajectories):
    args = tiny_t3d_config(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=args,
        train_dataset=trajectories,
        eval_dataset=trajectories,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_loss/real", "eval_loss/path", "eval_token_accuracy", "eval_mask_ratio"):
        assert key in metrics


def test_bad_input_is_refused_with_a_message(tmp_path, tokenizer, trajectories):
    args = tiny_t3d_config(tmp_path)
    with pytest.raises(ValueError, match="step_map"):
        T3DTrainer(
            tiny_qwen3(dtype=torch.float32),
            args=args,
            processing_class=tokenizer,
            train_dataset=trajectories.remove_columns(["step_map"]),
        )
    broken = trajectories.map(lambda row: {"step_map": row["step_map"][:-1]})
    with pytest.raises(ValueError, match="step_map"):
        T3DTrainer(tiny_qwen3(dtype=torch.float32), args=args, processing_class=tokenizer, train_dataset=broken)
    no_mask = tiny_tokenizer()
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="mask"):
        T3DTrainer(tiny_qwen3(dtype=torch.float32), args=args, processing_class=no_mask, train_dataset=trajectories)
    with pytest.raises(ValueError, match="loss_type"):
        tiny_t3d_config(tmp_path, loss_type=["ddo", "kl"])
    model = tiny_qwen3(dtype=torch.float32)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        T3DTrainer(model, args=args, processing_class=tokenizer, train_dataset=trajectories)


def test_model_given_as_local_path(tmp_path, tokenizer, trajectories):
    tiny_qwen3(dtype=torch.float32).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    args = tiny_t3d_config(tmp_path / "out", max_steps=1, model_init_kwargs={"dtype": "float32"})
    trainer = T3DTrainer(str(tmp_path / "model"), args=args, train_dataset=trajectories)
    trainer.train()
    assert trainer.processing_class.mask_token_id == tokenizer.mask_token_id


@pytest.mark.slow
def test_two_processes_give_the_one_process_first_step_loss(tmp_path):
    script = SCRIPTS / "train_2proc.py"
    # the repository root, so that the workers import this checkout's t3d_trl
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "8"], env=env, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        # on a CPU-only machine `--multi_gpu` starts 2 gloo processes (accelerate's `--cpu` starts one without MPI)
        [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
            str(tmp_path / "two"),
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "first_step.json").read_text())
    two = json.loads((tmp_path / "two" / "first_step.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # `end()` frees the DDP wrapper before destroying the process group (otherwise exit can deadlock in gloo)
    assert two["wrapped_before_end"] == 1 and two["wrapped_after_end"] == 0
    for key in ("loss", "loss/real", "loss/path"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key


def test_a_checkpoint_without_its_reference_is_refused_at_resume(tmp_path, tokenizer, trajectories):
    common = dict(max_steps=4, ref_model_sync_steps=3, save_strategy="steps", save_steps=2)
    first = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "run", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
    )
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert (checkpoint / "ref_model.pt").is_file() and (checkpoint / "trainer_state.json").is_file()

    # a crash inside the checkpoint window: the reference is written first, so a folder with the Trainer's files but
    # no reference can only come from elsewhere (an older run, a copy); either way it is refused, never resumed
    # with another reference
    (checkpoint / "ref_model.pt").unlink()
    resumed = T3DTrainer(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "run", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
    )
    with pytest.raises(
        ValueError,
        match=r"Cannot resume from .*checkpoint-4: ref_model.pt \(the reference model of this run\) is "
        r"missing\. To go on, resume from the previous one with resume_from_checkpoint='.*checkpoint-2'",
    ):
        resumed.train(resume_from_checkpoint=str(checkpoint))

    # a damaged reference file is named with its path, before anything is loaded
    (checkpoint / "ref_model.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"checkpoint-4: ref_model.pt is damaged: it is not a complete torch.save"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    # one that passes the structure check but not the loading is still named (the trainer's own check)
    torch.save({"not": torch.zeros(1)}, checkpoint / "ref_model.pt")
    with pytest.raises(ValueError, match=r"ref_model.pt cannot be restored.*damaged"):
        resumed.train(resume_from_checkpoint=str(checkpoint))

    # the reference goes in before the Trainer's files: a crash right after it leaves no trainer_state.json
    class CrashAfterReference(T3DTrainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            raise KeyboardInterrupt

    crashing = CrashAfterReference(
        tiny_qwen3(dtype=torch.float32),
        args=tiny_t3d_config(tmp_path / "crash", **common),
        train_dataset=trajectories,
        processing_class=tokenizer,
    )
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    partial = tmp_path / "crash" / "checkpoint-2"
    assert (partial / "ref_model.pt").is_file() and not (partial / "trainer_state.json").exists()
