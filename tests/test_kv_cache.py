"""The in-place key/value cache layer against transformers' own concatenating ``DynamicLayer``."""

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.models.kv_cache import PreallocatedLayer


def _steps(generator):
    sizes = [5, 1, 1, 3, 1]
    return [(torch.randn(2, 2, n, 4, generator=generator), torch.randn(2, 2, n, 4, generator=generator))
            for n in sizes]


@pytest.mark.parametrize("capacity", [None, 4, 64])
def test_updates_equal_concatenation(capacity):
    ours, reference = PreallocatedLayer(capacity=capacity), DynamicLayer()
    for key, value in _steps(torch.Generator().manual_seed(0)):
        with torch.no_grad():
            got, expected = ours.update(key, value), reference.update(key, value)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert ours.get_seq_length() == reference.get_seq_length()


def test_crop_reorder_and_batch_selection_then_update():
    ours, reference = PreallocatedLayer(capacity=32), DynamicLayer()
    steps = _steps(torch.Generator().manual_seed(1))
    with torch.no_grad():
        for key, value in steps[:3]:
            ours.update(key, value), reference.update(key, value)
        for layer in (ours, reference):
            layer.crop(-2)
            layer.reorder_cache(torch.tensor([1, 0]))
        for key, value in steps[3:]:
            got, expected = ours.update(key, value), reference.update(key, value)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        for layer in (ours, reference):
            layer.batch_select_indices(torch.tensor([1]))
        key, value = steps[0][0][:1], steps[0][1][:1]
        got, expected = ours.update(key, value), reference.update(key, value)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_gradients_flow_through_the_concatenating_fallback():
    layer = PreallocatedLayer(capacity=16)
    key = torch.randn(1, 1, 3, 4, requires_grad=True)
    keys, _ = layer.update(key, key.detach())
    keys.sum().backward()
    assert torch.equal(key.grad, torch.ones_like(key))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = HfGenDecoderConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=128)
    return HfGenDecoderForCausalLM(config).eval()


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 20},
                                     {"do_sample": True, "num_return_sequences": 2}])
def test_generate_matches_transformers_dynamic_cache(model, options):
    """``generate`` builds the in-place cache by default; a user's ``DynamicCache`` is kept as it is, so the two
    runs compare hfgen's layer with transformers' own, left padding included."""
    ids = torch.randint(3, 300, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    settings = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, pad_token_id=0, **options)
    torch.manual_seed(3)
    ours = model.generate(ids, return_dict_in_generate=True, **settings)
    assert all(type(layer) is PreallocatedLayer for layer in ours.cache.layers)
    reference_cache = DynamicCache(config=model.config)
    torch.manual_seed(3)
    reference = model.generate(ids, cache=reference_cache, **settings)
    assert all(type(layer) is DynamicLayer for layer in reference_cache.layers)
    assert torch.equal(ours.sequences, reference)


def test_generate_allocates_each_layer_once(model, monkeypatch):
    """Sized for prompt + new tokens up front: no regrowth while decoding."""
    calls = []
    original = PreallocatedLayer._reallocate
    monkeypatch.setattr(PreallocatedLayer, "_reallocate", lambda self, *a: calls.append(1) or original(self, *a))
    model.generate(torch.randint(3, 300, (2, 5)), max_new_tokens=40, min_new_tokens=40, pad_token_id=0)
    assert len(calls) == model.config.num_hidden_layers
