"""Tiny models and tokenizers built from configs for the tests (nothing is downloaded)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

SPECIAL_TOKENS = ["<pad>", "<eos>", "<mask>", "<bos>"]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789 +-=?.,:")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with pad/eos/mask tokens and a chat template."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join without spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", mask_token="<mask>", bos_token="<bos>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen3_config(vocab_size: int = 48, **overrides) -> Qwen3Config:
    values = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return Qwen3Config(**values)


def tiny_qwen3(seed: int = 0, dtype=torch.float64, **overrides) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(tiny_qwen3_config(**overrides)).to(dtype).eval()


def tiny_t3d_args(output_dir: str, **overrides):
    """A `T3DConfig` for short CPU runs of the tiny model (no saving, no reporting), with ``overrides``."""
    from t3d_trl import T3DConfig

    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=6,
        logging_steps=1,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        random_token_ratio=0.0,
    )
    values.update(overrides)
    return T3DConfig(**values)


def rollout_rows(model, tokenizer, prompts, block_size: int = 4, max_new_tokens: int = 12) -> list[dict]:
    """Teacher rollouts of ``prompts`` at one token per step, as trajectory rows (ids, step maps)."""
    from t3d_trl import patch_model

    patch_model(model, tokenizer, block_size=block_size)
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        out = model.generate(
            torch.tensor([ids]), steps_per_block=block_size, max_new_tokens=max_new_tokens, return_dict_in_generate=True
        )
        keep = out.step_map[0] >= 0
        completion = out.sequences[0, len(ids) :][keep].tolist()
        rows.append(
            {
                "prompt": prompt,
                "completion": tokenizer.decode(completion, skip_special_tokens=True),
                "prompt_ids": ids,
                "completion_ids": completion,
                "step_map": out.step_map[0][keep].tolist(),
                "block_size": block_size,
                "steps_per_block": block_size,
            }
        )
    return rows


def free_port() -> int:
    """A free TCP port on localhost, so concurrent multi-process tests do not share accelerate's default port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
