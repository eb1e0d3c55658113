"""Bad input to the encoder family fails early with a ValueError that names the problem and the valid range,
before any state changes (issue 3, section 4)."""

from __future__ import annotations

import copy

import pytest
import torch

from hfgen import HfGenEncoderConfig, HfGenEncoderForMaskedLM, HfGenEncoderForPreTraining
from hfgen.data import MaskedLMCollator, load_encoder_tokenizer, load_tokenizer, next_sentence_pairs
from test_encoder_fixtures import VARIANTS, tiny_encoder_config


def _model(model_class=HfGenEncoderForMaskedLM, **overrides):
    return model_class(copy.deepcopy(tiny_encoder_config(**overrides))).eval()


@pytest.mark.parametrize("probability", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), "0.15", True])
def test_mlm_probability_outside_the_open_unit_interval(probability):
    with pytest.raises(ValueError, match=r"mlm_probability must be a number in the open interval \(0, 1\)"):
        MaskedLMCollator(tokenizer=load_encoder_tokenizer(), mlm_probability=probability)


def test_mlm_collator_needs_a_mask_token():
    with pytest.raises(ValueError, match="no mask token.*load_encoder_tokenizer"):
        MaskedLMCollator(tokenizer=load_tokenizer())


@pytest.mark.parametrize(("type_vocab_size", "bad", "message"), [
    (2, 2, r"token_type_ids must lie in \[0, 2\) \(type_vocab_size=2\); got ids from 0 to 2"),
    (2, -1, r"token_type_ids must lie in \[0, 2\)"),
    (0, 1, r"token_type_ids must lie in 0 only \(type_vocab_size=0\)"),
])
def test_token_type_ids_out_of_range(type_vocab_size, bad, message):
    model = _model(type_vocab_size=type_vocab_size)
    ids = torch.randint(1, 128, (2, 5))
    types = torch.zeros_like(ids)
    types[1, 3] = bad
    with pytest.raises(ValueError, match=message):
        model(input_ids=ids, token_type_ids=types)


def test_token_type_ids_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(2, 4\), expected \(2, 5\)"):
        _model()(input_ids=torch.ones(2, 5, dtype=torch.long), token_type_ids=torch.zeros(2, 4, dtype=torch.long))


def test_sequence_beyond_learned_positions_says_so():
    model = _model(max_position_embeddings=16)
    model(input_ids=torch.ones(1, 16, dtype=torch.long))  # the longest that fits
    with pytest.raises(ValueError, match=r"Position 16 is beyond max_position_embeddings=16 .* at most 16 tokens"):
        model(input_ids=torch.ones(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", ["rotary", "alibi", "disentangled"])
def test_positions_that_extrapolate_take_longer_inputs(name):
    model = _model(max_position_embeddings=16, **{k: v for k, v in VARIANTS[name].items()
                                                   if k != "max_relative_positions"})
    assert model(input_ids=torch.ones(1, 40, dtype=torch.long)).logits.shape == (1, 40, 128)


def test_token_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"Token ids must lie in \[0, 128\)"):
        _model()(input_ids=torch.tensor([[1, 128]]))


def test_labels_and_next_sentence_labels():
    model = _model(HfGenEncoderForPreTraining)
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must be token ids in \[0, 128\)"):
        model(input_ids=ids, labels=torch.full((2, 4), 500), next_sentence_label=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="next_sentence_label must be 0 .* or 1"):
        model(input_ids=ids, labels=ids, next_sentence_label=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="needs both labels .* and next_sentence_label"):
        model(input_ids=ids, labels=ids)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(position_embedding="cope"), r"Unknown position_embedding='cope'.*'disentangled'"),
    (dict(type_vocab_size=-1), "type_vocab_size must be an integer >= 0"),
    (dict(hidden_dropout_prob=1.0), r"hidden_dropout_prob must be in \[0, 1\)"),
    (dict(position_embedding="disentangled", position_buckets=2), "position_buckets must be at least 4"),
    (dict(position_embedding="disentangled", position_buckets=64, max_relative_positions=20),
     r"max_relative_positions \(20\) must exceed position_buckets // 2 \+ 1 \(33\)"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key' has no counterpart"),
])
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        HfGenEncoderConfig(**overrides)


def test_bad_config_set_after_the_fact_is_refused_where_it_is_set():
    config = tiny_encoder_config()
    with pytest.raises(ValueError, match="type_vocab_size must be an integer >= 0.*got -3"):
        config.type_vocab_size = -3
    assert config.type_vocab_size == 2  # the refused value was never stored
    HfGenEncoderForMaskedLM(config)


def test_next_sentence_pairs_needs_documents_and_separators():
    tokenizer = load_encoder_tokenizer()
    with pytest.raises(ValueError, match="at least two documents"):
        next_sentence_pairs(["Only one document. With two sentences in it."], tokenizer)
    with pytest.raises(ValueError, match="no cls/sep tokens"):
        next_sentence_pairs(["a b c d e f g h i j k l.", "m n o p q r s t u v w."], load_tokenizer())
    with pytest.raises(ValueError, match="max_length must be an integer >= 5"):
        next_sentence_pairs(["a b c d e f g h i j k l.", "m n o p q r s t u v w."], tokenizer, max_length=3)
