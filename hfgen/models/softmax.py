"""Softmax variants applied to attention scores: :data:`SOFTMAX_TABLE`, one entry per ``softmax_variant``.

Each entry holds the variant's reference formula, its fast kernel and its traits (:class:`SoftmaxVariant`). A
reference takes scores ``z`` of shape ``[..., Q, K]`` and ``allowed`` (boolean, broadcastable, or ``None`` for "all
allowed") and returns attention probabilities of the same shape: the eager kernel and the chunked paths compute
them. A fast kernel computes the attention output with ``torch.nn.functional.scaled_dot_product_attention``; the
tests hold every fast kernel to its reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention_utils import allowed_positions, query_chunk_rows, query_chunks, repeat_kv, sdpa

# Adaptive temperature (Velickovic et al. 2024, "softmax is not enough"), from seed 000's JAX snippet:
#   poly_fit = jnp.array([-0.037, 0.481, -2.3, 4.917, -1.791])  # see Figure 5
ADAPTIVE_TEMPERATURE_POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)
ADAPTIVE_TEMPERATURE_MIN_ENTROPY = 0.5  # "don't overcorrect low-entropy heads"


def _masked(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    return scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))


def standard_softmax(scores: torch.Tensor, allowed: torch.Tensor | None, config=None) -> torch.Tensor:
    """``p_i = exp(z_i) / sum_j exp(z_j)``, computed in fp32 for stability and cast back."""
    return torch.softmax(_masked(scores, allowed).float(), dim=-1).to(scores.dtype)


def temperature_softmax(scores: torch.Tensor, allowed: torch.Tensor | None, config) -> torch.Tensor:
    """Seed 000: ``p_i = exp(z_i / theta) / sum_j exp(z_j / theta)`` with ``theta = config.softmax_temperature``."""
    return standard_softmax(scores / config.softmax_temperature, allowed)


def adaptive_temperature_beta(probs: torch.Tensor) -> torch.Tensor:
    """The inverse temperature ``beta`` of seed 000's snippet, per row (``[..., Q, 1]``), in fp32.

    ``entropy = sum(-p * log(p + 1e-9))``; ``beta = max(polyval(poly_fit, entropy), 1)`` where ``entropy > 0.5``,
    else 1 ("never increase entropy", "don't overcorrect low-entropy heads").
    """
    probs = probs.float()
    return beta_from_entropy(torch.sum(-probs * torch.log(probs + 1e-9), dim=-1, keepdim=True))


def beta_from_entropy(entropy: torch.Tensor) -> torch.Tensor:
    """``beta = max(polyval(poly_fit, H), 1)`` where ``H > 0.5``, else 1 (seed 000)."""
    poly = torch.zeros_like(entropy)
    for coefficient in ADAPTIVE_TEMPERATURE_POLY:  # Horner's rule, like jnp.polyval
        poly = poly * entropy + coefficient
    return torch.where(entropy > ADAPTIVE_TEMPERATURE_MIN_ENTROPY, poly.clamp(min=1.0), torch.ones_like(entropy))


def adaptive_temperature_softmax(scores: torch.Tensor, allowed: torch.Tensor | None, config=None) -> torch.Tensor:
    """Seed 000: ``softmax(logits * beta)`` with ``beta`` from the entropy of ``softmax(logits)``.

    ``beta`` is a constant in backward (stop-gradient): it corrects the sharpness of an attention row from that
    row's own entropy, as Velickovic et al. apply it, and the gradient flows through ``logits * beta``. The fast
    path then needs no n x n tensor kept for backward, and both kernels train alike.
    """
    beta = adaptive_temperature_beta(standard_softmax(scores, allowed).detach())
    return standard_softmax(scores.float() * beta, allowed).to(scores.dtype)


def off_by_one_softmax(scores: torch.Tensor, allowed: torch.Tensor | None, config=None) -> torch.Tensor:
    """Seed 000, "Is softmax off by 1?": ``p_i = exp(z_i) / (1 + sum_j exp(z_j))``.

    Stable form: subtract ``m = max(max_j z_j, 0)`` -- the maximum includes the implicit zero logit -- so
    ``p_i = exp(z_i - m) / (exp(-m) + sum_j exp(z_j - m))``. A row may then give (almost) no attention at all.
    """
    z = _masked(scores, allowed).float()
    m = z.amax(dim=-1, keepdim=True).clamp(min=0.0)
    e = torch.exp(z - m)
    return (e / (torch.exp(-m) + e.sum(dim=-1, keepdim=True))).to(scores.dtype)


def clipped_softmax(scores: torch.Tensor, allowed: torch.Tensor | None, config) -> torch.Tensor:
    """Bondarenko et al. 2023, "Quantizable Transformers": ``clip((zeta - gamma) * softmax(z) + gamma, 0, 1)``.

    With ``gamma < 0`` a head can give exactly zero attention without pushing its logits towards -inf, which is
    what grows activation outliers. Masked positions stay exactly zero.
    """
    p = standard_softmax(scores, allowed).float()
    gamma, zeta = config.clipped_softmax_gamma, config.clipped_softmax_zeta
    p = ((zeta - gamma) * p + gamma).clamp(0.0, 1.0)
    if allowed is not None:
        p = p.masked_fill(~allowed, 0.0)
    return p.to(scores.dtype)


# ------------------------------------------------------------------------------------------------ fast kernels
# (module, query [B,H,Q,D], key / value [B,H_kv,K,D], allowed, position_bias, scaling, dropout, plain_causal) ->
# output [B,H,Q,D]. ``plain_causal``: no mask was given and the attention is causal (top-left).


def standard_sdpa(module, query, key, value, allowed, position_bias, scaling, dropout, plain_causal):
    """``softmax(scale * QK^T + bias) V``: SDPA itself."""
    return sdpa(query, key, value, allowed, position_bias, scaling, dropout, plain_causal,
                module.num_key_value_groups)


def temperature_sdpa(module, query, key, value, allowed, position_bias, scaling, dropout, plain_causal):
    """``exp(z / theta)`` with ``z = scale * q.k + bias``: SDPA with scale ``scale / theta`` and bias ``bias / theta``."""
    scaling = scaling / module.softmax_temperature
    if position_bias is not None:
        position_bias = position_bias / module.softmax_temperature
    return standard_sdpa(module, query, key, value, allowed, position_bias, scaling, dropout, plain_causal)


def off_by_one_sdpa(module, query, key, value, allowed, position_bias, scaling, dropout, plain_causal):
    """``exp(z_i) / (1 + sum_j exp(z_j))`` = standard softmax over the keys plus one extra key whose logit is
    exactly 0 (a zero key, whatever the scale) and whose value is zero (it adds nothing to the output)."""
    groups = module.num_key_value_groups
    b, h_kv, _, d = key.shape
    zeros = key.new_zeros(b, h_kv, 1, d)
    key, value = torch.cat((zeros, key), dim=2), torch.cat((zeros, value), dim=2)
    if plain_causal and position_bias is None and query.shape[2] > 1:
        # Keep SDPA's causal fast path: with one dummy query in front, "query i sees keys 0..i" covers exactly
        # the zero key plus real keys 0..i-1 of the real query i-1.
        query = torch.cat((query.new_zeros(query.shape[0], query.shape[1], 1, d), query), dim=2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling,
                                             enable_gqa=groups > 1)
        return out[:, :, 1:]
    q_len, k_len = query.shape[2], key.shape[2] - 1
    if plain_causal and q_len > 1:
        allowed = allowed_positions(None, q_len, k_len, True, query.device)
    if allowed is not None:
        allowed = F.pad(allowed, (1, 0), value=True)
    if position_bias is not None:
        position_bias = F.pad(position_bias, (1, 0), value=0.0)
    return sdpa(query, key, value, allowed, position_bias, scaling, dropout, False, groups)


def adaptive_temperature_sdpa(module, query, key, value, allowed, position_bias, scaling, dropout, plain_causal):
    """Two passes: each row's beta from its entropy (:func:`adaptive_beta`, memory O(n * chunk), never n x n),
    then SDPA on queries scaled by it: ``beta * (s q.k + b) = s (beta q).k + beta b``."""
    beta = adaptive_beta(module, query, repeat_kv(key, module.num_key_value_groups), allowed, position_bias,
                         scaling, causal=plain_causal and query.shape[2] > 1)
    if position_bias is not None:
        position_bias = position_bias * beta
    return standard_sdpa(module, query * beta.to(query.dtype), key, value, allowed, position_bias, scaling, dropout,
                         plain_causal)


def fused_entropy(query, key, allowed, scaling, causal: bool) -> torch.Tensor | None:
    """Row entropies from ONE fused attention call whose values are the keys themselves:
    ``H = logsumexp(z) - sum_j p_j z_j`` and ``sum_j p_j z_j = scale * q . (sum_j p_j k_j)``. The fused kernels
    return the log-sum-exp beside the output, so nothing of size n x n is ever built. Returns ``None`` where no
    such kernel is available (other devices, unsupported shapes): the caller then takes the chunked pass.

    Differs from the seed's ``-sum p log(p + 1e-9)`` by less than ``K * 1e-9`` nats, far below what moves beta.
    """
    cuda = query.device.type == "cuda"
    # On a CPU in fp32; on a GPU in the model's dtype (the kernels accumulate and return lse in fp32; the dot
    # product below is taken in fp32).
    q, k = (query, key) if cuda else (query.float(), key.float())
    mask = None
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    try:
        if q.device.type == "cpu":
            expected_key, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, k, 0.0, causal, attn_mask=mask, scale=scaling)
        elif cuda and mask is None and q.dtype in (torch.float16, torch.bfloat16):
            expected_key, lse = torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, k, 0.0, causal, scale=scaling)[:2]
        elif cuda:
            if mask is not None:
                mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            expected_key, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, k, mask, True, 0.0, causal, scale=scaling)[:2]
        else:
            return None
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    lse = lse[:, :, : q.shape[2]].unsqueeze(-1).float()  # some kernels pad the query dimension of lse
    return lse - scaling * (q.float() * expected_key.float()).sum(dim=-1, keepdim=True)


def chunked_entropy(module, query, key, allowed, position_bias, scaling, causal: bool) -> torch.Tensor:
    """Row entropies a chunk of query rows at a time (memory O(n * chunk)), for position biases and devices
    without a fused kernel that returns the log-sum-exp."""

    def chunk_entropy(q, k, allowed_rows, bias_rows):
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scaling
        if bias_rows is not None:
            scores = scores + bias_rows.float()
        if allowed_rows is not None:  # large but finite: exp() gives 0, and 0 times it stays 0
            scores = scores.masked_fill(~allowed_rows, -1e9)
        peak = scores.amax(dim=-1, keepdim=True)
        weights = torch.exp(scores - peak)
        total = weights.sum(dim=-1, keepdim=True)
        weighted = torch.matmul(weights.unsqueeze(-2), scores.unsqueeze(-1)).squeeze(-1)  # sum_j e_j z_j
        return torch.log(total) + peak - weighted / total

    chunk_size = query_chunk_rows(module.config, query, key.shape[2])
    entropies = [chunk_entropy(query[:, :, start:end], key[:, :, :key_end], allowed_rows, bias_rows)
                 for start, end, key_end, allowed_rows, bias_rows in query_chunks(
                     query.shape[2], key.shape[2], chunk_size, allowed, position_bias, causal, query.device)]
    return torch.cat(entropies, dim=2)


@torch.no_grad()
def adaptive_beta(module, query, key, allowed, position_bias, scaling, causal: bool) -> torch.Tensor:
    """First pass of adaptive temperature: beta per query row (``[B, H, Q, 1]``). A constant in backward, as in
    the reference (see :func:`adaptive_temperature_softmax`)."""
    entropy = None
    if position_bias is None:
        entropy = fused_entropy(query, key, allowed, scaling, causal)
    if entropy is None:
        entropy = chunked_entropy(module, query, key, allowed, position_bias, scaling, causal)
    return beta_from_entropy(entropy)


# ------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class SoftmaxVariant:
    """One ``softmax_variant``.

    Attributes:
        reference: ``(scores, allowed, config) -> probabilities``, the formula (eager kernel, chunked paths).
        fast: the SDPA kernel (signature above), or ``None`` when the variant needs the probabilities themselves:
            the ``sdpa`` implementation then runs the reference chunked over query rows (memory O(n * chunk)).
        any_backend: the variant is ``softmax(s * QK^T + mask)`` for some scale ``s`` (the temperature folded into
            it), so any registered attention backend (flash attention, user kernels) computes it.
    """

    reference: Callable[..., torch.Tensor]
    fast: Callable[..., torch.Tensor] | None = None
    any_backend: bool = False


SOFTMAX_TABLE: dict[str, SoftmaxVariant] = {
    "standard": SoftmaxVariant(standard_softmax, standard_sdpa, any_backend=True),
    "temperature": SoftmaxVariant(temperature_softmax, temperature_sdpa, any_backend=True),
    "adaptive_temperature": SoftmaxVariant(adaptive_temperature_softmax, adaptive_temperature_sdpa),
    "off_by_one": SoftmaxVariant(off_by_one_softmax, off_by_one_sdpa),
    "clipped": SoftmaxVariant(clipped_softmax),
}

# The reference formulas by name (the experiments apply them to bare scores).
SOFTMAX_FUNCTIONS = {name: variant.reference for name, variant in SOFTMAX_TABLE.items()}
