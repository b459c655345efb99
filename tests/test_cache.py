"""`BufferedLayer` behaves like transformers' `DynamicLayer` (what attention reads) through every operation the
decoder uses: append, crop, append again, drop rows, outgrow the buffer."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from t3d_trl.models.cache import BufferedLayer, buffered_cache
from t3d_trl.testing import tiny_qwen3


def _kv(batch, length, seed, heads=2, dim=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, dim, generator=generator), torch.randn(batch, heads, length, dim + 1, generator=generator)


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
