"""Training forwards with flex attention: the BlockMask of the trainer's deferred layout gives the dense-mask logits.

On CPU: transformers runs flex attention through ``torch.compile`` (an inductor build that takes minutes on CPU), so
these tests swap in the uncompiled operator (``torch.nn.attention.flex_attention.flex_attention``), which runs the
same computation forward on CPU in torch >= 2.5 (its backward refuses CPU tensors: the training step with flex
attention is the GPU test below, run by ``pytest -m gpu`` and ``benchmarks/device_check.py``).

The uncompiled operator evaluates ``mask_mod`` at every position and ignores the BlockMask's tiles, so the CPU
forward checks the rule and the plumbing; the tiles (which are empty, partial, full) are checked against torch's
own ``create_block_mask`` and element by element, and the compiled kernel that skips tiles runs in the GPU test.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

import t3d_trl.masks as masks
from t3d_trl import T3DTrainer
from t3d_trl.testing import synthetic_trajectories, tiny_qwen3, tiny_t3d_config, tiny_tokenizer

VOCAB_SIZE = 48
BLOCK_SIZE = 4


def trajectory_rows(count: int, seed: int = 0) -> list[dict]:
    """Random trajectories of different lengths (prompts 3-20, completions 20-70 tokens: layouts of 2 flex tiles and
    left padding), decoded one token per step in a random order inside each block."""
    return synthetic_trajectories(count, (3, 20), (20, 70), VOCAB_SIZE, BLOCK_SIZE, seed=seed)


@pytest.fixture(scope="module")
def trajectories():
    return Dataset.from_list(trajectory_rows(8))


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers' flex attention without torch.compile."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def uncompiled(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", uncompiled)


def flex_trainer(tmp_path, trajectories, dtype, device="cpu", kernel="flex_attention", **overrides):
    model = tiny_qwen3(dtype=dtype).to(device)
    model.set_attn_implementation(kernel)
    args = tiny_t3d_config(tmp_path, per_device_train_batch_size=8, use_cpu=device == "cpu", **overrides)
    return T3DTrainer(model, args=args, train_dataset=trajectories, processing_class=tiny_tokenizer())


def collated(trainer, device="cpu") -> dict:
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def test_layout_block_mask_is_the_dense_rule_and_torch_create_block_mask(tmp_path, trajectories, monkeypatch):
    from torch.nn.attention.flex_attention import create_block_mask

    batch = collated(flex_trainer(tmp_path, trajectories, torch.float32))
    block, stream, valid = batch["block_ids"], batch["stream_ids"], batch["valid"]
    length = block.shape[1]
    dense = masks.layout_attention_mask(block, stream, block, stream, valid, query_valid=valid)[:, 0]
    expected = create_block_mask(
        lambda b, h, q, k: dense[b, q, k], B=len(block), H=None, Q_LEN=length, KV_LEN=length, device="cpu"
    )
    # bands of 16 query rows: several bands, each far smaller than the N x N mask
    monkeypatch.setattr(masks, "BLOCK_MASK_CHUNK_ELEMENTS", len(block) * length * 16)
    for tile_size in (16, 128):
        ours = masks.layout_block_mask(block, stream, valid, tile_size=tile_size)
        if tile_size == 128:
            assert ours.BLOCK_SIZE == expected.BLOCK_SIZE and torch.equal(ours.to_dense(), expected.to_dense())
            assert torch.equal(ours.kv_num_blocks, expected.kv_num_blocks)
            assert torch.equal(ours.full_kv_num_blocks, expected.full_kv_num_blocks)
        # tile by tile: empty tiles are masked out, full tiles kept, partial tiles follow mask_mod
        tiles = -(-length // tile_size)
        kinds = torch.zeros(len(block), tiles, tiles, dtype=torch.long)  # 0 empty, 1 partial, 2 full
        for kind, num, index in (
            (1, ours.kv_num_blocks, ours.kv_indices),
            (2, ours.full_kv_num_blocks, ours.full_kv_indices),
        ):
            for b in range(len(block)):
                for q in range(tiles):
                    kinds[b, q, index[b, 0, q, : num[b, 0, q]].long()] = kind
        kinds = kinds.repeat_interleave(tile_size, 1).repeat_interleave(tile_size, 2)[:, :length, :length]
        b = torch.arange(len(block))[:, None, None]
        q, k = torch.arange(length)[None, :, None], torch.arange(length)[None, None, :]
        from_mod = ours.mask_mod(b, 0, q, k)
        effective = torch.where(kinds == 2, True, torch.where(kinds == 1, from_mod, False))
        assert torch.equal(effective, dense)
        assert (kinds == 1).any() and (kinds == 0).any()  # (not all tiles alike)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_flex_forward_with_the_block_mask_gives_the_dense_mask_logits(
    tmp_path, trajectories, eager_flex, monkeypatch, dtype, tolerance
):
    trainer = flex_trainer(tmp_path, trajectories, dtype)
    batch = collated(trainer)
    assert "attention_mask" not in batch  # the deferred layout: no N x N mask on the host
    assert batch["input_ids"].shape[1] > 128  # two flex tiles, partial and full ones

    # nothing builds the N x N mask: the training layout never calls the dense builder for a flex model, and the
    # BlockMask is built from bands of query rows
    import t3d_trl.layouts as layouts

    monkeypatch.setattr(layouts, "layout_attention_mask", None)
    monkeypatch.setattr(masks, "BLOCK_MASK_CHUNK_ELEMENTS", 8 * batch["input_ids"].shape[1] * 32)
    bands, dense_builder = [], masks.layout_attention_mask

    def recording(query_block, *args, **kwargs):
        bands.append(query_block.shape[1])
        return dense_builder(query_block, *args, **kwargs)

    monkeypatch.setattr(masks, "layout_attention_mask", recording)
    received = []
    hook = trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["attention_mask"]), with_kwargs=True
    )
    with torch.no_grad():
        flex_logits = trainer.layout.forward(
            trainer.model, batch, trainer._forward_parameters, trainer._attention_kernel, dtype
        )
    hook.remove()
    from torch.nn.attention.flex_attention import BlockMask

    assert len(received) == 1 and isinstance(received[0], BlockMask)
    assert bands and max(bands) < batch["input_ids"].shape[1]

    monkeypatch.setattr(masks, "layout_attention_mask", dense_builder)
    monkeypatch.setattr(layouts, "layout_attention_mask", dense_builder)
    dense_model = tiny_qwen3(dtype=dtype)  # the same weights, sdpa with the boolean [b, 1, N, N] mask
    with torch.no_grad():
        dense_logits = trainer.layout.forward(dense_model, batch, kernel="sdpa", dtype=dtype)
    assert flex_logits.shape == dense_logits.shape == (8, int(batch["logits_to_keep"]), VOCAB_SIZE)
    torch.testing.assert_close(flex_logits, dense_logits, atol=tolerance, rtol=0)


@pytest.mark.gpu
def test_flex_training_step_matches_sdpa_on_cuda(tmp_path, trajectories):
    """One T3D training step (forward and backward, compiled flex attention with the BlockMask) against sdpa."""
    results = {}
    for kernel in ("sdpa", "flex_attention"):
        trainer = flex_trainer(tmp_path / kernel, trajectories, torch.float32, device="cuda", kernel=kernel)
        trainer.create_optimizer_and_scheduler(num_training_steps=1)
        trainer.current_gradient_accumulation_steps = 1
        loss = trainer.training_step(trainer.model, collated(trainer, "cuda"))
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        results[kernel] = (loss.item(), grads)
    assert results["flex_attention"][0] == pytest.approx(results["sdpa"][0], abs=1e-4)
    torch.testing.assert_close(results["flex_attention"][1], results["sdpa"][1], atol=1e-4, rtol=1e-3)
