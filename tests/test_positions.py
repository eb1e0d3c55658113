"""Position variants against independent definitions: the original Transformer's formula, T5's own bucket
function in transformers, ALiBi's slopes from the paper, and the models' behaviour (order sensitivity, left padding).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.models.positions import (
    AlibiBias,
    alibi_slopes,
    relative_position_bucket,
    relative_positions,
    sinusoidal_position_embedding,
)


def test_sinusoidal_matches_vaswani_formula():
    d = 8
    table = sinusoidal_position_embedding(torch.arange(5)[None], d, torch.float64)[0]
    for pos in range(5):
        for i in range(d // 2):
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / d)), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / d)), abs=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_t5(bidirectional):
    relative = relative_positions(40, 300, 0, "cpu")
    ours = relative_position_bucket(relative, bidirectional, 32, 128)
    theirs = T5Attention._relative_position_bucket(relative, bidirectional=bidirectional, num_buckets=32,
                                                   max_distance=128)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("heads", [8, 6, 12])
def test_alibi_slopes_follow_the_paper(heads):
    slopes = alibi_slopes(heads)
    closest = 2 ** math.floor(math.log2(heads))
    expected = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    expected += [2 ** (-8 * (i + 1) / (2 * closest)) for i in range(0, 2 * closest, 2)][: heads - closest]
    torch.testing.assert_close(slopes, torch.tensor(expected))


def test_alibi_bias_is_minus_slope_times_distance():
    cfg = HfGenDecoderConfig(num_attention_heads=4, hidden_size=32, position_embedding="alibi")
    bias = AlibiBias(cfg, bidirectional=False)(3, 5, q_offset=2, device="cpu")[0]
    slopes = alibi_slopes(4)
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h].item() * max(i + 2 - j, 0))


def tiny(position_embedding, **kw):
    return HfGenDecoderConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, position_embedding=position_embedding, **kw)


@pytest.mark.parametrize("position_embedding", ["rotary", "sinusoidal", "learned", "relative_bias", "alibi"])
def test_positions_make_the_model_order_sensitive(position_embedding):
    """Seed 003: without positions "the order of tokens in the sequence would not matter". In a bidirectional
    one-layer causal model the last token then sees the same set whatever the order of the prefix; with
    positions, its logits change."""
    torch.manual_seed(0)
    outputs = {}
    for kind in (position_embedding, "none"):
        model = HfGenDecoderForCausalLM(copy.deepcopy(tiny(kind))).eval()
        x = torch.tensor([[5, 6, 7, 8, 9]])
        swapped = torch.tensor([[6, 5, 8, 7, 9]])
        with torch.no_grad():
            outputs[kind] = (model(x).logits[0, -1] - model(swapped).logits[0, -1]).abs().max().item()
    assert outputs["none"] < 1e-6  # attention over an unordered set: the last token sees the same set
    assert outputs[position_embedding] > 1e-5
