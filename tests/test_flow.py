"""The normalizing flow: exact inverse, log-determinant against a brute-force Jacobian, a Gaussian's density
recovered exactly by an affine flow, bits/dim formula, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from hfgen.diffusion import HfGenFlowModel, bits_per_dim


def random_flow(**overrides):
    """A flow whose couplings are not the identity (their zero-initialised last layers redrawn)."""
    torch.manual_seed(0)
    flow = HfGenFlowModel(**{"sample_size": 4, "num_steps": 3, "hidden_channels": 8, **overrides})
    flow.train()(torch.randn(16, flow.config.in_channels, flow.config.sample_size, flow.config.sample_size))  # actnorm init
    with torch.no_grad():
        for step in flow.steps:
            step.coupling.net[-1].weight.normal_(0, 0.3)
            step.coupling.net[-1].bias.normal_(0, 0.3)
    return flow.eval()


def test_inverse_of_forward_is_the_identity():
    flow = random_flow(sample_size=8, num_steps=4).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    z, _ = flow.encode(x)
    assert not torch.allclose(z, x, atol=1e-2)
    assert torch.allclose(flow.decode(z), x, atol=1e-5, rtol=0)
    flow32 = random_flow(sample_size=8, num_steps=4)
    x32 = torch.randn(5, 1, 8, 8)
    assert torch.allclose(flow32.decode(flow32.encode(x32)[0]), x32, atol=1e-5, rtol=0)


def test_log_det_equals_the_brute_force_jacobian_determinant():
    flow = random_flow().double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)

    def f(flat):
        return flow.encode(flat.view(1, 1, 4, 4))[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(f, x.reshape(-1))  # [16, 16]
    _, log_abs_det = torch.linalg.slogdet(jacobian)
    assert torch.allclose(flow.encode(x)[1][0], log_abs_det, atol=1e-8)


def test_an_affine_flow_recovers_a_known_gaussian_density():
    """With zero couplings a flow is z = A x + b (actnorm and 1x1 mixing at fixed scale), so p(x) must equal
    N(x; -A^-1 b, (A^T A)^-1) exactly, A and b read off the flow by probing it."""
    flow = HfGenFlowModel(sample_size=2, num_steps=2, hidden_channels=4).double().eval()
    with torch.no_grad():
        for step in flow.steps:
            step.actnorm.bias.normal_(0, 0.5)
            step.actnorm.log_scale.normal_(0, 0.3)
            step.actnorm.initialized.fill_(True)
    d = 4

    def f(v):
        return flow.encode(v.view(1, 1, 2, 2))[0].reshape(-1)

    b = f(torch.zeros(d, dtype=torch.float64))
    A = torch.stack([f(torch.eye(d, dtype=torch.float64)[i]) - b for i in range(d)], dim=1)
    mean = -torch.linalg.solve(A, b)
    covariance = torch.linalg.inv(A.T @ A)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    x = gaussian.sample((7,))
    ours = flow(x.view(7, 1, 2, 2)).log_prob
    assert torch.allclose(ours, gaussian.log_prob(x), atol=1e-9)


def test_training_recovers_the_likelihood_of_a_correlated_gaussian():
    """Maximum likelihood on samples of N(mu, Sigma) reaches the true mean log-density (the negative entropy)."""
    torch.manual_seed(0)
    d = 4
    L = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [-0.5, 0.3, 0.7, 0], [0.2, -0.4, 0.1, 0.5]])
    target = torch.distributions.MultivariateNormal(torch.tensor([0.5, -1.0, 0.0, 2.0]), scale_tril=L)
    data = target.sample((512,)).view(-1, 1, 2, 2)
    flow = HfGenFlowModel(sample_size=2, num_steps=2, hidden_channels=8).train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-2)
    for _ in range(150):
        loss = flow(data).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        fitted = flow.eval()(data).log_prob.mean()
    truth = target.log_prob(data.view(-1, d)).mean()
    assert abs(float(fitted - truth)) < 0.05 * d, (float(fitted), float(truth))


def test_bits_per_dim_formula():
    # A uniform density on [-1, 1]^D is 2^-D: every one of the 256^D bins has probability 256^-D, i.e. 8 bits/dim.
    d = 10
    log_prob = torch.tensor([-d * math.log(2.0)])
    assert torch.allclose(bits_per_dim(log_prob, d), torch.tensor([8.0]))


def test_sampling_is_the_inverse_of_gaussian_latents():
    flow = random_flow()
    x = flow.sample(3, generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(flow.encode(x)[0], z, atol=1e-4)


def test_non_invertible_settings_are_refused():
    with pytest.raises(ValueError, match="sample_size must be even"):
        HfGenFlowModel(sample_size=7)
    with pytest.raises(ValueError, match="num_steps, hidden_channels and in_channels must be >= 1"):
        HfGenFlowModel(num_steps=0)
    flow = random_flow()
    with pytest.raises(ValueError, match=r"maps \[batch, 1, 4, 4\] images"):
        flow.encode(torch.randn(1, 1, 6, 6))
    with torch.no_grad():
        flow.steps[0].mixing.weight[0] = 0.0
    with pytest.raises(ValueError, match="singular"):
        flow.decode(torch.randn(1, 1, 4, 4))
