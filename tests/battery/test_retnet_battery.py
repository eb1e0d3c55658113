"""The battery on RetNet (each retention form, and experts) -- a decoder without attention weights: the checks of
attention maps, attention masks and attention kernels do not apply; the state cache stands in for the KV cache."""

from __future__ import annotations

import pytest

from battery.tester import GENERATION_CHECKS, MODEL_CHECKS, Family, cases, run
from hfgen import HfGenRetNetConfig
from hfgen.models.modeling_hfgen_retnet import HfGenRetNetForCausalLM, HfGenRetNetModel
from test_retnet import TINY_RETNET

VARIANTS = {
    "chunkwise": dict(retention_chunk_size=3),
    "parallel": dict(retention_mode="parallel"),
    "recurrent": dict(retention_mode="recurrent"),
    "moe": dict(num_experts=4, num_experts_per_tok=2),
}
# Checks of attention that RetNet has not, as for transformers' own recurrent models (Mamba, Mamba2, RWKV,
# RecurrentGemma): retention has no attention matrix, so no 4D mask to pass (a 4D attention_mask is refused with a
# clear error) and no attention kernel to switch (eager vs sdpa); its cache is a fixed-size recurrent state made by the
# model (HfGenRetNetCache), with no per-token cache to preallocate (cache_implementation="static" is refused with the
# valid choices); and no tensor-parallel plan, as none of those transformers models declares one (a retention head
# split would also need its per-head decay split with it: unverifiable without GPUs).
NOT_APPLICABLE = ("custom_4d_attention_mask", "eager_matches_sdpa", "tp_plan", "generate_static_cache")
CHECKS = {k: v for k, v in {**MODEL_CHECKS, **GENERATION_CHECKS}.items() if k not in NOT_APPLICABLE}
VARIANT_CHECKS = ("hidden_states_and_attentions", "retain_grad", "gradient_checkpointing_reentrant",
                  "gradient_checkpointing_non_reentrant", "batching_equivalence", "padded_equals_alone",
                  "save_load", "generate_cache_equivalence", "config")

RETNET = Family("retnet", lambda **kw: HfGenRetNetConfig(**{**TINY_RETNET, **kw}), HfGenRetNetModel,
                HfGenRetNetForCausalLM, kind="causal", has_attentions=False)

EXPECTED_FAILURES = {}


@pytest.mark.parametrize("family,variant,check", cases([(RETNET, VARIANTS)], CHECKS, VARIANT_CHECKS,
                                                       EXPECTED_FAILURES))
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)
