"""CLIP guidance in ``HfGenDiffusionPipeline`` (``hfgen.diffusion.clip_guidance``): the noise prediction moves by
``scale * sqrt(1 - abar_t)`` times the gradient of CLIP's logit at the predicted clean image (checked by finite
differences), that move raises CLIP's score of the step's clean-image estimate, a callback that changes nothing
leaves the samples bit-identical, and bad input is a clear error."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from hfgen.diffusion import HfGenDiffusionPipeline, HfGenUNet2DModel, HfGenVAEModel
from hfgen.diffusion.clip_guidance import ClipGuidance
from test_clip import processor_for, tiny_clip
from test_diffusion_pipeline import UNET, make_pipe, randomised

PROMPT = "a handwritten seven"


@pytest.fixture(scope="module")
def tokenizer():
    from hfgen.data.encoder_tokenizer import load_encoder_tokenizer

    return load_encoder_tokenizer()


@pytest.fixture(scope="module")
def guidance(tokenizer):
    clip = tiny_clip(tokenizer)
    return ClipGuidance(clip, processor_for(clip, tokenizer), PROMPT, scale=2.0)


def noisy_step(seed: int = 0):
    """Latents at a middle step of DDIM and a noise prediction for them."""
    scheduler = DDIMScheduler(num_train_timesteps=50)
    generator = torch.Generator().manual_seed(seed)
    return scheduler, torch.randn(2, 1, 8, 8, generator=generator), torch.tensor(20), torch.randn(
        2, 1, 8, 8, generator=generator) * 0.5


def test_noise_moves_by_the_scaled_gradient_of_the_clip_logit(guidance):
    scheduler, latents, t, noise = noisy_step()
    pipe = make_pipe(randomised(HfGenUNet2DModel(**UNET)), scheduler)
    guided = guidance(pipe, latents, t, noise)
    alpha_bar = scheduler.alphas_cumprod[t]
    x0 = ((latents - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()).clamp(-1, 1).double()
    guidance.clip_model.double()
    guidance.text_embeds = guidance.text_embeds.double()
    try:
        step = 1e-3  # (the score's cosine is taken in float32: a smaller step measures rounding)
        for index in [(0, 0, 3, 4), (1, 0, 6, 1), (0, 0, 0, 7)]:
            shifted = x0.clone()
            shifted[index] += step
            # central difference of the summed logits = d score_b / d x0[index] for the image b that holds it
            lowered = x0.clone()
            lowered[index] -= step
            with torch.no_grad():
                numeric = (guidance.score(shifted).sum() - guidance.score(lowered).sum()) / (2 * step)
            moved = (noise - guided)[index] / (guidance.scale * (1 - alpha_bar).sqrt())
            assert moved.item() == pytest.approx(numeric.item(), rel=1e-3, abs=1e-5)
    finally:
        guidance.clip_model.float()
        guidance.text_embeds = guidance.text_embeds.float()


def test_guided_noise_raises_the_clip_score_of_the_clean_estimate(tokenizer, guidance):
    scheduler, latents, t, noise = noisy_step(1)
    pipe = make_pipe(randomised(HfGenUNet2DModel(**UNET)), scheduler)
    small = ClipGuidance(guidance.clip_model, processor_for(guidance.clip_model, tokenizer), PROMPT, scale=1e-3)
    guided = small(pipe, latents, t, noise)
    alpha_bar = scheduler.alphas_cumprod[t]

    def clean(eps):
        return ((latents - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-1, 1)

    with torch.no_grad():
        before, after = guidance.score(clean(noise)), guidance.score(clean(guided))
    assert (after > before).all(), (before, after)


def test_a_callback_that_changes_nothing_leaves_the_samples_identical():
    pipe = make_pipe(randomised(HfGenUNet2DModel(**UNET)), DDIMScheduler(num_train_timesteps=50))
    seen = []

    def unchanged(pipeline, latents, t, noise_pred):
        seen.append(int(t))
        return noise_pred

    run = dict(batch_size=2, num_inference_steps=4, output_type="pt")
    plain = pipe(generator=torch.Generator().manual_seed(0), **run).images
    called = pipe(generator=torch.Generator().manual_seed(0), guidance_callback=unchanged, **run).images
    assert torch.equal(plain, called)
    assert seen == pipe.scheduler.timesteps.tolist()


def test_guided_sampling_runs_and_changes_the_samples(guidance):
    pipe = make_pipe(randomised(HfGenUNet2DModel(**UNET)), DDIMScheduler(num_train_timesteps=50))
    run = dict(batch_size=2, num_inference_steps=4, output_type="pt")
    plain = pipe(generator=torch.Generator().manual_seed(0), **run).images
    guided = pipe(generator=torch.Generator().manual_seed(0), guidance_callback=guidance, **run).images
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert not torch.allclose(plain, guided)


def test_bad_input_is_a_clear_error(tokenizer, guidance):
    clip = guidance.clip_model
    processor = processor_for(clip, tokenizer)
    for scale in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            ClipGuidance(clip, processor, PROMPT, scale=scale)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        ClipGuidance(clip, processor, [], scale=1.0)
    run = dict(batch_size=2, num_inference_steps=2, output_type="pt", guidance_callback=guidance)
    euler = make_pipe(randomised(HfGenUNet2DModel(**UNET)), EulerDiscreteScheduler(num_train_timesteps=50))
    with pytest.raises(ValueError, match="needs a noise-predicting scheduler on the DDPM scale"):
        euler(**run)
    vae = randomised(HfGenVAEModel(in_channels=1, latent_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                                   sample_size=8))
    latent = HfGenDiffusionPipeline(unet=randomised(HfGenUNet2DModel(**dict(UNET, sample_size=4))),
                                    scheduler=DDIMScheduler(num_train_timesteps=50), vae=vae)
    latent.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="needs a pipeline without a VAE"):
        latent(**run)
    three = ClipGuidance(clip, processor, ["a one", "a two", "a three"], scale=1.0)
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        make_pipe(randomised(HfGenUNet2DModel(**UNET)), DDIMScheduler(num_train_timesteps=50))(
            **dict(run, guidance_callback=three))
