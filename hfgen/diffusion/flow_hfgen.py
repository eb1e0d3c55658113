"""A normalizing flow (Glow / RealNVP style) as a native diffusers model: exact log-likelihood, sampling by the
inverse, an ``encode`` / ``decode`` round trip.

Seed 001: "A normalizing flow transforms a simple distribution into a complex one by applying a sequence of
invertible transformation functions ... we repeatedly substitute the variable for the new one according to the
change of variables theorem and eventually obtain a probability distribution of the final target variable." With
``z = f(x)`` invertible, ``log p(x) = log N(f(x); 0, I) + log |det df/dx|``; each step's log-determinant is cheap:

* squeeze: ``[C, H, W] -> [4C, H/2, W/2]`` (a permutation, log-det 0), once, so a coupling can split channels;
* actnorm (Kingma & Dhariwal 2018): ``y = (x + b) * exp(s)`` per channel, initialised from the first batch so
  its output has zero mean and unit variance; log-det ``H W sum(s)``;
* invertible 1x1 convolution: ``y = W x`` per position; log-det ``H W log|det W|``;
* affine coupling (Dinh et al. 2017): ``x = [x_a, x_b]``, ``y_b = x_b * sigmoid(r + 2) + t`` with ``(r, t)`` a
  network of ``x_a``, ``y_a = x_a``; log-det ``sum log sigmoid(r + 2)``. Its last layer starts at zero, so every
  coupling starts as a fixed scaling.

Bits per dimension of 8-bit images ``x_int`` with uniform dequantisation, ``x = 2 (x_int + u) / 256 - 1``: see
:func:`bits_per_dim`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .export_hfgen import HubExportMixin


@dataclass
class HfGenFlowOutput(BaseOutput):
    """``latents`` z = f(x); per-sample ``log_det``, ``log_prob`` (nats) and ``bits_per_dim``; ``loss`` = mean
    negative log-likelihood per dimension."""

    latents: torch.Tensor
    log_det: torch.Tensor
    log_prob: torch.Tensor
    bits_per_dim: torch.Tensor
    loss: torch.Tensor


def squeeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, num_bins: int = 256) -> torch.Tensor:
    """Bits per dimension of discrete data with ``num_bins`` levels, dequantised uniformly and mapped to
    ``[-1, 1]``: the density of ``y = (x_int + u) / num_bins`` in ``[0, 1)`` is ``p(x) * 2^D`` (the map to
    ``[-1, 1]`` doubles every coordinate), and the probability of a bin is ``p(y) / num_bins^D``:
    ``bpd = -(log p(x) + D log 2 - D log num_bins) / (D log 2)``."""
    return -(log_prob + num_dims * math.log(2) - num_dims * math.log(num_bins)) / (num_dims * math.log(2))


class ActNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True) if x.shape[0] * x.shape[2] * x.shape[3] > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(True)

    def forward(self, x):
        if self.training and not bool(self.initialized):
            self._initialize(x)
        return (x + self.bias) * torch.exp(self.log_scale), self.log_scale.sum() * x.shape[2] * x.shape[3]

    def inverse(self, y):
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    def __init__(self, channels: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.linalg.qr(torch.randn(channels, channels, generator=generator))[0]  # a random rotation
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        log_det = torch.linalg.slogdet(self.weight)[1] * x.shape[2] * x.shape[3]
        return torch.einsum("ij,bjhw->bihw", self.weight, x), log_det

    def inverse(self, y):
        sign, log_abs = torch.linalg.slogdet(self.weight)
        if sign == 0 or not torch.isfinite(log_abs) or log_abs < -30:
            raise ValueError("The 1x1 convolution's weight is singular (|det W| ~ 0): the flow is not invertible.")
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.weight), y)


class AffineCoupling(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.split = channels // 2
        out = channels - self.split
        self.net = nn.Sequential(nn.Conv2d(self.split, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2 * out, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, x_a):
        raw, shift = self.net(x_a).chunk(2, dim=1)
        return torch.sigmoid(raw + 2.0), shift

    def forward(self, x):
        x_a, x_b = x[:, :self.split], x[:, self.split:]
        scale, shift = self._scale_shift(x_a)
        return torch.cat([x_a, x_b * scale + shift], dim=1), torch.log(scale).flatten(1).sum(1)

    def inverse(self, y):
        y_a, y_b = y[:, :self.split], y[:, self.split:]
        scale, shift = self._scale_shift(y_a)
        return torch.cat([y_a, (y_b - shift) / scale], dim=1)


class FlowStep(nn.Module):
    def __init__(self, channels: int, hidden: int, seed: int):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.mixing = InvertibleConv1x1(channels, seed)
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x):
        x, a = self.actnorm(x)
        x, b = self.mixing(x)
        x, c = self.coupling(x)
        return x, a + b + c

    def inverse(self, y):
        return self.actnorm.inverse(self.mixing.inverse(self.coupling.inverse(y)))


class HfGenFlowModel(HubExportMixin, ModelMixin, ConfigMixin):
    """Glow-style flow on ``[in_channels, sample_size, sample_size]`` images: squeeze, then ``num_steps`` x
    (actnorm, invertible 1x1 convolution, affine coupling)."""

    @register_to_config
    def __init__(self, in_channels: int = 1, sample_size: int = 8, num_steps: int = 4, hidden_channels: int = 32,
                 num_bins: int = 256):
        super().__init__()
        if sample_size % 2:
            raise ValueError(f"The flow squeezes 2x2 pixels into channels: sample_size must be even, got "
                             f"{sample_size}.")
        if num_steps < 1 or hidden_channels < 1 or in_channels < 1:
            raise ValueError(f"num_steps, hidden_channels and in_channels must be >= 1, got {num_steps}, "
                             f"{hidden_channels}, {in_channels}.")
        channels = 4 * in_channels
        self.steps = nn.ModuleList(FlowStep(channels, hidden_channels, seed=i) for i in range(num_steps))

    @property
    def num_dims(self) -> int:
        return self.config.in_channels * self.config.sample_size ** 2

    def _check(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.sample_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"The flow maps [batch, {c}, {s}, {s}] images (an exact density needs the exact "
                             f"dimension), got shape {tuple(x.shape)}.")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f(x)`` (shape of ``x``) and ``log |det df/dx|`` per sample."""
        self._check(x)
        h = squeeze(x)
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for step in self.steps:
            h, step_log_det = step(h)
            log_det = log_det + step_log_det
        return unsqueeze(h), log_det

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x = f^{-1}(z)``."""
        self._check(z)
        h = squeeze(z)
        for step in reversed(self.steps):
            h = step.inverse(h)
        return unsqueeze(h)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        z, log_det = self.encode(sample)
        log_prob = standard_normal_log_prob(z) + log_det
        bpd = bits_per_dim(log_prob, self.num_dims, self.config.num_bins)
        out = HfGenFlowOutput(latents=z, log_det=log_det, log_prob=log_prob, bits_per_dim=bpd,
                              loss=-log_prob.mean() / self.num_dims)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``f^{-1}(z)``, ``z ~ N(0, temperature^2 I)``."""
        shape = (batch, self.config.in_channels, self.config.sample_size, self.config.sample_size)
        z = torch.randn(shape, generator=generator, dtype=self.dtype).to(self.device) * temperature
        return self.decode(z)
