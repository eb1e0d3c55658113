"""Encoder-decoder checks that need a CUDA device: T5 parity on the GPU, cached generation (dynamic and static
cache) equal to uncached in bf16, and the fused SDPA kernels serving self- and cross-attention with padding.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest -m gpu tests/test_seq2seq_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import build
from hfgen import HfGenSeq2SeqForConditionalGeneration
from test_seq2seq_fixtures import VARIANTS, decoder_ids, source_batch, tiny_seq2seq_config
from test_seq2seq_t5 import LAYOUTS, make_t5, padded_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_t5_parity_on_the_gpu(layout):
    t5 = make_t5(layout, num_decoder_layers=2).cuda()
    ours = HfGenSeq2SeqForConditionalGeneration.from_t5(t5).eval()
    inputs = {k: v.cuda() for k, v in padded_inputs().items()}
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, t5(**inputs).logits, atol=1e-4, rtol=1e-4)
    inputs.pop("decoder_input_ids")
    torch.testing.assert_close(ours.generate(**inputs, max_new_tokens=8, do_sample=False),
                               t5.generate(**inputs, max_new_tokens=8, do_sample=False), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["default", "t5_like", "off_by_one-mqa", "adaptive_temperature", "alibi"])
def test_cached_generation_equals_uncached(name, dtype):
    """Dynamic cache, static cache (which generate compiles on a GPU) and no cache: the same step logits -- to
    fp32 rounding, and in bf16 within 5% of the logits' range (bf16 keeps 8 bits of mantissa). In bf16 a near tie
    may flip a greedy pick, after which the continuations differ: logits compare up to each row's first flip."""
    model = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(**VARIANTS[name])).cuda().to(dtype)
    ids, mask = (t.cuda() for t in source_batch())
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None, output_logits=True,
                  return_dict_in_generate=True)
    runs = {how: model.generate(ids, attention_mask=mask, **extra, **kwargs)
            for how, extra in (("dynamic", {}), ("static", dict(cache_implementation="static")),
                               ("uncached", dict(use_cache=False)))}
    reference = torch.stack(runs["dynamic"].logits, 1).float()
    atol = 1e-4 if dtype == torch.float32 else 0.05 * float(reference.abs().max())
    for how in ("static", "uncached"):
        same_prefix = (runs[how].sequences[:, 1:] == runs["dynamic"].sequences[:, 1:]).long().cumprod(1)
        steps = torch.cat((torch.ones_like(same_prefix[:, :1]), same_prefix[:, :-1]), 1).bool()  # inputs agree
        if dtype == torch.float32:
            assert steps.all(), how
        logits = torch.stack(runs[how].logits, 1).float()
        torch.testing.assert_close(logits[steps], reference[steps], atol=atol, rtol=0, msg=how)


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                         ids=["flash", "efficient"])
def test_fused_kernels_serve_the_default_model(backend):
    """No padding and no position bias (rotary), head_dim 64, bf16: every self- and cross-attention call can run
    in a fused kernel (SDPA raises if it would need the math fallback); the result matches the math kernel."""
    config = tiny_seq2seq_config(hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                                 intermediate_size=512)
    model = build(HfGenSeq2SeqForConditionalGeneration, config).cuda().bfloat16()
    ids, target = source_batch()[0].clamp(min=1).cuda(), decoder_ids(3, 7).cuda()
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            expected = model(input_ids=ids, decoder_input_ids=target).logits.float()
        with sdpa_kernel([backend]):
            actual = model(input_ids=ids, decoder_input_ids=target).logits.float()
    torch.testing.assert_close(actual, expected, atol=5e-2, rtol=5e-2)
