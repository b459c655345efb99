"""What the trainer refuses before any work, or stops on while training: non-finite weights and losses, a missing
tokenizer, a model location that is no model, a damaged or incomplete checkpoint at resume, masked completions."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from datasets import Dataset
from transformers import Qwen3ForCausalLM, TrainerCallback

from t3d_trl import T3DTrainer, patch_model
from t3d_trl.testing import synthetic_trajectories, tiny_qwen3, tiny_qwen3_config, tiny_t3d_config, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def trajectories(tokenizer):
    """Eight rows of random tokens (no special ones) with a valid teacher schedule."""
    return Dataset.from_list(synthetic_trajectories(8, (3, 12), (4, 12), vocab_size=len(tokenizer), seed=1))


def _student(**overrides):
    return tiny_qwen3(dtype=torch.float32, **overrides)


def _nan_weight(model):
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    return model


# ------------------------------------------------------------------------------------------------ non-finite values


def test_a_model_with_a_nan_weight_is_refused_by_patch_model(tokenizer):
    with pytest.raises(ValueError, match=r"non-finite weights: 1 NaN/inf value\(s\) in `model.layers.1.mlp.down_proj"):
        patch_model(_nan_weight(tiny_qwen3()), tokenizer)


def test_a_model_with_a_nan_weight_is_refused_by_the_trainer(tmp_path, tokenizer, trajectories):
    args = tiny_t3d_config(tmp_path)
    with pytest.raises(ValueError, match=r"The model has non-finite weights: .*decodes token 0 everywhere"):
        T3DTrainer(_nan_weight(_student()), args=args, train_dataset=trajectories, processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"`ref_model` has non-finite weights"):
        T3DTrainer(
            _student(), _nan_weight(_student()), args=args, train_dataset=trajectories, processing_class=tokenizer
        )


class _NaNFromStep(TrainerCallback):
    """Makes the student's logits NaN from optimizer step ``step`` on (the weights stay finite)."""

    def __init__(self, model, step: int) -> None:
        self.step, self.active = step, False
        model.lm_head.register_forward_hook(lambda module, args, output: output * math.nan if self.active else None)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 >= self.step


def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path, tokenizer, trajectories):
    student = _student()
    trainer = T3DTrainer(
        student, args=tiny_t3d_config(tmp_path), train_dataset=trajectories, processing_class=tokenizer
    )
    trainer.add_callback(_NaNFromStep(student, step=3))
    with pytest.raises(ValueError, match=r"The training loss is nan at optimizer step 3 \(epoch [\d.]+\); training "
                       r"stops before the optimizer applies it.*The weights are still finite"):  # fmt: skip
        trainer.train()
    assert trainer.state.global_step == 2  # steps 1 and 2 ran; step 3 never reached the optimizer
    assert all(torch.isfinite(p).all() for p in student.parameters())
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)  # never a NaN logged as 0


def test_a_non_finite_loss_after_weights_went_nan_says_so(tmp_path, tokenizer, trajectories):
    student = _student()
    trainer = T3DTrainer(
        student, args=tiny_t3d_config(tmp_path), train_dataset=trajectories, processing_class=tokenizer
    )

    class DamageAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                _nan_weight(student)  # as an optimizer step with a NaN gradient would

    trainer.add_callback(DamageAfterStep())
    with pytest.raises(ValueError, match=r"loss is nan at optimizer step 3.*The student's weights are already "
                       r"non-finite \(1 NaN/inf value\(s\) in `model.layers.1.mlp.down_proj.weight`\)"):  # fmt: skip
        trainer.train()


# --------------------------------------------------------------------------------------------- model and tokenizer


def test_trainer_on_a_model_built_from_a_config_needs_its_processing_class(tmp_path, trajectories):
    model = Qwen3ForCausalLM(tiny_qwen3_config())  # no checkpoint: config._name_or_path is ""
    with pytest.raises(ValueError, match=r"`processing_class` is required: `model` was built from a config"):
        T3DTrainer(model, args=tiny_t3d_config(tmp_path), train_dataset=trajectories)


def test_trainer_on_a_checkpoint_without_a_tokenizer_says_to_pass_one(tmp_path, trajectories):
    _student().save_pretrained(tmp_path / "model")  # weights only
    model = Qwen3ForCausalLM.from_pretrained(tmp_path / "model")
    with pytest.raises(
        ValueError, match=r"no tokenizer could be loaded from the model's checkpoint .*processing_class"
    ):
        T3DTrainer(model, args=tiny_t3d_config(tmp_path / "out"), train_dataset=trajectories)


@pytest.mark.parametrize("where", ["missing", "file", "directory without config.json"])
def test_a_model_location_that_is_no_model_is_named(tmp_path, tokenizer, trajectories, where):
    path = {"missing": tmp_path / "no" / "such" / "model", "file": tmp_path / "model.bin", "directory without "
            "config.json": tmp_path}[where]  # fmt: skip
    if where == "file":
        path.write_bytes(b"weights")
    message = {
        "missing": "does not exist on this machine and is not a Hub id",
        "file": "is a file",
        "directory without config.json": "is a directory without config.json or adapter_config.json, so not a saved model",
    }[where]
    with pytest.raises(ValueError, match=rf"model='{re.escape(str(path))}' {message}; give a directory holding"):
        T3DTrainer(str(path), args=tiny_t3d_config(tmp_path / "out"), train_dataset=trajectories)


def test_a_completion_holding_the_mask_token_is_refused_by_the_trainer(tmp_path, tokenizer, trajectories):
    rows = trajectories.to_list()
    rows[5]["completion_ids"][0] = tokenizer.mask_token_id
    with pytest.raises(ValueError, match=rf"row 5 .*holds the mask token \(id {tokenizer.mask_token_id}\)"):
        T3DTrainer(
            _student(),
            args=tiny_t3d_config(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


# ------------------------------------------------------------------------------------------ checkpoints at resume


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, trajectories):
    """A run saved at steps 2 and 4 (reference refreshed every 3 steps, so ref_model.pt is in both)."""
    output_dir = tmp_path_factory.mktemp("run")
    args = tiny_t3d_config(output_dir, max_steps=4, ref_model_sync_steps=3, save_strategy="steps", save_steps=2)
    T3DTrainer(_student(), args=args, train_dataset=trajectories, processing_class=tokenizer).train()
    return output_dir


def _resumable_copy(checkpoints, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(checkpoints, target)
    return target


def _resumed_trainer(output_dir, tokenizer, trajectories):
    args = tiny_t3d_config(output_dir, max_steps=6, ref_model_sync_steps=3, save_strategy="steps", save_steps=2)
    trainer = T3DTrainer(_student(), args=args, train_dataset=trajectories, processing_class=tokenizer)
    loads = []
    original = trainer._load_from_checkpoint
    trainer._load_from_checkpoint = lambda *a, **k: (loads.append(1), original(*a, **k))[1]
    return trainer, loads


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_truncated_checkpoint_file_is_named_before_resuming(tmp_path, checkpoints, tokenizer, trajectories, name):
    output_dir = _resumable_copy(checkpoints, tmp_path)
    _truncate(output_dir / "checkpoint-4" / name)
    trainer, loads = _resumed_trainer(output_dir, tokenizer, trajectories)
    with pytest.raises(ValueError) as error:
        trainer.train(resume_from_checkpoint=True)
    message = str(error.value)
    assert message.startswith(f"Cannot resume from {output_dir / 'checkpoint-4'}: {name} is damaged: ")
    assert f"resume_from_checkpoint='{output_dir / 'checkpoint-2'}'" in message
    assert loads == [] and trainer.state.global_step == 0  # nothing was loaded or trained


def test_a_checkpoint_without_trainer_state_is_named_before_resuming(tmp_path, checkpoints, tokenizer, trajectories):
    output_dir = _resumable_copy(checkpoints, tmp_path)
    (output_dir / "checkpoint-4" / "trainer_state.json").unlink()  # a crash while the Trainer saved its files
    trainer, loads = _resumed_trainer(output_dir, tokenizer, trajectories)
    with pytest.raises(ValueError, match=r"checkpoint-4: trainer_state.json is missing: the Trainer writes it last, so "
                       r"the run stopped while saving this checkpoint\. To go on, resume from the previous one"):  # fmt: skip
        trainer.train(resume_from_checkpoint=True)
    assert loads == []


def test_the_recovery_the_message_gives_resumes(tmp_path, checkpoints, tokenizer, trajectories):
    output_dir = _resumable_copy(checkpoints, tmp_path)
    state = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    (output_dir / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(state)[:-20])
    trainer, _ = _resumed_trainer(output_dir, tokenizer, trajectories)
    with pytest.raises(ValueError, match=r"trainer_state.json is damaged: it is not valid JSON"):
        trainer.train(resume_from_checkpoint=True)
    trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-2"))  # what the message says
    assert trainer.state.global_step == 6


def test_resume_from_a_path_that_is_no_checkpoint_is_refused(tmp_path, tokenizer, trajectories):
    trainer, _ = _resumed_trainer(tmp_path / "empty", tokenizer, trajectories)
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=True found no checkpoint-N folder"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"resume_from_checkpoint='.*nowhere' does not exist"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nowhere"))
