"""The battery on the Gato-like multi-domain decoder (text tokens; images and values are its own tests')."""

from __future__ import annotations

import pytest

from battery.tester import check_rope_scaling_from_config, GENERATION_CHECKS, MODEL_CHECKS, Family, cases, run
from hfgen.models.configuration_hfgen_gato import HfGenGatoConfig
from hfgen.models.modeling_hfgen_decoder import HfGenDecoderModel
from hfgen.models.modeling_hfgen_gato import HfGenGatoForCausalLM

TINY_GATO = dict(text_vocab_size=50, num_bins=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, image_size=8, patch_size=4, pad_token_id=0, eos_token_id=None,
                 initializer_range=0.1, max_position_embeddings=64)
GATO = Family("gato", lambda **kw: HfGenGatoConfig(**{**TINY_GATO, **kw}), HfGenDecoderModel, HfGenGatoForCausalLM,
              kind="causal",  # (the battery's inputs are text: the image patch embedding takes no part)
              unused_parameters=("patch_embedding.weight", "patch_embedding.bias", "patch_position_embedding.weight"))

# Gato embeds each token by its modality (text, image placeholder, value bins), so it takes ids, not embeddings.
CHECKS = {k: v for k, v in {**MODEL_CHECKS, **GENERATION_CHECKS}.items() if k != "generate_from_inputs_embeds"}
EXPECTED_FAILURES = {}


@pytest.mark.parametrize("family,variant,check", cases([(GATO, {"default": {}})], CHECKS, None, EXPECTED_FAILURES))
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)


def test_rope_scaling_from_config():
    check_rope_scaling_from_config(GATO, {})
