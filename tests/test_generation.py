"""``generate`` on every kind of variant: the KV cache (dynamic and static), left padding, decoding strategies,
streamers and pipelines must give what a plain full forward pass gives."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer, pipeline

from conftest import build, load_hfgen_tokenizer, padded, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM

VARIANTS = {
    "default": {},
    "off_by_one-mqa": dict(softmax_variant="off_by_one", num_key_value_heads=1),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "alibi": dict(position_embedding="alibi"),
    "relative_bias": dict(position_embedding="relative_bias"),
    "sinusoidal": dict(position_embedding="sinusoidal"),
    "learned": dict(position_embedding="learned"),
    "additive": dict(attention_scoring="additive"),
    "clipped-gate": dict(softmax_variant="clipped", attention_gate=True),
    "postnorm-layernorm-standard_mlp": dict(norm_position="post", norm_type="layernorm", mlp_type="standard"),
}
NEW_TOKENS = 8
# No eos: every generation runs to NEW_TOKENS, so sequences compare position by position.
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
              eos_token_id=None)


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    return build(HfGenDecoderForCausalLM, tiny_config(**VARIANTS[request.param]))


def generate_with_logits(model, ids, **kwargs):
    """Greedy tokens and the logits of every step, ``[B, NEW_TOKENS, V]``."""
    out = model.generate(ids, output_logits=True, return_dict_in_generate=True, **GREEDY, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


ROWS = [random_ids(1, 7, seed=2)[0], random_ids(1, 4, seed=3)[0], random_ids(1, 2, seed=4)[0]]


def test_cached_greedy_equals_uncached(model):
    ids = random_ids(2, 6)
    cached, cached_logits = generate_with_logits(model, ids, use_cache=True)
    uncached, uncached_logits = generate_with_logits(model, ids, use_cache=False)
    assert cached.shape == (2, 6 + NEW_TOKENS)
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=1e-5)


def test_cache_keeps_every_token_beyond_the_query_chunk():
    """Regression: a config key that transformers reads as chunked attention (Llama 4's ``attention_chunk_size``)
    made ``generate`` build a sliding-window cache that silently dropped old tokens. With 2-row query chunks and
    14 tokens, cached generation must still equal generation without a cache."""
    model = build(HfGenDecoderForCausalLM, tiny_config(query_chunk_size=2, softmax_variant="clipped"))
    ids = random_ids(2, 6)
    cached, cached_logits = generate_with_logits(model, ids, use_cache=True)
    uncached, uncached_logits = generate_with_logits(model, ids, use_cache=False)
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=1e-5)


def test_cached_generation_equals_one_full_forward(model):
    """Independent of generate's bookkeeping: one forward pass over the final (left-padded) sequences, with the
    positions counted from each row's first real token, gives every step's logits, and greedy picks their argmax."""
    ids, mask = padded(ROWS, "left")
    out, step_logits = generate_with_logits(model, ids, attention_mask=mask)
    full_mask = torch.cat((mask, torch.ones(len(ROWS), NEW_TOKENS, dtype=torch.long)), dim=1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(out, attention_mask=full_mask, position_ids=position_ids).logits
    width = ids.shape[1]
    torch.testing.assert_close(step_logits, logits[:, width - 1:-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_logits.argmax(-1), out[:, width:], atol=0, rtol=0)


def test_left_padded_batch_equals_rows_alone(model):
    ids, mask = padded(ROWS, "left")
    width = ids.shape[1]
    batch, batch_logits = generate_with_logits(model, ids, attention_mask=mask)
    for i, row in enumerate(ROWS):
        alone, alone_logits = generate_with_logits(model, row[None],
                                                   attention_mask=torch.ones(1, len(row), dtype=torch.long))
        torch.testing.assert_close(batch[i, width:], alone[0, len(row):], atol=0, rtol=0)
        torch.testing.assert_close(batch_logits[i], alone_logits[0], atol=1e-5, rtol=1e-5)


def test_static_cache_equals_dynamic_cache(model):
    ids, mask = padded(ROWS, "left")
    dynamic, dynamic_logits = generate_with_logits(model, ids, attention_mask=mask)
    static, static_logits = generate_with_logits(model, ids, attention_mask=mask, cache_implementation="static")
    torch.testing.assert_close(static, dynamic, atol=0, rtol=0)
    torch.testing.assert_close(static_logits, dynamic_logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ decoding strategies (default)


@pytest.fixture(scope="module")
def default_model():
    return build(HfGenDecoderForCausalLM, tiny_config())


def test_sampling_is_reproducible_and_options_run(default_model):
    ids = random_ids(2, 5)
    options = dict(do_sample=True, max_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(1234)
    first = default_model.generate(ids, top_k=20, top_p=0.9, temperature=0.7, **options)
    torch.manual_seed(1234)
    second = default_model.generate(ids, top_k=20, top_p=0.9, temperature=0.7, **options)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert first.shape == (2, 5 + NEW_TOKENS)
    assert ((first >= 0) & (first < default_model.config.vocab_size)).all()
    # Independent check of the sampling path: top_k=1 leaves one candidate, so sampling must equal greedy.
    torch.manual_seed(99)
    top1 = default_model.generate(ids, top_k=1, temperature=1.3, **options)
    torch.testing.assert_close(top1, default_model.generate(ids, **GREEDY), atol=0, rtol=0)


def test_beam_search_returns_sequences_scored_like_a_full_forward(default_model):
    ids = random_ids(2, 5)
    out = default_model.generate(ids, num_beams=4, num_return_sequences=3, length_penalty=0.0,
                                 output_scores=True, return_dict_in_generate=True, **GREEDY)
    assert out.sequences.shape == (2 * 3, 5 + NEW_TOKENS)
    scores = out.sequences_scores.view(2, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    for row in range(2):  # the prompts are kept and the returned beams are distinct
        beams = out.sequences[row * 3:(row + 1) * 3]
        torch.testing.assert_close(beams[:, :5], ids[row].expand(3, -1), atol=0, rtol=0)
        assert len({tuple(b.tolist()) for b in beams}) == 3
    # With length_penalty=0 a beam's score is the sum of its tokens' log-probabilities: recompute them with one
    # uncached forward pass over the whole sequence.
    with torch.no_grad():
        logprobs = default_model(out.sequences).logits.log_softmax(-1)
    picked = logprobs[:, 4:-1].gather(-1, out.sequences[:, 5:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, picked, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------- tokenizer-level features


@pytest.fixture(scope="module")
def tokenizer():
    return load_hfgen_tokenizer()


@pytest.fixture(scope="module")
def text_model(tokenizer):
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return build(HfGenDecoderForCausalLM, config)


PROMPT = "The for statement is used to iterate"
TEXT_GREEDY = dict(do_sample=False, max_new_tokens=12)


def test_text_streamer_streams_the_final_text(text_model, tokenizer, capsys):
    inputs = tokenizer(PROMPT, return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = text_model.generate(**inputs, streamer=streamer, **TEXT_GREEDY)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert expected  # the model generated something to stream
    assert capsys.readouterr().out == expected + "\n"  # the streamer ends its output with a newline


def test_text_iterator_streamer_streams_the_final_text(text_model, tokenizer):
    inputs = tokenizer(PROMPT, return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    result = {}

    def run():
        result["out"] = text_model.generate(**inputs, streamer=streamer, **TEXT_GREEDY)

    thread = threading.Thread(target=run)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = tokenizer.decode(result["out"][0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert expected
    assert streamed == expected


def test_pipeline_from_object_and_from_saved_folder(text_model, tokenizer, tmp_path):
    from_object = pipeline("text-generation", model=text_model, tokenizer=tokenizer)
    text_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_folder = pipeline("text-generation", model=str(tmp_path), trust_remote_code=True)
    a = from_object(PROMPT, **TEXT_GREEDY)[0]["generated_text"]
    b = from_folder(PROMPT, **TEXT_GREEDY)[0]["generated_text"]
    assert a.startswith(PROMPT) and len(a) > len(PROMPT)
    assert a == b
    # And what the pipeline returns is what generate returns.
    inputs = tokenizer(PROMPT, return_tensors="pt")
    assert a == tokenizer.decode(text_model.generate(**inputs, **TEXT_GREEDY)[0], skip_special_tokens=True)
