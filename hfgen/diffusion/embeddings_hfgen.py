"""Pieces every hfgen denoiser shares: the conditioning embedding (diffusers' sinusoidal timestep embedding + class
label) and the bridge to hfgen's shared attention layer.

The attention of the image models is :class:`HfGenAttention` from ``hfgen/models/attention.py`` -- the same layer,
variants and kernels as the text families -- run over the ``H*W`` image tokens without a causal mask and without
1-D positions (``position_embedding="none"``: a UNet's convolutions and a DiT's 2-D patch embedding carry the
positions).
"""

from __future__ import annotations

import warnings

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from ..models.attention import HfGenAttention
from ..models.variants import ATTENTION_SCORINGS, SOFTMAX_VARIANTS, check_choice, check_positive_int


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Deprecated: diffusers' ``get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True,
    downscale_freq_shift=0, max_period=max_period)`` (``[cos | sin]``, frequencies ``max_period^(-i / (dim // 2))``,
    an odd ``dim`` padded with a zero channel), which the denoisers call themselves."""
    warnings.warn("hfgen.diffusion.timestep_embedding is deprecated: call diffusers' get_timestep_embedding(..., "
                  "flip_sin_to_cos=True, downscale_freq_shift=0) instead.", FutureWarning, stacklevel=2)
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor (one per sample), got shape {tuple(timesteps.shape)}.")
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=max_period)


class ConditionEmbedding(nn.Module):
    """``MLP(sinusoid(t)) + class_embedding(y)``: the vector every residual block / DiT block is conditioned on.

    With ``num_class_embeds`` classes the table has one extra row, index ``num_class_embeds``: the "no label" class
    that classifier-free guidance trains with (labels dropped at random) and samples with for the unconditional
    branch (Ho & Salimans 2022)."""

    def __init__(self, base_dim: int, dim: int, num_class_embeds: int | None):
        super().__init__()
        self.base_dim = base_dim
        self.linear_1 = nn.Linear(base_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)
        self.num_class_embeds = num_class_embeds
        self.class_embedding = nn.Embedding(num_class_embeds + 1, dim) if num_class_embeds else None

    def forward(self, timestep: torch.Tensor, batch: int, class_labels: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        if timestep.ndim == 0:
            timestep = timestep[None]
        timestep = timestep.expand(batch) if timestep.shape[0] == 1 else timestep
        if timestep.shape[0] != batch:
            raise ValueError(f"Got {timestep.shape[0]} timesteps for a batch of {batch} samples.")
        # A NaN or inf timestep turns the whole embedding, and so every output pixel, into NaN. (One device sync
        # per denoising step: small beside the denoiser itself.)
        if timestep.is_floating_point() and not torch.compiler.is_compiling() and not torch.isfinite(timestep).all():
            raise ValueError(f"timestep must be finite, got {timestep.tolist()[:8]}: NaN or inf would make every "
                             f"output NaN. Timesteps come from the scheduler (scheduler.timesteps).")
        # [cos | sin] with frequencies 10000^(-i / half): the layout of DDPM's reference code.
        sinusoid = get_timestep_embedding(timestep, self.base_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = self.linear_2(self.act(self.linear_1(sinusoid.to(dtype))))
        if self.class_embedding is not None:
            if class_labels is None:  # an unconditional call of a class-conditional model: the null class
                class_labels = torch.full((batch,), self.num_class_embeds, dtype=torch.long, device=emb.device)
            class_labels = class_labels.to(emb.device).long()
            if class_labels.shape != (batch,):
                raise ValueError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}.")
            if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() > self.num_class_embeds):
                raise ValueError(f"class_labels must lie in [0, {self.num_class_embeds}] ({self.num_class_embeds} "
                                 f"= no label), got {class_labels.tolist()}.")
            emb = emb + self.class_embedding(class_labels).to(dtype)
        elif class_labels is not None:
            raise ValueError("class_labels were given but this model has no class embedding (num_class_embeds=None).")
        return emb


class AttentionSettings:
    """The keys :class:`HfGenAttention` reads, taken from a denoiser's config: the same names and meaning as the
    text families' (DESIGN.md, "Public contract"). Checked here, before any weight is created."""

    def __init__(self, hidden_size: int, num_attention_heads: int, attention_scoring: str = "scaled_dot_product",
                 softmax_variant: str = "standard", softmax_temperature: float = 1.0, attention_gate: bool = False,
                 num_key_value_heads: int | None = None, attn_implementation: str = "sdpa",
                 clipped_softmax_gamma: float = -0.03, clipped_softmax_zeta: float = 1.0,
                 query_chunk_size: int = 1024):
        check_choice("attention_scoring", attention_scoring, ATTENTION_SCORINGS)
        check_choice("softmax_variant", softmax_variant, SOFTMAX_VARIANTS)
        check_positive_int("num_attention_heads", num_attention_heads)
        if hidden_size % num_attention_heads:
            raise ValueError(f"The attention width ({hidden_size} channels) must be divisible by "
                             f"num_attention_heads ({num_attention_heads}).")
        num_key_value_heads = num_key_value_heads or num_attention_heads
        if num_attention_heads % num_key_value_heads:
            raise ValueError(f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({num_key_value_heads}).")
        if softmax_variant != "temperature" and softmax_temperature != 1.0:
            raise ValueError(f"softmax_temperature={softmax_temperature} only applies with "
                             f"softmax_variant='temperature' (got {softmax_variant!r}).")
        if not softmax_temperature > 0:
            raise ValueError(f"softmax_temperature must be > 0, got {softmax_temperature}.")
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads
        self.attention_scoring = attention_scoring
        self.softmax_variant = softmax_variant
        self.softmax_temperature = float(softmax_temperature)
        self.attention_gate = attention_gate
        self.attention_bias = True
        self.attention_dropout = 0.0
        self.position_embedding = "none"
        self.clipped_softmax_gamma = clipped_softmax_gamma
        self.clipped_softmax_zeta = clipped_softmax_zeta
        self.query_chunk_size = query_chunk_size
        self._attn_implementation = attn_implementation


def attention_settings(config, hidden_size: int) -> AttentionSettings:
    """:class:`AttentionSettings` of width ``hidden_size`` from a denoiser config's attention keys."""
    return AttentionSettings(hidden_size, config.num_attention_heads, config.attention_scoring,
                             config.softmax_variant, config.softmax_temperature, config.attention_gate,
                             config.num_key_value_heads)


def make_attention(settings: AttentionSettings, cross: bool = False) -> HfGenAttention:
    """A non-causal :class:`HfGenAttention` with its variant parameters initialised the way the text families do
    (general scoring's ``W_k`` = identity, additive scoring's ``v`` ~ N(0, 0.02))."""
    attention = HfGenAttention(settings, layer_idx=0, is_causal=False, is_cross_attention=cross)
    with torch.no_grad():
        attention.scoring_entry.init_parameters(attention, 0.02)
    return attention
