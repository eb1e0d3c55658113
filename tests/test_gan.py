"""DCGAN: shapes, the non-saturating loss against its formula, spectral norm bounding each layer, the R1 penalty
against a hand-computed gradient, one Accelerate training step of both networks, bad input."""

from __future__ import annotations

import pytest
import torch

from hfgen.diffusion import (
    HfGenGANDiscriminator,
    HfGenGANGenerator,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)


def test_shapes_and_range():
    for size in (8, 16):
        g = HfGenGANGenerator(latent_dim=8, image_size=size, base_channels=8).eval()
        d = HfGenGANDiscriminator(image_size=size, base_channels=8).eval()
        images = g.sample(3, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 1, size, size) and images.abs().max() <= 1
        assert d(images).shape == (3,)


def test_losses_match_the_formulas():
    real, fake = torch.randn(6), torch.randn(6)
    sig = torch.sigmoid
    expected_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert torch.allclose(discriminator_loss(real, fake), expected_d, atol=1e-6)
    assert torch.allclose(generator_loss(fake), -torch.log(sig(fake)).mean(), atol=1e-6)
    # non-saturating: when D confidently rejects the fakes, the generator's gradient stays large
    logits = torch.tensor([-8.0], requires_grad=True)
    generator_loss(logits).backward()
    saturating = torch.tensor([-8.0], requires_grad=True)
    torch.log(1 - torch.sigmoid(saturating)).mean().backward()
    assert abs(logits.grad.item()) > 100 * abs(saturating.grad.item())


def test_spectral_norm_bounds_every_layer():
    d = HfGenGANDiscriminator(image_size=8, base_channels=8).train()
    for _ in range(30):  # power iterations converge while training
        d(torch.randn(4, 1, 8, 8))
    for module in d.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            sigma = torch.linalg.matrix_norm(module.weight.detach().flatten(1), ord=2)
            assert sigma < 1.05, sigma


def test_r1_penalty_is_the_squared_input_gradient():
    d = HfGenGANDiscriminator(image_size=8, base_channels=8, spectral_norm=False).eval()
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    grads = [torch.autograd.grad(d(x[i:i + 1]).sum(), x)[0][i] for i in range(3)]
    expected = torch.stack([g.pow(2).sum() for g in grads]).mean()
    assert torch.allclose(r1_penalty(d, x), expected, atol=1e-6)


def test_one_accelerate_step_updates_both_networks():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    g = HfGenGANGenerator(latent_dim=8, image_size=8, base_channels=8)
    d = HfGenGANDiscriminator(image_size=8, base_channels=8)
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    g, d, opt_g, opt_d = accelerator.prepare(g, d, opt_g, opt_d)
    before_g = [p.detach().clone() for p in g.parameters()]
    before_d = [p.detach().clone() for p in d.parameters()]
    real = torch.rand(4, 1, 8, 8) * 2 - 1
    fake = g(torch.randn(4, 8))
    loss_d = discriminator_loss(d(real), d(fake.detach()))
    opt_d.zero_grad()
    accelerator.backward(loss_d)
    opt_d.step()
    loss_g = generator_loss(d(fake))
    opt_g.zero_grad()
    accelerator.backward(loss_g)
    opt_g.step()
    assert any(not torch.equal(a, b) for a, b in zip(before_g, g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, d.parameters()))


def test_bad_input():
    with pytest.raises(ValueError, match="image_size must be a power of 2 >= 8"):
        HfGenGANGenerator(image_size=12)
    g = HfGenGANGenerator(latent_dim=8, image_size=8, base_channels=8)
    with pytest.raises(ValueError, match=r"latents must be \[batch, 8\]"):
        g(torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"images must be \[batch, 1, 8, 8\]"):
        HfGenGANDiscriminator(image_size=8, base_channels=8)(torch.randn(2, 1, 16, 16))
