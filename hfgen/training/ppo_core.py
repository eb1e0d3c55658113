"""The arithmetic of PPO for language models, on plain tensors: masked statistics, whitening, generalised advantage
estimation, the clipped policy and value losses, KL estimators and KL-coefficient controllers.

Sources (seed 001: "Feedback Tuning ... rankings (rewards) are used to prioritize how the model generates
responses ... PPO = proximal policy optimization"):
  - Schulman et al. 2017, "Proximal Policy Optimization Algorithms": ``L^CLIP = E[min(r A, clip(r, 1-eps, 1+eps) A)]``
    with ``r = pi(a|s) / pi_old(a|s)``.
  - Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE":
    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``, ``A_t = delta_t + gamma lambda A_{t+1}``.
  - Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences": reward ``R = r - beta KL`` and the
    adaptive controller ``beta <- beta (1 + K_beta e_t)``, ``e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)``.
  - Schulman 2020, "Approximating KL Divergence": ``k1 = log p/q``, ``k3 = (q/p - 1) - log(q/p)`` for samples
    from p.

Every function takes a ``mask`` (1 on real response tokens, 0 on padding after the end); masked positions never
contribute. Shapes: ``[batch, response length]`` unless stated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from trl.trainer.utils import entropy_from_logits as trl_entropy_from_logits
from trl.trainer.utils import selective_log_softmax

KL_ESTIMATORS = ("k1", "k3")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


# Sums a tensor over the processes that share a batch (each holding some of its rows); None: this process alone.
Total = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                total: Total | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 (over all of them, or along ``dim``); with ``total``, over
    those of every process (``dim`` None only)."""
    if total is not None:
        return total(masked_sum(values, mask)) / total(mask.sum()).clamp(min=1)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               total: Total | None = None) -> torch.Tensor:
    """Variance over the masked positions (of every process, with ``total``), with Bessel's correction by
    default."""
    mean = masked_mean(values, mask, total=total)
    variance = masked_mean((values - mean) ** 2, mask, total=total)
    count = mask.sum() if total is None else total(mask.sum())
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8, total: Total | None = None) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked positions (the mean is added back when not
    ``shift_mean``); masked-out positions are returned as 0. With ``total``, the mean and variance are those of
    every process's positions together: the whole batch's, as one process computes them."""
    mean, variance = masked_mean(values, mask, total=total), masked_var(values, mask, total=total)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` and ``A_t = delta_t + gamma lambda A_{t+1}``, with ``V`` and ``A``
    zero after the last real token of each row (the episode ends there). Returns ``(advantages, returns)`` with
    ``returns = advantages + values``; both are 0 on masked positions.
    """
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[-1]
    advantages_reversed = []
    next_advantage = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(length)):
        next_value = values[..., t + 1] if t + 1 < length else torch.zeros_like(values[..., t])
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[..., t]
        advantages_reversed.append(next_advantage)
    advantages = torch.stack(advantages_reversed[::-1], dim=-1)
    return advantages, (advantages + values) * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    ``k1 = log pi - log pi_ref`` (unbiased, can be negative); ``k3 = (rho - 1) - log rho`` with
    ``rho = pi_ref / pi`` (unbiased and never negative, lower variance when the two are close).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}; valid choices: {', '.join(KL_ESTIMATORS)}.")
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio  # (rho - 1) - log(rho), rho = exp(-log_ratio)


def _token_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | float | None) -> torch.Tensor:
    return masked_mean(values, mask) if count is None else masked_sum(values, mask) / count


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float, count: torch.Tensor | float | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate as a loss to minimise: ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))``. The mean is
    over the masked tokens, or their sum divided by ``count`` (data parallel: the batch's tokens over the number of
    processes, so that averaging the processes' gradients gives the whole batch's token mean).

    Returns the loss and statistics: ``clipfrac`` (share of tokens where the clipped term won) and ``approxkl``
    (``0.5 mean((log r)^2)``, the old-vs-new policy distance).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = _token_mean(torch.maximum(unclipped, clipped), mask, count)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
             "approxkl": 0.5 * masked_mean(log_ratio**2, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float, count: torch.Tensor | float | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))`` (the mean as in
    :func:`policy_loss`).

    Returns the loss and ``vf_clipfrac`` (share of tokens where the clipped error was the larger).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(unclipped_error, clipped_error), mask, count)
    return loss, {"vf_clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask)}


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[token]`` for each position: the log-probability under the sampling
    distribution that produced ``tokens``, in fp32 (TRL's ``selective_log_softmax``)."""
    return selective_log_softmax(logits.float(), tokens, temperature)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``-sum_v p_v log p_v`` per position of ``softmax(logits / temperature)``, in fp32 (TRL's
    ``entropy_from_logits``)."""
    return trl_entropy_from_logits(logits.float() / temperature)


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``beta <- beta (1 + e n / horizon)`` after each batch of ``n`` episodes."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not target > 0 or not horizon > 0:
            raise ValueError(f"kl_target and kl_horizon must be > 0, got {target} and {horizon}.")
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
