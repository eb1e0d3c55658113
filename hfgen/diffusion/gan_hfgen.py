"""A DCGAN (Radford et al. 2016) generator and discriminator as native diffusers models, with the
non-saturating loss and two stabilisers.

Seed 002: "GANs ... employ two competing neural networks in a strategic adversarial framework, akin to a zero-sum
game ... the generator and the discriminator." Seeds 000/002 name the failure modes: training is unstable (the two
players chase each other) and the generator can collapse onto a few modes. Addressed here by

* spectral normalisation of every discriminator layer (Miyato et al. 2018, ``spectral_norm=True``, the default):
  each weight divided by its largest singular value, so the discriminator is 1-Lipschitz per layer and its
  gradients cannot explode;
* the R1 penalty (Mescheder et al. 2018, :func:`r1_penalty`, weight ``r1_gamma`` in the recipe):
  ``gamma/2 * E ||grad_x D(x)||^2`` on real images, which keeps the discriminator flat on the data and makes
  simultaneous gradient descent converge locally;
* collapse is *measured*, not assumed away: the recipe reports the per-class spread of the samples as labelled
  by the digit classifier (``hfgen.diffusion.quality``).

Losses (Goodfellow et al. 2014, the non-saturating form), with ``D`` returning logits:
``L_D = softplus(-D(x)) + softplus(D(G(z)))`` and ``L_G = softplus(-D(G(z)))`` (= ``-log sigmoid(D(G(z)))``,
whose gradient does not vanish when the discriminator wins early, unlike ``log(1 - sigmoid(D(G(z))))``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from .export_hfgen import HubExportMixin


def _check_size(image_size: int) -> int:
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"The DCGAN doubles a 4x4 map up to the image: image_size must be a power of 2 >= 8, "
                         f"got {image_size}.")
    return image_size.bit_length() - 3  # number of doublings from 4x4


class HfGenGANGenerator(HubExportMixin, ModelMixin, ConfigMixin):
    """``z ~ N(0, I)`` of size ``latent_dim`` -> a 4x4 map -> transposed convolutions doubling the size (BatchNorm,
    ReLU) -> ``tanh`` image in ``[-1, 1]``."""

    @register_to_config
    def __init__(self, latent_dim: int = 32, image_size: int = 16, out_channels: int = 1, base_channels: int = 32):
        super().__init__()
        doublings = _check_size(image_size)
        width = base_channels * 2 ** (doublings - 1) if doublings else base_channels
        self.project = nn.Sequential(nn.Linear(latent_dim, width * 16), nn.Unflatten(1, (width, 4, 4)),
                                     nn.BatchNorm2d(width), nn.ReLU())
        layers = []
        for i in range(doublings):
            last = i == doublings - 1
            out = out_channels if last else width // 2
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 2 or latents.shape[1] != self.config.latent_dim:
            raise ValueError(f"latents must be [batch, {self.config.latent_dim}], got shape {tuple(latents.shape)}.")
        return torch.tanh(self.net(self.project(latents)))

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(batch, self.config.latent_dim, generator=generator, dtype=self.dtype).to(self.device)
        return self(z)


class HfGenGANDiscriminator(HubExportMixin, ModelMixin, ConfigMixin):
    """Strided convolutions halving the image down to 4x4 (LeakyReLU 0.2), then one logit. Every layer spectrally
    normalised when ``spectral_norm`` (no BatchNorm then: it would undo the Lipschitz bound)."""

    @register_to_config
    def __init__(self, image_size: int = 16, in_channels: int = 1, base_channels: int = 32, spectral_norm: bool = True):
        super().__init__()
        doublings = _check_size(image_size)
        wrap = apply_spectral_norm if spectral_norm else (lambda m: m)
        layers, width = [], in_channels
        for i in range(doublings):
            out = base_channels * 2 ** i
            layers += [wrap(nn.Conv2d(width, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            width = out
        self.net = nn.Sequential(*layers, nn.Flatten(), wrap(nn.Linear(width * 16, 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c, s = self.config.in_channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"images must be [batch, {c}, {s}, {s}], got shape {tuple(images.shape)}.")
        return self.net(images).squeeze(1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``E softplus(-D(x)) + E softplus(D(G(z)))`` (binary cross-entropy with real = 1, fake = 0)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: ``E softplus(-D(G(z))) = -E log sigmoid(D(G(z)))``."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """``E ||grad_x D(x)||^2`` on real images (multiply by ``gamma / 2``)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
