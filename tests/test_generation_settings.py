"""Generation settings that decoding cannot honour are refused before any forward, naming the setting, the value and
what is accepted; a call-time ``max_length`` against a configured ``max_new_tokens`` is warned as transformers does."""

from __future__ import annotations

import json

import pytest
import torch
from transformers.testing_utils import CaptureLogger

import t3d_trl.generation.configuration as configuration
from t3d_trl import DiffusionGenerationConfig, patch_model
from t3d_trl.testing import tiny_qwen3, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(padding_side="left")


@pytest.fixture()
def model(tokenizer):
    """A patched tiny model that records its forwards in ``model.forwards``."""
    patched = patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=8)
    patched.forwards = []
    patched.register_forward_pre_hook(lambda *args: patched.forwards.append(1))
    return patched


def _ids(tokenizer):
    return torch.tensor([tokenizer("abc")["input_ids"]])


@pytest.mark.parametrize("temperature", [float("nan"), float("inf")])
def test_non_finite_temperature_is_refused_before_any_forward(model, tokenizer, temperature):
    with pytest.raises(ValueError, match=rf"`temperature` must be a finite number >= 0.*got {temperature}"):
        model.generate(_ids(tokenizer), temperature=temperature)
    with pytest.raises(ValueError, match="`temperature` must be a finite number"):
        patch_model(tiny_qwen3(), tokenizer, temperature=temperature)
    assert model.forwards == []


@pytest.mark.parametrize("temperature", ["hot", True, [0.5]])
def test_temperature_that_is_not_a_number_is_refused(model, tokenizer, temperature):
    with pytest.raises(ValueError, match=r"`temperature` must be a number >= 0"):
        model.generate(_ids(tokenizer), temperature=temperature)
    assert model.forwards == []


@pytest.mark.parametrize("top_p", [1.5, -0.1, float("nan"), True])
def test_top_p_outside_zero_one_is_refused(model, tokenizer, top_p):
    with pytest.raises(ValueError, match=r"`top_p` must be a number between 0 and 1 .*got"):
        model.generate(_ids(tokenizer), temperature=1.0, top_p=top_p)
    with pytest.raises(ValueError, match="`top_p`"):
        DiffusionGenerationConfig(top_p=top_p)
    assert model.forwards == []


@pytest.mark.parametrize("top_k", [-3, 2.0, True])
def test_top_k_that_is_not_a_non_negative_integer_is_refused(model, tokenizer, top_k):
    with pytest.raises(ValueError, match=rf"`top_k` must be an integer >= 0 .*got {top_k!r}"):
        model.generate(_ids(tokenizer), temperature=1.0, top_k=top_k)
    assert model.forwards == []


def test_top_k_zero_and_top_p_one_mean_off(model, tokenizer):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    plain = model.generate(_ids(tokenizer), temperature=1.0, generator=generator)
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(model.generate(_ids(tokenizer), temperature=1.0, top_k=0, top_p=1.0, generator=generator), plain)


@pytest.mark.parametrize("field", ["block_size", "steps_per_block"])
def test_boolean_block_size_and_steps_are_refused(model, tokenizer, field):
    with pytest.raises(ValueError, match=rf"`{field}` must be .*got True"):
        model.generate(_ids(tokenizer), **{field: True})
    with pytest.raises(ValueError, match=rf"`{field}` must be"):
        patch_model(tiny_qwen3(), tokenizer, **{field: True})
    assert model.forwards == []


def test_float_mask_token_id_is_refused_with_its_type(model, tokenizer):
    with pytest.raises(ValueError, match=r"`mask_token_id` must be a non-negative integer token id, got 2.0 \(float\)"):
        model.generate(_ids(tokenizer), mask_token_id=2.0)
    with pytest.raises(ValueError, match=r"got 2.0 \(float\)"):
        patch_model(tiny_qwen3(), tokenizer, mask_token_id=2.0)
    with pytest.raises(ValueError, match=r"got -1 \(int\)"):
        model.generate(_ids(tokenizer), mask_token_id=-1)
    assert model.forwards == []


def test_mask_token_string_is_refused_with_the_way_to_its_id(model, tokenizer):
    with pytest.raises(ValueError, match=r"got the string '<mask>'.*tokenizer.convert_tokens_to_ids\('<mask>'\)"):
        model.generate(_ids(tokenizer), mask_token_id="<mask>")
    with pytest.raises(ValueError, match="patch_model\\(model, tokenizer\\)"):
        patch_model(tiny_qwen3(), tokenizer, mask_token_id="<mask>")
    assert model.forwards == []
    assert patch_model(tiny_qwen3(), tokenizer).generation_config.mask_token_id == tokenizer.mask_token_id


def test_call_time_max_length_against_configured_max_new_tokens_warns_as_transformers(model, tokenizer):
    with CaptureLogger(configuration.logger) as captured:
        out = model.generate(_ids(tokenizer), max_length=6)
    assert "Both `max_new_tokens` (=8) and `max_length`(=6) seem to have been set" in captured.out
    assert "`max_new_tokens` will take precedence" in captured.out
    assert out.shape[1] == 3 + 8  # as transformers: max_new_tokens wins
    with CaptureLogger(configuration.logger) as captured:
        out = model.generate(_ids(tokenizer), max_length=6, max_new_tokens=None)
    assert captured.out == "" and out.shape[1] == 6  # max_length alone counts the prompt
    with CaptureLogger(configuration.logger) as captured:
        model.generate(_ids(tokenizer))
    assert captured.out == ""


def test_a_saved_student_loaded_by_transformers_alone_refuses_steps_per_block(tmp_path, tokenizer):
    """The diffusion settings are saved under one key: transformers alone has no `steps_per_block` field, so it refuses
    the argument instead of decoding autoregressively with it silently accepted; the saved note says what to do."""
    from transformers import GenerationConfig, Qwen3ForCausalLM

    from t3d_trl.generation.configuration import HOW_TO_DECODE

    patch_model(tiny_qwen3(), tokenizer, block_size=4, steps_per_block=2, max_new_tokens=8).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert (
        saved["block_diffusion"]["steps_per_block"] == 2 and saved["block_diffusion"]["how_to_decode"] == HOW_TO_DECODE
    )
    assert "trust_remote_code=True" in HOW_TO_DECODE and "import t3d_trl" in HOW_TO_DECODE
    assert saved["max_new_tokens"] == 8 and not {"block_size", "steps_per_block", "mask_token_id"} & set(saved)

    plain = Qwen3ForCausalLM.from_pretrained(tmp_path)  # a concrete class: transformers alone, no load hook
    assert not hasattr(plain, "diffusion_family") and type(plain.generation_config) is GenerationConfig
    with pytest.raises(ValueError, match=r"model_kwargs.*not used by the model.*\['steps_per_block'\]"):
        plain.generate(_ids(tokenizer), steps_per_block=1)

    restored = patch_model(plain, tokenizer)  # t3d-trl reads the settings back
    assert (restored.generation_config.block_size, restored.generation_config.steps_per_block) == (4, 2)
    assert restored.generation_config.max_new_tokens == 8


def test_generation_configs_saved_with_top_level_settings_still_load(tmp_path, tokenizer):
    """Files written before the settings moved under `block_diffusion` keep their settings."""
    from transformers import AutoModelForCausalLM

    tiny_qwen3().save_pretrained(tmp_path)
    flat = {"block_size": 8, "steps_per_block": 4, "remasking": "sequential", "mask_token_id": 2, "max_new_tokens": 8}
    (tmp_path / "generation_config.json").write_text(json.dumps(flat))
    model = AutoModelForCausalLM.from_pretrained(tmp_path)  # the load hook patches it
    config = model.generation_config
    assert isinstance(config, DiffusionGenerationConfig)
    assert (config.block_size, config.steps_per_block, config.remasking) == (8, 4, "sequential")
    assert DiffusionGenerationConfig.from_pretrained(tmp_path).block_size == 8
