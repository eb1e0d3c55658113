"""Text conditioning and latent inpainting of HfGenDiffusionPipeline, against formulas and invariants:
a caption dropped for classifier-free guidance (an all-zero text mask) is exactly "no text", guidance is
``uncond + s * (cond - uncond)`` with text too, and inpainting in a VAE's latent space keeps the known latents
(the replacement formula with the mask max-pooled to the latent grid) and the known pixels. Tiny models."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from hfgen.diffusion import HfGenDiffusionPipeline, HfGenDiTModel, HfGenUNet2DModel, HfGenVAEModel
from test_diffusion_pipeline import DIT, UNET, gen, make_pipe, randomised


def text_model(kind: str):
    torch.manual_seed(0)
    model = (HfGenUNet2DModel(**UNET, cross_attention_dim=6) if kind == "unet"
             else HfGenDiTModel(**DIT, cross_attention_dim=6))
    return randomised(model)


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_all_zero_text_mask_is_no_text_and_padding_is_ignored(kind):
    """Row 0: two text tokens and a padding token == the two tokens alone; row 1: every token masked (a caption
    dropped for guidance) == no encoder states at all, and no NaN from a softmax over nothing."""
    model = text_model(kind)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 30])
    states = torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with torch.no_grad():
        both = model(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        alone = model(x[:1], t[:1], encoder_hidden_states=states[:1, :2]).sample
        no_text = model(x[1:], t[1:]).sample
        with_text = model(x[1:], t[1:], encoder_hidden_states=states[1:]).sample
    assert torch.isfinite(both).all()
    assert torch.allclose(both[:1], alone, atol=1e-5)
    assert torch.allclose(both[1:], no_text, atol=1e-6)
    assert not torch.allclose(no_text, with_text, atol=1e-4)  # the text is used when it is there


def test_text_guidance_is_uncond_plus_scale_times_difference():
    model = text_model("unet")
    pipe = make_pipe(model)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(9)
    cond = {"encoder_hidden_states": torch.randn(2, 4, 6), "encoder_attention_mask": torch.tensor([[1, 1, 1, 1],
                                                                                                 [1, 1, 0, 0]])}
    with torch.no_grad():
        c = model(x, t, **cond).sample
        u = model(x, t).sample
        ours = pipe._predict(x, t, cond, 3.0)
    assert torch.allclose(ours, u + 3.0 * (c - u), atol=1e-5)
    assert not torch.allclose(c, u, atol=1e-4)


def test_encoder_attention_mask_of_the_wrong_shape():
    model = text_model("dit")
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"encoder_attention_mask must be \[batch, tokens\] = \[2, 3\]"):
        model(x, 1, encoder_hidden_states=torch.randn(2, 3, 6), encoder_attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="encoder_attention_mask was given without encoder_hidden_states"):
        model(x, 1, encoder_attention_mask=torch.ones(2, 4))


@pytest.fixture(scope="module")
def latent_pipe():
    torch.manual_seed(0)
    vae = randomised(HfGenVAEModel(in_channels=1, latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4,
                                   sample_size=8, scaling_factor=0.7), std=0.1)
    unet = randomised(HfGenUNet2DModel(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(8, 8),
                                       attention_levels=(False, True), num_attention_heads=2, norm_num_groups=4,
                                       num_class_embeds=3))
    return make_pipe(unet, DDPMScheduler(num_train_timesteps=50), vae=vae)


def pixel_mask():
    mask = torch.zeros(8, 8)
    mask[2:5, 3:6] = 1  # generate a 3x3 block that straddles latent cells
    return mask


def test_latent_mask_is_the_pixel_mask_max_pooled(latent_pipe):
    """A latent cell is generated iff any pixel of its 2x2 patch is: written out cell by cell."""
    inputs = latent_pipe._inpainting_inputs(torch.zeros(1, 1, 8, 8), pixel_mask(), (2, 2, 4, 4), "cpu",
                                            torch.float32)
    expected = torch.zeros(4, 4)
    for i in range(4):
        for j in range(4):
            expected[i, j] = float(pixel_mask()[2 * i:2 * i + 2, 2 * j:2 * j + 2].max())
    assert torch.equal(inputs["latent_mask"], expected.expand(2, 2, 4, 4))
    assert torch.equal(inputs["mask"], pixel_mask().expand(2, 1, 8, 8))


@pytest.mark.parametrize("scheduler", ["ddpm", "euler"])
def test_latent_inpainting_keeps_the_known_latents_and_pixels(latent_pipe, scheduler):
    latent_pipe.set_scheduler(scheduler)
    known = torch.rand(1, 1, 8, 8) * 2 - 1
    run = dict(class_labels=[0, 2], image=known, mask_image=pixel_mask(), num_inference_steps=3)
    latents = latent_pipe(generator=gen(0), output_type="latent", **run).images
    with torch.no_grad():
        known_latents = latent_pipe.vae.encode(known).latent_dist.mean * 0.7  # posterior mean * scaling_factor
    keep = latent_pipe._inpainting_inputs(known, pixel_mask(), (2, 2, 4, 4), "cpu", torch.float32)["latent_mask"] == 0
    assert 0 < keep.sum() < keep.numel()
    assert torch.allclose(latents[keep], known_latents.expand(2, 2, 4, 4)[keep], atol=1e-6)
    assert not torch.allclose(latents[~keep], known_latents.expand(2, 2, 4, 4)[~keep], atol=1e-2)
    images = latent_pipe(generator=gen(0), output_type="pt", **run).images
    keep_pixels = (pixel_mask() == 0).expand(2, 1, 8, 8)
    expected = (known / 2 + 0.5).clamp(0, 1).expand(2, 1, 8, 8)
    assert torch.allclose(images[keep_pixels], expected[keep_pixels], atol=1e-6)
    with torch.no_grad():  # the generated pixels are the decoder's, from the same latents
        decoded = (latent_pipe.vae.decode(latents / 0.7).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(images[~keep_pixels], decoded[~keep_pixels], atol=1e-5)


def test_latent_inpainting_with_an_all_ones_mask_is_plain_generation(latent_pipe):
    """DDIM with eta=0 draws no noise inside its step: generating everything is plain sampling."""
    pipe = HfGenDiffusionPipeline(unet=latent_pipe.unet, scheduler=DDIMScheduler(num_train_timesteps=50),
                                  vae=latent_pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(class_labels=[1], num_inference_steps=3, generator=gen(4), output_type="pt").images
    full = pipe(class_labels=[1], image=torch.zeros(1, 1, 8, 8), mask_image=torch.ones(8, 8), num_inference_steps=3,
                generator=gen(4), output_type="pt").images
    assert torch.equal(plain, full)


def test_latent_inpainting_checks_the_image_in_pixel_space(latent_pipe):
    with pytest.raises(ValueError, match=r"mask_image must have shape \[1 or 1, 1, 8, 8\]"):
        latent_pipe(class_labels=[0], image=torch.zeros(1, 1, 8, 8), mask_image=torch.ones(4, 4),
                    num_inference_steps=1)
    with pytest.raises(ValueError, match=r"image must have shape \[1 or 1, 1, 8, 8\]"):
        latent_pipe(class_labels=[0], image=torch.zeros(1, 2, 4, 4), mask_image=torch.ones(8, 8),
                    num_inference_steps=1)
