"""Norms and feed-forward blocks, chosen by config (``norm_type``, ``mlp_type``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class HfGenRMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019) as Llama computes it: in fp32, then scaled in the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # torch's fused kernel: the same numbers as the formula below in fp32 (no rounding step between the
            # normalisation and the weight), in fewer passes over memory.
            return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)
        hidden_states = hidden_states.float()
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class HfGenLayerNorm(nn.LayerNorm):
    """Seed 003: "subtracting the mean and dividing by the standard deviation of the inputs for each sample"."""


def residual(hidden_states: torch.Tensor, norm: nn.Module, pre_norm: bool, sublayer) -> torch.Tensor:
    """One residual connection around ``sublayer``: ``x + f(norm(x))`` normalised before (``pre``: Llama, ViT) or
    ``norm(x + f(x))`` after (``post``: the original Transformer, BERT)."""
    if pre_norm:
        return hidden_states + sublayer(norm(hidden_states))
    return norm(hidden_states + sublayer(hidden_states))


def build_norm(config) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return HfGenRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    return HfGenLayerNorm(config.hidden_size, eps=config.rms_norm_eps)


class HfGenMLP(nn.Module):
    """Position-wise feed-forward block. ``gated``: ``down(act(gate(x)) * up(x))`` (SwiGLU with silu, Llama's
    names); ``standard``: ``down(act(up(x)))`` (the original Transformer's two-layer MLP)."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.gated = config.mlp_type == "gated"
        if self.gated:
            self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act_fn(self.up_proj(x)))
