"""A DiT-style transformer denoiser (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") as a native
diffusers model, its attention being hfgen's shared layer with every scoring / softmax variant.

The image (or latent) is cut into ``patch_size x patch_size`` patches, each a token with fixed 2-D sin/cos
positions; every block is pre-norm self-attention + MLP whose LayerNorms are modulated by the conditioning vector
(timestep + class: "adaLN-Zero" -- shift, scale and a gate per branch, the gates initialised to zero so every
block starts as the identity). With ``cross_attention_dim`` a block also cross-attends to text-encoder states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .export_hfgen import HubExportMixin
from .embeddings_hfgen import ConditionEmbedding, attention_settings, make_attention
from .unet_hfgen import HfGenUNet2DOutput, check_denoiser_inputs, cross_attend, cross_attention_mask


def patch_positions(hidden_size: int, grid: int, height: int, width: int) -> torch.Tensor:
    """``[height * width, hidden_size]`` fixed 2-D sin/cos positions of the top-left ``height x width`` patches of a
    ``grid x grid`` table (Peebles & Xie): the row's ``[sin | cos]`` in the first half of the channels, the column's
    in the second, frequencies ``10000^(-i / (hidden_size / 4))``."""
    # diffusers' table (MAE's layout) gives the column the first half; the row-first table is the transposed grid's.
    table = get_2d_sincos_pos_embed(hidden_size, grid, base_size=grid).view(grid, grid, -1).transpose(0, 1)
    return table[:height, :width].reshape(height * width, -1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, settings, mlp_ratio: float, cross_attention_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = make_attention(settings)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.adaLN_modulation = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)
        self.cross_attn = None
        if cross_attention_dim is not None:
            self.norm_cross = nn.LayerNorm(hidden)
            self.context_proj = nn.Linear(cross_attention_dim, hidden)
            self.cross_attn = make_attention(settings, cross=True)

    def forward(self, x, emb, context=None, context_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(F.silu(emb)).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))[0]
        if self.cross_attn is not None and context is not None:
            x = x + cross_attend(self.cross_attn, self.norm_cross(x), self.context_proj(context), context_mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class HfGenDiTModel(HubExportMixin, ModelMixin, ConfigMixin):
    """DiT denoiser: unconditional, class-conditional (``num_class_embeds``) and/or text-conditional
    (``cross_attention_dim``). Same ``forward`` contract as :class:`HfGenUNet2DModel`, so a pipeline takes
    either. Height and width must be multiples of ``patch_size`` and at most ``sample_size`` (the position grid)."""

    @register_to_config
    def __init__(self, sample_size: int = 16, patch_size: int = 2, in_channels: int = 1, out_channels: int = 1,
                 hidden_size: int = 64, num_layers: int = 2, num_attention_heads: int = 4,
                 num_key_value_heads: int | None = None, attention_scoring: str = "scaled_dot_product",
                 softmax_variant: str = "standard", softmax_temperature: float = 1.0, attention_gate: bool = False,
                 mlp_ratio: float = 4.0, num_class_embeds: int | None = None, cross_attention_dim: int | None = None):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"sample_size ({sample_size}) must be a multiple of patch_size ({patch_size}).")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (the 2-D sin/cos patch positions give each axis "
                             f"half the channels, half sin and half cos), got {hidden_size}.")
        settings = attention_settings(self.config, hidden_size)
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.condition = ConditionEmbedding(hidden_size, hidden_size, num_class_embeds)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, settings, mlp_ratio, cross_attention_dim)
                                    for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        for layer in (self.adaLN_out, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def downsampling_factor(self) -> int:
        return self.config.patch_size

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> HfGenUNet2DOutput | tuple[torch.Tensor]:
        check_denoiser_inputs(self, sample, encoder_hidden_states, self.config.patch_size,
                              encoder_attention_mask)
        b, _, height, width = sample.shape
        p = self.config.patch_size
        if max(height, width) > self.config.sample_size:
            raise ValueError(f"Image size {(height, width)} exceeds this DiT's sample_size "
                             f"{self.config.sample_size}.")
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        emb = self.condition(timestep.to(sample.device), b, class_labels, sample.dtype)
        x = self.patch_embed(sample)  # [B, D, H/p, W/p]
        gh, gw = x.shape[-2:]
        grid = self.config.sample_size // p
        pos = patch_positions(self.config.hidden_size, grid, gh, gw).to(x.device, x.dtype)
        x = x.flatten(2).transpose(1, 2) + pos
        mask = cross_attention_mask(encoder_attention_mask)
        for block in self.blocks:
            x = block(x, emb, encoder_hidden_states, mask)
        shift, scale = self.adaLN_out(F.silu(emb)).chunk(2, dim=-1)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # [B, gh*gw, p*p*C]
        c = self.config.out_channels
        out = x.view(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)
        if not return_dict:
            return (out,)
        return HfGenUNet2DOutput(sample=out)
