import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch.set_num_threads(1)  # tiny models: more threads only add OpenMP contention


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; the same check runs in benchmarks/device_check.py")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


#: the pre-tokeniser pattern of Qwen2/Qwen3 (and SDAR) tokenizers: digits one by one
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
#: SDAR-4B-Chat's added tokens, ids 151643 to 151669 in this order (the mask last)
SDAR_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|MASK|>",
)
#: a ChatML template as SDAR's chat models read (user and assistant turns)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """A fast tokenizer with the real Qwen vocabulary (the 151,643 BPE ranks of Qwen2/Qwen3 and SDAR, shipped as
    ``dashscope/resources/qwen.tiktoken`` by the PyPI package ``dashscope``) and SDAR-4B-Chat's special tokens at
    151643-151669, built offline with transformers' ``TikTokenConverter`` (about 3 s). Skipped only when the test
    extra (``dashscope``, ``tiktoken``) is not installed."""
    import importlib.util
    from pathlib import Path

    missing = [name for name in ("dashscope", "tiktoken") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the real Qwen vocabulary needs the packages {missing} (pip install -e '.[dev]')")
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    (package,) = importlib.util.find_spec("dashscope").submodule_search_locations
    vocabulary = Path(package) / "resources" / "qwen.tiktoken"
    converter = TikTokenConverter(vocab_file=str(vocabulary), pattern=QWEN_PATTERN)
    backend = converter.converted()
    # as SDAR-4B-Chat's tokenizer_config.json: the first 14 are special, the others (and the mask) plain added tokens
    backend.add_special_tokens(list(SDAR_SPECIAL_TOKENS[:14]))
    backend.add_tokens(list(SDAR_SPECIAL_TOKENS[14:]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|MASK|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
