"""Few-step block diffusion decoding: semantics, batching, caching, loading and bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GenerationMixin,
    Qwen3ForCausalLM,
)

import t3d_trl
import t3d_trl.generation
import t3d_trl.models.sdar
from t3d_trl import DiffusionGenerationConfig, patch_model
from t3d_trl.generation import num_transfer_tokens
from t3d_trl.generation.remasking import get_remasking_strategy
from t3d_trl.testing import tiny_qwen3, tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTS = ["abc", "hello wor", "what is 2+3?", "abcdefgh"]  # lengths 3, 9, 12, 8: tails 3, 1, 0, 0 at B=4


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    return tok


@pytest.fixture()
def model(tokenizer):
    return patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=16)


def reference_decode(model, prompt_ids, block_size, steps, max_new_tokens, mask_id, eos_id):
    """A plain decoder for one prompt: recomputes the whole sequence at every step, no cache, no batching.

    Block-causal attention (bidirectional inside a block, causal across blocks, blocks at absolute positions),
    greedy tokens, the k most confident masked positions per step (leftmost on ties).
    """
    sequence = list(prompt_ids)
    length = len(sequence)
    first_block = length // block_size
    last_position = length + max_new_tokens
    num_blocks = -(-last_position // block_size) - first_block
    sequence += [mask_id] * ((first_block + num_blocks) * block_size - length)
    generated = [False] * length + [True] * (len(sequence) - length)
    base, extra = divmod(block_size, steps)
    for block in range(first_block, first_block + num_blocks):
        start, end = block * block_size, (block + 1) * block_size
        for step in range(steps):
            masked = [i for i in range(start, end) if generated[i] and sequence[i] == mask_id]
            if not masked:
                break
            ids = torch.tensor([sequence[:end]])
            blocks = torch.arange(end) // block_size
            attention = (blocks[None, :] <= blocks[:, None])[None, None]
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=attention, position_ids=torch.arange(end)[None]).logits[0]
            probs = logits.float().softmax(-1)
            confidence, tokens = probs.max(-1)
            k = min(base + (1 if step < extra else 0), len(masked))
            chosen = sorted(masked, key=lambda i: (-float(confidence[i]), i))[:k]
            for i in chosen:
                sequence[i] = int(tokens[i])
        block_tokens = [sequence[i] for i in range(start, end) if generated[i]]
        if eos_id in block_tokens or end - length >= max_new_tokens:
            break
    completion = sequence[length : length + max_new_tokens]
    if eos_id in completion:
        completion = completion[: completion.index(eos_id) + 1]
    return [t for t in completion if t != mask_id]


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("prompt", ["abc", "abcdefgh", "hello wor"])
def test_cached_decoding_matches_plain_recompute(model, tokenizer, prompt, steps):
    ids = tokenizer(prompt)["input_ids"]
    expected = reference_decode(model, ids, 4, steps, 13, tokenizer.mask_token_id, tokenizer.eos_token_id)
    for use_cache in (True, False):
        out = model.generate(torch.tensor([ids]), steps_per_block=steps, max_new_tokens=13, use_cache=use_cache)
        completion = out[0, len(ids) :].tolist()
        assert completion == expected


def test_forwards_per_block_equal_steps_with_fused_store(model, tokenizer):
    ids = torch.tensor([tokenizer("abcdefgh")["input_ids"]])  # no prompt tail: every block is generated
    for steps in (1, 2, 4):
        out = model.generate(ids, steps_per_block=steps, max_new_tokens=16, return_dict_in_generate=True)
        num_blocks = 16 // 4
        assert out.nfe.tolist() == [steps * num_blocks]
        unfused = t3d_trl.generation.diffusion_generate(
            model,
            model.diffusion_family,
            ids,
            None,
            DiffusionGenerationConfig.from_generation_config(
                model.generation_config, steps_per_block=steps, return_dict_in_generate=True
            ),
            fuse_store=False,
        )
        assert unfused.nfe.tolist() == [(steps + 1) * num_blocks]  # a separate prefill/store pass before each block
        assert torch.equal(unfused.sequences, out.sequences)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_static_schedule_in_every_block(model, tokenizer, steps):
    block_size = 4
    ids = torch.tensor([tokenizer("abcdefgh")["input_ids"]])
    out = model.generate(ids, steps_per_block=steps, max_new_tokens=16, return_dict_in_generate=True)
    step_map = out.step_map[0]
    schedule = num_transfer_tokens(block_size, steps)
    assert sum(schedule) == block_size
    for block in range(step_map.numel() // block_size):
        steps_in_block = step_map[block * block_size : (block + 1) * block_size]
        counts = torch.bincount(steps_in_block - block * steps, minlength=steps).tolist()
        assert counts == schedule
    if steps == block_size:
        assert sorted(step_map.tolist()) == list(range(16))  # one token per step


def test_prompt_tail_shares_first_block(model, tokenizer):
    ids = torch.tensor([tokenizer("hello wor")["input_ids"]])  # 9 tokens: tail of 1 in block 2
    out = model.generate(ids, steps_per_block=2, max_new_tokens=11, return_dict_in_generate=True)
    # the first block has 3 generated positions: 2 at step 0, 1 at step 1
    assert out.step_map[0, :3].sort().values.tolist() == [0, 0, 1]
    assert out.step_map[0, 3:].tolist().count(2) == 2


def test_dynamic_remasking_commits_above_threshold_and_at_least_schedule():
    strategy = get_remasking_strategy("low_confidence_dynamic", confidence_threshold=0.5)
    confidence = torch.tensor([[0.9, 0.6, 0.1, 0.2], [0.3, 0.2, 0.1, 0.05], [0.99, 0.98, 0.97, 0.96]])
    masked = torch.tensor([[True, True, True, True], [True, True, True, True], [False, True, True, True]])
    commit = strategy.select(confidence, None, masked, 1)
    assert commit.tolist() == [
        [True, True, False, False],  # both above the threshold
        [True, False, False, False],  # none above: the k = 1 most confident
        [False, True, True, True],  # only masked positions
    ]


def test_dynamic_decoding_step_map(model, tokenizer):
    ids = torch.tensor([tokenizer("abcdefgh")["input_ids"]])
    everything = model.generate(
        ids, remasking="low_confidence_dynamic", confidence_threshold=0.0, return_dict_in_generate=True
    )
    assert everything.nfe.item() == 4  # threshold 0: every position of a block in one step
    static = model.generate(ids, steps_per_block=2, return_dict_in_generate=True)
    strict = model.generate(
        ids,
        steps_per_block=2,
        remasking="low_confidence_dynamic",
        confidence_threshold=1.0,
        return_dict_in_generate=True,
    )
    assert torch.equal(strict.sequences, static.sequences)  # nothing above 1.0: the static schedule
    assert torch.equal(strict.step_map, static.step_map)


def test_sequential_and_entropy_bounded():
    masked = torch.tensor([[False, True, True, True]])
    confidence = torch.tensor([[0.1, 0.2, 0.9, 0.3]])
    entropy = torch.tensor([[0.0, 0.4, 0.1, 0.5]])
    assert get_remasking_strategy("sequential").select(confidence, entropy, masked, 2).tolist() == [
        [False, True, True, False]
    ]
    bounded = get_remasking_strategy("entropy_bounded", entropy_bound=0.55)
    assert bounded.select(confidence, entropy, masked, 1).tolist() == [[False, True, True, False]]
    tight = get_remasking_strategy("entropy_bounded", entropy_bound=0.01)
    assert tight.select(confidence, entropy, masked, 1).tolist() == [[False, False, True, False]]  # at least one


def test_entropy_bounded_decoding_completes(model, tokenizer):
    ids = torch.tensor([tokenizer("abcdefgh")["input_ids"]])
    out = model.generate(ids, remasking="entropy_bounded", entropy_bound=0.5, return_dict_in_generate=True)
    assert out.step_map.shape[1] == 16 and bool((out.step_map >= 0).all())
    assert 4 <= out.nfe.item() <= 16


@pytest.mark.parametrize("remasking", ["low_confidence_static", "low_confidence_dynamic", "sequential"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_batch_equals_one_by_one(model, tokenizer, remasking, steps):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kwargs = dict(steps_per_block=steps, remasking=remasking, confidence_threshold=0.3, return_dict_in_generate=True)
    out = model.generate(**batch, **kwargs)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(**tokenizer([prompt], return_tensors="pt"), **kwargs)
        n = alone.step_map.shape[1]
        assert out.sequences[row, width : width + n].tolist() == alone.sequences[0, -n:].tolist()
        assert out.step_map[row, :n].tolist() == alone.step_map[0].tolist()
        assert bool((out.step_map[row, n:] == -1).all())
        assert out.nfe[row] == alone.nfe[0]


def test_right_padding_is_accepted(model, tokenizer):
    left = model.generate(**tokenizer(PROMPTS, return_tensors="pt", padding=True))
    tokenizer.padding_side = "right"
    try:
        right_batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        right = model.generate(**right_batch)
    finally:
        tokenizer.padding_side = "left"
    width = right_batch["input_ids"].shape[1]
    assert torch.equal(left[:, width:], right[:, width:])


def test_eos_ends_sequences_and_frees_rows(model, tokenizer):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    free = model.generate(**batch, steps_per_block=2, max_new_tokens=24, return_dict_in_generate=True)
    eos = int(free.sequences[1, width + 5])  # a token the model emits: use it as EOS
    pad = tokenizer.pad_token_id
    out = model.generate(**batch, steps_per_block=2, max_new_tokens=24, eos_token_id=eos, return_dict_in_generate=True)
    generated = out.sequences[:, width:]
    assert bool((generated == eos).any(1)[1])
    for row, prompt in enumerate(PROMPTS):
        tokens = generated[row].tolist()
        tail = len(tokenizer(prompt)["input_ids"]) % 4
        if eos in tokens:
            end = tokens.index(eos) + 1
            assert tokens[:end] == free.sequences[row, width : width + end].tolist()
            assert all(t == pad for t in tokens[end:])
            assert all(s == -1 for s in out.step_map[row, end:].tolist())
            blocks_used = -(-(end + tail) // 4)
            assert out.nfe[row] == 2 * blocks_used - (1 if tail >= 3 else 0)  # no forwards after the EOS block
            assert out.nfe[row] < free.nfe[row]
        alone = model.generate(
            **tokenizer([prompt], return_tensors="pt"), steps_per_block=2, max_new_tokens=24, eos_token_id=eos
        )
        n = alone.shape[1] - len(tokenizer(prompt)["input_ids"])
        assert generated[row, :n].tolist() == alone[0, -n:].tolist()


def test_output_formats_and_trajectory(model, tokenizer):
    batch = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    plain = model.generate(**batch, steps_per_block=2)
    assert isinstance(plain, torch.Tensor) and plain.dtype == torch.long
    out = model.generate(**batch, steps_per_block=2, return_dict_in_generate=True, output_trajectory=True)
    assert torch.equal(out.sequences, plain)
    width = batch["input_ids"].shape[1]
    generated = out.sequences[:, width:]
    trajectory = out.trajectory
    assert trajectory.shape == (int(out.step_map.max()) + 1, 2, generated.shape[1])
    assert torch.equal(trajectory[-1], generated)
    mask_id = tokenizer.mask_token_id
    masks_left = (trajectory == mask_id).sum((1, 2))
    assert bool((masks_left[1:] <= masks_left[:-1]).all())  # every step commits, nothing is remasked
    first_state_commits = ((trajectory[0] != mask_id) & (out.step_map >= 0)).sum().item()
    assert first_state_commits == int((out.step_map == 0).sum())


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, tokenizer):
    ids = torch.tensor([tokenizer("hello wor")["input_ids"]])
    # top-k = 1 samples the argmax; its confidence is 1 everywhere, so compare under a confidence-free order
    greedy = model.generate(ids, steps_per_block=2, remasking="sequential")
    top1 = model.generate(ids, steps_per_block=2, remasking="sequential", temperature=0.8, top_k=1)
    assert torch.equal(greedy, top1)
    a = model.generate(ids, steps_per_block=2, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, steps_per_block=2, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def _kernel_matches_sdpa(tokenizer, kernel, device="cpu"):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(device)
    reference = patch_model(tiny_qwen3(dtype=torch.float32).to(device), tokenizer, block_size=4, max_new_tokens=12)
    model = patch_model(tiny_qwen3(dtype=torch.float32).to(device), tokenizer, block_size=4, max_new_tokens=12)
    model.set_attn_implementation(kernel)
    assert torch.equal(model.generate(**batch, steps_per_block=2), reference.generate(**batch, steps_per_block=2))


def test_eager_kernel_matches_sdpa(tokenizer):
    _kernel_matches_sdpa(tokenizer, "eager")


@pytest.mark.gpu
def test_flex_attention_kernel_matches_sdpa(tokenizer):
    # flex_attention compiles its kernel; on CPU that takes minutes, so it runs with the GPU checks
    _kernel_matches_sdpa(tokenizer, "flex_attention", device="cuda")


def test_patch_is_per_class_and_leaves_other_instances_alone(tokenizer):
    plain = tiny_qwen3()
    first = patch_model(tiny_qwen3(), tokenizer)
    second = patch_model(tiny_qwen3(seed=1), tokenizer)
    assert type(first) is type(second)
    assert type(first).__name__ == "Qwen3ForCausalLM" and type(first) is not type(plain)
    assert type(plain).generate is GenerationMixin.generate
    assert patch_model(first, tokenizer) is first and type(patch_model(first)) is type(second)
    out = plain(input_ids=torch.tensor([[4, 5, 6]]))  # forward untouched
    assert out.logits.shape == (1, 3, 48)


def test_save_and_load_keeps_diffusion_defaults(tmp_path, tokenizer):
    model = patch_model(tiny_qwen3(), tokenizer, block_size=8, steps_per_block=2, max_new_tokens=16)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    settings = saved["block_diffusion"]  # the diffusion settings, under one key (see test_generation_settings.py)
    assert settings["block_size"] == 8 and settings["mask_token_id"] == tokenizer.mask_token_id
    assert saved["max_new_tokens"] == 16 and "block_size" not in saved
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    loaded = patch_model(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64))
    assert isinstance(loaded.generation_config, DiffusionGenerationConfig)
    assert loaded.generation_config.block_size == 8 and loaded.generation_config.steps_per_block == 2
    assert loaded.generation_config.mask_token_id == tokenizer.mask_token_id
    ids = torch.tensor([tokenizer("hello wor")["input_ids"]])
    assert torch.equal(loaded.generate(ids), model.generate(ids))


def test_custom_generate_matches_mixin(tmp_path, tokenizer):
    model = patch_model(tiny_qwen3(), tokenizer, block_size=4, steps_per_block=2, max_new_tokens=12)
    model.save_pretrained(tmp_path)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected = model.generate(**batch, return_dict_in_generate=True)
    unpatched = Qwen3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)  # a concrete class: no load hook
    assert not isinstance(unpatched, t3d_trl.FewStepDiffusionGenerationMixin)
    out = unpatched.generate(
        **batch, custom_generate=str(tmp_path), trust_remote_code=True, return_dict_in_generate=True
    )
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.step_map, expected.step_map)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64, trust_remote_code=True)
    assert torch.equal(auto.generate(**batch, steps_per_block=4), model.generate(**batch, steps_per_block=4))
    source = (tmp_path / "custom_generate" / "generate.py").read_text()
    assert not re.search(r"^\s*(from|import) (t3d_trl|\.)", source, re.MULTILINE)  # runs without t3d-trl


def _write_sdar_checkpoint(path: Path, remote_code: bool) -> None:
    """An SDAR-style checkpoint: Qwen3 weights under ``model_type: sdar`` (and SDAR's remote-code layout)."""
    tiny_qwen3().save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "sdar"
    config["architectures"] = ["SDARForCausalLM"]
    if remote_code:
        config["auto_map"] = {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        }
        for name in ("configuration_sdar.py", "modeling_sdar.py"):
            shutil.copy(FIXTURES / "sdar_remote" / name, path / name)
    (path / "config.json").write_text(json.dumps(config))


def test_sdar_checkpoint_loads_natively_as_qwen3(tmp_path, tokenizer):
    _write_sdar_checkpoint(tmp_path, remote_code=True)
    t3d_trl.register_sdar()
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)  # no remote code
    assert type(model) is t3d_trl.models.sdar.SDARForCausalLM
    patch_model(model, tokenizer, block_size=4, max_new_tokens=12)
    reference = patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=12)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert torch.equal(model.generate(**batch, steps_per_block=2), reference.generate(**batch, steps_per_block=2))
    model.set_attn_implementation("eager")
    model.generate(**batch, steps_per_block=2)


def test_sdar_remote_code_store_kv_interface(tmp_path, tokenizer):
    _write_sdar_checkpoint(tmp_path, remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")
    patch_model(model, tokenizer, block_size=4, max_new_tokens=12)
    assert type(model.diffusion_family).__name__ == "StoreKVFamily"
    reference = patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=12)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    for steps in (1, 2):
        out = model.generate(**batch, steps_per_block=steps, return_dict_in_generate=True)
        expected = reference.generate(**batch, steps_per_block=steps, return_dict_in_generate=True)
        assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.nfe, expected.nfe)


def _tiny_bert(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertForMaskedLM(config).double().eval()


def test_bidirectional_mask_predictor(tmp_path, tokenizer):
    model = patch_model(_tiny_bert(tokenizer), tokenizer, block_size=4, steps_per_block=2, max_new_tokens=10)
    assert model.diffusion_family.name == "bidirectional"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, return_dict_in_generate=True)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(**tokenizer([prompt], return_tensors="pt"), return_dict_in_generate=True)
        n = alone.step_map.shape[1]
        assert out.sequences[row, width : width + n].tolist() == alone.sequences[0, -n:].tolist()
    model.save_pretrained(tmp_path)
    loaded = patch_model(AutoModelForMaskedLM.from_pretrained(tmp_path, dtype=torch.float64))
    assert (
        loaded.generation_config.steps_per_block == 2
        and loaded.generation_config.mask_token_id == tokenizer.mask_token_id
    )
    assert torch.equal(loaded.generate(**batch), out.sequences)


def test_bad_input_fails_before_compute(tokenizer):
    model = patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=8)
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    with pytest.raises(ValueError, match="steps_per_block"):
        model.generate(ids, steps_per_block=0)
    with pytest.raises(ValueError, match="steps_per_block"):
        model.generate(ids, steps_per_block=5)
    with pytest.raises(ValueError, match="Unknown remasking strategy 'fastest'"):
        model.generate(ids, remasking="fastest")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(ids, max_new_tokens=300)
    with pytest.raises(ValueError, match="neither generation settings"):
        model.generate(ids, step_per_block=1)
    no_mask = patch_model(tiny_qwen3())
    no_mask.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="No mask token"):
        no_mask.generate(ids)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        model.generate(ids)
    assert calls == []


def test_config_validation_messages():
    with pytest.raises(ValueError, match="between 1 and `block_size` \\(4\\)"):
        DiffusionGenerationConfig(block_size=4, steps_per_block=8)
    config = DiffusionGenerationConfig(temperature=0.0)
    assert not config.do_sample and config.effective_temperature == 0.0
    config.update(temperature=0.7)
    assert config.do_sample and config.effective_temperature == pytest.approx(0.7)
    config.update(temperature=0)
    assert config.effective_temperature == 0.0
