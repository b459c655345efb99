"""`BufferedLayer` behaves like transformers' `DynamicLayer` (what attention reads) through every operation the
decoder uses: append, crop, append again, drop rows, outgrow the buffer; `IndexedStaticLayer` writes at the slots it is
given and returns its whole buffer."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from t3d_trl.models.cache import BufferedLayer, IndexedStaticCache, IndexedStaticLayer, buffered_cache
from t3d_trl.testing import tiny_qwen3


def _kv(batch, length, seed, heads=2, dim=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, dim, generator=generator), torch.randn(
        batch, heads, length, dim + 1, generator=generator
    )


@pytest.mark.parametrize("capacity", [1, 5, 64])
def test_buffered_layer_matches_dynamic_layer(capacity):
    buffered, dynamic = BufferedLayer(capacity), DynamicLayer()
    operations = [("update", 4), ("update", 3), ("crop", -3), ("update", 7), ("select", [0, 2]), ("crop", -2),
                  ("update", 5), ("crop", 0), ("update", 1), ("select", [1])]  # fmt: skip
    batch = 3
    for seed, (name, argument) in enumerate(operations):
        if name == "update":
            keys, values = _kv(batch, argument, seed)
            got, expected = buffered.update(keys, values), dynamic.update(keys, values)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        elif name == "crop":
            buffered.crop(argument), dynamic.crop(argument)
        else:
            rows = torch.tensor(argument)
            buffered.batch_select_indices(rows), dynamic.batch_select_indices(rows)
            batch = len(argument)
        assert buffered.get_seq_length() == dynamic.get_seq_length()
        torch.testing.assert_close(buffered.keys, dynamic.keys, rtol=0, atol=0)
        torch.testing.assert_close(buffered.values, dynamic.values, rtol=0, atol=0)
    assert buffered.capacity >= buffered.get_seq_length()


def test_update_writes_in_place_within_capacity():
    layer = BufferedLayer(16)
    layer.update(*_kv(1, 4, 0))
    buffer = layer._key_buffer
    layer.update(*_kv(1, 4, 1))
    layer.crop(-4)
    layer.update(*_kv(1, 4, 2))
    assert layer._key_buffer is buffer  # no reallocation, no concatenation
    assert layer.keys.data_ptr() == buffer.data_ptr() and layer.get_seq_length() == 8


def test_crop_rejects_a_positive_count():
    layer = BufferedLayer(4)
    layer.update(*_kv(1, 2, 0))
    with pytest.raises(ValueError, match="negative"):
        layer.crop(1)


def test_buffered_cache_replaces_the_full_attention_layers():
    model = tiny_qwen3(dtype=torch.float32)
    cache = buffered_cache(model.config, capacity=32)
    assert len(cache.layers) == model.config.num_hidden_layers
    assert all(isinstance(layer, BufferedLayer) and layer.capacity == 32 for layer in cache.layers)
    input_ids = torch.randint(0, 40, (2, 6))
    model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 6
    cache.crop(-2)
    assert cache.get_seq_length() == 4


def test_indexed_static_layer_writes_at_the_given_slots():
    layer = IndexedStaticLayer(max_cache_len=8)
    layer.write_index = torch.tensor([5, 1])
    keys, values = _kv(2, 2, 0)
    all_keys, all_values = layer.update(keys, values)
    assert all_keys.shape == (2, 2, 8, 3) and all_values.shape == (2, 2, 8, 4)  # the whole capacity, every time
    torch.testing.assert_close(all_keys[:, :, [5, 1]], keys, rtol=0, atol=0)
    assert not all_keys[:, :, [0, 2, 3, 4, 6, 7]].any()  # the other slots stay zero (finite, masked by attention)
    buffer = layer.keys
    layer.write_index = torch.tensor([5])
    layer.update(*_kv(2, 1, 1))
    assert layer.keys is buffer  # written in place
    with pytest.raises(ValueError, match="write_index"):
        layer.update(*_kv(2, 3, 2))


def test_indexed_static_cache_refuses_other_layer_kinds():
    config = tiny_qwen3(use_sliding_window=True, sliding_window=8, max_window_layers=1).config
    with pytest.raises(ValueError, match="full-attention layers only"):
        IndexedStaticCache(config, 16)
    cache = IndexedStaticCache(tiny_qwen3().config, 16)
    index = torch.arange(4)
    cache.set_write_index(index)
    assert all(layer.write_index is index for layer in cache.layers)
