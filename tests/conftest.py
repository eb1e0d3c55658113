"""Shared fixtures: tiny decoder configs and models that build in milliseconds on a CPU.

transformers keeps (and mutates: ``_attn_implementation``) the config object a model is built from, so every
model gets its own deep copy.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import hfgen  # noqa: F401  (registers the Auto classes)
from hfgen import HfGenDecoderConfig

TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    # Large enough that random weights give well-separated logits: greedy decoding then does not hinge on
    # rounding, so two mathematically equal paths give the same tokens.
    initializer_range=0.1,
)
# The same sizes for transformers' own Llama (it has no initializer_range worth matching: weights are copied).
LLAMA_KEYS = {k: v for k, v in TINY.items() if k != "initializer_range"}


def tiny_config(**overrides) -> HfGenDecoderConfig:
    """A 2-layer, hidden-32 decoder config with GQA (4 query heads, 2 key/value heads)."""
    return HfGenDecoderConfig(**{**TINY, **overrides})


def build(model_class, config, seed: int = 0, attn_implementation: str | None = None):
    """A model in eval mode with seeded random weights, built from its own copy of ``config``."""
    torch.manual_seed(seed)
    model = model_class(copy.deepcopy(config)).eval()
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
        assert model.config._attn_implementation == attn_implementation
    return model


def random_ids(batch: int, length: int, vocab_size: int = TINY["vocab_size"], seed: int = 1) -> torch.Tensor:
    """Token ids that avoid 0 (the pad id of the tiny configs)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (batch, length), generator=generator)


def padded(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as one batch, padded with 0 on the ``left`` or ``right``, and its mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def load_hfgen_tokenizer():
    """hfgen's shipped tokenizer, or a skip when that part of the package is not there yet."""
    if importlib.util.find_spec("hfgen.data") is None or importlib.util.find_spec("hfgen.data.tokenizer") is None:
        pytest.skip("hfgen.data.load_tokenizer is not available (hfgen/data has no tokenizer module)")
    from hfgen.data import load_tokenizer

    return load_tokenizer()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
