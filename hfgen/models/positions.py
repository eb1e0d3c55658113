"""Position information: absolute embeddings added to the input, rotary embeddings applied to queries and keys,
and additive attention biases (T5 relative buckets, ALiBi).

Seed 003: "Because attention layers don't understand order by default, we encode the ordering of the tokens in an
embedding": absolute (sinusoidal, learned), relative, rotary.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_position_embedding(position_ids: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Vaswani et al. 2017: ``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(pos / 10000^(2i/d))``.

    Computed from ``position_ids`` on the fly (no buffer, so nothing to go stale after ``from_pretrained``), so
    left-padded batches get the same positions as the rows alone.
    """
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32) / dim))
    angles = position_ids.float().unsqueeze(-1) * inv_freq  # [B, S, dim/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2).to(dtype)  # interleave sin, cos


def default_rope_inv_freq(config, device=None) -> torch.Tensor:
    """RoFormer / Llama inverse frequencies ``1 / theta^(2i/d)`` for the rotated channel pairs."""
    # No rope_parameters: rotary was switched on after the config was built (e.g. from_pretrained(..., kwargs)).
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    dim = config.head_dim
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), laid out exactly as Llama's (``rotate_half``), so that Llama
    checkpoints give the same logits. Returns ``(cos, signed_sin)`` of shape ``[B, 1, S, head_dim]`` for
    ``position_ids``, ready for ``apply_rotary`` (computed once per forward, used by every layer).

    ``inv_freq`` is a non-persistent buffer: ``_init_weights`` recomputes it because transformers 5 builds models on
    the meta device, where such buffers would otherwise hold garbage after ``from_pretrained``.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device=None) -> torch.Tensor:
        return default_rope_inv_freq(self.config, device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        positions = position_ids[:, None, :].float()
        with torch.autocast(device_type=x.device.type if x.device.type != "mps" else "cpu", enabled=False):
            freqs = (inv_freq.to(x.device) @ positions).transpose(1, 2).unsqueeze(1)  # [B, 1, S, D/2]
            cos, sin = freqs.cos(), freqs.sin()
            cos, signed_sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return cos.to(x.dtype), signed_sin.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[B, H, S, D]``) by the angles of its positions, in Llama's half-split layout:
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``. The sign lives in
    ``signed_sin = cat(-sin, sin)`` and the swap is one ``roll``, so each layer runs fewer ops; the products are
    the same numbers (negation is exact)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's buckets (Raffel et al. 2020): exact buckets for small distances, logarithmic ones up to
    ``max_distance``, one shared bucket beyond. ``relative_position = key_position - query_position``."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)  # only the past is visible
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_bucket = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    log_bucket = torch.clamp(log_bucket, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, log_bucket)


def relative_positions(q_len: int, k_len: int, q_offset: int, device) -> torch.Tensor:
    """``key_slot - query_slot`` for every pair (``[Q, K]``). Slots are cache indices: left padding shifts both
    equally, so distances between real tokens are those of the unpadded row."""
    query_slots = torch.arange(q_offset, q_offset + q_len, device=device)
    key_slots = torch.arange(k_len, device=device)
    return key_slots[None, :] - query_slots[:, None]


class RelativePositionBias(nn.Module):
    """A learned scalar bias per head and relative-distance bucket, added to the attention scores (T5)."""

    def __init__(self, config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_attention_heads)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        """Bias of shape ``[1, H, Q, K]``."""
        relative = relative_positions(q_len, k_len, q_offset, self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Press et al. 2022: the geometric sequence ``2^(-8h/n)``; for a head count that is not a power of two,
    the slopes of the closest power of two plus every other slope of the next one."""
    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes)


class AlibiBias(nn.Module):
    """ALiBi: ``-slope_h * distance`` added to the scores; no parameters, so nothing to go stale on reload."""

    def __init__(self, config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_heads = config.num_attention_heads

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, device=None) -> torch.Tensor:
        relative = relative_positions(q_len, k_len, q_offset, device).float()
        distance = relative.abs() if self.bidirectional else (-relative).clamp(min=0)
        slopes = alibi_slopes(self.num_heads).to(device)
        return (-slopes[:, None, None] * distance).unsqueeze(0)
