"""Every rope type of transformers (``ROPE_INIT_FUNCTIONS``: linear, dynamic, yarn, longrope, llama3, proportional,
and "default") in every family with rotary positions, against transformers itself: Llama's rotary module and
LlamaForCausalLM with the same weights (the decoder), the inverse frequencies of ``ROPE_INIT_FUNCTIONS`` written
into a default rotary module (encoder, seq2seq, VLM, Gato), Llama-3.2-1B's own config.json, and transformers' own
rope validation where a ``rope_parameters`` is set.

Lengths: the tiny configs have ``max_position_embeddings=64`` and ``original_max_position_embeddings=16``, so 80
tokens lie beyond both (where dynamic, yarn, longrope and llama3 differ from their short-length behaviour).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from conftest import LLAMA_KEYS, build, random_ids
from hfgen import (
    HfGenDecoderConfig,
    HfGenDecoderForCausalLM,
    HfGenEncoderConfig,
    HfGenEncoderForMaskedLM,
    HfGenGatoConfig,
    HfGenGatoForCausalLM,
    HfGenRetNetConfig,
    HfGenSeq2SeqConfig,
    HfGenSeq2SeqForConditionalGeneration,
    HfGenViTConfig,
    HfGenViTModel,
    HfGenVlmConfig,
    HfGenVlmForConditionalGeneration,
)
from hfgen.models.positions import RotaryEmbedding, apply_rotary

ORIGINAL = 16  # original_max_position_embeddings of the scaled types
LONG = 80  # beyond ORIGINAL and beyond max_position_embeddings (64)
HALF = LLAMA_KEYS["hidden_size"] // LLAMA_KEYS["num_attention_heads"] // 2  # rotated channel pairs per head

# One rope_parameters per type, with every branch of its formula in reach of a head of 8 channels (llama3: one
# frequency kept, one interpolated, two divided; yarn: the ramp between extrapolated and interpolated channels).
ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 10000.0},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [1.0, 4.0, 8.0, 16.0],
                 "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL, "rope_theta": 10000.0},
    "proportional": {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": 10000.0},
}
SCALED = [name for name in ROPES if name != "default"]


def rope(name: str) -> dict:
    return copy.deepcopy(ROPES[name])


def test_every_transformers_rope_type_is_covered():
    """A rope type added to transformers' table fails here until it is in ROPES (and so in every test below)."""
    assert set(ROPES) == {"default", *ROPE_INIT_FUNCTIONS}


def llama_and_hfgen(rope_parameters: dict, **overrides):
    """A random LlamaForCausalLM and the hfgen decoder holding its weights, both with ``rope_parameters``."""
    keys = {**LLAMA_KEYS, **overrides}
    llama = build(LlamaForCausalLM, LlamaConfig(**keys, rope_parameters=copy.deepcopy(rope_parameters)),
                  attn_implementation="sdpa")
    ours = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**keys, rope_parameters=copy.deepcopy(rope_parameters)),
                 seed=1, attn_implementation="sdpa")
    ours.load_state_dict(llama.state_dict(), strict=True)
    return llama, ours


@pytest.mark.parametrize("name", list(ROPES))
def test_rotary_module_matches_llamas(name):
    """cos/sin of Llama's own rotary module, same shape ([B, S, D]) and values, through a call sequence that
    exercises the length-dependent types: short, beyond both limits (dynamic grows, longrope switches to its long
    factors), then short again (dynamic resets)."""
    ours = RotaryEmbedding(HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope(name)))
    theirs = LlamaRotaryEmbedding(LlamaConfig(**LLAMA_KEYS, rope_parameters=rope(name)))
    x = torch.zeros(2, 1, dtype=torch.float32)
    for length in (10, LONG, 12):
        position_ids = torch.arange(length).expand(2, -1)
        got, expected = ours(x, position_ids), theirs(x, position_ids)
        for a, b in zip(got, expected):
            assert a.shape == b.shape == (2, length, 2 * HALF)
            assert torch.equal(a, b), (name, length)


def test_linear_scaling_is_position_interpolation():
    """Chen et al. 2023 (linear / position interpolation): with factor s, position s*p is rotated as position p
    was without scaling."""
    factor = 4
    plain = RotaryEmbedding(HfGenDecoderConfig(**LLAMA_KEYS))
    linear = RotaryEmbedding(HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope("linear")))
    x = torch.zeros(1)
    cos, sin = linear(x, torch.arange(0, LONG, factor)[None])
    expected_cos, expected_sin = plain(x, torch.arange(LONG // factor)[None])
    torch.testing.assert_close(cos, expected_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, expected_sin, atol=1e-6, rtol=0)


def test_yarn_scales_cos_and_sin_by_its_attention_factor():
    """Peng et al. 2023 (YaRN), eq. 22: sqrt(1/t) = 0.1 ln(s) + 1 multiplies the rotated queries and keys; at
    position 0 the rotation is the identity, so cos is that factor and sin 0."""
    yarn = RotaryEmbedding(HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope("yarn")))
    cos, sin = yarn(torch.zeros(1), torch.zeros(1, 1, dtype=torch.long))
    torch.testing.assert_close(cos, torch.full_like(cos, 0.1 * math.log(ROPES["yarn"]["factor"]) + 1))
    assert torch.equal(sin, torch.zeros_like(sin))


def test_apply_rotary_is_llamas():
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=generator), torch.randn(2, 2, 5, 8, generator=generator)
    cos, sin = RotaryEmbedding(HfGenDecoderConfig(**LLAMA_KEYS))(q, torch.arange(5)[None].expand(2, -1))
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(apply_rotary(q, cos, sin), expected_q) and torch.equal(apply_rotary(k, cos, sin), expected_k)


@pytest.mark.parametrize("name", list(ROPES))
def test_decoder_logits_equal_llamas(name):
    """Bitwise: the rotary module and its application are Llama's operations in Llama's order (the test above), and
    the rest of the decoder already gives Llama's logits bitwise with sdpa (test_decoder_llama)."""
    llama, ours = llama_and_hfgen(rope(name))
    default = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS), seed=1)
    default.load_state_dict(llama.state_dict())
    for length in (10, LONG):
        ids = random_ids(2, length)
        with torch.no_grad():
            expected, got = llama(ids).logits, ours(ids).logits
            plain = default(ids).logits
        assert torch.equal(got, expected), (name, length, (got - expected).abs().max())
        if name != "default" and length == LONG:
            assert not torch.allclose(got, plain, atol=1e-4)  # the rope type changed something


def greedy(model, ids, new_tokens, use_cache=True):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         use_cache=use_cache, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("name", list(ROPES))
def test_cached_generation_equals_uncached_and_llamas(name):
    """Greedy decoding with a cache gives the tokens and scores of decoding without one, and of Llama with a cache.
    Dynamic NTK is the exception transformers makes: its frequencies follow the current length, so keys cached at
    a shorter length keep their older rotation -- there, cached equals uncached only within
    max_position_embeddings, and beyond it cached equals Llama's cached decoding."""
    llama, ours = llama_and_hfgen(rope(name))
    prompt = random_ids(1, 20)  # beyond original_max_position_embeddings: longrope decodes with its long factors
    tokens, scores = greedy(ours, prompt, 6)
    tokens_uncached, scores_uncached = greedy(ours, prompt, 6, use_cache=False)
    assert torch.equal(tokens, tokens_uncached)
    torch.testing.assert_close(scores, scores_uncached, atol=1e-5, rtol=1e-5)  # (one query vs all: other sums)
    long_prompt = random_ids(1, 70)  # crosses max_position_embeddings while decoding
    tokens, scores = greedy(ours, long_prompt, 4)
    expected_tokens, expected_scores = greedy(llama, long_prompt, 4)
    assert torch.equal(tokens, expected_tokens) and torch.equal(scores, expected_scores)
    if name != "dynamic":
        tokens_uncached, scores_uncached = greedy(ours, long_prompt, 4, use_cache=False)
        assert torch.equal(tokens, tokens_uncached)
        torch.testing.assert_close(scores, scores_uncached, atol=1e-5, rtol=1e-5)


# Llama-3.2-1B's config.json as published (transformers 4.45 wrote it: rope_scaling and rope_theta at the top level),
# its sizes shrunk to a test's; the rope keys, the lengths and the architecture are the checkpoint's.
LLAMA_32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 8, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
    "intermediate_size": 64, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "float32",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128,
}


def test_llama_3_config_json_loads(tmp_path):
    """The config.json of a Llama 3.x checkpoint loads into the hfgen decoder with its llama3 rope as transformers
    reads it, and the checkpoint's weights give LlamaForCausalLM's logits at positions around the original
    context (8192) where llama3 scaling matters."""
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_32_1B_CONFIG))
    llama_config = AutoConfig.from_pretrained(tmp_path)
    llama = build(LlamaForCausalLM, llama_config)
    llama.save_pretrained(tmp_path / "checkpoint")
    (tmp_path / "checkpoint" / "config.json").write_text(json.dumps(LLAMA_32_1B_CONFIG))  # the file as published

    config = HfGenDecoderConfig.from_pretrained(tmp_path / "checkpoint")
    assert config.rope_parameters == llama_config.rope_parameters
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["rope_theta"] == 500000.0
    ours = HfGenDecoderForCausalLM.from_pretrained(tmp_path / "checkpoint").eval()
    ids = random_ids(1, 12)
    position_ids = torch.arange(8186, 8198)[None]
    with torch.no_grad():
        expected = llama(ids, position_ids=position_ids).logits
        got = ours(ids, position_ids=position_ids).logits
        unscaled_config = copy.deepcopy(llama_config)
        unscaled_config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
        unscaled = build(LlamaForCausalLM, unscaled_config)
        unscaled.load_state_dict(llama.state_dict())
        plain = unscaled(ids, position_ids=position_ids).logits
    assert torch.equal(got, expected)
    # (small weights: the rescaled low frequencies move the logits by ~6e-6, but any difference is the rope's)
    assert not torch.equal(got, plain)
    assert torch.equal(ours.model.rotary_emb.inv_freq, llama.model.rotary_emb.inv_freq)
    assert not torch.equal(ours.model.rotary_emb.inv_freq, unscaled.model.rotary_emb.inv_freq)


@pytest.mark.parametrize("name", SCALED)
def test_rope_set_after_construction_applies_to_models_built_afterwards(name):
    """``config.rope_parameters = ...`` is validated and completed as in the constructor; a model built afterwards
    equals one built with it from the start."""
    config = HfGenDecoderConfig(**LLAMA_KEYS)
    config.rope_parameters = rope(name)
    assert config.rope_parameters == HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope(name)).rope_parameters
    later = build(HfGenDecoderForCausalLM, config)
    from_start = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope(name)))
    default = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS))
    ids = random_ids(1, LONG)
    with torch.no_grad():
        got = later(ids).logits
        assert torch.equal(got, from_start(ids).logits)
        assert not torch.allclose(got, default(ids).logits, atol=1e-4)


def test_rope_set_on_a_built_model_is_kept_out_as_llama_keeps_it_out():
    """Llama fixes its frequencies when the model is built; so does the decoder: assigning a new rope to the
    config of a model already built changes neither model's logits (it applies to models built afterwards)."""
    llama, ours = llama_and_hfgen(rope("default"))
    ids = random_ids(1, LONG)
    with torch.no_grad():
        before = ours(ids).logits, llama(ids).logits
        ours.config.rope_parameters = rope("linear")
        llama.config.rope_parameters = rope("linear")
        after = ours(ids).logits, llama(ids).logits
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_from_pretrained_with_rope_parameters_applies_it(tmp_path):
    llama, _ = llama_and_hfgen(rope("yarn"))
    build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS)).save_pretrained(tmp_path)
    ours = HfGenDecoderForCausalLM.from_pretrained(tmp_path, rope_parameters=rope("yarn")).eval()
    llama.load_state_dict(ours.state_dict())
    ids = random_ids(1, LONG)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, llama(ids).logits)


@pytest.mark.parametrize("bad, message", [
    ({"rope_type": "linear"}, "factor"),  # transformers' validation: a required key
    ({"rope_type": "llama3", "factor": 8.0}, "low_freq_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * HALF}, "long_factor"),
    ({"rope_type": "ntk"}, "valid choices"),
    ({"rope_type": "linear", "factor": float("nan")}, "factor"),
    ({"rope_type": "linear", "factor": -2.0}, "factor"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}, "original_max_position_embeddings"),
    ({"rope_type": "longrope", "short_factor": [1.0, -1.0], "long_factor": [1.0, 1.0]}, "short_factor"),
    ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rope_type": "default", "rope_theta": 0.5}, "rope_theta"),
    ("linear", "must be a dict"),
])
def test_bad_rope_parameters_are_refused_where_set(bad, message):
    with pytest.raises(ValueError, match=message):
        HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=copy.deepcopy(bad))
    config = HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope("linear"))
    before = copy.deepcopy(config.rope_parameters)
    with pytest.raises(ValueError, match=message):
        config.rope_parameters = copy.deepcopy(bad)
    assert config.rope_parameters == before  # a refused value changes nothing


def test_the_callers_dict_is_not_edited():
    given = {"rope_type": "yarn", "factor": 4.0}
    config = HfGenDecoderConfig(**LLAMA_KEYS)
    config.rope_parameters = given
    assert given == {"rope_type": "yarn", "factor": 4.0}
    assert config.rope_parameters["original_max_position_embeddings"] == LLAMA_KEYS["max_position_embeddings"]


@pytest.mark.parametrize("config_class, keys", [
    (HfGenDecoderConfig, dict(LLAMA_KEYS, position_embedding="alibi")),
    (HfGenEncoderConfig, dict(LLAMA_KEYS)),  # BERT-like: learned positions
    (HfGenSeq2SeqConfig, dict(LLAMA_KEYS, position_embedding="relative_bias")),
])
def test_scaled_rope_on_non_rotary_positions_is_refused(config_class, keys):
    with pytest.raises(ValueError, match="position_embedding"):
        config_class(**keys, rope_parameters=rope("linear"))
    with pytest.raises(ValueError, match="position_embedding"):
        config_class(**keys, rope_scaling=rope("linear"))
    config_class(**keys, rope_parameters=rope("default"))  # a rope_theta kept for rotary is harmless


@pytest.mark.parametrize("key", ["rope_parameters", "rope_scaling"])
def test_retnet_refuses_rope_types(key):
    """RetNet's rotation has its own key (rope_theta); a rope dict would be stored and never read."""
    with pytest.raises(ValueError, match="hfgen_retnet takes no rope_parameters"):
        HfGenRetNetConfig(hidden_size=32, num_attention_heads=4, **{key: rope("linear")})
    config = HfGenRetNetConfig(hidden_size=32, num_attention_heads=4)
    with pytest.raises(ValueError, match="rope_theta"):
        setattr(config, key, rope("yarn"))
    assert getattr(config, "rope_parameters", None) is None


@pytest.mark.parametrize("name", SCALED)
def test_save_and_load_keep_the_rope(name, tmp_path):
    model = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS, rope_parameters=rope(name)))
    model.save_pretrained(tmp_path)
    reloaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.rope_parameters == model.config.rope_parameters
    ids = random_ids(1, LONG)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------- the other families

VIT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, pad_token_id=0)


def family_model(family: str, rope_parameters: dict):
    """(model, inputs) of a tiny ``family`` model with rotary positions and ``rope_parameters``; the inputs are
    LONG tokens (seq2seq: LONG on each side, so that both stacks see the same length; the ViT: 64 patches)."""
    rope_parameters = copy.deepcopy(rope_parameters)
    ids = random_ids(1, LONG, vocab_size=50)
    if family == "encoder":
        config = HfGenEncoderConfig(**SIZES, position_embedding="rotary", rope_parameters=rope_parameters)
        return build(HfGenEncoderForMaskedLM, config), dict(input_ids=ids)
    if family == "seq2seq":
        config = HfGenSeq2SeqConfig(**SIZES, position_embedding="rotary", rope_parameters=rope_parameters)
        return build(HfGenSeq2SeqForConditionalGeneration, config), dict(input_ids=ids, decoder_input_ids=ids)
    if family == "gato":
        config = HfGenGatoConfig(**{k: v for k, v in SIZES.items() if k != "vocab_size"}, text_vocab_size=50,
                                 num_bins=8, image_size=8, patch_size=4, rope_parameters=rope_parameters)
        return build(HfGenGatoForCausalLM, config), dict(input_ids=ids)
    if family == "vit":  # 8 x 8 patches of 4 x 4: 64 positions
        config = HfGenViTConfig(**{k: v for k, v in SIZES.items() if k in VIT_KEYS}, image_size=32, patch_size=4,
                                position_embedding="rotary", rope_parameters=rope_parameters)
        return build(HfGenViTModel, config), dict(pixel_values=torch.randn(1, 1, 32, 32,
                                                                           generator=torch.Generator().manual_seed(0)))
    text = HfGenDecoderConfig(**SIZES, rope_parameters=rope_parameters)
    vision = HfGenViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            image_size=8, patch_size=4)
    config = HfGenVlmConfig(text_config=text, vision_config=vision, image_token_id=63)
    return build(HfGenVlmForConditionalGeneration, config), dict(input_ids=ids)


def write_reference_rope(model, rope_parameters: dict, length: int) -> None:
    """Turn every rotary module of ``model`` (built with the default rope) into the plain rotation by the inverse
    frequencies and cos/sin scale that transformers' ``ROPE_INIT_FUNCTIONS`` computes for ``rope_parameters`` at
    ``length`` tokens (dynamic and longrope depend on it)."""
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            config = copy.deepcopy(module.config)
            config.rope_parameters = copy.deepcopy(rope_parameters)
            # (a tensor length, as dynamic_rope_update passes it: the same float32 arithmetic)
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, seq_len=torch.tensor(length))
            module.inv_freq.copy_(inv_freq)
            module.attention_scaling = scaling


def output(model, inputs) -> torch.Tensor:
    result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


# The families besides the decoder that take rotary positions.
OTHER_ROTARY_FAMILIES = ["encoder", "seq2seq", "vlm", "gato", "vit"]


@pytest.mark.parametrize("family", OTHER_ROTARY_FAMILIES)
@pytest.mark.parametrize("name", SCALED)
def test_other_families_apply_every_rope_type(family, name):
    """The logits of each family with a rope type equal those of the same weights with the default rope whose
    frequencies (and cos/sin scale) are overwritten by transformers' ROPE_INIT_FUNCTIONS, and differ from the
    default's at long positions. (The ViT's 64 patch positions are its max_position_embeddings: dynamic NTK keeps
    the default frequencies there, as it does for any model up to that length.)"""
    model, inputs = family_model(family, ROPES[name])
    reference, _ = family_model(family, ROPES["default"])
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain = output(reference, inputs)
        write_reference_rope(reference, ROPES[name], 64 if family == "vit" else LONG)
        expected = output(reference, inputs)
        got = output(model, inputs)
    assert torch.equal(got, expected)
    if (family, name) != ("vit", "dynamic"):
        assert not torch.equal(got, plain)  # (tiny random weights: differences of 1e-6 to 1e-3, all the rope's)


@pytest.mark.parametrize("family", OTHER_ROTARY_FAMILIES)
def test_other_families_save_and_load_keep_the_rope(family, tmp_path):
    model, inputs = family_model(family, ROPES["longrope"])
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    text = reloaded.config.get_text_config()
    assert text.rope_parameters == model.config.get_text_config().rope_parameters
    with torch.no_grad():
        assert torch.equal(output(reloaded, inputs), output(model, inputs))


@pytest.mark.parametrize("config_class, keys", [
    (HfGenDecoderConfig, dict(LLAMA_KEYS)),
    (HfGenEncoderConfig, dict(LLAMA_KEYS, position_embedding="rotary")),
    (HfGenSeq2SeqConfig, dict(LLAMA_KEYS)),
    (HfGenGatoConfig, dict(SIZES, text_vocab_size=50, num_bins=8, image_size=8, patch_size=4)),
])
def test_rope_theta_of_older_configs_is_the_ropes(config_class, keys):
    """``rope_theta`` (the key before transformers 5) given to the constructor or assigned later becomes
    ``rope_parameters['rope_theta']``, the value the rotary module reads (the encoder and seq2seq constructors
    used to leave it to transformers, which kept the dict's 10000)."""
    keys = {k: v for k, v in keys.items() if not (config_class is HfGenGatoConfig and k == "vocab_size")}
    assert config_class(**keys, rope_theta=500.0).rope_parameters["rope_theta"] == 500.0
    config = config_class(**keys, rope_parameters=rope("linear"))
    config.rope_theta = 500.0
    assert config.rope_parameters == {**rope("linear"), "rope_theta": 500.0}
    assert "rope_theta" not in vars(config)  # not stored beside it, to be saved and never read
