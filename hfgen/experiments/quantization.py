"""8-bit post-training quantization of weights and activations (W8A8), simulated in floating point.

The setup of Bondarenko et al. 2023 ("Quantizable Transformers") as issue 8 states it: per-tensor, symmetric int8
weights, asymmetric uint8 activations, ranges by min-max calibration on a few batches. torch's own tools do the
work where they fit: ``torch.ao.quantization.observer.MinMaxObserver`` computes scale and zero point, and
``torch.fake_quantize_per_tensor_affine`` rounds (``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s``).
The int8 kernels of ``torch.ao`` cover only some modules and the variant attention kernels not at all, so the
quantization is simulated ("fake quant"), which gives the same numbers an int8 kernel with these ranges would.

Quantized activations: the input and output of every ``nn.Linear`` (so every matmul operand, the attention and MLP
outputs included) and the output of every transformer layer (the residual stream, where the outliers live).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver


def _observer(symmetric: bool, bits: int = 8) -> MinMaxObserver:
    if symmetric:
        return MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                              quant_min=-(2 ** (bits - 1)), quant_max=2 ** (bits - 1) - 1)
    return MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2**bits - 1)


def _apply(x: torch.Tensor, observer: MinMaxObserver) -> torch.Tensor:
    scale, zero_point = observer.calculate_qparams()
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), observer.quant_min,
                                                 observer.quant_max)


def fake_quantize_symmetric(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-tensor symmetric min-max quantization of ``x`` (weights), returned dequantized."""
    observer = _observer(True, bits)
    observer(x.detach())
    return _apply(x, observer)


def fake_quantize_asymmetric(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-tensor asymmetric min-max quantization of ``x`` (activations), returned dequantized."""
    observer = _observer(False, bits)
    observer(x.detach())
    return _apply(x, observer)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


class W8A8FakeQuantizer:
    """Calibrate, then simulate W8A8 on a model in place; ``restore()`` gives the fp32 model back.

    Example::

        quantizer = W8A8FakeQuantizer(model)
        quantizer.calibrate(batches)        # min-max ranges of every activation point
        quantizer.quantize()                # int8 weights + uint8 activations from now on
        ...evaluate...
        quantizer.restore()
    """

    def __init__(self, model: nn.Module, bits: int = 8, layer_suffixes: tuple[str, ...] = ("Layer",)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
        self.model, self.bits = model, bits
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.layers = [m for m in model.modules()
                       if type(m).__name__.endswith(layer_suffixes) and not isinstance(m, nn.Linear)]
        self.input_observers = {m: _observer(False, bits) for m in self.linears}
        self.output_observers = {m: _observer(False, bits) for m in self.linears + self.layers}
        self._hooks: list = []
        self._saved_weights: dict[nn.Module, torch.Tensor] = {}
        self.calibrated = False

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @torch.no_grad()
    def calibrate(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Run the fp32 model on ``batches`` (keyword dicts for ``model(**batch)``), recording min and max of
        every activation point."""
        if self._saved_weights:
            raise ValueError("calibrate() the fp32 model: call restore() first.")
        def observe_input(observer):
            def hook(module, args):
                observer(args[0].detach())
            return hook

        def observe_output(observer):
            def hook(module, args, output):
                observer(_first(output).detach())
            return hook

        for m, observer in self.input_observers.items():
            self._hooks.append(m.register_forward_pre_hook(observe_input(observer)))
        for m, observer in self.output_observers.items():
            self._hooks.append(m.register_forward_hook(observe_output(observer)))
        try:
            for batch in batches:
                self.model(**batch)
        finally:
            self._remove_hooks()
        self.calibrated = True

    @torch.no_grad()
    def quantize(self) -> None:
        """Fake-quantize every Linear weight (symmetric) and install the activation quantizers (asymmetric)."""
        if not self.calibrated:
            raise ValueError("call calibrate(batches) before quantize().")
        if self._saved_weights:
            return
        for m in self.linears:
            self._saved_weights[m] = m.weight.detach().clone()
            m.weight.copy_(fake_quantize_symmetric(m.weight, self.bits))
        for m, observer in self.input_observers.items():
            self._hooks.append(m.register_forward_pre_hook(
                lambda mod, args, o=observer: (_apply(args[0], o), *args[1:])))
        for m, observer in self.output_observers.items():
            self._hooks.append(m.register_forward_hook(
                lambda mod, args, out, o=observer: _replace_first(out, _apply(_first(out), o))))

    @torch.no_grad()
    def restore(self) -> None:
        """Remove the quantizers and put the fp32 weights back."""
        self._remove_hooks()
        for m, weight in self._saved_weights.items():
            m.weight.copy_(weight)
        self._saved_weights = {}
