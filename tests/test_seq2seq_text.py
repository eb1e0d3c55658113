"""The encoder-decoder with real text: hfgen's span-corruption tokenizer (shipped BPE + sentinels), streamers, and a
saved folder (model + tokenizer) reloaded through the Auto classes generating the same text. transformers 5 has no
text-to-text pipeline any more (``text2text-generation`` was removed), so ``AutoTokenizer`` + ``generate`` is the
user's path, tested here. The other decoding strategies (greedy, beams, sampling, static cache) are covered
against their invariants in ``test_seq2seq_generation.py``."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, TextIteratorStreamer, TextStreamer

from conftest import build
from hfgen import HfGenSeq2SeqForConditionalGeneration
from hfgen.training.span_corruption import load_span_corruption_tokenizer
from test_seq2seq_fixtures import tiny_seq2seq_config

SOURCE = "The for statement is used to iterate over the elements of a sequence"
GREEDY = dict(do_sample=False, max_new_tokens=10, min_new_tokens=10)


@pytest.fixture(scope="module")
def tokenizer():
    return load_span_corruption_tokenizer(num_sentinel_tokens=8)


@pytest.fixture(scope="module")
def text_model(tokenizer):
    config = tiny_seq2seq_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return build(HfGenSeq2SeqForConditionalGeneration, config)


def _new_text(tokenizer, sequences: torch.Tensor) -> str:
    # The first decoder token is decoder_start_token_id, not generated.
    return tokenizer.decode(sequences[0, 1:], skip_special_tokens=True)


def test_text_streamer_streams_the_generated_text(text_model, tokenizer, capsys):
    inputs = tokenizer(SOURCE, return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = text_model.generate(**inputs, streamer=streamer, **GREEDY)
    expected = _new_text(tokenizer, out)
    assert expected  # something was generated to stream
    assert capsys.readouterr().out == expected + "\n"  # the streamer ends its output with a newline


def test_text_iterator_streamer_streams_the_generated_text(text_model, tokenizer):
    inputs = tokenizer(SOURCE, return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    result = {}

    def run():
        result["out"] = text_model.generate(**inputs, streamer=streamer, **GREEDY)

    thread = threading.Thread(target=run)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed and streamed == _new_text(tokenizer, result["out"])


def test_saved_folder_with_tokenizer_generates_the_same_text(text_model, tokenizer, tmp_path):
    text_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert reloaded_tokenizer.convert_tokens_to_ids("<extra_id_7>") == tokenizer.convert_tokens_to_ids("<extra_id_7>")
    inputs = tokenizer([SOURCE, "A lambda expression yields an anonymous function"], return_tensors="pt",
                       padding=True)
    reloaded_inputs = reloaded_tokenizer([SOURCE, "A lambda expression yields an anonymous function"],
                                         return_tensors="pt", padding=True)
    torch.testing.assert_close(reloaded_inputs["input_ids"], inputs["input_ids"], atol=0, rtol=0)
    expected = text_model.generate(**inputs, **GREEDY)
    for options in (GREEDY, dict(GREEDY, num_beams=3)):
        got = reloaded.generate(**reloaded_inputs, **options)
        if "num_beams" not in options:
            torch.testing.assert_close(got, expected, atol=0, rtol=0)
        assert reloaded_tokenizer.batch_decode(got, skip_special_tokens=True) == tokenizer.batch_decode(
            text_model.generate(**inputs, **options), skip_special_tokens=True)
    # Sampling with one candidate (top_k=1) must be greedy, whatever the temperature.
    torch.manual_seed(7)
    sampled = reloaded.generate(**reloaded_inputs, do_sample=True, top_k=1, temperature=1.7, max_new_tokens=10,
                                min_new_tokens=10)
    torch.testing.assert_close(sampled, expected, atol=0, rtol=0)
