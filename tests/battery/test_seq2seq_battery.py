"""The battery on the encoder-decoder family (every variant of the seq2seq tests) beside transformers' own
T5ForConditionalGeneration."""

from __future__ import annotations

import pytest
from transformers import T5Config, T5ForConditionalGeneration, T5Model

from battery.tester import check_rope_scaling_from_config, GENERATION_CHECKS, MODEL_CHECKS, VARIANT_CHECKS, Family, cases, run
from hfgen import HfGenSeq2SeqForConditionalGeneration, HfGenSeq2SeqModel
from test_seq2seq_fixtures import TINY, VARIANTS, tiny_seq2seq_config

T5_TINY = dict(vocab_size=TINY["vocab_size"], d_model=TINY["hidden_size"], d_ff=TINY["intermediate_size"],
               d_kv=TINY["hidden_size"] // TINY["num_attention_heads"], num_layers=TINY["num_hidden_layers"],
               num_decoder_layers=TINY["num_decoder_layers"], num_heads=TINY["num_attention_heads"],
               pad_token_id=0, decoder_start_token_id=0, eos_token_id=None, dropout_rate=0.0)

SEQ2SEQ = Family("seq2seq", tiny_seq2seq_config, HfGenSeq2SeqModel, HfGenSeq2SeqForConditionalGeneration,
                 kind="seq2seq")
T5 = Family("t5", lambda **kw: T5Config(**{**T5_TINY, **kw}), T5Model, T5ForConditionalGeneration, kind="seq2seq",
            control=True)

EXPECTED_FAILURES = {
}


@pytest.mark.parametrize("family,variant,check", cases(
    [(SEQ2SEQ, {**VARIANTS, "relative_bias": dict(position_embedding="relative_bias")}), (T5, {"default": {}})],
    {**MODEL_CHECKS, **GENERATION_CHECKS}, VARIANT_CHECKS, EXPECTED_FAILURES))
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)


def test_rope_scaling_from_config():
    check_rope_scaling_from_config(SEQ2SEQ, VARIANTS["rotary-post_layernorm"])
