"""Invariants of the encoder-decoder family on every kind of variant: ``generate`` with the self- and
cross-attention caches (dynamic and static) gives what plain full forward passes give, padded batches give what the
rows give alone, eager equals SDPA, save -> load is exact. And the caching itself: the encoder runs once per
``generate``, the cross-attention keys/values are projected once per layer."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from conftest import build
from hfgen import HfGenSeq2SeqForConditionalGeneration
from test_seq2seq_fixtures import VARIANTS, decoder_ids, source_batch, tiny_seq2seq_config

NEW_TOKENS = 6
# No eos: every generation runs NEW_TOKENS steps, so sequences compare position by position.
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None)


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    return build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(**VARIANTS[request.param]))


def generate_with_logits(model, ids, **kwargs):
    out = model.generate(ids, output_logits=True, return_dict_in_generate=True, **GREEDY, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


def test_cached_greedy_equals_uncached(model):
    ids, mask = source_batch()
    cached, cached_logits = generate_with_logits(model, ids, attention_mask=mask, use_cache=True)
    uncached, uncached_logits = generate_with_logits(model, ids, attention_mask=mask, use_cache=False)
    assert cached.shape == (3, 1 + NEW_TOKENS) and (cached[:, 0] == model.config.decoder_start_token_id).all()
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=1e-5)


def test_generation_equals_one_teacher_forced_forward(model):
    """Independent of generate's bookkeeping: one forward pass over the generated sequence gives every step's
    logits, and greedy picked their argmax."""
    ids, mask = source_batch()
    out, step_logits = generate_with_logits(model, ids, attention_mask=mask)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits
    torch.testing.assert_close(step_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_logits.argmax(-1), out[:, 1:], atol=0, rtol=0)


def test_padded_batch_equals_rows_alone(model):
    """Right padding (row 1) and left padding (row 2) of the source change nothing."""
    ids, mask = source_batch()
    batch, batch_logits = generate_with_logits(model, ids, attention_mask=mask)
    for i in range(len(ids)):
        row = ids[i][mask[i] == 1][None]
        alone, alone_logits = generate_with_logits(model, row)
        torch.testing.assert_close(batch[i], alone[0], atol=0, rtol=0)
        torch.testing.assert_close(batch_logits[i], alone_logits[0], atol=1e-5, rtol=1e-5)


def test_static_cache_equals_dynamic_cache(model):
    ids, mask = source_batch()
    dynamic, dynamic_logits = generate_with_logits(model, ids, attention_mask=mask)
    static, static_logits = generate_with_logits(model, ids, attention_mask=mask, cache_implementation="static")
    torch.testing.assert_close(static, dynamic, atol=0, rtol=0)
    torch.testing.assert_close(static_logits, dynamic_logits, atol=1e-5, rtol=1e-5)


def test_eager_equals_sdpa(model):
    ids, mask = source_batch()
    target = decoder_ids(3, 5)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
        actual = model(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_save_and_reload_is_exact(model, tmp_path):
    ids, mask = source_batch()
    target = decoder_ids(3, 5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HfGenSeq2SeqForConditionalGeneration
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
        actual = reloaded(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
    assert torch.equal(actual, expected)
    torch.testing.assert_close(generate_with_logits(reloaded, ids, attention_mask=mask)[0],
                               generate_with_logits(model, ids, attention_mask=mask)[0], atol=0, rtol=0)


# ------------------------------------------------------------------------------------------ default only


@pytest.fixture(scope="module")
def default_model():
    return build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config())


def test_encoder_runs_once_and_cross_keys_values_are_projected_once(default_model):
    model = default_model
    calls = {"encoder": 0, "cross_k": 0, "cross_v": 0, "self_k": 0}
    hooks = [model.model.encoder.register_forward_hook(lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1))]
    for name, module in (("cross_k", model.model.decoder.layers[0].cross_attn.k_proj),
                         ("cross_v", model.model.decoder.layers[0].cross_attn.v_proj),
                         ("self_k", model.model.decoder.layers[0].self_attn.k_proj)):
        hooks.append(module.register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1)))
    ids, mask = source_batch()
    try:
        model.generate(ids, attention_mask=mask, **GREEDY)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"encoder": 1, "cross_k": 1, "cross_v": 1, "self_k": NEW_TOKENS}


def test_cache_holds_self_and_cross_attention(default_model):
    ids, mask = source_batch()
    with torch.no_grad():
        out = default_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(3, 4), use_cache=True)
    cache = out.cache
    config = default_model.config
    assert cache.get_seq_length() == 4 and len(cache.self_attention_cache.layers) == config.num_decoder_layers
    keys = cache.cross_attention_cache.layers[0].keys
    assert keys.shape == (3, config.num_key_value_heads, ids.shape[1], config.head_dim)
    # One more step from the cache equals the uncached forward over all five decoder tokens.
    step = decoder_ids(3, 1, seed=9)
    with torch.no_grad():
        cached = default_model(encoder_outputs=(out.encoder_last_hidden_state,), attention_mask=mask,
                               decoder_input_ids=step, cache=cache).logits[:, -1]
        full = default_model(input_ids=ids, attention_mask=mask,
                             decoder_input_ids=torch.cat((decoder_ids(3, 4), step), 1)).logits[:, -1]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_beam_search_cached_equals_uncached(default_model):
    ids, mask = source_batch()
    kwargs = dict(num_beams=3, num_return_sequences=2, max_new_tokens=5, do_sample=False, eos_token_id=None,
                  output_scores=True, return_dict_in_generate=True)
    cached = default_model.generate(ids, attention_mask=mask, **kwargs)
    uncached = default_model.generate(ids, attention_mask=mask, use_cache=False, **kwargs)
    assert cached.sequences.shape == (6, 6)
    torch.testing.assert_close(cached.sequences, uncached.sequences, atol=0, rtol=0)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_and_cache_independent(default_model):
    ids, mask = source_batch()
    kwargs = dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, max_new_tokens=8, eos_token_id=None)
    runs = []
    for use_cache in (True, True, False):
        torch.manual_seed(123)
        runs.append(default_model.generate(ids, attention_mask=mask, use_cache=use_cache, **kwargs))
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    torch.testing.assert_close(runs[0], runs[2], atol=0, rtol=0)


def test_generate_returns_encoder_and_cross_attentions(default_model):
    """(Attention weights exist on the eager kernel only, as in transformers.)"""
    ids, mask = source_batch()
    model = copy.deepcopy(default_model)
    model.set_attn_implementation("eager")
    out = model.generate(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True,
                                 return_dict_in_generate=True, **GREEDY)
    config = default_model.config
    assert len(out.encoder_attentions) == config.num_hidden_layers
    assert out.encoder_attentions[0].shape == (3, config.num_attention_heads, 9, 9)
    assert len(out.cross_attentions) == NEW_TOKENS and len(out.cross_attentions[0]) == config.num_decoder_layers
    assert out.cross_attentions[-1][0].shape == (3, config.num_attention_heads, 1, 9)
    assert len(out.decoder_hidden_states[0]) == config.num_decoder_layers + 1
    # Cross-attention gives padded source tokens no weight.
    assert out.cross_attentions[0][0][1, :, :, 6:].abs().max() == 0
