"""Bad configs, bad inputs and bad checkpoints fail early, with a message that names the problem (and, for a
choice, the valid values) -- never an index error deep inside torch, and never silent garbage."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from conftest import TINY, build, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM, HfGenDecoderModel

# The valid names DESIGN.md promises for every family ("Public contract of the text models"). The decoder may
# offer more; it must offer at least these and name them all when a value is wrong.
DOCUMENTED_CHOICES = {
    "attention_scoring": ["scaled_dot_product", "dot_product", "general", "additive"],
    "softmax_variant": ["standard", "temperature", "adaptive_temperature", "off_by_one", "clipped"],
    "position_embedding": ["rotary", "sinusoidal", "learned", "relative_bias", "alibi", "none"],
    "norm_type": ["rmsnorm", "layernorm"],
    "norm_position": ["pre", "post"],
    "mlp_type": ["gated", "standard"],
}


@pytest.mark.parametrize("key", list(DOCUMENTED_CHOICES))
def test_unknown_variant_names_the_key_the_value_and_the_choices(key):
    with pytest.raises(ValueError) as error:
        tiny_config(**{key: "no_such_variant"})
    message = str(error.value)
    assert key in message and "'no_such_variant'" in message
    for choice in DOCUMENTED_CHOICES[key]:
        assert repr(choice) in message, f"{choice!r} not listed in: {message}"
        tiny_config(**{key: choice})  # and each listed choice really is accepted


@pytest.mark.parametrize("overrides, pattern", [
    (dict(softmax_variant="offbyone"), r"softmax_variant='offbyone'.*'off_by_one'"),
    (dict(softmax_variant="temperature", softmax_temperature=0.0), r"softmax_temperature must be a number > 0"),
    (dict(num_key_value_heads=3), r"multiple of num_key_value_heads \(3\)"),
], ids=["misspelt-variant", "zero-temperature", "kv-heads"])
def test_bad_keys_through_from_pretrained(tmp_path, overrides, pattern):
    """from_pretrained sets these on the config after its own checks: the model must check them again."""
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=pattern):
        HfGenDecoderForCausalLM.from_pretrained(tmp_path, **overrides)


@pytest.mark.parametrize("overrides, pattern", [
    (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\).*divisible.*num_attention_heads \(4\)"),
    (dict(num_attention_heads=4, num_key_value_heads=3),
     r"num_attention_heads \(4\).*multiple.*num_key_value_heads \(3\)"),
    # (transformers' rope validation speaks first: "RoPE requires an even rotary dimension, but got `head_dim`=7")
    (dict(hidden_size=28, num_attention_heads=4), r"RoPE.*even.*`head_dim`=7\b"),
    (dict(head_dim=5), r"RoPE.*even.*`head_dim`=5\b"),
    (dict(softmax_variant="temperature", softmax_temperature=0.0), r"softmax_temperature must be a number > 0, got 0"),
    (dict(softmax_variant="temperature", softmax_temperature=-1.5),
     r"softmax_temperature must be a number > 0, got -1.5"),
    (dict(softmax_temperature=2.0),
     r"softmax_temperature=2.0 only applies with softmax_variant='temperature'.*'standard'"),
    (dict(softmax_variant="off_by_one", softmax_temperature=0.5), r"softmax_temperature=0.5.*'off_by_one'"),
    (dict(num_hidden_layers=0), r"num_hidden_layers must be a positive integer, got 0"),
    (dict(num_key_value_heads=-2), r"num_key_value_heads must be a positive integer, got -2"),
    (dict(attention_chunk_size=64), r"attention_chunk_size=64 is Llama 4's chunked attention.*query_chunk_size"),
], ids=["hidden-heads", "heads-kv", "odd-rotary-derived", "odd-rotary-explicit", "zero-temperature",
        "negative-temperature", "temperature-with-standard", "temperature-with-off_by_one", "zero-layers",
        "negative-kv-heads", "llama4-chunked-attention"])
def test_inconsistent_sizes_and_temperatures(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_config(**overrides)


def test_odd_head_dim_is_fine_without_rotary():
    config = tiny_config(hidden_size=28, num_attention_heads=4, position_embedding="alibi")
    assert config.head_dim == 7
    model = build(HfGenDecoderForCausalLM, config)
    assert model(random_ids(1, 5)).logits.shape == (1, 5, TINY["vocab_size"])


# ---------------------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def model():
    return build(HfGenDecoderForCausalLM, tiny_config())


@pytest.mark.parametrize("bad_id", [TINY["vocab_size"], TINY["vocab_size"] + 50, -1])
def test_token_ids_outside_the_vocabulary_fail_before_touching_the_cache(model, bad_id):
    ids = random_ids(2, 5)
    ids[1, 3] = bad_id
    cache = DynamicCache(config=model.config)
    with pytest.raises(ValueError, match=rf"\[0, {TINY['vocab_size']}\).*{bad_id}"):
        model(ids, cache=cache, use_cache=True)
    assert cache.get_seq_length() == 0

    # A cache that already holds tokens keeps exactly what it had.
    good = random_ids(2, 4)
    with torch.no_grad():
        model(good, cache=cache, use_cache=True)
    assert cache.get_seq_length() == 4
    before = [layer.keys.clone() for layer in cache.layers]
    with pytest.raises(ValueError, match="vocab_size"):
        model(ids[:, 3:4], cache=cache, use_cache=True)  # holds the bad id
    assert cache.get_seq_length() == 4
    for layer, keys in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys)


def test_token_ids_outside_the_vocabulary_in_generate(model):
    ids = random_ids(1, 4)
    ids[0, 0] = TINY["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size"):
        model.generate(ids, max_new_tokens=2, do_sample=False)


def test_float_input_ids_are_rejected(model):
    with pytest.raises(ValueError, match="integer token ids"):
        model(random_ids(1, 4).float())


@pytest.mark.parametrize("mask_shape", [(2, 4), (2, 7), (3, 5), (2, 5, 5)], ids=["short", "long", "batch", "3d"])
def test_attention_mask_of_the_wrong_shape(model, mask_shape):
    ids = random_ids(2, 5)
    with pytest.raises(ValueError, match=re.escape(str(tuple(mask_shape))) if len(mask_shape) == 2 else "2D"):
        model(ids, attention_mask=torch.ones(mask_shape, dtype=torch.long))


def test_attention_mask_must_cover_the_cached_tokens(model):
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(random_ids(2, 4), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"expected \(2, 5\).*4 cached \+ 1 new"):
        model(random_ids(2, 1), attention_mask=torch.ones(2, 1, dtype=torch.long), cache=cache,
              use_cache=True)
    assert cache.get_seq_length() == 4


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def folder(tmp_path):
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(tmp_path)
    return tmp_path


def damage(folder, how: str) -> str:
    weights = folder / "model.safetensors"
    if how == "deleted":
        weights.unlink()
        return "no weights"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return "truncated"
    weights.write_bytes(b"this is not a safetensors file" * 40)
    return "corrupt"


LOADERS = {
    "class": lambda path: HfGenDecoderForCausalLM.from_pretrained(path),
    "auto": lambda path: AutoModelForCausalLM.from_pretrained(path),
    "auto-remote-code": lambda path: AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True),
}


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("how", ["deleted", "truncated", "garbage"])
def test_damaged_checkpoint_gives_a_clear_oserror(folder, how, loader):
    problem = damage(folder, how)
    with pytest.raises(OSError) as error:
        LOADERS[loader](folder)
    message = str(error.value)
    assert problem in message, message
    assert str(folder) in message


# ----------------------------------------------------------------------------------- attention backends

BACKEND = "hfgen_test_plain_backend"
backend_calls: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def plain_backend():
    """A registered third-party backend that computes plain softmax attention (transformers' own SDPA function)."""
    def backend(module, query, key, value, attention_mask, **kwargs):
        backend_calls.append(1)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(BACKEND, backend)
    AttentionMaskInterface.register(BACKEND, sdpa_mask)


@pytest.mark.parametrize("variant", [dict(softmax_variant="off_by_one"), dict(softmax_variant="adaptive_temperature"),
                                     dict(softmax_variant="clipped"), dict(attention_scoring="additive"),
                                     dict(position_embedding="alibi"), dict(position_embedding="relative_bias")],
                         ids=["off_by_one", "adaptive", "clipped", "additive", "alibi", "relative_bias"])
def test_plain_backend_refuses_a_variant_it_cannot_compute(variant, tmp_path):
    model = build(HfGenDecoderModel, tiny_config(**variant))
    model.set_attn_implementation(BACKEND)
    cache = DynamicCache(config=model.config)
    with pytest.raises(ValueError) as error:
        model(random_ids(1, 5), cache=cache, use_cache=True)
    message = str(error.value)
    assert BACKEND in message and str(next(iter(variant.values()))) in message
    assert "'eager'" in message and "'sdpa'" in message
    assert cache.get_seq_length() == 0

    model.save_pretrained(tmp_path)
    loaded = HfGenDecoderModel.from_pretrained(tmp_path, attn_implementation=BACKEND)
    with pytest.raises(ValueError, match=BACKEND):
        loaded(random_ids(1, 5))


@pytest.mark.parametrize("variant", [{}, dict(softmax_variant="temperature", softmax_temperature=2.5),
                                     dict(attention_scoring="general", attention_gate=True)],
                         ids=["standard", "temperature", "general-gate"])
def test_plain_backend_runs_the_variants_it_can_compute(variant):
    model = build(HfGenDecoderForCausalLM, tiny_config(**variant), attn_implementation="sdpa")
    ids = random_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        model.set_attn_implementation(BACKEND)
        backend_calls.clear()
        got = model(ids, attention_mask=mask).logits
    assert len(backend_calls) == model.config.num_hidden_layers
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
