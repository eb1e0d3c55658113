"""T5 checkpoints in and out of ``hfgen_seq2seq``: the config keys and the weight mapping.

hfgen keeps one naming scheme across families (Llama's leaf names, BART's containers), so T5's names differ; the
table below is the whole mapping, used in both directions. T5 details it encodes:

* the relative position bias lives in T5's first block only and is shared by every layer: here it belongs to the
  stack (``model.encoder.relative_position_bias``), which computes it once per forward pass and hands it to every
  layer; the decoder's first-block ``EncDecAttention`` has none;
* T5 does not scale ``QK^T`` (``attention_scoring="dot_product"``);
* ``feed_forward_proj="relu"`` is ``mlp_type="standard"`` (``wi`` -> ``up_proj``), ``"gated-gelu"`` is
  ``mlp_type="gated", hidden_act="gelu_new"`` (``wi_0`` -> ``gate_proj``, ``wi_1`` -> ``up_proj``);
* T5 multiplies the decoder output by ``d_model**-0.5`` when its config was written with tied embeddings
  (``T5Config.scale_decoder_outputs``): ``scale_decoder_outputs`` here. Since transformers 5 a T5 built in memory
  always ties its LM head (``T5Config`` forces ``tie_word_embeddings=True``); whether a given T5 really shares the
  tensor is read from the model itself.
"""

from __future__ import annotations

import re

import torch
from transformers import T5Config, T5ForConditionalGeneration

from .configuration_hfgen_seq2seq import T5_LIKE_KEYS, HfGenSeq2SeqConfig

# (T5 name, hfgen name). {s}: encoder|decoder; {i}: layer index; {p}: q|k|v|o; {w}: an MLP matrix name.
T5_NAME_PAIRS = [
    ("shared.weight", "model.shared.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("{s}.final_layer_norm.weight", "model.{s}.norm.weight"),
    ("{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
     "model.{s}.relative_position_bias.relative_attention_bias.weight"),
    ("{s}.block.{i}.layer.0.SelfAttention.{p}.weight", "model.{s}.layers.{i}.self_attn.{p}_proj.weight"),
    ("{s}.block.{i}.layer.0.layer_norm.weight", "model.{s}.layers.{i}.input_layernorm.weight"),
    ("decoder.block.{i}.layer.1.EncDecAttention.{p}.weight", "model.decoder.layers.{i}.cross_attn.{p}_proj.weight"),
    ("decoder.block.{i}.layer.1.layer_norm.weight", "model.decoder.layers.{i}.cross_attention_layernorm.weight"),
    ("encoder.block.{i}.layer.1.DenseReluDense.{w}.weight", "model.encoder.layers.{i}.mlp.{w}.weight"),
    ("encoder.block.{i}.layer.1.layer_norm.weight", "model.encoder.layers.{i}.post_attention_layernorm.weight"),
    ("decoder.block.{i}.layer.2.DenseReluDense.{w}.weight", "model.decoder.layers.{i}.mlp.{w}.weight"),
    ("decoder.block.{i}.layer.2.layer_norm.weight", "model.decoder.layers.{i}.post_attention_layernorm.weight"),
]
T5_MLP_NAMES = {"wi": "up_proj", "wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"}
_FIELDS = {"s": r"(?P<s>encoder|decoder)", "i": r"(?P<i>\d+)", "p": r"(?P<p>[qkvo])", "w": r"(?P<w>\w+?)"}


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
    return re.compile("^" + escaped.format(**_FIELDS) + "$")


_T5_TO_HFGEN = [(_pattern(t5), hfgen) for t5, hfgen in T5_NAME_PAIRS]
_HFGEN_TO_T5 = [(_pattern(hfgen), t5) for t5, hfgen in T5_NAME_PAIRS]


def t5_key_to_hfgen(name: str, gated: bool) -> str | None:
    """The hfgen name of a T5 parameter, or ``None`` for the per-stack copies of the shared embedding."""
    if re.fullmatch(r"(encoder|decoder)\.embed_tokens\.weight", name):
        return None
    for pattern, target in _T5_TO_HFGEN:
        if match := pattern.match(name):
            fields = match.groupdict()
            if "w" in fields:
                if fields["w"] not in ({"wi_0", "wi_1", "wo"} if gated else {"wi", "wo"}):
                    break
                fields["w"] = T5_MLP_NAMES[fields["w"]]
            return target.format(**fields)
    raise ValueError(f"No hfgen name for the T5 parameter {name!r} (gated MLP: {gated}).")


def hfgen_key_to_t5(name: str, gated: bool) -> str:
    for pattern, target in _HFGEN_TO_T5:
        if match := pattern.match(name):
            fields = match.groupdict()
            if "w" in fields:
                fields["w"] = {"gate_proj": "wi_0", "up_proj": "wi_1" if gated else "wi", "down_proj": "wo"}[fields["w"]]
            return target.format(**fields)
    raise ValueError(f"No T5 name for the hfgen parameter {name!r}: is the model T5-like (T5_LIKE_KEYS)?")


# (T5Config key, HfGenSeq2SeqConfig key): the sizes and ids that carry over one to one, both ways.
T5_CONFIG_PAIRS = [
    ("vocab_size", "vocab_size"), ("d_model", "hidden_size"), ("d_kv", "head_dim"), ("d_ff", "intermediate_size"),
    ("num_layers", "num_hidden_layers"), ("num_decoder_layers", "num_decoder_layers"),
    ("num_heads", "num_attention_heads"), ("relative_attention_num_buckets", "relative_attention_num_buckets"),
    ("relative_attention_max_distance", "relative_attention_max_distance"), ("layer_norm_epsilon", "rms_norm_eps"),
    ("dropout_rate", "hidden_dropout"), ("pad_token_id", "pad_token_id"), ("eos_token_id", "eos_token_id"),
    ("decoder_start_token_id", "decoder_start_token_id"),
]


def t5_config_to_hfgen(t5_config: T5Config, tied: bool, **overrides) -> HfGenSeq2SeqConfig:
    """The ``HfGenSeq2SeqConfig`` of a T5 config. ``tied``: whether that T5's LM head shares the embedding."""
    keys = dict(T5_LIKE_KEYS, **{ours: getattr(t5_config, theirs, None) for theirs, ours in T5_CONFIG_PAIRS})
    keys.update(attention_dropout=t5_config.dropout_rate, mlp_type="gated" if t5_config.is_gated_act else "standard",
                hidden_act=t5_config.dense_act_fn, tie_word_embeddings=tied,
                scale_decoder_outputs=t5_config.scale_decoder_outputs)
    keys.update(overrides)
    return HfGenSeq2SeqConfig(**keys)


def t5_to_hfgen(t5, cls, **config_overrides):
    """``cls`` (``HfGenSeq2SeqForConditionalGeneration``) with the weights of ``t5``: a
    ``T5ForConditionalGeneration`` or anything its ``from_pretrained`` accepts."""
    if not isinstance(t5, T5ForConditionalGeneration):
        t5 = T5ForConditionalGeneration.from_pretrained(t5)
    tied = t5.lm_head.weight is t5.shared.weight
    config = t5_config_to_hfgen(t5.config, tied, **config_overrides)
    gated = config.mlp_type == "gated"
    state = {}
    for name, tensor in t5.state_dict().items():
        target = t5_key_to_hfgen(name, gated)
        if target is not None and not (tied and target == "lm_head.weight"):
            state[target] = tensor
    model = cls(config).to(device=t5.device, dtype=t5.dtype)
    result = model.load_state_dict(state, strict=False)
    # Only the tied copies may be absent (the per-stack embeddings, and the LM head when tied).
    missing = [k for k in result.missing_keys if k not in model.get_expanded_tied_weights_keys(all_submodels=True)]
    if missing or result.unexpected_keys:
        raise ValueError(f"T5 weights did not map onto the model: missing {missing}, unexpected "
                         f"{result.unexpected_keys}.")
    return model.train(t5.training)


def hfgen_to_t5(model) -> T5ForConditionalGeneration:
    """``T5ForConditionalGeneration`` with the weights of a T5-like ``HfGenSeq2SeqForConditionalGeneration``."""
    config = model.config
    expected = {k: v for k, v in T5_LIKE_KEYS.items() if k not in ("mlp_type", "hidden_act", "tie_word_embeddings")}
    expected.update(softmax_variant="standard", attention_gate=False, num_key_value_heads=config.num_attention_heads)
    different = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
    if different:
        raise ValueError(f"Only a T5-like model converts to T5; these keys differ from T5's: {different} (T5 has "
                         f"{ {k: expected[k] for k in different} }).")
    gated = config.mlp_type == "gated"
    act = "gelu" if config.hidden_act == "gelu_new" and gated else config.hidden_act
    t5_config = T5Config(
        **{theirs: getattr(config, ours) for theirs, ours in T5_CONFIG_PAIRS},
        feed_forward_proj=f"gated-{act}" if gated else act,
        tie_word_embeddings=config.scale_decoder_outputs,  # what T5 reads it as: scale the decoder output
    )
    if gated and t5_config.dense_act_fn != config.hidden_act:
        raise ValueError(f"T5 has no gated MLP with {config.hidden_act!r}; it offers gated-gelu (gelu_new).")
    t5 = T5ForConditionalGeneration(t5_config).to(device=model.device, dtype=model.dtype)
    if not config.tie_word_embeddings:  # T5 ties in memory whatever its config says: untie, and save both
        t5.lm_head.weight = torch.nn.Parameter(t5.lm_head.weight.detach().clone())
        t5.all_tied_weights_keys.pop("lm_head.weight", None)
    state = {hfgen_key_to_t5(name, gated): tensor for name, tensor in model.state_dict().items()
             if not re.fullmatch(r"model\.(encoder|decoder)\.embed_tokens\.weight", name)}
    result = t5.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in t5.all_tied_weights_keys]
    if missing or result.unexpected_keys:
        raise ValueError(f"hfgen weights did not map onto T5: missing {missing}, unexpected "
                         f"{result.unexpected_keys}.")
    return t5.train(model.training)
