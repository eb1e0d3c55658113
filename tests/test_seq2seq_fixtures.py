"""Tiny encoder-decoder configs and inputs shared by the ``test_seq2seq_*`` modules (no tests here)."""

from __future__ import annotations

import torch

import hfgen  # noqa: F401  (registers the Auto classes)
from conftest import TINY as DECODER_TINY
from hfgen import HfGenSeq2SeqConfig
from hfgen.models import T5_LIKE_KEYS

# The decoder tests' tiny sizes (2 layers, hidden 32, 4 query / 2 key-value heads, pad 0, init 0.1: well-separated
# random logits), plus: 2 decoder layers, no eos (generations run their full length), 3 query rows per chunk (the
# chunked eager paths really chunk).
TINY = {**DECODER_TINY, "num_decoder_layers": 2, "eos_token_id": None, "query_chunk_size": 3}
VARIANTS = {
    "default": {},
    "t5_like": dict(T5_LIKE_KEYS, num_key_value_heads=4),
    "off_by_one-mqa": dict(softmax_variant="off_by_one", num_key_value_heads=1),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "alibi": dict(position_embedding="alibi"),
    "rotary-post_layernorm": dict(position_embedding="rotary", norm_position="post", norm_type="layernorm",
                                  mlp_type="standard", hidden_act="gelu"),
    "additive": dict(attention_scoring="additive"),
    "learned": dict(position_embedding="learned", num_decoder_layers=3),
    "clipped-gate-general": dict(softmax_variant="clipped", attention_gate=True, attention_scoring="general"),
}


def tiny_seq2seq_config(**overrides) -> HfGenSeq2SeqConfig:
    return HfGenSeq2SeqConfig(**{**TINY, **overrides})


def source_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sources of lengths 9, 6 (right-padded) and 5 (left-padded) in one batch, and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


def decoder_ids(batch: int, length: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(1, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
