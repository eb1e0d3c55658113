"""Every attention, softmax, position, norm and MLP variant in the encoder: SDPA equals the eager reference, a
padded batch equals its rows alone (bidirectional attention must ignore padding), every head trains (finite
gradients reaching every parameter), and save -> load gives identical outputs."""

from __future__ import annotations

import copy

import pytest
import torch

from hfgen import (
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
)
from test_encoder_fixtures import VARIANTS, right_padded_batch, tiny_encoder_config


def _model(name, model_class=HfGenEncoderForMaskedLM, implementation="sdpa", **overrides):
    torch.manual_seed(0)
    model = model_class(copy.deepcopy(tiny_encoder_config(**{**VARIANTS[name], **overrides}))).eval()
    model.set_attn_implementation(implementation)
    return model


@pytest.mark.parametrize("name", VARIANTS)
def test_sdpa_equals_eager_and_padding_is_ignored(name):
    eager, sdpa = _model(name, implementation="eager"), _model(name, implementation="sdpa")
    ids, mask, types = right_padded_batch()
    types = types if eager.config.type_vocab_size else None
    with torch.no_grad():
        batched = sdpa(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        torch.testing.assert_close(eager(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, batched,
                                   atol=1e-4, rtol=0)
        for row in range(ids.shape[0]):
            length = int(mask[row].sum())
            alone = sdpa(input_ids=ids[row:row + 1, :length],
                         token_type_ids=None if types is None else types[row:row + 1, :length]).logits
            torch.testing.assert_close(batched[row:row + 1, :length], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["bert", "general", "additive", "gate_gqa", "relative_bias", "disentangled",
                                  "pre_rmsnorm_gated"])
def test_pretraining_step_reaches_every_parameter(name):
    model = _model(name, HfGenEncoderForPreTraining).train()
    ids, mask, types = right_padded_batch()
    labels = ids.masked_fill((ids % 3 != 0) | (mask == 0), -100)
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types if model.config.type_vocab_size else None,
                labels=labels, next_sentence_label=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
              or (p.grad == 0).all()]
    assert not silent, silent


@pytest.mark.parametrize("model_class", [HfGenEncoderForMaskedLM, HfGenEncoderForPreTraining,
                                         HfGenEncoderForSequenceClassification, HfGenEncoderForTokenClassification])
@pytest.mark.parametrize("name", ["bert", "disentangled", "rotary"])
def test_save_and_load_give_identical_outputs(model_class, name, tmp_path):
    model = _model(name, model_class, num_labels=3)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    ids, mask, _ = right_padded_batch()
    with torch.no_grad():
        for key, value in model(input_ids=ids, attention_mask=mask).items():
            assert torch.equal(loaded(input_ids=ids, attention_mask=mask)[key], value), key


@pytest.mark.parametrize("name", ["bert", "disentangled", "relative_bias"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    ids, mask, types = right_padded_batch()
    labels = ids.masked_fill((ids % 2 != 0) | (mask == 0), -100)
    grads = []
    for checkpointing in (False, True):
        model = _model(name).train()  # dropout is 0 in the tiny configs
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, atol=1e-6, rtol=1e-5, msg=key)
