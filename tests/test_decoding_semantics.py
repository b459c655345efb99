"""Decoding semantics written from the references' descriptions (SDAR's and LLaDA's decoders), not from the code.

* LLaDA (bidirectional mask predictors): the generated region follows the prompt and is split into blocks that start
  at the first generated position; every step runs the model on the whole sequence with full attention, takes the
  argmax token at every masked position of the current block and its softmax probability as confidence, and commits
  the k most confident (k = B // S, plus one in the first B % S steps).
* Greedy means greedy: with temperature 0 the confidence is the softmax of the unfiltered logits, so the sampling
  settings top_k / top_p of a checkpoint's generation config change nothing.
* The mask token is never committed, whatever the family or the remasking strategy.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from t3d_trl import DiffusionGenerationConfig, patch_model
from t3d_trl.generation import remasking_names
from t3d_trl.testing import tiny_qwen3, tiny_tokenizer

BLOCK = 4


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    return tok


def tiny_bert(tokenizer, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertForMaskedLM(config).double().eval()


def llada_decode(model, prompt_ids, steps, gen_length, mask_id, eos_id):
    """LLaDA-style semi-autoregressive decoding of one prompt, from the description in the module docstring; the
    mask token's logit is excluded, and decoding stops after the block in which EOS appears."""
    sequence = list(prompt_ids) + [mask_id] * gen_length
    start = len(prompt_ids)
    base, extra = divmod(BLOCK, steps)
    for block_start in range(start, start + gen_length, BLOCK):
        block = range(block_start, block_start + BLOCK)
        for step in range(steps):
            masked = [i for i in block if sequence[i] == mask_id]
            if not masked:
                break
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([sequence])).logits[0].float()
            logits[:, mask_id] = float("-inf")
            confidence, tokens = logits.softmax(-1).max(-1)
            k = min(base + (1 if step < extra else 0), len(masked))
            for i in sorted(masked, key=lambda i: (-float(confidence[i]), i))[:k]:
                sequence[i] = int(tokens[i])
        if eos_id in [sequence[i] for i in block]:
            break
    completion = sequence[start:]
    if eos_id in completion:
        completion = completion[: completion.index(eos_id) + 1]
    return [t for t in completion if t != mask_id]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_bidirectional_blocks_start_at_the_first_generated_token(tokenizer, steps):
    model = patch_model(tiny_bert(tokenizer), tokenizer, block_size=BLOCK, max_new_tokens=12)
    assert model.diffusion_family.decoding_grid == "response"
    prompts = ["a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"]  # every length mod 4, twice
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    together = model.generate(**batch, steps_per_block=steps, return_dict_in_generate=True)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"]
        expected = llada_decode(model, ids, steps, 12, tokenizer.mask_token_id, tokenizer.eos_token_id)
        alone = model.generate(torch.tensor([ids]), steps_per_block=steps)[0, len(ids) :].tolist()
        assert alone[: len(expected)] == expected, prompt
        batched = together.sequences[row, width:][together.step_map[row] >= 0].tolist()
        assert batched == expected, prompt


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_greedy_ignores_top_k_and_top_p_of_the_generation_config(tokenizer, steps, caplog):
    plain = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, max_new_tokens=12)
    filtered = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, max_new_tokens=12, top_k=1, top_p=0.3)
    assert filtered.generation_config.top_k == 1 and not filtered.generation_config.do_sample
    batch = tokenizer(["abc", "hello wor", "abcdefgh"], return_tensors="pt", padding=True)
    expected = plain.generate(**batch, steps_per_block=steps, return_dict_in_generate=True)
    out = filtered.generate(**batch, steps_per_block=steps, temperature=0, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.step_map, expected.step_map)
    if steps == BLOCK:
        # top_k = 1 would give every position confidence 1 and commit left to right; the model's order is not that
        order = expected.step_map[expected.step_map >= 0].view(-1, BLOCK)
        assert not all(torch.equal(row, row.sort().values) for row in order)


def test_greedy_with_sampling_settings_warns_once(tokenizer):
    from transformers.testing_utils import CaptureLogger

    import t3d_trl.generation.decoding as decoding

    model = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, max_new_tokens=4, top_k=20, top_p=0.95)
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    decoding.logger.warning_once.cache_clear()
    with CaptureLogger(decoding.logger) as first:
        model.generate(ids)
    with CaptureLogger(decoding.logger) as second:
        model.generate(ids)
    assert "ignores the sampling settings top_k=20, top_p=0.95" in first.out
    assert "ignores" not in second.out


def _prefer_mask(model, mask_id):
    """Make the mask token the argmax everywhere (a forward hook adds a large bias to its logit)."""

    def hook(module, args, output):
        output.logits[..., mask_id] += 1e4
        return output

    model.register_forward_hook(hook)
    return model


@pytest.mark.parametrize("remasking", [name for name in remasking_names()])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_mask_token_is_never_committed(tokenizer, remasking, temperature):
    mask_id = tokenizer.mask_token_id
    batch = tokenizer(["abc", "hello wor"], return_tensors="pt", padding=True)
    for model in (tiny_qwen3(), tiny_bert(tokenizer)):
        model = patch_model(_prefer_mask(model, mask_id), tokenizer, block_size=BLOCK, max_new_tokens=8)
        with torch.no_grad():
            assert int(model(**batch).logits.argmax(-1).eq(mask_id).float().mean()) == 1  # it does prefer the mask
        out = model.generate(
            **batch,
            steps_per_block=2,
            remasking=remasking,
            temperature=temperature,
            return_dict_in_generate=True,
            generator=torch.Generator().manual_seed(0),
        )
        generated = out.sequences[:, batch["input_ids"].shape[1] :]
        assert mask_id not in generated[out.step_map >= 0].tolist()
        assert bool((out.step_map >= 0).any())


def test_random_remasking_commits_uniform_subsets_of_masked_positions():
    from t3d_trl.generation import get_remasking_strategy

    strategy = get_remasking_strategy("random")
    masked = torch.tensor([[False, True, True, True]]).expand(3000, -1)
    confidence = torch.tensor([[0.0, 0.9, 0.1, 0.5]]).expand(3000, -1)  # ignored
    commit = strategy.select(confidence, None, masked, 1, torch.Generator().manual_seed(0))
    assert bool((commit.sum(-1) == 1).all()) and not bool(commit[:, 0].any())
    share = commit[:, 1:].float().mean(0)
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.03), share


def test_llada_names_are_accepted(tokenizer):
    model = patch_model(tiny_bert(tokenizer), tokenizer, block_size=BLOCK, max_new_tokens=8)
    batch = tokenizer(["abc"], return_tensors="pt")
    static = model.generate(**batch, steps_per_block=2, remasking="low_confidence_static")
    assert torch.equal(model.generate(**batch, steps_per_block=2, remasking="low_confidence"), static)
    first = model.generate(**batch, steps_per_block=4, remasking="random", generator=torch.Generator().manual_seed(1))
    again = model.generate(**batch, steps_per_block=4, remasking="random", generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)


def test_num_return_sequences_gives_n_samples_per_prompt(tokenizer):
    model = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, max_new_tokens=8)
    batch = tokenizer(["abc", "hello wor"], return_tensors="pt", padding=True)
    out = model.generate(
        **batch,
        temperature=1.0,
        num_return_sequences=3,
        return_dict_in_generate=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.sequences.shape[0] == 6 and out.step_map.shape[0] == 6 and out.nfe.shape == (6,)
    width = batch["input_ids"].shape[1]
    for row in range(6):  # each prompt's samples stay together
        assert torch.equal(out.sequences[row, :width], batch["input_ids"][row // 3])
    assert len({tuple(out.sequences[row].tolist()) for row in range(3)}) > 1  # samples differ
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(**batch, num_return_sequences=2)  # greedy: n identical copies are refused


def test_max_length_counts_the_prompt(tokenizer):
    model = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, eos_token_id=None)
    model.generation_config.eos_token_id = None
    ids = torch.tensor([tokenizer("hello wor")["input_ids"]])  # 9 tokens
    out = model.generate(ids, max_length=15, return_dict_in_generate=True)
    assert out.sequences.shape[1] == 15 and int((out.step_map >= 0).sum()) == 6
    both = model.generate(ids, max_length=15, max_new_tokens=3)
    assert both.shape[1] == 9 + 3  # max_new_tokens takes precedence, as in transformers
    with pytest.raises(ValueError, match="max_length"):
        model.generate(ids, max_length=9)


def test_unsupported_generation_options_are_refused(tokenizer):
    model = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, max_new_tokens=4)
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    for option in (
        {"num_beams": 2},
        {"repetition_penalty": 1.2},
        {"output_scores": True},
        {"min_new_tokens": 3},
        {"no_repeat_ngram_size": 2},
        {"synced_gpus": True},
    ):
        with pytest.raises(ValueError, match=next(iter(option))):
            model.generate(ids, **option)
    model.generate(ids, num_beams=1, repetition_penalty=1.0, trust_remote_code=True)  # neutral values and the flag


def test_checkpoint_options_that_cannot_apply_are_reported(tokenizer, tmp_path):
    from transformers.testing_utils import CaptureLogger

    import t3d_trl.generation.decoding as decoding

    model = patch_model(tiny_qwen3(), tokenizer, block_size=BLOCK, max_new_tokens=4)
    model.generation_config.repetition_penalty = 1.3  # e.g. set by a checkpoint's generation_config.json
    decoding.logger.warning_once.cache_clear()
    with CaptureLogger(decoding.logger) as captured:
        model.generate(torch.tensor([tokenizer("abc")["input_ids"]]))
    assert "repetition_penalty" in captured.out and "ignored" in captured.out


def test_invalid_config_is_refused_when_built_or_saved(tmp_path):
    with pytest.raises(ValueError, match="steps_per_block"):
        DiffusionGenerationConfig(block_size=4, steps_per_block=5)
    config = DiffusionGenerationConfig(block_size=4)
    config.steps_per_block = 7  # set behind the config's back
    with pytest.raises(ValueError, match="steps_per_block"):
        config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="confidence_threshold"):
        DiffusionGenerationConfig(confidence_threshold=float("nan"))
