"""Softmax variants applied to attention scores.

Every function takes scores ``z`` of shape ``[..., Q, K]`` and ``allowed`` (boolean, broadcastable, or ``None``
for "all allowed") and returns attention probabilities of the same shape. They are the reference definitions used
by the eager kernel and by the chunked fast paths; the SDPA fast paths are tested against them.
"""

from __future__ import annotations

import torch

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


SOFTMAX_FUNCTIONS = {
    "standard": standard_softmax,
    "temperature": temperature_softmax,
    "adaptive_temperature": adaptive_temperature_softmax,
    "off_by_one": off_by_one_softmax,
    "clipped": clipped_softmax,
}
