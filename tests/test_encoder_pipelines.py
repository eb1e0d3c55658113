"""transformers' pipelines run the encoder from a saved folder (model + hfgen's shipped tokenizer with the encoder
tokens), and their outputs are the model's own outputs for the same tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import pipeline

from hfgen import (
    HfGenEncoderForMaskedLM,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
    HfGenEncoderModel,
)
from hfgen.data import load_encoder_tokenizer
from test_encoder_fixtures import tiny_encoder_config

TEXT = "The with statement is used to wrap the execution of a block"
LABELS = {0: "topic", 1: "module", 2: "other"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_encoder_tokenizer()


def _saved(model_class, tokenizer, folder, **overrides):
    config = tiny_encoder_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                 id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **overrides)
    torch.manual_seed(0)
    model = model_class(copy.deepcopy(config)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_fill_mask(tokenizer, tmp_path):
    model = _saved(HfGenEncoderForMaskedLM, tokenizer, tmp_path)
    fill = pipeline("fill-mask", model=str(tmp_path), top_k=3)
    text = f"The with {tokenizer.mask_token} is used to wrap a block"
    results = fill(text)
    batch = tokenizer(text, return_tensors="pt")
    position = int((batch["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        probabilities = model(**batch).logits[0, position].softmax(-1)
    top = probabilities.topk(3)
    assert [r["token"] for r in results] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([r["score"] for r in results]), top.values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position_embedding", ["learned", "disentangled"])
def test_text_classification(tokenizer, tmp_path, position_embedding):
    model = _saved(HfGenEncoderForSequenceClassification, tokenizer, tmp_path, num_labels=3,
                   position_embedding=position_embedding)
    classify = pipeline("text-classification", model=str(tmp_path), top_k=None)
    results = classify([TEXT])[0]
    with torch.no_grad():
        expected = model(**tokenizer(TEXT, return_tensors="pt")).logits[0].softmax(-1)
    assert {r["label"] for r in results} == set(LABELS.values())
    for r in results:
        assert r["score"] == pytest.approx(float(expected[model.config.label2id[r["label"]]]), abs=1e-6)


def test_token_classification(tokenizer, tmp_path):
    model = _saved(HfGenEncoderForTokenClassification, tokenizer, tmp_path, num_labels=3)
    tag = pipeline("token-classification", model=str(tmp_path), ignore_labels=[])
    results = tag(TEXT)
    batch = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits[0].argmax(-1)
    real = batch["input_ids"][0] < tokenizer.mask_token_id  # the pipeline drops special tokens
    assert [r["entity"] for r in results] == [LABELS[int(i)] for i in predicted[real]]
    # Offsets point at each token's own characters (byte-level: a word's leading space belongs to it).
    assert [TEXT[r["start"]:r["end"]] for r in results] == [tokenizer.decode(int(i)) for i in
                                                            batch["input_ids"][0][real]]


def test_feature_extraction(tokenizer, tmp_path):
    model = _saved(HfGenEncoderModel, tokenizer, tmp_path)
    extract = pipeline("feature-extraction", model=str(tmp_path))
    features = torch.tensor(extract(TEXT))
    with torch.no_grad():
        expected = model(**tokenizer(TEXT, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)
