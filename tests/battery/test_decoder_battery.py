"""The battery on the decoder-only family (every variant) beside transformers' own LlamaForCausalLM."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, MixtralConfig, MixtralForCausalLM, MixtralModel

from battery.tester import check_rope_scaling_from_config, GENERATION_CHECKS, MODEL_CHECKS, VARIANT_CHECKS, Family, cases, run
from conftest import LLAMA_KEYS, TINY
from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenDecoderModel

VARIANTS = {
    "default": {},
    "dot_product-temperature": dict(attention_scoring="dot_product", softmax_variant="temperature",
                                    softmax_temperature=2.0),
    "general-gate-mqa": dict(attention_scoring="general", attention_gate=True, num_key_value_heads=1),
    "additive-chunked": dict(attention_scoring="additive", query_chunk_size=3),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "off_by_one": dict(softmax_variant="off_by_one"),
    "clipped": dict(softmax_variant="clipped"),
    "sinusoidal-post_layernorm": dict(position_embedding="sinusoidal", norm_position="post", norm_type="layernorm",
                                      mlp_type="standard", hidden_act="gelu"),
    "learned": dict(position_embedding="learned"),
    "relative_bias": dict(position_embedding="relative_bias"),
    "alibi": dict(position_embedding="alibi"),
    "none": dict(position_embedding="none"),
    "moe": dict(num_experts=4, num_experts_per_tok=2),
}
VARIANT_MOE = dict(num_local_experts=4, num_experts_per_tok=2, output_router_logits=True)

DECODER = Family("decoder", lambda **kw: HfGenDecoderConfig(**{**TINY, **kw}), HfGenDecoderModel,
                 HfGenDecoderForCausalLM, kind="causal")
LLAMA = Family("llama", lambda **kw: LlamaConfig(**{**LLAMA_KEYS, **kw}), LlamaModel, LlamaForCausalLM,
               kind="causal", control=True)
# The control of the "moe" variant: Mixtral with the same sizes and router logits returned (hfgen's MoE default).
MIXTRAL = Family("mixtral", lambda **kw: MixtralConfig(**{**LLAMA_KEYS, **VARIANT_MOE, **kw}), MixtralModel,
                 MixtralForCausalLM, kind="causal", control=True)

# Known failures owned by other work (strict: they fail today; the xfail goes when they pass).
EXPECTED_FAILURES = {
}


@pytest.mark.parametrize("family,variant,check", cases(
    [(DECODER, VARIANTS), (LLAMA, {"default": {}}), (MIXTRAL, {"default": {}})], {**MODEL_CHECKS, **GENERATION_CHECKS}, VARIANT_CHECKS,
    EXPECTED_FAILURES))
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)


@pytest.mark.parametrize("family", [DECODER, LLAMA], ids=lambda family: family.name)
def test_rope_scaling_from_config(family):
    check_rope_scaling_from_config(family, {})
