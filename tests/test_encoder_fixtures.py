"""Tiny encoder configs and BERT twins shared by the encoder tests (no tests here)."""

from __future__ import annotations

import copy

import torch
from transformers import BertConfig

from hfgen import HfGenEncoderConfig

TINY_ENCODER = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=64, pad_token_id=0, initializer_range=0.1, hidden_dropout_prob=0.0,
                    attention_dropout=0.0)

# One axis at a time away from BERT, plus a few combinations.
VARIANTS = {
    "bert": {},
    "dot_product": dict(attention_scoring="dot_product"),
    "general": dict(attention_scoring="general"),
    "additive": dict(attention_scoring="additive"),
    "temperature": dict(softmax_variant="temperature", softmax_temperature=2.0),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "off_by_one": dict(softmax_variant="off_by_one"),
    "clipped": dict(softmax_variant="clipped"),
    "gate_gqa": dict(attention_gate=True, num_key_value_heads=2),
    "mqa": dict(num_key_value_heads=1),
    "rotary": dict(position_embedding="rotary"),
    "sinusoidal": dict(position_embedding="sinusoidal"),
    "relative_bias": dict(position_embedding="relative_bias"),
    "alibi": dict(position_embedding="alibi"),
    "none": dict(position_embedding="none"),
    "disentangled": dict(position_embedding="disentangled", position_buckets=8, max_relative_positions=32),
    "disentangled_gqa_off_by_one": dict(position_embedding="disentangled", position_buckets=8,
                                        max_relative_positions=32, num_key_value_heads=2,
                                        softmax_variant="off_by_one"),
    "disentangled_adaptive": dict(position_embedding="disentangled", position_buckets=8, max_relative_positions=32,
                                  softmax_variant="adaptive_temperature", attention_scoring="general"),
    "pre_rmsnorm_gated": dict(norm_position="pre", norm_type="rmsnorm", mlp_type="gated", hidden_act="silu"),
    "no_token_types": dict(type_vocab_size=0, attention_bias=False, mlp_bias=False),
}


def tiny_encoder_config(**overrides) -> HfGenEncoderConfig:
    return HfGenEncoderConfig(**{**TINY_ENCODER, **overrides})


def bert_twin_config(config: HfGenEncoderConfig, **overrides) -> BertConfig:
    """The ``BertConfig`` of the same shapes as a BERT-like hfgen config."""
    return BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                      num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                      intermediate_size=config.intermediate_size,
                      max_position_embeddings=config.max_position_embeddings,
                      type_vocab_size=config.type_vocab_size, pad_token_id=config.pad_token_id,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=config.layer_norm_eps,
                      num_labels=config.num_labels, **overrides)


def build_twin(hfgen_class, bert_class, seed: int = 0, **config_overrides):
    """A transformers BERT model with seeded random weights and the hfgen model holding exactly those weights
    (``load_state_dict(strict=True)``: the names are BERT's)."""
    config = tiny_encoder_config(**config_overrides)
    torch.manual_seed(seed)
    bert = bert_class(bert_twin_config(config)).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a bias that is ignored shows
        for name, parameter in bert.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    model = hfgen_class(copy.deepcopy(config)).eval()
    model.load_state_dict(bert.state_dict(), strict=True)
    return model, bert


def right_padded_batch(vocab_size: int = 128, seed: int = 1):
    """Three rows of lengths 9, 6 and 3, right-padded with 0, their mask and segment ids (two segments each)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = (9, 6, 3)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1, vocab_size, (length,), generator=generator)
        mask[row, :length] = 1
        types[row, length // 2:length] = 1
    return ids, mask, types
