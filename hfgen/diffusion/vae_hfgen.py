"""A variational autoencoder as a native diffusers model, with the interface of diffusers' ``AutoencoderKL``
(``encode(x).latent_dist``, ``decode(z).sample``, ``config.latent_channels``, ``config.scaling_factor``) so that it
is the latent space of :class:`HfGenDiffusionPipeline`.

Seed 002: "Variational Autoencoders (VAEs) ... combine the principles of autoencoders ... with the techniques of
variational inference", an encoder and a decoder; "the way they encourage the latent space to follow a specific
probability distribution, typically a Gaussian distribution ... enables the generation of new data by simply
sampling from the latent space and passing these samples through the decoder network."

Training maximises the evidence lower bound (Kingma & Welling 2014) of one image ``x``:

    ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || N(0, I))  <=  log p(x)

with ``q(z|x) = N(mu(x), diag sigma(x)^2)`` (reparameterised: ``z = mu + sigma * eps``), a Gaussian decoder
``p(x|z) = N(decoder(z), decoder_std^2 I)``, and the KL in closed form
``0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .export_hfgen import HubExportMixin


@dataclass
class HfGenVAEOutput(BaseOutput):
    """Per-image terms, in nats: ``elbo = reconstruction - kl``; ``loss`` = the mean negative ELBO per pixel."""

    sample: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor
    loss: torch.Tensor


class Block(nn.Module):
    """Residual GroupNorm-SiLU-conv x2."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(groups, in_channels), nn.SiLU(),
                                 nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                 nn.GroupNorm(groups, out_channels), nn.SiLU(),
                                 nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.net(x)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """``log N(x; mean, std^2 I)`` summed over all but the batch dimension."""
    return (-0.5 * ((x - mean) / std).pow(2) - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


class HfGenVAEModel(HubExportMixin, ModelMixin, ConfigMixin):
    """Convolutional VAE: ``len(block_out_channels) - 1`` halvings from image to latent."""

    @register_to_config
    def __init__(self, in_channels: int = 1, latent_channels: int = 2, block_out_channels: tuple[int, ...] = (16, 32),
                 norm_num_groups: int = 8, sample_size: int = 16, scaling_factor: float = 1.0,
                 decoder_std: float = 0.1):
        super().__init__()
        channels = list(block_out_channels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every entry of block_out_channels "
                             f"{channels}.")
        if not decoder_std > 0:
            raise ValueError(f"decoder_std must be > 0, got {decoder_std}.")
        encoder = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        width = channels[0]
        for i, out in enumerate(channels):
            encoder.append(Block(width, out, norm_num_groups))
            width = out
            if i < len(channels) - 1:
                encoder.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        encoder += [nn.GroupNorm(norm_num_groups, width), nn.SiLU(),
                    nn.Conv2d(width, 2 * latent_channels, 3, padding=1)]  # mean and log-variance
        self.encoder = nn.Sequential(*encoder)
        decoder = [nn.Conv2d(latent_channels, width, 3, padding=1)]
        for i, out in reversed(list(enumerate(channels))):
            decoder.append(Block(width, out, norm_num_groups))
            width = out
            if i > 0:
                decoder += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        decoder += [nn.GroupNorm(norm_num_groups, width), nn.SiLU(), nn.Conv2d(width, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _check(self, x: torch.Tensor, channels: int, what: str, factor: int = 1) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} must be [batch, {channels}, height, width], got shape {tuple(x.shape)}.")
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"Image size {tuple(x.shape[-2:])} is not divisible by the VAE's downsampling factor "
                             f"{factor}.")
        # NaN or inf would come out as NaN latents, images and loss (one device sync per call, not per step).
        if x.is_floating_point() and not torch.compiler.is_compiling():
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise ValueError(f"{what} hold {bad} NaN or inf value(s) (of {x.numel()}); every value must be "
                                 f"finite.")

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """``q(z|x)`` as diffusers' ``DiagonalGaussianDistribution`` (``.mean``, ``.logvar``, ``.sample()``)."""
        self._check(x, self.config.in_channels, "x", self.downsampling_factor)
        posterior = DiagonalGaussianDistribution(self.encoder(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """The decoder's mean image for latents ``z``."""
        self._check(z, self.config.latent_channels, "z")
        image = self.decoder(z)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None, return_dict: bool = True,
                noise: torch.Tensor | None = None):
        """Reconstruct ``sample`` and compute its single-sample ELBO estimate (see the module docstring).
        ``noise``: the standard-normal draw of the posterior sample, shaped as the latent (``mean + std * noise``),
        instead of one drawn with ``generator`` -- so that data-parallel processes can take their rows of one draw."""
        posterior = self.encode(sample).latent_dist
        if noise is not None:
            z = posterior.mean + posterior.std * noise.to(posterior.mean)
        else:
            z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        mean = self.decode(z).sample
        reconstruction = gaussian_log_likelihood(sample, mean, self.config.decoder_std)
        kl = posterior.kl()  # KL(q(z|x) || N(0, I)) in closed form, summed per image
        elbo = reconstruction - kl
        loss = -elbo.mean() / sample[0].numel()
        out = HfGenVAEOutput(sample=mean, reconstruction=reconstruction, kl=kl, elbo=elbo, loss=loss)
        return out if return_dict else out.to_tuple()

    def latent_shape(self, batch: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        height = height or self.config.sample_size
        width = width or self.config.sample_size
        f = self.downsampling_factor
        if height % f or width % f:
            raise ValueError(f"Image size ({height}, {width}) is not divisible by the VAE's downsampling factor {f}.")
        return (batch, self.config.latent_channels, height // f, width // f)

    @torch.no_grad()
    def sample_prior(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images decoded from ``z ~ N(0, I)``."""
        z = torch.randn(self.latent_shape(batch), generator=generator, device=self.device, dtype=self.dtype)
        return self.decode(z).sample

    @torch.no_grad()
    def interpolate(self, x_start: torch.Tensor, x_end: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decoded images along the straight line between the posterior means of two images ``[C, H, W]``."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}.")
        z = self.encode(torch.stack([x_start, x_end])).latent_dist.mean
        weights = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype)[:, None, None, None]
        return self.decode((1 - weights) * z[:1] + weights * z[1:]).sample
