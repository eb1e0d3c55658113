"""Quantized weights through transformers' ``quantization_config`` and torchao (weight-only int8, the scheme
benchmarks/quantization.py chose by measurement): an hfgen decoder loads quantized, its logits stay near the float
model's (int8 weight error only), greedy decoding is unchanged, and save -> load of the quantized model (safetensors,
as transformers documents for torchao) gives identical logits; variants quantize alike."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchao", reason="optional extra hfgen[quantization] not installed")
from torchao.quantization import Int8WeightOnlyConfig  # noqa: E402
from transformers import TorchAoConfig  # noqa: E402

from conftest import build, random_ids, tiny_config  # noqa: E402
from hfgen import HfGenDecoderForCausalLM  # noqa: E402


def quantized_copy(tmp_path, **overrides):
    """A float model saved to ``tmp_path/float`` and the same checkpoint loaded with int8 weight-only
    quantization."""
    model = build(HfGenDecoderForCausalLM, tiny_config(**overrides))
    model.save_pretrained(tmp_path / "float")
    quantized = HfGenDecoderForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()
    return model, quantized


def int8_error_bound(model) -> float:
    """Worst change of any weight under symmetric per-row int8 rounding: half a step, max|w_row| / 127 / 2."""
    return max(p.abs().amax(dim=-1).max().item() / 127 / 2 for n, p in model.named_parameters()
               if n.endswith("proj.weight"))


@pytest.mark.parametrize("overrides", [{}, {"softmax_variant": "off_by_one"}], ids=["standard", "off_by_one"])
def test_int8_weights_are_quantized_and_close_to_float(tmp_path, overrides):
    model, quantized = quantized_copy(tmp_path, **overrides)
    weight = quantized.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__module__.startswith("torchao")  # a torchao tensor subclass holding int8 data
    dequantized = weight.dequantize()
    reference = model.model.layers[0].self_attn.q_proj.weight
    assert (dequantized - reference).abs().max().item() <= int8_error_bound(model) * 1.01
    assert not torch.equal(dequantized, reference)  # really rounded
    ids = random_ids(2, 12)
    with torch.no_grad():
        expected, got = model(ids).logits, quantized(ids).logits
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()
    assert torch.equal(quantized.generate(ids, max_new_tokens=6, do_sample=False),
                       model.generate(ids, max_new_tokens=6, do_sample=False))


def test_save_then_load_quantized_gives_identical_logits(tmp_path):
    _, quantized = quantized_copy(tmp_path)
    quantized.save_pretrained(tmp_path / "int8")
    files = {p.name for p in (tmp_path / "int8").iterdir()}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    reloaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path / "int8").eval()
    assert isinstance(reloaded.config.quantization_config, TorchAoConfig)
    assert type(reloaded.model.layers[0].mlp.down_proj.weight).__module__.startswith("torchao")
    ids = random_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, quantized(ids).logits)
