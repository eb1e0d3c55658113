"""PPO's loss pieces (hfgen.training.ppo_core) against values worked out by hand and against the formulas written
out as plain scalar loops."""

from __future__ import annotations

import math

import pytest
import torch

from hfgen.training.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    entropy_from_logits,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)


def _gae_by_recursion(rewards: list[float], values: list[float], length: int, gamma: float, lam: float):
    """Schulman et al. 2016 for one episode of ``length`` steps, as the textbook recursion over Python floats."""
    advantages = [0.0] * len(rewards)
    next_advantage, next_value = 0.0, 0.0
    for t in reversed(range(length)):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    returns = [a + v if t < length else 0.0 for t, (a, v) in enumerate(zip(advantages, values))]
    return advantages, returns


def test_gae_hand_computed():
    # gamma = lambda = 1: A_t = (sum of rewards from t) - V_t = 1 - V_t.
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    advantages, returns = compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.8, 0.9]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 1.0]]))
    # lambda = 0: A_t is the one-step TD error r_t + gamma V_{t+1} - V_t.
    advantages, _ = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.9 * 0.2 - 0.5, 0.9 * 0.1 - 0.2, 1.0 - 0.1]]))


def test_gae_matches_plain_recursion_with_episode_ends():
    generator = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 7, generator=generator), torch.randn(4, 7, generator=generator)
    lengths = [7, 3, 1, 5]
    mask = torch.tensor([[1.0] * n + [0.0] * (7 - n) for n in lengths])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.95, lam=0.9)
    for row, length in enumerate(lengths):
        expected_adv, expected_ret = _gae_by_recursion(rewards[row].tolist(), values[row].tolist(), length, 0.95,
                                                       0.9)
        torch.testing.assert_close(advantages[row], torch.tensor(expected_adv), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(returns[row], torch.tensor(expected_ret), rtol=1e-5, atol=1e-6)


def test_clipped_policy_loss_hand_computed():
    # ratios 1.5, 0.5, 0.5, 1.5 with advantages +1, +1, -1, -1 and eps = 0.2:
    # per-token losses -min(rA, clip(r)A): -1.2, -0.5, 0.8, 1.5; clipped term wins in the 1st and 3rd.
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = policy_loss(new, old, advantages, torch.ones(1, 4), cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)
    # A masked token does not count.
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, _ = policy_loss(new, old, advantages, mask, cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3)


def test_clipped_policy_loss_gradient_vanishes_outside_the_trust_region():
    advantages = torch.tensor([[1.0, -1.0]])
    new = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()  # r > 1 + eps with A > 0; r < 1 - eps with A < 0
    loss, _ = policy_loss(new, torch.zeros(1, 2), advantages, torch.ones(1, 2), cliprange=0.2)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.zeros(1, 2))


def test_clipped_value_loss_hand_computed():
    # V=2, V_old=1, R=0, c=0.2: clipped V = 1.2, errors 4 and 1.44 -> 4.
    # V=1.1, V_old=1, R=3: inside the clip range, both errors 3.61.
    values, old, returns = torch.tensor([[2.0, 1.1]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (4.0 + 1.9**2) / 2)
    assert stats["vf_clipfrac"].item() == 0.0
    # V=0.5, V_old=1, R=0: clipped V = 0.8 has the larger error 0.64 > 0.25.
    loss, stats = value_loss(torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.ones(1, 1),
                             0.2)
    assert loss.item() == pytest.approx(0.5 * 0.64) and stats["vf_clipfrac"].item() == 1.0


def test_kl_estimators_hand_computed_and_unbiased():
    # p = 0.5, q = 0.25 for the sampled token: k1 = log 2, k3 = (0.5 - 1) - log 0.5.
    logp, logq = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, logq, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, logq, "k3").item() == pytest.approx(-0.5 + math.log(2))
    # Both are unbiased: their expectation under p (an exact sum over the support) is KL(p || q).
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    for estimator in ("k1", "k3"):
        expectation = float((p * kl_estimate(p.log(), q.log(), estimator)).sum())
        assert expectation == pytest.approx(exact, rel=1e-12)
    assert (kl_estimate(p.log(), q.log(), "k3") >= 0).all()  # k3 is never negative, k1 is
    assert (kl_estimate(p.log(), q.log(), "k1") < 0).any()
    with pytest.raises(ValueError, match="valid choices: k1, k3"):
        kl_estimate(p, q, "k2")


def test_kl_controllers_hand_computed():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=9.0, n_steps=10)  # error clipped to +0.2: beta * (1 + 0.2 * 10 / 100)
    assert controller.value == pytest.approx(0.102)
    controller.update(current_kl=5.4, n_steps=50)  # error 5.4/6 - 1 = -0.1: beta * (1 - 0.1 * 50 / 100)
    assert controller.value == pytest.approx(0.102 * 0.95)
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 10)
    assert fixed.value == 0.3


def test_masked_mean_and_whiten_equal_statistics_of_the_kept_entries():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, generator=generator)
    mask = (torch.rand(3, 5, generator=generator) > 0.3).float()
    kept = x[mask.bool()]
    assert masked_mean(x, mask).item() == pytest.approx(kept.mean().item(), rel=1e-6)
    whitened = masked_whiten(x, mask)
    torch.testing.assert_close(whitened[mask.bool()], (kept - kept.mean()) / kept.std(), rtol=1e-5, atol=1e-5)
    assert (whitened[~mask.bool()] == 0).all()
    unshifted = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(unshifted[mask.bool()], (kept - kept.mean()) / kept.std() + kept.mean(), rtol=1e-5,
                               atol=1e-5)


def test_logprobs_and_entropy_follow_their_definitions():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    tokens = torch.tensor([[2, 0]])
    probs = torch.softmax(logits / 2.0, -1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, temperature=2.0),
                               torch.log(torch.stack([probs[0, 0, 2], probs[0, 1, 0]]))[None])
    torch.testing.assert_close(entropy_from_logits(logits)[0, 1], torch.tensor(math.log(3.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trl_backed_logprobs_and_entropy_equal_the_plain_formulas(dtype):
    """ppo_core's log-probs and entropy come from TRL's utilities; they equal the plain fp32 formulas they replaced
    (``log_softmax -> gather`` and ``-sum p log p`` of ``logits / T``), on batches larger than TRL's entropy chunk."""
    logits = (torch.randn(3, 70, 50, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    tokens = torch.randint(0, 50, (3, 70), generator=torch.Generator().manual_seed(1))
    for temperature in (1.0, 0.7):
        log_p = (logits.float() / temperature).log_softmax(-1)
        logprobs = logprobs_from_logits(logits, tokens, temperature)
        assert logprobs.dtype == torch.float32
        torch.testing.assert_close(logprobs, log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), rtol=0, atol=2e-6)
        assert torch.equal(entropy_from_logits(logits, temperature), -(log_p.exp() * log_p).sum(-1))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, tokens, 0.0)
