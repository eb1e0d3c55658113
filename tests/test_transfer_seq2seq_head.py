"""HfGenSeq2SeqForSequenceClassification, the head the transfer experiment fine-tunes the encoder-decoder with:
its logits against the formula written out from the base model's output (T5ForSequenceClassification's recipe),
padded rows against rows alone, save -> load, the Auto class, and a span-corruption checkpoint loading into it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, pipeline

from hfgen.models import HfGenSeq2SeqConfig, HfGenSeq2SeqForSequenceClassification
from hfgen.models.modeling_hfgen_seq2seq import shift_tokens_right
from transfer_fixtures import span_run

CONFIG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_decoder_layers=2, num_attention_heads=2,
              intermediate_size=64, pad_token_id=1, eos_token_id=2, num_labels=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HfGenSeq2SeqForSequenceClassification(HfGenSeq2SeqConfig(**CONFIG)).eval()


def _rows():
    torch.manual_seed(1)
    rows = [torch.randint(3, 64, (n,)).tolist() + [2] for n in (6, 3)]  # tokens, then eos
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [1] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return rows, input_ids, mask


def test_logits_follow_the_t5_classification_recipe(model):
    """Decoder reads the input shifted right behind decoder_start_token_id; its state at the eos goes through
    dense -> tanh -> out_proj."""
    rows, _, _ = _rows()
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            decoder_ids = torch.tensor([[model.config.decoder_start_token_id] + row[:-1]])
            torch.testing.assert_close(decoder_ids, shift_tokens_right(ids, 1, 1))
            state = model.model(input_ids=ids, decoder_input_ids=decoder_ids).last_hidden_state[0, -1]
            expected = model.out_proj(torch.tanh(model.dense(state)))
            torch.testing.assert_close(model(input_ids=ids).logits[0], expected, rtol=0, atol=1e-6)


def test_padded_rows_equal_rows_alone_and_loss_is_cross_entropy(model):
    rows, input_ids, mask = _rows()
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        alone = torch.cat([model(input_ids=torch.tensor([row])).logits for row in rows])
    torch.testing.assert_close(out.logits, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_save_load_auto_class_and_pipeline(model, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HfGenSeq2SeqForSequenceClassification
    assert reloaded.config.auto_map["AutoModelForSequenceClassification"] == (
        "modeling_hfgen_seq2seq.HfGenSeq2SeqForSequenceClassification")
    assert (tmp_path / "modeling_hfgen_seq2seq.py").exists()  # the code travels with the weights (Hub)
    _, input_ids, mask = _rows()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids, attention_mask=mask).logits,
                                   model(input_ids=input_ids, attention_mask=mask).logits, rtol=0, atol=0)


def test_span_corruption_checkpoint_loads_with_its_weights_and_classifies():
    """The pre-trained encoder, decoder and shared embedding arrive unchanged (only the head is new), and
    pipeline("text-classification") runs on the loaded model."""
    folder = span_run().output_dir
    loaded = HfGenSeq2SeqForSequenceClassification.from_pretrained(folder, num_labels=3)
    saved = load_file(f"{folder}/model.safetensors")
    body = {k: v for k, v in loaded.state_dict().items() if k.startswith("model.")}
    assert body and all(torch.equal(v, saved[k]) for k, v in body.items() if k in saved)
    assert {"model.shared.weight", "model.encoder.layers.0.self_attn.q_proj.weight"} <= saved.keys() & body.keys()
    from transformers import AutoTokenizer

    classify = pipeline("text-classification", model=loaded.eval(), tokenizer=AutoTokenizer.from_pretrained(folder))
    [answer] = classify("The pass statement is a null operation.")
    assert answer["label"] in loaded.config.id2label.values() and 0 <= answer["score"] <= 1
