"""The model card of a distilled student: its quick start runs as written, with or without a chat template, and it
reads right when the base model was not recorded."""

from __future__ import annotations

import re

import pytest
import torch

from t3d_trl import patch_model
from t3d_trl.testing import tiny_qwen3, tiny_tokenizer
from t3d_trl.trainer.model_card import ModelCardInfo, model_card_text


def _student(path, chat_template: bool):
    """A saved tiny student (room for the card's 256 new tokens) and its tokenizer, with or without a chat template."""
    tokenizer = tiny_tokenizer(chat_template=tiny_tokenizer().chat_template if chat_template else None)
    model = patch_model(tiny_qwen3(dtype=torch.float32, max_position_embeddings=512), tokenizer, block_size=4)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.generation_config.to_dict()


def _with_t3d_trl_snippet(card: str) -> str:
    section = card.split("### With t3d-trl", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.parametrize("chat_template", [True, False])
def test_the_quick_start_runs_as_written(tmp_path, chat_template):
    generation_config = _student(tmp_path, chat_template)
    info = ModelCardInfo(
        model_name="student", repo_id=str(tmp_path), generation_config=generation_config, chat_template=chat_template
    )
    code = _with_t3d_trl_snippet(model_card_text(info))
    assert ("apply_chat_template" in code) is chat_template
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the snippet prints the decoded completion
    assert namespace["out"].shape[0] == 1 and namespace["out"].shape[1] > namespace["inputs"]["input_ids"].shape[1]


def test_the_card_of_a_student_without_a_recorded_base_model_reads_right():
    card = model_card_text(ModelCardInfo(model_name="err-out", generation_config={"block_size": 4}))
    intro = card.split("# err-out", 1)[1].strip().splitlines()[0]
    assert intro.startswith("`err-out` was distilled into a few-step decoder with T3D")
    assert "the name of the model it was distilled from was not recorded" in intro
    assert "is a base model whose name" not in card and "base_model:" not in card
    named = model_card_text(ModelCardInfo(model_name="s", base_model="JetLM/SDAR-4B-Chat"))
    assert "`s` is `JetLM/SDAR-4B-Chat` distilled into a few-step decoder" in named


def test_the_card_says_how_to_decode_in_few_steps_without_t3d_trl():
    card = model_card_text(ModelCardInfo(model_name="s", repo_id="you/s", generation_config={"block_size": 4}))
    without = card.split("### Without t3d-trl", 1)[1]
    assert 'from_pretrained("you/s", trust_remote_code=True)' in without
    assert "`block_diffusion`" in without and "refuses it" in without
