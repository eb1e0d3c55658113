"""VAE: the ELBO terms against torch.distributions, reparameterisation gradients, prior sampling, interpolation
end points, learning lowers the negative ELBO, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hfgen.diffusion import HfGenVAEModel

TINY = dict(latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4, sample_size=8)


def test_elbo_terms_match_torch_distributions():
    torch.manual_seed(0)
    vae = HfGenVAEModel(**TINY).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    out = vae(x, generator=torch.Generator().manual_seed(1))
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=torch.Generator().manual_seed(1))
    q = Normal(posterior.mean, posterior.std)
    expected_kl = kl_divergence(q, Normal(torch.zeros_like(z), torch.ones_like(z))).flatten(1).sum(1)
    mean = vae.decode(z).sample
    expected_rec = Normal(mean, vae.config.decoder_std).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(out.kl, expected_kl, atol=1e-4)
    assert torch.allclose(out.reconstruction, expected_rec, atol=1e-3)
    assert torch.allclose(out.elbo, expected_rec - expected_kl, atol=1e-3)
    assert torch.allclose(out.loss, -(expected_rec - expected_kl).mean() / 64, atol=1e-5)


def test_gradients_flow_through_the_reparameterised_sample():
    vae = HfGenVAEModel(**TINY)
    vae(torch.rand(2, 1, 8, 8)).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.encoder.parameters())


def test_prior_samples_and_interpolation():
    vae = HfGenVAEModel(**TINY).eval()
    samples = vae.sample_prior(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 8, 8)
    a, b = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    path = vae.interpolate(a, b, steps=5)
    ends = vae.decode(vae.encode(torch.stack([a, b])).latent_dist.mean).sample
    assert path.shape == (5, 1, 8, 8)
    assert torch.allclose(path[0], ends[0], atol=1e-5) and torch.allclose(path[-1], ends[1], atol=1e-5)


def test_training_raises_the_elbo_on_digits():
    from hfgen.data.images import load_images

    data = load_images("digits").train_images[:256]
    torch.manual_seed(0)
    vae = HfGenVAEModel(**TINY)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = None
    for step in range(40):
        loss = vae(data[(step * 32) % 256:(step * 32) % 256 + 32]).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = vae.eval()(data[:64], sample_posterior=False).loss.item()
    assert final < 0.5 * first, (first, final)


def test_bad_input():
    vae = HfGenVAEModel(**TINY)
    with pytest.raises(ValueError, match=r"x must be \[batch, 1, height, width\]"):
        vae.encode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="not divisible by the VAE's downsampling factor 2"):
        vae.encode(torch.rand(1, 1, 7, 7))
    with pytest.raises(ValueError, match=r"z must be \[batch, 2, height, width\]"):
        vae.decode(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="decoder_std must be > 0"):
        HfGenVAEModel(**TINY, decoder_std=0.0)
