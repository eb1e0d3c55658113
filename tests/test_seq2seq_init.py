"""``initializer_scheme="t5"``: T5's initialisation scales, compared with transformers' own T5 initialisation."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from hfgen import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from hfgen.models import T5_LIKE_KEYS
from hfgen.models.t5_conversion import hfgen_key_to_t5

SIZES = dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
             pad_token_id=0)


def hfgen_t5(**keys) -> HfGenSeq2SeqForConditionalGeneration:
    torch.manual_seed(0)
    return HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(**{**T5_LIKE_KEYS, **SIZES, **keys}))


@pytest.mark.parametrize("gated", [False, True])
def test_t5_scheme_matches_transformers_t5_initialisation(gated):
    """Every weight's std equals the std transformers' T5ForConditionalGeneration draws for the same weight (same
    sizes, names through the documented T5 mapping), within sampling error."""
    mlp = dict(mlp_type="gated", hidden_act="gelu_new") if gated else {}
    ours = hfgen_t5(initializer_scheme="t5", **mlp)
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(T5Config(
        vocab_size=512, d_model=64, d_kv=16, d_ff=256, num_layers=1, num_heads=4, decoder_start_token_id=0,
        feed_forward_proj="gated-gelu" if gated else "relu", pad_token_id=0))
    theirs = dict(reference.named_parameters())
    compared = 0
    for name, weight in ours.named_parameters():
        target = theirs[hfgen_key_to_t5(name, gated)]
        if "norm" in name:
            assert torch.equal(weight, target), name  # both ones
            continue
        ratio = weight.std().item() / target.std().item()
        # Two std estimates of n draws each: relative standard error sqrt(1 / n); allow 3.5 of them.
        assert abs(ratio - 1) < 3.5 * weight.numel() ** -0.5, (name, weight.std().item(), target.std().item())
        compared += 1
    assert compared == 1 + 2 + 3 * 4 + 2 * (3 if gated else 2)  # embedding, 2 biases, 3 attentions, 2 MLPs


def test_t5_scheme_query_scale_follows_the_scoring():
    """With a scoring that divides QK^T by sqrt(head_dim), the query keeps hidden_size**-0.5 (T5 folds the
    division into its query weights only because it does not divide)."""
    scaled = hfgen_t5(initializer_scheme="t5", attention_scoring="scaled_dot_product")
    q = scaled.model.decoder.layers[0].cross_attn.q_proj.weight
    k = scaled.model.decoder.layers[0].cross_attn.k_proj.weight
    assert abs(q.std().item() / 64**-0.5 - 1) < 0.07 and abs(k.std().item() / 64**-0.5 - 1) < 0.07


def test_normal_scheme_unchanged_and_t5_scheme_survives_save_load(tmp_path):
    """``"normal"`` draws every matrix from N(0, initializer_range); a saved t5-scheme model loads back identical
    (loading never re-draws weights)."""
    assert HfGenSeq2SeqConfig(**SIZES).initializer_scheme == "t5"  # the default
    normal = hfgen_t5(initializer_scheme="normal")
    assert normal.config.initializer_scheme == "normal"
    assert abs(normal.model.shared.weight.std().item() / 0.02 - 1) < 0.05
    assert abs(normal.model.encoder.layers[0].mlp.down_proj.weight.std().item() / 0.02 - 1) < 0.07
    model = hfgen_t5(initializer_scheme="t5")
    model.save_pretrained(tmp_path)
    loaded = HfGenSeq2SeqForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.initializer_scheme == "t5"
    for (name, weight), (_, again) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(weight, again), name


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="initializer_scheme must be one of normal, t5"):
        HfGenSeq2SeqConfig(**SIZES, initializer_scheme="xavier")


def _copy_task_encoder_use(scheme: str, steps: int = 200) -> float:
    """Train a 2+2-layer model to copy 12 random tokens (62 symbols: ln 62 = 4.13 nats without the encoder), then
    return how much worse the loss gets when each row's decoder reads another row's encoder input."""
    torch.manual_seed(0)
    config = HfGenSeq2SeqConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                initializer_scheme=scheme)
    model = HfGenSeq2SeqForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(2, 64, (32, 12), generator=generator)
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    batch = torch.randint(2, 64, (64, 12), generator=generator)
    with torch.no_grad():
        own = model(input_ids=batch, labels=batch).loss.item()
        other = model(input_ids=batch.roll(1, 0), labels=batch).loss.item()
    return other - own


def test_default_scheme_learns_to_read_the_encoder():
    """Why ``"t5"`` is the default: within 200 steps of a copy task the decoder relies on its encoder (swapping the
    encoder input costs more than 1.8 nats per token), far more than with N(0, 0.02) weights."""
    default, normal = _copy_task_encoder_use("t5"), _copy_task_encoder_use("normal")
    assert default > 1.8, default
    assert normal < default - 0.5, (normal, default)
