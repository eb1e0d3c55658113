"""DeBERTa's disentangled attention (position_embedding="disentangled"): against the formula written out plainly,
against transformers' own DebertaV2Model with the same weights, SDPA against eager (values and gradients), and only
where it is implemented (the encoder family)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2Model
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from hfgen import HfGenDecoderConfig, HfGenEncoderForMaskedLM, HfGenEncoderModel, HfGenSeq2SeqConfig
from hfgen.models import DEBERTA_LIKE_KEYS
from hfgen.models.disentangled import log_bucket_position, relative_embeddings
from test_encoder_fixtures import VARIANTS, tiny_encoder_config

SPAN, MAX_DISTANCE = 8, 32


def test_log_buckets_are_debertas():
    relative = torch.arange(-300, 301)
    for bucket_size, max_position in ((8, 32), (256, 512), (64, 100)):
        expected = make_log_bucket_position(relative, bucket_size, max_position).long()
        assert torch.equal(log_bucket_position(relative, bucket_size, max_position), expected)


def test_one_attention_layer_equals_the_formula():
    """A_ij = (Q^c_i.K^c_j + Q^c_i.K^r_d(i,j) + K^c_j.Q^r_d(i,j)) / sqrt(3d), d(i,j) = clamp(bucket(i-j) + k, 0, 2k-1);
    Q^r, K^r: the layer's own projections (with bias) of the normalised relative embeddings; padding masked."""
    config = tiny_encoder_config(**VARIANTS["disentangled"])
    torch.manual_seed(0)
    model = HfGenEncoderModel(copy.deepcopy(config)).eval()
    model.set_attn_implementation("eager")
    attention = model.encoder.layer[0].attention.self
    batch, length, heads, d = 2, 12, config.num_attention_heads, config.head_dim
    hidden = torch.randn(batch, length, config.hidden_size)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 8:] = False
    with torch.no_grad():
        out, probs = attention(hidden, attention_mask=mask[:, None, None, :],
                               position_bias=lambda q, k: relative_embeddings(model.encoder, config, q, k))
        table = model.encoder.LayerNorm(model.encoder.rel_embeddings.weight)  # all 2k rows
        q_c = attention.query(hidden).view(batch, length, heads, d)
        k_c = attention.key(hidden).view(batch, length, heads, d)
        v_c = attention.value(hidden).view(batch, length, heads, d)
        q_r = attention.query(table).view(2 * SPAN, heads, d)
        k_r = attention.key(table).view(2 * SPAN, heads, d)
        expected = torch.zeros(batch, length, heads, d)
        for b in range(batch):
            for h in range(heads):
                scores = torch.full((length, length), float("-inf"))
                for i in range(length):
                    for j in range(length):
                        if not mask[b, j]:
                            continue
                        bucket = int(make_log_bucket_position(torch.tensor(i - j), SPAN, MAX_DISTANCE))
                        r = min(max(bucket + SPAN, 0), 2 * SPAN - 1)
                        scores[i, j] = (q_c[b, i, h] @ k_c[b, j, h] + q_c[b, i, h] @ k_r[r, h]
                                        + k_c[b, j, h] @ q_r[r, h]) / math.sqrt(3 * d)
                p = torch.softmax(scores, dim=-1)
                torch.testing.assert_close(probs[b, h], p, atol=1e-6, rtol=0)
                expected[b, :, h] = p @ v_c[b, :, h]
    torch.testing.assert_close(out, expected.reshape(batch, length, heads * d), atol=1e-5, rtol=0)


def _deberta_pair(seed: int = 0):
    deberta_config = DebertaV2Config(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["c2p", "p2c"], share_att_key=True,
        position_buckets=SPAN, max_relative_positions=MAX_DISTANCE, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0)
    torch.manual_seed(seed)
    deberta = DebertaV2Model(deberta_config).eval()
    with torch.no_grad():
        for name, parameter in deberta.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    config = tiny_encoder_config(**{**DEBERTA_LIKE_KEYS, "position_buckets": SPAN,
                                    "max_relative_positions": MAX_DISTANCE, "layer_norm_eps": 1e-7})
    model = HfGenEncoderModel(config, add_pooling_layer=False).eval()
    # DeBERTa-v2 names its projections query_proj/key_proj/value_proj; every other name is the same.
    renamed = {k.replace("_proj.", "."): v for k, v in deberta.state_dict().items()}
    model.load_state_dict(renamed, strict=True)
    return model, deberta


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_matches_transformers_deberta_v2_with_the_same_weights(implementation):
    model, deberta = _deberta_pair()
    model.set_attn_implementation(implementation)
    lengths = (40, 25, 7)  # beyond max_relative_positions: the outermost buckets are clamped
    ids = torch.randint(1, 128, (3, 40), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(40)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = deberta(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()  # DeBERTa zeroes padded positions' embeddings; their outputs are never used
    torch.testing.assert_close(ours[real], theirs[real], atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["disentangled", "disentangled_gqa_off_by_one", "disentangled_adaptive"])
def test_sdpa_equals_eager_with_gradients(name):
    config = tiny_encoder_config(**VARIANTS[name])
    ids = torch.randint(1, 128, (2, 20), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    labels = ids.masked_fill(ids % 4 != 0, -100)
    results = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = HfGenEncoderForMaskedLM(copy.deepcopy(config))
        model.set_attn_implementation(implementation)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results[implementation] = (out.logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["sdpa"][0], results["eager"][0], atol=1e-5, rtol=0)
    rel = results["eager"][1]["bert.encoder.rel_embeddings.weight"]
    assert rel.abs().sum() > 0  # the relative embeddings learn
    for key, grad in results["eager"][1].items():
        torch.testing.assert_close(results["sdpa"][1][key], grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("config_class", [HfGenDecoderConfig, HfGenSeq2SeqConfig])
def test_other_families_reject_it_naming_the_encoder(config_class):
    with pytest.raises(ValueError, match="only by the hfgen_encoder family") as error:
        config_class(position_embedding="disentangled")
    assert "'rotary'" in str(error.value) and "'alibi'" in str(error.value)
