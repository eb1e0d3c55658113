"""The battery on the encoder family (every variant of the encoder tests) beside transformers' own BertForMaskedLM."""

from __future__ import annotations

import pytest
from transformers import BertForMaskedLM, BertModel

from battery.tester import check_rope_scaling_from_config, MODEL_CHECKS, VARIANT_CHECKS, Family, cases, run
from hfgen import HfGenEncoderForMaskedLM, HfGenEncoderModel
from test_encoder_fixtures import VARIANTS, bert_twin_config, tiny_encoder_config

ENCODER = Family("encoder", tiny_encoder_config, HfGenEncoderModel, HfGenEncoderForMaskedLM, kind="masked")


def bert_config(**overrides):
    """BERT of the encoder's tiny sizes (``num_labels`` goes through the hfgen config the twin is made from)."""
    labels = {"num_labels": overrides.pop("num_labels")} if "num_labels" in overrides else {}
    return bert_twin_config(tiny_encoder_config(**labels), **overrides)


BERT = Family("bert", bert_config, BertModel, BertForMaskedLM, kind="masked", control=True)

EXPECTED_FAILURES = {
}


@pytest.mark.parametrize("family,variant,check", cases(
    [(ENCODER, VARIANTS), (BERT, {"default": {}})], MODEL_CHECKS, VARIANT_CHECKS, EXPECTED_FAILURES))
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)


def test_rope_scaling_from_config():
    check_rope_scaling_from_config(ENCODER, VARIANTS["rotary"])
