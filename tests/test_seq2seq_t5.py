"""T5 parity: with T5-like keys the encoder-decoder is ``transformers.T5ForConditionalGeneration`` -- same logits
for the same weights (padding on either side, eager and SDPA, T5 v1.0 and v1.1 / FLAN-T5 layouts), same loss, same
generated tokens -- and the documented weight mapping converts both ways."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from hfgen import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from hfgen.models import T5_LIKE_KEYS
from hfgen.models.t5_conversion import T5_NAME_PAIRS, hfgen_key_to_t5, t5_key_to_hfgen

# T5 v1.0 (ReLU MLP, tied embeddings, decoder output scaled by d_model**-0.5) and v1.1 / FLAN-T5 (gated-GELU,
# untied LM head, no scaling); 3 decoder layers over 2 encoder layers to catch a layer-count mix-up.
LAYOUTS = {
    "t5-v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5-v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
SIZES = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
ATOL = 1e-5


def make_t5(layout: str, num_decoder_layers: int = 3, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    t5 = T5ForConditionalGeneration(T5Config(**SIZES, num_decoder_layers=num_decoder_layers, **LAYOUTS[layout]))
    if layout == "t5-v1.1":  # a FLAN-T5 checkpoint's LM head is its own matrix (transformers 5 ties it in memory)
        t5.lm_head.weight = torch.nn.Parameter(torch.randn_like(t5.lm_head.weight))
        t5.all_tied_weights_keys.pop("lm_head.weight", None)
    t5.config.decoder_start_token_id = t5.generation_config.decoder_start_token_id = 0  # T5 uses the pad token
    return t5.eval()


def padded_inputs(seed: int = 3):
    """Source: 25 tokens, row 1 right-padded, row 2 left-padded; target: 22 tokens (beyond the exact buckets)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 100, (3, 25), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    mask[2, :5] = 0
    return dict(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask,
                decoder_input_ids=torch.randint(2, 100, (3, 22), generator=g))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_equal_t5(layout, implementation):
    t5 = make_t5(layout)
    ours = HfGenSeq2SeqForConditionalGeneration.from_t5(t5).eval()
    for model in (t5, ours):
        model.set_attn_implementation(implementation)
    inputs = padded_inputs()
    with torch.no_grad():
        expected = t5(**inputs)
        actual = ours(**inputs)
    torch.testing.assert_close(actual.logits, expected.logits, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state,
                               atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_loss_and_gradients_equal_t5(layout):
    t5 = make_t5(layout)
    ours = HfGenSeq2SeqForConditionalGeneration.from_t5(t5)
    inputs = padded_inputs()
    labels = inputs.pop("decoder_input_ids")
    labels[1, 15:] = -100  # ignored positions: shifted in as pad, left out of the loss
    expected = t5(**inputs, labels=labels)
    actual = ours(**inputs, labels=labels)
    torch.testing.assert_close(actual.loss, expected.loss, atol=ATOL, rtol=ATOL)
    expected.loss.backward()
    actual.loss.backward()
    torch.testing.assert_close(ours.model.shared.weight.grad, t5.shared.weight.grad, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ours.model.encoder.relative_position_bias.relative_attention_bias.weight.grad,
                               t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad,
                               atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_generation_equals_t5(layout):
    # transformers' T5 cannot generate with more decoder than encoder layers (its cache is sized by num_layers).
    t5 = make_t5(layout, num_decoder_layers=2)
    ours = HfGenSeq2SeqForConditionalGeneration.from_t5(t5).eval()
    inputs = padded_inputs()
    inputs.pop("decoder_input_ids")
    for kwargs in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
        expected = t5.generate(**inputs, max_new_tokens=8, min_new_tokens=8, **kwargs)
        actual = ours.generate(**inputs, max_new_tokens=8, min_new_tokens=8, **kwargs)
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_conversion_round_trips_exactly(layout, tmp_path):
    """T5 -> hfgen -> T5 gives back every tensor; the converted T5 saves and reloads with transformers alone."""
    t5 = make_t5(layout)
    ours = HfGenSeq2SeqForConditionalGeneration.from_t5(t5)
    assert ours.config.tie_word_embeddings == (layout == "t5-v1.0")
    assert ours.config.scale_decoder_outputs == (layout == "t5-v1.0")
    back = ours.to_t5()
    expected, actual = t5.state_dict(), back.state_dict()
    assert set(actual) == set(expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    back.save_pretrained(tmp_path)
    reloaded = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = padded_inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, t5(**inputs).logits, atol=ATOL, rtol=ATOL)
    # ... and the same folder converts straight in, by path.
    from_path = HfGenSeq2SeqForConditionalGeneration.from_t5(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(from_path(**inputs).logits, t5(**inputs).logits, atol=ATOL, rtol=ATOL)


def test_hfgen_trained_model_converts_to_t5():
    """The other direction, starting from hfgen: a T5-like hfgen model (after a training step) as T5."""
    config = HfGenSeq2SeqConfig(**T5_LIKE_KEYS, vocab_size=100, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_decoder_layers=2, num_attention_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0)
    torch.manual_seed(0)
    ours = HfGenSeq2SeqForConditionalGeneration(config)
    inputs = padded_inputs()
    loss = ours(**{k: v for k, v in inputs.items() if k != "decoder_input_ids"}, labels=inputs["decoder_input_ids"]).loss
    loss.backward()
    with torch.no_grad():
        for p in ours.parameters():
            p -= 0.1 * p.grad
    ours.eval()
    t5 = ours.to_t5().eval()
    with torch.no_grad():
        torch.testing.assert_close(t5(**inputs).logits, ours(**inputs).logits, atol=ATOL, rtol=ATOL)


def test_weight_mapping_is_one_to_one():
    """Every T5 parameter name has exactly one hfgen name and maps back to itself."""
    for layout in LAYOUTS:
        t5 = make_t5(layout)
        gated = t5.config.is_gated_act
        names = [n for n in t5.state_dict() if not n.endswith("embed_tokens.weight")]
        mapped = [t5_key_to_hfgen(n, gated) for n in names]
        assert len(set(mapped)) == len(names)
        assert [hfgen_key_to_t5(n, gated) for n in mapped] == names
    assert len(T5_NAME_PAIRS) == 12


def test_only_t5_like_models_convert_to_t5():
    model = HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(
        **{**T5_LIKE_KEYS, "position_embedding": "alibi"}, vocab_size=50, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="position_embedding.*alibi"):
        model.to_t5()
