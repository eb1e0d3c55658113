"""A vector-quantised autoencoder (VQ-VAE, van den Oord et al. 2017) and its two-level version (VQ-VAE-2, Razavi et
al. 2019, in seed 000's references) as a native diffusers model with the interface of diffusers' ``VQModel``:
``encode(x).latents`` (the encoder's continuous output), ``decode(h)`` (quantise, then decode:
``.sample``, ``.commit_loss``), ``forward(x)`` = both, and the same parameter names, so a ``VQModel`` state dict
loads into a one-level model and gives the same codes and images.

The encoder output ``z_e(x)`` is replaced by its nearest codebook vector ``e_k``, ``k = argmin_j ||z_e - e_j||``
(diffusers' ``VectorQuantizer``, which this quantizer extends); the decoder sees ``z_q = z_e + sg[e_k - z_e]`` (the
straight-through estimator: the forward value is ``e_k``, the gradient reaches the encoder as if ``z_q = z_e``).
Training minimises

    log p(x | z_q(x)) terms  +  ||sg[z_e(x)] - e||^2  +  beta ||z_e(x) - sg[e]||^2

(reconstruction, codebook, commitment with ``beta = commitment_cost``; the paper's placement of ``beta``, which is
diffusers' ``legacy=False``). Codes no encoder output chose for ``dead_code_steps`` training forwards are restarted
at randomly chosen encoder outputs of the current batch, so that the codebook stays in use.

VQ-VAE-2 (``num_levels=2``): the bottom latents ``h`` at 1/f of the image size are encoded once more to the top
latents at 1/2f and quantised with their own codebook; the top codes, decoded back to 1/f, are concatenated with
``h`` to choose the bottom codes; the decoder reads the bottom codes with the upsampled top codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, Encoder, VectorQuantizer
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .export_hfgen import HubExportMixin


@dataclass
class HfGenVQOutput(DecoderOutput):
    """``sample``: the reconstruction; ``loss`` = ``reconstruction_loss`` (mean squared error) + ``commit_loss`` (the
    codebook and commitment terms of every level); ``codes`` ``[batch, h, w]`` of the bottom level (the only one of a
    one-level model) with its ``perplexity`` (``exp`` of the entropy of the batch's code usage: the number of codes
    in effective use) and ``codebook_usage`` (fraction of codes chosen at least once); ``top_*`` for VQ-VAE-2's top
    level, else ``None``."""

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    codebook_usage: torch.Tensor | None = None
    top_codes: torch.Tensor | None = None
    top_perplexity: torch.Tensor | None = None
    top_codebook_usage: torch.Tensor | None = None


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor
    loss: torch.Tensor
    codes: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (DDP), so that every process restarts the same codes."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Process 0's values on every process (the restarted codebook rows must agree)."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(tensor, 0)
    return tensor


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated in rank order (DDP): the rows of the global batch, as one process
    with the whole batch sees them."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class HfGenVectorQuantizer(VectorQuantizer):
    """diffusers' ``VectorQuantizer`` (codebook ``embedding``, nearest code by ``torch.cdist`` argmin,
    straight-through estimator) with the paper's loss (``legacy=False``), code-usage statistics and dead-code
    restarts. ``unused_steps`` (saved with the weights) counts the training forwards since each code was last
    chosen."""

    def __init__(self, num_codes: int, dim: int, beta: float, dead_code_steps: int):
        super().__init__(num_codes, dim, beta=beta, remap=None, sane_index_shape=True, legacy=False)
        self.dead_code_steps = dead_code_steps
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        quantized, loss, (_, _, codes) = super().forward(z)
        counts = torch.bincount(codes.flatten(), minlength=self.n_e)
        if self.training and self.dead_code_steps:
            counts = _all_reduce(counts)
            self.restart_dead_codes(z, counts)
        probs = counts.float() / counts.sum()
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum()
        return QuantizerOutput(quantized, loss, codes, entropy.exp(), (counts > 0).float().mean())

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, counts: torch.Tensor) -> None:
        """Codes unused for ``dead_code_steps`` forwards move to encoder outputs of this batch (drawn with
        replacement from every process's outputs, so that N processes restart as one process does; process 0's
        draw on every process)."""
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.unused_steps >= self.dead_code_steps).nonzero().flatten()
        if not len(dead):
            return
        vectors = _all_gather(z.detach()).permute(0, 2, 3, 1).reshape(-1, self.vq_embed_dim)
        chosen = vectors[torch.randint(len(vectors), (len(dead),), device=vectors.device)]
        self.embedding.weight.data[dead] = _broadcast(chosen.contiguous()).to(self.embedding.weight.dtype)
        self.unused_steps[dead] = 0


class HfGenVQModel(HubExportMixin, ModelMixin, ConfigMixin):
    """VQ-VAE (``num_levels=1``; diffusers' ``VQModel`` layout and config keys) or VQ-VAE-2 (``num_levels=2``).
    ``len(block_out_channels) - 1`` halvings from image to bottom latents; the top level halves once more."""

    @register_to_config
    def __init__(self, in_channels: int = 1, out_channels: int = 1, down_block_types: tuple[str, ...] | None = None,
                 up_block_types: tuple[str, ...] | None = None, block_out_channels: tuple[int, ...] = (32, 64),
                 layers_per_block: int = 1, act_fn: str = "silu", latent_channels: int = 4, sample_size: int = 8,
                 num_vq_embeddings: int = 64, norm_num_groups: int = 8, vq_embed_dim: int | None = None,
                 scaling_factor: float = 1.0, norm_type: str = "group", mid_block_add_attention: bool = True,
                 lookup_from_codebook: bool = False, force_upcast: bool = False, commitment_cost: float = 0.25,
                 dead_code_steps: int = 20, num_levels: int = 1, top_num_vq_embeddings: int | None = None):
        super().__init__()
        levels = len(block_out_channels)
        down_block_types = tuple(down_block_types or ("DownEncoderBlock2D",) * levels)
        up_block_types = tuple(up_block_types or ("UpDecoderBlock2D",) * levels)
        self.register_to_config(down_block_types=down_block_types, up_block_types=up_block_types)  # VQModel's keys
        _check_config(block_out_channels, norm_num_groups, down_block_types, up_block_types, norm_type, num_levels,
                      num_vq_embeddings, top_num_vq_embeddings, commitment_cost, dead_code_steps)
        dim = vq_embed_dim or latent_channels
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels, down_block_types=down_block_types,
                               block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, double_z=False,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = nn.Conv2d(latent_channels, dim, 1)
        self.quantize = HfGenVectorQuantizer(num_vq_embeddings, dim, commitment_cost, dead_code_steps)
        self.post_quant_conv = nn.Conv2d(dim * num_levels, latent_channels, 1)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
                               block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, norm_type=norm_type,
                               mid_block_add_attention=mid_block_add_attention)
        if num_levels == 2:
            width = block_out_channels[-1]
            self.top_encoder = nn.Sequential(nn.Conv2d(dim, width, 4, stride=2, padding=1), nn.SiLU(),
                                             nn.Conv2d(width, dim, 3, padding=1))
            self.top_quantize = HfGenVectorQuantizer(top_num_vq_embeddings or num_vq_embeddings, dim,
                                                     commitment_cost, dead_code_steps)
            self.top_decoder = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
            self.bottom_conv = nn.Conv2d(2 * dim, dim, 1)
            self.upsample_top = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)

    @property
    def downsampling_factor(self) -> int:
        """Image size over the size of the top latents (the coarsest code grid)."""
        return 2 ** (len(self.config.block_out_channels) - 1 + self.config.num_levels - 1)

    @property
    def num_image_tokens(self) -> int:
        """Size of the token vocabulary of :meth:`tokenize`: the top codes first, then the bottom codes."""
        top = self.top_quantize.n_e if self.config.num_levels == 2 else 0
        return top + self.quantize.n_e

    def _check_images(self, x: torch.Tensor) -> None:
        channels, factor = self.config.in_channels, self.downsampling_factor
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"sample must be [batch, {channels}, height, width], got shape {tuple(x.shape)}.")
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"Image size {tuple(x.shape[-2:])} is not divisible by the model's downsampling factor "
                             f"{factor} (block_out_channels and num_levels).")
        if x.is_floating_point() and not torch.compiler.is_compiling():
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise ValueError(f"sample holds {bad} NaN or inf value(s) (of {x.numel()}); every value must be "
                                 f"finite.")

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """The continuous bottom latents ``h`` (before quantisation), as ``VQModel.encode``."""
        self._check_images(x)
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def quantize_latents(self, h: torch.Tensor) -> tuple[QuantizerOutput, QuantizerOutput | None]:
        """``(bottom, top)`` quantizer outputs of the latents ``h`` (``top`` is ``None`` for one level)."""
        dim = self.quantize.vq_embed_dim
        if h.ndim != 4 or h.shape[1] != dim:
            raise ValueError(f"latents must be [batch, {dim}, height, width], got shape {tuple(h.shape)}.")
        if self.config.num_levels == 1:
            return self.quantize(h), None
        if h.shape[-1] % 2 or h.shape[-2] % 2:
            raise ValueError(f"latents of size {tuple(h.shape[-2:])} cannot be halved for the top level.")
        top = self.top_quantize(self.top_encoder(h))
        bottom = self.quantize(self.bottom_conv(torch.cat([h, self.top_decoder(top.quantized)], 1)))
        return bottom, top

    def _decode_quantized(self, bottom: torch.Tensor, top: torch.Tensor | None) -> torch.Tensor:
        if top is not None:
            bottom = torch.cat([bottom, self.upsample_top(top)], 1)
        return self.decoder(self.post_quant_conv(bottom))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True):
        """Quantise the latents ``h`` (``force_not_quantize``: take them as already quantised, one level only) and
        decode them, as ``VQModel.decode``; ``commit_loss`` is the codebook + commitment loss."""
        if force_not_quantize:
            if self.config.num_levels != 1:
                raise ValueError("force_not_quantize needs num_levels=1: use decode_codes for VQ-VAE-2's codes.")
            image, loss = self._decode_quantized(h, None), h.new_zeros(())
        else:
            bottom, top = self.quantize_latents(h)
            image = self._decode_quantized(bottom.quantized, None if top is None else top.quantized)
            loss = bottom.loss + (0 if top is None else top.loss)
        return DecoderOutput(sample=image, commit_loss=loss) if return_dict else (image, loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Reconstruct ``sample``: the training loss, the codes and their usage (:class:`HfGenVQOutput`)."""
        h = self.encode(sample).latents
        bottom, top = self.quantize_latents(h)
        image = self._decode_quantized(bottom.quantized, None if top is None else top.quantized)
        commit = bottom.loss + (0 if top is None else top.loss)
        mse = (image - sample).pow(2).mean()
        out = HfGenVQOutput(sample=image, commit_loss=commit, loss=mse + commit, reconstruction_loss=mse,
                            codes=bottom.codes, perplexity=bottom.perplexity, codebook_usage=bottom.usage)
        if top is not None:
            out.top_codes, out.top_perplexity, out.top_codebook_usage = top.codes, top.perplexity, top.usage
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> image tokens ``[batch, length]``: the top codes row by row (VQ-VAE-2), then the bottom codes
        row by row shifted past the top codebook, ids in ``[0, num_image_tokens)``."""
        bottom, top = self.quantize_latents(self.encode(images).latents)
        if top is None:
            return bottom.codes.flatten(1)
        return torch.cat([top.codes.flatten(1), bottom.codes.flatten(1) + self.top_quantize.n_e], 1)

    def token_grid(self, height: int | None = None, width: int | None = None) -> list[tuple[int, int]]:
        """``(rows, columns)`` of each level's code grid, top first, for images of ``height`` x ``width``."""
        height, width = height or self.config.sample_size, width or self.config.sample_size
        f = 2 ** (len(self.config.block_out_channels) - 1)
        if height % self.downsampling_factor or width % self.downsampling_factor:
            raise ValueError(f"Image size ({height}, {width}) is not divisible by the model's downsampling factor "
                             f"{self.downsampling_factor}.")
        grids = [(height // f, width // f)]
        return [(height // (2 * f), width // (2 * f))] + grids if self.config.num_levels == 2 else grids

    @torch.no_grad()
    def detokenize(self, tokens: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Image tokens of :meth:`tokenize` ``[batch, length]`` -> images ``[batch, out_channels, height, width]``
        (default ``sample_size``)."""
        grids = self.token_grid(height, width)
        length = sum(r * c for r, c in grids)
        if tokens.ndim != 2 or tokens.shape[1] != length or tokens.dtype not in (torch.long, torch.int):
            raise ValueError(f"tokens must be integer [batch, {length}] for grids {grids}, got "
                             f"{tuple(tokens.shape)} {tokens.dtype}.")
        top_size = self.top_quantize.n_e if self.config.num_levels == 2 else 0
        start, parts = 0, []
        ranges = [(0, top_size), (top_size, self.num_image_tokens)] if top_size else [(0, self.num_image_tokens)]
        for (rows, cols), (low, high) in zip(grids, ranges):
            part = tokens[:, start:start + rows * cols]
            if ((part < low) | (part >= high)).any():
                raise ValueError(f"tokens {start}..{start + rows * cols - 1} must lie in [{low}, {high}), got "
                                 f"values in [{int(part.min())}, {int(part.max())}].")
            parts.append((part - low).reshape(-1, rows, cols))
            start += rows * cols
        bottom = self.quantize.get_codebook_entry(parts[-1].flatten(), (*parts[-1].shape, self.quantize.vq_embed_dim))
        top = None
        if len(parts) == 2:
            top = self.top_quantize.get_codebook_entry(parts[0].flatten(), (*parts[0].shape, self.quantize.vq_embed_dim))
        return self._decode_quantized(bottom, top)


def _check_config(block_out_channels, norm_num_groups, down_block_types, up_block_types, norm_type, num_levels,
                  num_vq_embeddings, top_num_vq_embeddings, commitment_cost, dead_code_steps) -> None:
    channels = list(block_out_channels)
    if any(c % norm_num_groups for c in channels):
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every entry of block_out_channels {channels}.")
    if len(down_block_types) != len(channels) or len(up_block_types) != len(channels):
        raise ValueError(f"down_block_types and up_block_types need one entry per block_out_channels entry "
                         f"({len(channels)}), got {len(down_block_types)} and {len(up_block_types)}.")
    if norm_type != "group":
        raise ValueError(f"norm_type={norm_type!r} is not supported; valid: 'group'.")
    if num_levels not in (1, 2):
        raise ValueError(f"num_levels must be 1 (VQ-VAE) or 2 (VQ-VAE-2), got {num_levels}.")
    for name, value in (("num_vq_embeddings", num_vq_embeddings), ("top_num_vq_embeddings", top_num_vq_embeddings)):
        if value is not None and value < 2:
            raise ValueError(f"{name} must be >= 2, got {value}.")
    if commitment_cost < 0 or dead_code_steps < 0:
        raise ValueError(f"commitment_cost and dead_code_steps must be >= 0, got {commitment_cost} and "
                         f"{dead_code_steps}.")
