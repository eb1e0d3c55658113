"""Every config value is checked where it is set (issue 19, item 3): in the family's ``__init__``, on a later
assignment (``config.key = value``) and through ``from_pretrained(path, key=value)``, for every family. Each bad
value is a ``ValueError`` that names the key and the value; a refused assignment leaves the config as it was; a key
misspelt close to a family key is refused with the key it was probably meant to be. Real-world configs
(transformers' Llama, Mistral, Mixtral, Qwen2, BERT; T5 through the converter) still load."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import transformers

from hfgen import (HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenEncoderConfig, HfGenEncoderForMaskedLM,
                   HfGenRetNetConfig, HfGenRetNetForCausalLM, HfGenSeq2SeqConfig,
                   HfGenSeq2SeqForConditionalGeneration, HfGenVlmConfig, HfGenVlmForConditionalGeneration)
from hfgen.models.configuration_hfgen_gato import HfGenGatoConfig
from hfgen.models.configuration_hfgen_tabular import HfGenTabularConfig
from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
from hfgen.models.modeling_hfgen_gato import HfGenGatoForCausalLM
from hfgen.models.modeling_hfgen_tabular import HfGenTabularForGeneration
from hfgen.models.modeling_hfgen_vit import HfGenViTModel
from hfgen.models.t5_conversion import t5_config_to_hfgen

INF, NAN = math.inf, math.nan
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
TEXT = dict(SIZES, vocab_size=64, pad_token_id=0)


def vit(**keys) -> HfGenViTConfig:
    return HfGenViTConfig(**{**SIZES, "image_size": 8, "patch_size": 4, **keys})


# family -> (config class, its small keyword arguments, a model class to save and reload)
SMALL_CONFIGS = {
    "decoder": (HfGenDecoderConfig, TEXT, HfGenDecoderForCausalLM),
    "encoder": (HfGenEncoderConfig, TEXT, HfGenEncoderForMaskedLM),
    "seq2seq": (HfGenSeq2SeqConfig, TEXT, HfGenSeq2SeqForConditionalGeneration),
    "retnet": (HfGenRetNetConfig, TEXT, HfGenRetNetForCausalLM),
    "vit": (HfGenViTConfig, dict(SIZES, image_size=8, patch_size=4), HfGenViTModel),
    "gato": (HfGenGatoConfig, dict(SIZES, text_vocab_size=50, num_bins=8, image_size=8, patch_size=4, pad_token_id=0),
             HfGenGatoForCausalLM),
    "vlm": (HfGenVlmConfig, dict(text_config=HfGenDecoderConfig(**TEXT), vision_config=vit(), image_token_id=63),
            HfGenVlmForConditionalGeneration),
    "tabular": (HfGenTabularConfig, dict(SIZES, columns=[{"name": "colour", "type": "categorical",
                                                          "categories": ["red", "blue"]}]), HfGenTabularForGeneration),
}
ATTENTION = ("decoder", "encoder", "seq2seq", "vit", "gato")  # the families built on hfgen's attention layer
RMS_EPS = ("decoder", "seq2seq", "retnet", "vit", "gato")  # epsilon named rms_norm_eps (the encoder: layer_norm_eps)
MOE = ("decoder", "encoder", "retnet", "gato")
TOKENS = ("decoder", "encoder", "seq2seq", "retnet", "gato", "vlm")  # families with a vocabulary

# (families, key, bad value, extra keys the bad value needs to matter)
BAD_VALUES = [
    *[(RMS_EPS, "rms_norm_eps", v, {}) for v in (-1.0, 0.0, NAN, INF)],
    *[(("encoder",), "layer_norm_eps", v, {}) for v in (-1.0, 0.0, NAN, INF)],
    *[(ATTENTION, "softmax_temperature", v, dict(softmax_variant="temperature")) for v in (INF, NAN, 0.0, -1.0)],
    *[(ATTENTION, "clipped_softmax_zeta", v, dict(softmax_variant="clipped")) for v in (INF, NAN, 0.5)],
    *[(ATTENTION, "clipped_softmax_gamma", v, dict(softmax_variant="clipped")) for v in (-INF, NAN, 0.1)],
    *[(("decoder", "retnet", "gato"), "rope_theta", v, {}) for v in (0.0, -10000.0, INF, NAN)],
    *[(ATTENTION + ("retnet",), "hidden_act", v, {}) for v in ("swish2", "Gelu")],
    *[(ATTENTION + ("retnet", "vlm"), "initializer_range", v, {}) for v in (-0.02, NAN, INF)],
    *[(("decoder", "encoder", "seq2seq", "retnet", "gato"), "max_position_embeddings", v, {}) for v in (-1, 0, 2.5)],
    *[(("decoder", "encoder", "seq2seq", "gato"), "relative_attention_num_buckets", v,
       dict(position_embedding="relative_bias")) for v in (0, 1, -32)],
    *[(ATTENTION, "attention_dropout", v, {}) for v in (1.0, -0.1, NAN)],
    *[(("vit", "gato"), "num_channels", v, {}) for v in (0, -3)],
    *[(MOE, key, v, dict(num_experts=4)) for key in ("router_aux_loss_coef", "router_z_loss_coef")
      for v in (NAN, INF, -1.0)],
    *[(MOE, "router_jitter_noise", v, dict(num_experts=4)) for v in (NAN, INF, 1.5)],
    *[(("gato",), key, v, {}) for key in ("mu_law_max", "mu_law_mu") for v in (INF, NAN, 0.0)],
    *[(("vlm",), "cross_attention_gate_init", v, dict(fusion="cross_attention")) for v in (NAN, INF)],
    (("vlm",), "projector_hidden_act", "gelu2", {}),
    (("vlm",), "fusion", "late", {}),
    *[(("tabular",), "num_fine_bins", v, {}) for v in (0, -1, 2.5)],
    *[(("tabular",), "embedding_dropout", v, {}) for v in (1.0, -0.1, NAN)],
    (("retnet",), "retention_mode", "fast", {}),
    (("encoder",), "hidden_dropout_prob", NAN, {}),
    *[(("encoder",), "max_relative_positions", v, dict(position_embedding="disentangled")) for v in (0, -2, 1.5)],
    (("seq2seq",), "hidden_dropout", INF, {}),
    # special-token ids: beyond the vocabulary (an AssertionError in nn.Embedding's padding_idx, or an index error
    # mid-generate; transformers only warns), negative (padding_idx=-1 is silently the last token), not an int
    *[(TOKENS, key, v, {}) for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
      for v in (1000, -1, 2.0, True)],
    (TOKENS, "eos_token_id", [1, 1000], {}),
    # switches are bools: "yes" (or "no") is truthy
    *[(tuple(SMALL_CONFIGS), "tie_word_embeddings", v, {}) for v in ("yes", 1)],
]
CASES = [(family, key, value, extra) for families, key, value, extra in BAD_VALUES for family in families]
# Gato derives vocab_size and the patch count from these before setting them: checked in its __init__ only.
NOT_ASSIGNABLE = {("gato", "mu_law_max"), ("gato", "mu_law_mu")}


def case_id(case) -> str:
    family, key, value, _ = case
    return f"{family}-{key}={value!r}"


def make(family: str, **keys):
    config_class, base, _ = SMALL_CONFIGS[family]
    return config_class(**{**copy.deepcopy(base), **keys})


def assert_names(error: pytest.ExceptionInfo, key: str, value) -> None:
    message = str(error.value)
    assert key in message, message
    shown = repr(value) if not isinstance(value, float) else repr(float(value))
    assert shown in message or repr(value) in message, f"{shown} not in: {message}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_value_in_the_constructor(case):
    family, key, value, extra = case
    make(family, **extra)  # the same config with a good value is accepted
    with pytest.raises(ValueError) as error:
        make(family, **extra, **{key: value})
    assert_names(error, key, value)


@pytest.mark.parametrize("case", [c for c in CASES if (c[0], c[1]) not in NOT_ASSIGNABLE],
                         ids=[case_id(c) for c in CASES if (c[0], c[1]) not in NOT_ASSIGNABLE])
def test_bad_value_assigned_later_is_refused_and_not_stored(case):
    family, key, value, extra = case
    config = make(family, **extra)
    before = copy.deepcopy(vars(config))
    with pytest.raises(ValueError) as error:
        setattr(config, key, value)
    assert_names(error, key, value)
    assert str(vars(config)) == str(before)  # nothing changed (str: NaN != NaN)


# One bad key per family through from_pretrained(path, key=value): transformers sets it on the loaded config.
FROM_PRETRAINED = {
    "decoder": ("rms_norm_eps", -1.0), "encoder": ("layer_norm_eps", NAN), "seq2seq": ("hidden_act", "swish2"),
    "retnet": ("rope_theta", INF), "vit": ("initializer_range", -0.5), "gato": ("num_channels", 0),
    "vlm": ("projector_hidden_act", "swish2"), "tabular": ("embedding_dropout", 1.5),
}


@pytest.mark.parametrize("family", ["decoder", "encoder", "seq2seq", "gato"])
def test_relative_buckets_need_a_distance_beyond_the_exact_ones(family):
    keys = dict(position_embedding="relative_bias", relative_attention_num_buckets=32)
    make(family, **keys, relative_attention_max_distance=17)  # 32 // 2 exact buckets, then logarithmic up to 17
    with pytest.raises(ValueError) as error:
        make(family, **keys, relative_attention_max_distance=16)
    assert "relative_attention_max_distance (16)" in str(error.value)
    assert "relative_attention_num_buckets // 2 (16)" in str(error.value)


@pytest.mark.parametrize("family", TOKENS)
def test_special_token_ids_must_lie_in_the_vocabulary(family):
    """The edge of the vocabulary, whichever of the id and vocab_size is set last; a model builds with the last id."""
    vocab = make(family).vocab_size
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        config = make(family, **{key: vocab - 1})
        SMALL_CONFIGS[family][2](config)  # (pad: nn.Embedding's padding_idx)
        with pytest.raises(ValueError) as error:
            make(family, **{key: vocab})
        assert_names(error, key, vocab)
        assert f"[0, {vocab})" in str(error.value)
    config = make(family, eos_token_id=[1, vocab - 1])  # Llama 3 style: several eos ids
    assert config.eos_token_id == [1, vocab - 1]
    if family != "vlm":  # (the VLM's vocab_size is its text_config's, fixed at construction)
        with pytest.raises(ValueError) as error:
            config.vocab_size = vocab - 1  # would leave eos id vocab - 1 outside
        assert "vocab_size=" in str(error.value) and "eos_token_id" in str(error.value)
        assert config.vocab_size == vocab


def test_special_token_id_through_from_pretrained(tmp_path):
    HfGenDecoderForCausalLM(make("decoder")).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        HfGenDecoderForCausalLM.from_pretrained(tmp_path, pad_token_id=64)
    assert_names(error, "pad_token_id", 64)


@pytest.mark.parametrize("family", list(FROM_PRETRAINED))
def test_bad_value_through_from_pretrained(family, tmp_path):
    key, value = FROM_PRETRAINED[family]
    model_class = SMALL_CONFIGS[family][2]
    model_class(make(family)).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        model_class.from_pretrained(tmp_path, **{key: value})
    assert_names(error, key, value)


MISSPELT = [
    ("decoder", "softmax_varient", "softmax_variant"), ("decoder", "num_kv_heads", "num_key_value_heads"),
    ("decoder", "rms_norm_epsilon", "rms_norm_eps"), ("decoder", "intermediate_sise", "intermediate_size"),
    ("encoder", "softmax_varient", "softmax_variant"), ("encoder", "layer_norm_epsilon", "layer_norm_eps"),
    ("encoder", "type_vocab_sise", "type_vocab_size"),
    ("seq2seq", "softmax_varient", "softmax_variant"), ("seq2seq", "num_decoder_layer", "num_decoder_layers"),
    ("retnet", "retention_mod", "retention_mode"), ("retnet", "value_factr", "value_factor"),
    ("vit", "patch_sise", "patch_size"), ("vit", "position_embeddings", "position_embedding"),
    ("gato", "mu_law_maximum", "mu_law_max"), ("gato", "num_kv_heads", "num_key_value_heads"),
    ("vlm", "fusoin", "fusion"), ("vlm", "cross_attention_intervall", "cross_attention_interval"),
    ("tabular", "num_fine_bin", "num_fine_bins"),
]


@pytest.mark.parametrize("family, key, meant", MISSPELT, ids=[f"{f}-{k}" for f, k, _ in MISSPELT])
def test_misspelt_key_names_the_key_meant(family, key, meant):
    for attempt in ("constructor", "assignment"):
        with pytest.raises(ValueError) as error:
            if attempt == "constructor":
                make(family, **{key: 1})
            else:
                setattr(make(family), key, 1)
        message = str(error.value)
        assert repr(key) in message and repr(meant) in message, message


@pytest.mark.parametrize("family, key, meant", [("decoder", "softmax_varient", "softmax_variant"),
                                                ("retnet", "retention_mod", "retention_mode")])
def test_misspelt_key_through_from_pretrained(family, key, meant, tmp_path):
    model_class = SMALL_CONFIGS[family][2]
    model_class(make(family)).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        model_class.from_pretrained(tmp_path, **{key: "x"})
    assert repr(key) in str(error.value) and repr(meant) in str(error.value)


@pytest.mark.parametrize("key", ["architectures", "torch_dtype", "transformers_version", "auto_map", "id2label",
                                 "finetuning_task", "my_own_note", "rope_scaling", "_name_or_path"])
def test_keys_transformers_passes_are_not_taken_for_misspellings(key):
    value = {"0": "a", "1": "b"} if key == "id2label" else ({} if key == "auto_map" else None)
    for family in SMALL_CONFIGS:
        make(family, **{key: value})


@pytest.mark.parametrize("source", [transformers.LlamaConfig, transformers.MistralConfig, transformers.MixtralConfig,
                                    transformers.Qwen2Config])
def test_real_decoder_configs_still_load(source):
    keys = source(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=100).to_dict()
    keys["sliding_window"] = None  # (hfgen refuses sliding windows on purpose, see moe.py)
    config = HfGenDecoderConfig(**keys)
    assert (config.rms_norm_eps, config.hidden_act) == (keys["rms_norm_eps"], keys["hidden_act"])
    assert config.rope_parameters["rope_theta"] == source().rope_parameters["rope_theta"]


def test_real_bert_and_t5_configs_still_load():
    bert = transformers.BertConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    assert HfGenEncoderConfig(**bert.to_dict()).layer_norm_eps == bert.layer_norm_eps
    assert HfGenEncoderConfig.from_bert_config(bert).hidden_act == "gelu"
    t5 = transformers.T5Config(num_layers=1, d_model=64, d_ff=128, num_heads=4, d_kv=16, vocab_size=100)
    assert t5_config_to_hfgen(t5, tied=True).relative_attention_num_buckets == t5.relative_attention_num_buckets


def test_vlm_sub_configs_and_vocabulary_are_checked(tmp_path):
    with pytest.raises(ValueError, match="text_config must be a HfGenDecoderConfig or its dict, got LlamaConfig"):
        HfGenVlmConfig(text_config=transformers.LlamaConfig())
    with pytest.raises(ValueError, match=r"vocab_size \(50\) is text_config.vocab_size \(64\)"):
        make("vlm", vocab_size=50)
    # An image token set through from_pretrained is checked with the other keys before any weight is built.
    model_class = SMALL_CONFIGS["vlm"][2]
    model_class(make("vlm")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"image_token_id must be a token id in \[0, 64\) .*got 64"):
        model_class.from_pretrained(tmp_path, image_token_id=64)


def test_vlm_config_json_written_before_the_typed_fields_loads_and_saves_unchanged(tmp_path):
    """A config.json of the untyped HfGenVlmConfig (top-level vocab_size and special ids, sub-configs with their
    model_type): loaded, it gives the same file back, and a model builds from it."""
    fixture = Path(__file__).parent / "fixtures" / "vlm_config_before_typed_fields.json"
    written = json.loads(fixture.read_text())
    config = HfGenVlmConfig.from_json_file(fixture)
    assert isinstance(config.text_config, HfGenDecoderConfig) and isinstance(config.vision_config, HfGenViTConfig)
    config.to_json_file(tmp_path / "config.json")
    again = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in again.items() if k != "transformers_version"} == \
        {k: v for k, v in written.items() if k != "transformers_version"}
    HfGenVlmForConditionalGeneration(config)
