"""Checks that need a CUDA device: the fused SDPA kernels (flash / memory-efficient) really run each fast path,
bf16 on the GPU stays close to the float64 reference, and the default decoder matches Llama on the GPU.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.models.attention import sdpa_attention

from test_attention import causal_allowed, make_attention, make_config, random_qkv, ref_attention

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FUSED_VARIANTS = ["standard", "temperature", "off_by_one", "adaptive_temperature"]


@pytest.mark.parametrize("softmax", FUSED_VARIANTS)
@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                         ids=["flash", "efficient"])
def test_fused_kernels_run_every_dot_product_variant(softmax, backend):
    """With only one fused backend allowed, SDPA raises if a path would need the math fallback; the result must
    still match the float64 reference (bf16 tolerance). head_dim 64, causal, no padding: the training case."""
    cfg = make_config(softmax_variant=softmax, hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                      query_chunk_size=64)
    module = make_attention(cfg, "sdpa").cuda().bfloat16()
    q, k, v = random_qkv(cfg, 2, 128, 128)
    with torch.no_grad(), sdpa_kernel([backend]):
        out, _ = sdpa_attention(module, q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(), None,
                                scaling=module.scaling)
    # The float64 reference is a slow loop: check the first 24 queries of two heads (causal: they see 24 keys).
    expected = ref_attention(q[:1, :2, :24].bfloat16().float(), k[:1, :2, :24].bfloat16().float(),
                             v[:1, :2, :24].bfloat16().float(), causal_allowed(1, 24, 24), cfg)
    torch.testing.assert_close(out[:1, :24, :2].double().cpu(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("softmax", ["standard", "off_by_one", "adaptive_temperature", "clipped"])
def test_bf16_with_padding_on_gpu_close_to_reference(softmax):
    cfg = make_config(softmax_variant=softmax)
    module = make_attention(cfg, "sdpa").cuda().bfloat16()
    q, k, v = random_qkv(cfg, 2, 9, 9)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[0, :4] = False
    allowed = causal_allowed(2, 9, 9, padding)
    with torch.no_grad():
        out, _ = sdpa_attention(module, q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(),
                                allowed[:, None].cuda(), scaling=module.scaling)
    expected = ref_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), allowed, cfg)
    rows = allowed.any(-1)
    torch.testing.assert_close(out.double().cpu()[rows], expected[rows], atol=4e-2, rtol=4e-2)


def test_default_decoder_matches_llama_on_gpu():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    keys = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    llama = LlamaForCausalLM(LlamaConfig(**keys)).cuda().eval()
    ours = HfGenDecoderForCausalLM(HfGenDecoderConfig(**keys)).cuda().eval()
    ours.load_state_dict(llama.state_dict())
    ids = torch.randint(0, 128, (2, 33), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, atol=1e-4, rtol=1e-4)
        llama, ours = llama.bfloat16(), ours.bfloat16()
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("softmax", ["standard", "off_by_one", "adaptive_temperature"])
def test_cached_generation_equals_uncached_on_gpu(softmax):
    torch.manual_seed(0)
    cfg = HfGenDecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, softmax_variant=softmax)
    model = HfGenDecoderForCausalLM(copy.deepcopy(cfg)).cuda().eval()
    ids = torch.randint(0, 128, (2, 7), device="cuda")
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs))
