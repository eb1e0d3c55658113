"""``encoder_use_gap``: the span-corruption diagnostic of whether a decoder reads its encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transfer_fixtures import span_run

from hfgen import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from hfgen.data.denoising import DataCollatorForSpanCorruption
from hfgen.training.span_corruption import (
    encoder_use_gap,
    load_span_corruption_tokenizer,
)


def _setup(seed: int = 0):
    tokenizer = load_span_corruption_tokenizer(num_sentinel_tokens=10)
    torch.manual_seed(seed)
    config = HfGenSeq2SeqConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, initializer_range=0.2)
    model = HfGenSeq2SeqForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed)
    blocks = [{"input_ids": torch.randint(10, 500, (30,), generator=generator).tolist()} for _ in range(6)]
    return model, DataCollatorForSpanCorruption(tokenizer, 0.3, 3.0, seed=0), blocks


def test_gap_is_zero_without_cross_attention_and_reproducible():
    """With the cross-attention output projections zeroed the decoder cannot see its encoder: the two losses are
    the same number. With them, the gap is some other number, the same on a second call (fixed corruption), and the
    collator's own seed and epoch are left as they were."""
    model, collator, blocks = _setup()
    collator.epoch = 3
    first = encoder_use_gap(model, collator, blocks, batch_size=4)
    assert encoder_use_gap(model, collator, blocks, batch_size=4) == first
    assert (collator.seed, collator.epoch) == (0, 3)
    assert first["encoder_use_gap"] != 0.0
    assert first["encoder_use_gap"] == first["eval_loss_shuffled_encoder"] - first["eval_loss_own_encoder"]
    for layer in model.model.decoder.layers:
        torch.nn.init.zeros_(layer.cross_attn.o_proj.weight)
    blind = encoder_use_gap(model, collator, blocks, batch_size=4)
    assert blind["encoder_use_gap"] == 0.0
    assert blind["eval_loss_own_encoder"] == pytest.approx(blind["eval_loss_shuffled_encoder"], abs=0)


def test_gap_needs_two_blocks():
    model, collator, blocks = _setup()
    with pytest.raises(ValueError, match="at least 2 blocks"):
        encoder_use_gap(model, collator, blocks[:1])


def test_span_pretraining_records_the_gap():
    """The span-corruption recipe reports the diagnostic with its perplexities (metrics and all_results.json)."""
    run = span_run()
    saved = json.loads((Path(run.output_dir) / "all_results.json").read_text())
    for metrics in (run.metrics, saved):
        assert metrics["encoder_use_gap"] == pytest.approx(
            metrics["eval_loss_shuffled_encoder"] - metrics["eval_loss_own_encoder"], abs=1e-12)
        assert metrics["eval_loss_own_encoder"] > 0
