"""Static-shape decoding (``cache_implementation="static"``): the dynamic path's tokens, ``step_map`` and ``nfe`` with
fixed shapes, one compiled graph for every forward after the prefill, and a logged fallback where it cannot apply."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig, Qwen3ForCausalLM
from transformers.testing_utils import CaptureLogger

import t3d_trl.generation.decoding as decoding
from t3d_trl import DiffusionGenerationConfig, patch_model
from t3d_trl.generation import diffusion_generate
from t3d_trl.generation.static import STATIC_CACHE_ATTRIBUTE
from t3d_trl.models.cache import IndexedStaticCache
from t3d_trl.models.families import BlockCausalFamily, StoreKVFamily
from t3d_trl.testing import tiny_qwen3, tiny_tokenizer

PROMPTS = ["abc", "hello wor", "what is 2+3?", "abcdefgh"]  # lengths 3, 9, 12, 8: tails 3, 1, 0, 0 at B=4
STATIC = {"cache_implementation": "static", "disable_compile": True}  # static shapes, not compiled


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(padding_side="left")


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


def _model(tokenizer, **defaults):
    return patch_model(tiny_qwen3(), tokenizer, block_size=4, max_new_tokens=16, **defaults)


def _eos_in_the_middle(model, batch) -> int:
    """A token the first row emits in its third block: with it as EOS, rows stop in different blocks."""
    out = model.generate(**batch, eos_token_id=None, max_new_tokens=24)
    return int(out[0, batch["input_ids"].shape[1] + 6])


def _assert_same_decoding(got, expected):
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.equal(got.step_map, expected.step_map)
    assert torch.equal(got.nfe, expected.nfe)


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("remasking", ["low_confidence_static", "low_confidence_dynamic", "sequential"])
def test_static_decoding_equals_dynamic(tokenizer, batch, steps, remasking):
    model = _model(tokenizer, remasking=remasking, steps_per_block=steps)
    eos = _eos_in_the_middle(model, batch)
    for settings in ({"max_new_tokens": 23}, {"max_new_tokens": 24, "eos_token_id": eos}):
        expected = model.generate(**batch, return_dict_in_generate=True, **settings)
        got = model.generate(**batch, return_dict_in_generate=True, **STATIC, **settings)
        _assert_same_decoding(got, expected)
    assert len(set(expected.nfe.tolist())) > 1  # rows stopped in different blocks; the static batch kept them all


@pytest.mark.parametrize("variant", ["shift_logits", "eager_attention", "right_padding", "one_row", "short_prompts"])
def test_static_decoding_equals_dynamic_variants(tokenizer, variant):
    model = _model(tokenizer, steps_per_block=2, shift_logits=variant == "shift_logits")
    if variant == "eager_attention":
        model.set_attn_implementation("eager")
    tokenizer_side = tiny_tokenizer(padding_side="right" if variant == "right_padding" else "left")
    # short prompts have no whole block: the first block's store slot lies before the canvas
    prompts = {"one_row": PROMPTS[1:2], "short_prompts": ["ab", "abc", "a"]}.get(variant, PROMPTS)
    batch = tokenizer_side(prompts, return_tensors="pt", padding=True)
    expected = model.generate(**batch, return_dict_in_generate=True, output_trajectory=True)
    got = model.generate(**batch, return_dict_in_generate=True, output_trajectory=True, **STATIC)
    _assert_same_decoding(got, expected)
    assert torch.equal(got.trajectory, expected.trajectory)


def test_static_sampling_is_seeded(tokenizer, batch):
    model = _model(tokenizer, steps_per_block=2)
    runs = [
        model.generate(**batch, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(3), **STATIC)
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def _counting_backend(graphs: list, calls: list):
    """A torch.compile backend that runs the traced graph as it is and records compilations and calls."""

    def backend(graph_module, example_inputs, **options):  # options: the CompileConfig mode, ignored
        index = len(graphs)
        graphs.append(graph_module)

        def run(*args):
            calls.append(index)
            return graph_module.forward(*args)

        return run

    return backend


def test_every_forward_after_the_prefill_runs_one_compiled_graph(tokenizer, batch):
    graphs, calls = [], []
    compile_config = CompileConfig(backend=_counting_backend(graphs, calls), fullgraph=True)
    model = _model(tokenizer)
    for steps in (1, 2, 4, 1):
        del calls[:]
        settings = {"steps_per_block": steps, "max_new_tokens": 23, "eos_token_id": None}
        expected = model.generate(**batch, return_dict_in_generate=True, **settings)
        got = model.generate(
            **batch,
            return_dict_in_generate=True,
            cache_implementation="static",
            compile_config=compile_config,
            **settings,
        )
        _assert_same_decoding(got, expected)
        blocks = 7  # 23 new tokens after a 12-token prompt, and the 3-token prompt's first block: 7 blocks of 4
        assert len(calls) == blocks * steps - 1  # every forward but the uncompiled prefill
        assert len(graphs) == 1 and set(calls) == {0}  # one graph, compiled by the first decode, for every decode


@pytest.mark.slow  # inductor compiles the tiny model in about 30 s on two busy cores
def test_inductor_compiled_static_decoding_equals_dynamic(tokenizer, batch):
    from torch._dynamo.utils import counters

    model = _model(tokenizer)
    before = counters["stats"]["unique_graphs"]
    for steps in (1, 2, 4):
        expected = model.generate(**batch, steps_per_block=steps, return_dict_in_generate=True)
        got = model.generate(
            **batch,
            steps_per_block=steps,
            return_dict_in_generate=True,
            cache_implementation="static",
            compile_config=CompileConfig(fullgraph=True),
        )
        _assert_same_decoding(got, expected)
    assert counters["stats"]["unique_graphs"] - before == 1


def test_static_cache_is_kept_and_reused(tokenizer, batch):
    model = _model(tokenizer)
    model.generate(**batch, **STATIC)
    cache = getattr(model, STATIC_CACHE_ATTRIBUTE)
    assert isinstance(cache, IndexedStaticCache) and cache.max_cache_len % 64 == 0
    model.generate(**batch, steps_per_block=1, **STATIC)
    assert getattr(model, STATIC_CACHE_ATTRIBUTE) is cache  # same rows, enough slots: no new buffers, no new graph
    model.generate(**batch, **STATIC, max_cache_len=300)
    assert getattr(model, STATIC_CACHE_ATTRIBUTE).max_cache_len == 300  # the capacity, as in transformers
    model.generate(batch["input_ids"][:2], attention_mask=batch["attention_mask"][:2], **STATIC)
    assert getattr(model, STATIC_CACHE_ATTRIBUTE) is not cache


@pytest.mark.parametrize(
    "case, reason",
    [
        ("entropy_bounded", "adaptive number of steps"),
        ("no_cache", "use_cache=False"),
        ("unfused_store", "fuse_store=False"),
        ("bidirectional", "bidirectional family"),
    ],
)
def test_static_falls_back_to_the_dynamic_path_with_a_reason(tokenizer, batch, case, reason):
    family = "bidirectional" if case == "bidirectional" else None
    model = _model(tokenizer, steps_per_block=2, family=family)
    settings = {"remasking": "entropy_bounded"} if case == "entropy_bounded" else {}
    config = DiffusionGenerationConfig.from_generation_config(
        model.generation_config, return_dict_in_generate=True, **settings
    )
    static_config = DiffusionGenerationConfig.from_generation_config(config, **STATIC)
    options = {"use_cache": case != "no_cache", "fuse_store": case != "unfused_store"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = diffusion_generate(model, model.diffusion_family, ids, mask, config, **options)
    decoding.logger.warning_once.cache_clear()
    with CaptureLogger(decoding.logger) as captured:
        got = diffusion_generate(model, model.diffusion_family, ids, mask, static_config, **options)
    _assert_same_decoding(got, expected)
    assert "falls back to the dynamic decoding path" in captured.out and reason in captured.out
    assert not hasattr(model, STATIC_CACHE_ATTRIBUTE)


def test_models_without_a_static_path_say_why(tokenizer):
    model = _model(tokenizer)
    model.config._attn_implementation = "flex_attention"
    assert "flex_attention" in model.diffusion_family.static_decoding_unsupported(model)
    sliding = tiny_qwen3(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert "other than full attention" in BlockCausalFamily().static_decoding_unsupported(sliding)
    assert "store_kv" in StoreKVFamily().static_decoding_unsupported(tiny_qwen3())


def test_cache_implementation_values(tokenizer, batch):
    model = _model(tokenizer)
    with pytest.raises(ValueError, match=r"`cache_implementation`='offloaded' is not supported.*'static'"):
        model.generate(**batch, cache_implementation="offloaded")
    assert torch.equal(model.generate(**batch, cache_implementation="dynamic"), model.generate(**batch))
    model.generation_config.cache_implementation = "quantized"  # e.g. from a checkpoint's generation_config.json
    decoding.logger.warning_once.cache_clear()
    with CaptureLogger(decoding.logger) as captured:
        model.generate(**batch)
    assert "cache_implementation" in captured.out and "ignored" in captured.out


def test_custom_generate_decodes_with_static_shapes(tmp_path, tokenizer, batch):
    model = _model(tokenizer, steps_per_block=2)
    model.save_pretrained(tmp_path)
    expected = model.generate(**batch, return_dict_in_generate=True)
    unpatched = Qwen3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    got = unpatched.generate(
        **batch, custom_generate=str(tmp_path), trust_remote_code=True, return_dict_in_generate=True, **STATIC
    )
    _assert_same_decoding(got, expected)


@pytest.mark.gpu
def test_static_decoding_with_cuda_graphs(tokenizer, batch):
    """transformers' default CompileConfig (mode="reduce-overhead") captures the static forward as a CUDA graph."""
    from torch._dynamo.utils import counters

    model = patch_model(tiny_qwen3().cuda(), tokenizer, block_size=4, max_new_tokens=16)
    batch = {name: tensor.cuda() for name, tensor in batch.items()}
    before = counters["stats"]["unique_graphs"]
    for steps in (1, 2, 4, 2):
        expected = model.generate(**batch, steps_per_block=steps, return_dict_in_generate=True)
        got = model.generate(
            **batch, steps_per_block=steps, return_dict_in_generate=True, cache_implementation="static"
        )
        _assert_same_decoding(got, expected)
    assert counters["stats"]["unique_graphs"] - before == 1
