"""Diffusion denoisers and HfGenDiffusionPipeline: against diffusers' own pipelines and formulas, and invariants
(seeded determinism across schedulers, guidance scale 1 = conditional, inpainting keeps the known pixels,
padded text = text alone, save -> load identical). Tiny models: 8x8 images, 8-16 channels, a few steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)

from hfgen.diffusion import HfGenDiffusionPipeline, HfGenDiTModel, HfGenUNet2DModel, HfGenVAEModel, timestep_embedding
from hfgen.diffusion.embeddings_hfgen import ConditionEmbedding
from hfgen.diffusion.transformer_hfgen import patch_positions

UNET = dict(sample_size=8, block_out_channels=(8, 16), num_attention_heads=2, norm_num_groups=4)
DIT = dict(sample_size=8, patch_size=2, hidden_size=16, num_layers=1, num_attention_heads=2)
SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver_multistep": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}


def randomised(model, seed: int = 0, std: float = 0.2):
    """Every parameter redrawn: DiT's zero-initialised gates would otherwise make the output ignore its inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


def make_pipe(unet, scheduler=None, **components):
    pipe = HfGenDiffusionPipeline(unet=unet, scheduler=scheduler or DDPMScheduler(num_train_timesteps=50),
                                  **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ddpm_sinusoid(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's timestep embedding written out: ``[cos(t w_i) | sin(t w_i)]``, ``w_i = 10000^(-i / half)``, an odd
    width padded with a zero channel."""
    half = dim // 2
    expected = torch.zeros(len(timesteps), dim)
    for row, step in enumerate(timesteps.tolist()):
        for i in range(half):
            w = 10000.0 ** (-i / half)
            expected[row, i] = math.cos(step * w)
            expected[row, half + i] = math.sin(step * w)
    return expected


@pytest.mark.parametrize("dim", [10, 11])
def test_condition_embedding_embeds_the_timestep_as_ddpm(dim):
    """The denoisers' conditioning (diffusers' get_timestep_embedding as configured there) is the MLP of DDPM's
    sinusoid."""
    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 3.5])
    condition = ConditionEmbedding(dim, 8, num_class_embeds=None)
    with torch.no_grad():
        expected = condition.linear_2(condition.act(condition.linear_1(ddpm_sinusoid(t, dim))))
        assert torch.allclose(condition(t, len(t), None, torch.float32), expected, atol=1e-5)


def test_timestep_embedding_is_a_deprecated_alias_of_the_formula():
    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 3.5])
    with pytest.warns(FutureWarning, match="get_timestep_embedding"):
        assert torch.allclose(timestep_embedding(t, 11), ddpm_sinusoid(t, 11), atol=1e-5)
    with pytest.raises(ValueError, match="timesteps must be a 1-D tensor"), pytest.warns(FutureWarning):
        timestep_embedding(t[None], 10)


def test_dit_patch_positions_are_the_2d_sincos_formula():
    """Row-major patches of a crop of the table: the row's ``[sin | cos]`` (frequencies ``10000^(-i / (dim/4))``)
    in the first half of the channels, the column's in the second (Peebles & Xie)."""
    dim, grid, height, width = 16, 4, 3, 2
    quarter = dim // 4
    expected = torch.zeros(height * width, dim)
    for r in range(height):
        for c in range(width):
            for i in range(quarter):
                w = 10000.0 ** (-i / quarter)
                row = [math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)]
                for k, value in enumerate(row):
                    expected[r * width + c, k * quarter + i] = value
    assert torch.allclose(patch_positions(dim, grid, height, width).float(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="hidden_size must be divisible by 4"):
        HfGenDiTModel(**{**DIT, "hidden_size": 18})


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_pipeline_loop_equals_diffusers_own_pipeline(name):
    """Same UNet2DModel, same scheduler, same generator: our pipeline and diffusers' DDIM/DDPM pipeline agree."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=4).eval()
    scheduler = SCHEDULERS[name](num_train_timesteps=50)
    reference_pipe = (DDIMPipeline if name == "ddim" else DDPMPipeline)(unet=unet, scheduler=scheduler)
    reference_pipe.set_progress_bar_config(disable=True)
    kwargs = {"eta": 0.0, "use_clipped_model_output": True} if name == "ddim" else {}
    reference = reference_pipe(batch_size=2, num_inference_steps=4, generator=gen(3), output_type="np",
                               **kwargs).images
    ours = make_pipe(unet, SCHEDULERS[name](num_train_timesteps=50))(
        batch_size=2, num_inference_steps=4, generator=gen(3), output_type="np").images
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    if name == "ddim":  # diffusers' default step, without the re-derived noise
        reference = reference_pipe(batch_size=2, num_inference_steps=4, generator=gen(3), output_type="np",
                                   eta=0.0).images
        ours = make_pipe(unet, SCHEDULERS[name](num_train_timesteps=50))(
            batch_size=2, num_inference_steps=4, generator=gen(3), output_type="np",
            use_clipped_model_output=False).images
        np.testing.assert_allclose(ours, reference, atol=1e-6)


@pytest.fixture(scope="module")
def class_unet():
    torch.manual_seed(0)
    return randomised(HfGenUNet2DModel(**UNET, num_class_embeds=3))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_swapped_scheduler_is_seeded_and_keeps_the_schedule(class_unet, name):
    pipe = make_pipe(class_unet, DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2"))
    pipe.set_scheduler(name)
    assert type(pipe.scheduler) is SCHEDULERS[name]
    assert pipe.scheduler.config.num_train_timesteps == 50
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    run = dict(class_labels=[0, 2], num_inference_steps=3, output_type="np")
    a = pipe(generator=gen(1), **run).images
    b = pipe(generator=gen(1), **run).images
    c = pipe(generator=gen(2), **run).images
    assert a.shape == (2, 8, 8, 1) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # from_config by hand is the same swap
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)
    assert np.array_equal(pipe(generator=gen(1), **run).images, a)


def test_guidance_scale_one_equals_the_conditional_prediction(class_unet):
    pipe = make_pipe(class_unet)
    run = dict(class_labels=[1, 2], num_inference_steps=3, output_type="pt")
    plain = pipe(generator=gen(0), **run).images
    guided = pipe(generator=gen(0), guidance_scale=1.0, **run).images
    assert torch.allclose(plain, guided, atol=1e-5)
    strong = pipe(generator=gen(0), guidance_scale=4.0, **run).images
    assert not torch.allclose(plain, strong, atol=1e-3)


def test_guidance_is_uncond_plus_scale_times_difference(class_unet):
    """One denoising call of the pipeline against the formula written with two plain model calls."""
    pipe = make_pipe(class_unet)
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor(7), torch.tensor([0, 1])
    with torch.no_grad():
        cond = class_unet(x, t, class_labels=labels).sample
        uncond = class_unet(x, t, class_labels=torch.tensor([3, 3])).sample  # row 3 = "no label"
        ours = pipe._predict(x, t, {"class_labels": labels}, 2.5)
    assert torch.allclose(ours, uncond + 2.5 * (cond - uncond), atol=1e-5)


def guided_ddim_by_hand(unet, labels, scale, steps, seed, use_clipped_model_output):
    """The guided DDIM loop written out with two plain model calls and diffusers' own ``DDIMScheduler.step``."""
    scheduler = DDIMScheduler(num_train_timesteps=50)  # clip_sample=True, the default
    scheduler.set_timesteps(steps)
    generator = gen(seed)
    x = torch.randn((len(labels), 1, 8, 8), generator=generator)
    null = torch.full((len(labels),), unet.config.num_class_embeds)
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond = unet(x, t, class_labels=torch.tensor(labels)).sample
            uncond = unet(x, t, class_labels=null).sample
            x = scheduler.step(uncond + scale * (cond - uncond), t, x, eta=0.0, generator=generator,
                               use_clipped_model_output=use_clipped_model_output).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def test_guided_ddim_rederives_the_noise_from_the_clipped_x0(class_unet):
    """DDIM's step gets use_clipped_model_output=True (GLIDE: the noise re-derived from the clipped x_0) unless it
    is switched off; with guidance the two differ (the extrapolated noise gets x_0 clipped)."""
    pipe = make_pipe(class_unet, DDIMScheduler(num_train_timesteps=50))
    run = dict(class_labels=[0, 2], num_inference_steps=3, output_type="pt")
    guided = pipe(generator=gen(4), guidance_scale=4.0, **run).images
    assert torch.allclose(guided, guided_ddim_by_hand(class_unet, [0, 2], 4.0, 3, 4, True), atol=1e-5)
    plain_step = pipe(generator=gen(4), guidance_scale=4.0, use_clipped_model_output=False, **run).images
    assert torch.allclose(plain_step, guided_ddim_by_hand(class_unet, [0, 2], 4.0, 3, 4, False), atol=1e-5)
    assert not torch.allclose(guided, plain_step, atol=1e-3)  # the weights are large enough for x_0 to be clipped
    with pytest.raises(ValueError, match="use_clipped_model_output=True needs a scheduler whose step takes it"):
        make_pipe(class_unet, EulerDiscreteScheduler(num_train_timesteps=50))(
            use_clipped_model_output=True, **run)


def test_inpainting_keeps_the_known_pixels_and_an_all_ones_mask_changes_nothing(class_unet):
    known = torch.rand(1, 1, 8, 8) * 2 - 1
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1  # generate the centre
    for name in ("ddpm", "euler"):
        pipe = make_pipe(class_unet)
        pipe.set_scheduler(name)
        out = pipe(class_labels=[0, 1], image=known, mask_image=mask, num_inference_steps=3, generator=gen(0),
                   output_type="pt").images
        expected = (known / 2 + 0.5).clamp(0, 1).expand(2, 1, 8, 8)
        keep = (mask == 0).expand(2, 1, 8, 8)
        assert torch.allclose(out[keep], expected[keep], atol=1e-6), name
        assert not torch.allclose(out[~keep], expected[~keep], atol=1e-2), name
    # DDIM with eta=0 draws no noise inside step: an all-ones mask is exactly plain generation.
    pipe = make_pipe(class_unet, DDIMScheduler(num_train_timesteps=50))
    plain = pipe(class_labels=[0], num_inference_steps=3, generator=gen(4), output_type="pt").images
    full = pipe(class_labels=[0], image=known, mask_image=torch.ones(8, 8), num_inference_steps=3,
                generator=gen(4), output_type="pt").images
    assert torch.equal(plain, full)


@pytest.mark.parametrize("denoiser", ["unet", "dit"])
def test_text_conditioning_padded_prompt_equals_prompt_alone(denoiser):
    torch.manual_seed(0)
    model = (HfGenUNet2DModel(**UNET, cross_attention_dim=6) if denoiser == "unet"
             else HfGenDiTModel(**DIT, cross_attention_dim=6))
    model = randomised(model)
    pipe = make_pipe(model)
    states = torch.randn(1, 3, 6)
    padded = torch.cat([states, torch.randn(1, 2, 6)], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    run = dict(num_inference_steps=2, output_type="pt", guidance_scale=2.0)
    alone = pipe(prompt_embeds=states, generator=gen(0), **run).images
    with_padding = pipe(prompt_embeds=padded, prompt_attention_mask=mask, generator=gen(0), **run).images
    assert torch.allclose(alone, with_padding, atol=1e-5)
    other = pipe(prompt_embeds=torch.randn(1, 3, 6), generator=gen(0), **run).images
    assert not torch.allclose(alone, other, atol=1e-3)
    one = pipe(prompt_embeds=states, generator=gen(0), num_inference_steps=2, output_type="pt").images
    assert torch.allclose(one, pipe(prompt_embeds=states, generator=gen(0), num_inference_steps=2,
                                    output_type="pt", guidance_scale=1.0).images, atol=1e-5)


def test_prompt_through_the_hfgen_encoder():
    """Text conditioning on hfgen encoder states: a prompt gives what its encoded states give."""
    from conftest import load_hfgen_tokenizer
    from hfgen import HfGenEncoderConfig, HfGenEncoderModel

    tokenizer = load_hfgen_tokenizer()
    torch.manual_seed(0)
    encoder = HfGenEncoderModel(HfGenEncoderConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   pad_token_id=tokenizer.pad_token_id)).eval()
    unet = randomised(HfGenUNet2DModel(**UNET, cross_attention_dim=16))
    pipe = make_pipe(unet, text_encoder=encoder, tokenizer=tokenizer)
    out = pipe(prompt=["a seven", "zero"], num_inference_steps=2, generator=gen(0), output_type="pt").images
    states, mask = pipe.encode_prompt(["a seven", "zero"], "cpu")
    direct = pipe(prompt_embeds=states, prompt_attention_mask=mask, num_inference_steps=2, generator=gen(0),
                  output_type="pt").images
    assert out.shape == (2, 1, 8, 8) and torch.equal(out, direct)


@pytest.mark.parametrize("variant", [dict(softmax_variant="off_by_one"), dict(attention_scoring="general"),
                                     dict(softmax_variant="adaptive_temperature"), dict(attention_gate=True)])
def test_attention_variants_reach_the_denoisers(variant):
    """The same weights with another softmax / scoring variant give another prediction (the variant is used)."""
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 9])
    for cls, cfg in ((HfGenUNet2DModel, UNET), (HfGenDiTModel, DIT)):
        base = randomised(cls(**cfg))
        other = cls(**cfg, **variant).eval()
        missing, _ = other.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            for name in missing:  # variant-only parameters (gates): random too
                other.get_parameter(name).normal_(0, 0.5)
            assert not torch.allclose(base(x, t).sample, other(x, t).sample, atol=1e-4), (cls.__name__, variant)


def test_dit_unconditional_and_class_conditional_forms():
    model = randomised(HfGenDiTModel(**DIT, num_class_embeds=10))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        a = model(x, 5, class_labels=torch.tensor([1, 2, 3])).sample
        b = model(x, 5).sample  # null class
    assert a.shape == x.shape and not torch.allclose(a, b)
    out = make_pipe(model)(class_labels=[4, 5], guidance_scale=3.0, num_inference_steps=2, generator=gen(0))
    assert len(out.images) == 2 and out.images[0].size == (8, 8) and out.images[0].mode == "L"


def test_latent_pipeline_with_the_vae():
    vae = HfGenVAEModel(in_channels=1, latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4,
                        sample_size=8).eval()
    unet = randomised(HfGenUNet2DModel(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(8, 8),
                                       attention_levels=(False, True), num_attention_heads=2, norm_num_groups=4))
    pipe = make_pipe(unet, vae=vae)
    out = pipe(batch_size=2, num_inference_steps=2, generator=gen(0), output_type="pt").images
    latents = pipe(batch_size=2, num_inference_steps=2, generator=gen(0), output_type="latent").images
    assert out.shape == (2, 1, 8, 8) and latents.shape == (2, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(out, (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("denoiser", ["unet", "dit"])
def test_save_and_reload_gives_identical_images(tmp_path, denoiser):
    model = randomised(HfGenUNet2DModel(**UNET, num_class_embeds=3) if denoiser == "unet"
                       else HfGenDiTModel(**DIT, num_class_embeds=3, softmax_variant="off_by_one"))
    pipe = make_pipe(model, DDIMScheduler(num_train_timesteps=50))
    run = dict(class_labels=[0, 1], guidance_scale=2.0, num_inference_steps=3, output_type="np")
    before = pipe(generator=gen(0), **run).images
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "HfGenDiffusionPipeline" and type(loaded.scheduler) is DDIMScheduler
    assert np.array_equal(before, loaded(generator=gen(0), **run).images)


# ------------------------------------------------------------------------------------------------ bad input
def test_image_size_not_divisible_by_the_downsampling_factor(class_unet):
    with pytest.raises(ValueError, match="not divisible by the model's downsampling factor 2"):
        class_unet(torch.randn(1, 1, 7, 8), 3)
    with pytest.raises(ValueError, match=r"not divisible by the denoiser's downsampling factor"):
        make_pipe(class_unet)(class_labels=[0], height=10, width=9, num_inference_steps=1)


def test_channel_mismatch_between_components():
    unet = HfGenUNet2DModel(**UNET)
    vae = HfGenVAEModel(latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4, sample_size=8)
    with pytest.raises(ValueError, match="Channel mismatch: the VAE's latents have 4 channels but the denoiser takes 1"):
        make_pipe(unet, vae=vae)
    with pytest.raises(ValueError, match="Channel mismatch"):
        make_pipe(HfGenUNet2DModel(**{**UNET, "out_channels": 2}))
    with pytest.raises(ValueError, match=r"sample must be \[batch, 1, height, width\]"):
        unet(torch.randn(1, 3, 8, 8), 1)


def test_unknown_scheduler(class_unet):
    pipe = make_pipe(class_unet)
    with pytest.raises(ValueError, match="Unknown scheduler 'plms'; valid choices are: ddpm, ddim"):
        pipe.set_scheduler("plms")
    assert type(pipe.scheduler) is DDPMScheduler
    with pytest.raises(ValueError, match="must be a diffusers scheduler"):
        HfGenDiffusionPipeline(unet=class_unet, scheduler="ddim")


def test_guidance_scale_without_a_conditional_model_or_condition(class_unet):
    with pytest.raises(ValueError, match="guidance_scale needs a conditional model and a condition"):
        make_pipe(HfGenUNet2DModel(**UNET))(guidance_scale=3.0, num_inference_steps=1)
    with pytest.raises(ValueError, match="guidance_scale needs a conditional model and a condition"):
        make_pipe(class_unet)(guidance_scale=3.0, num_inference_steps=1)
    with pytest.raises(ValueError, match="not class-conditional"):
        make_pipe(HfGenUNet2DModel(**UNET))(class_labels=[1], num_inference_steps=1)
    with pytest.raises(ValueError, match="no cross-attention"):
        make_pipe(class_unet)(prompt_embeds=torch.randn(1, 2, 4), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\]"):
        class_unet(torch.randn(1, 1, 8, 8), 1, class_labels=torch.tensor([7]))


def test_inpainting_mask_of_the_wrong_shape(class_unet):
    pipe = make_pipe(class_unet)
    image = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"mask_image must have shape \[1 or 1, 1, 8, 8\]"):
        pipe(class_labels=[0], image=image, mask_image=torch.ones(4, 4), num_inference_steps=1)
    with pytest.raises(ValueError, match="only 0 .keep the pixel. and 1"):
        pipe(class_labels=[0], image=image, mask_image=torch.full((8, 8), 0.5), num_inference_steps=1)
    with pytest.raises(ValueError, match="needs both image and mask_image"):
        pipe(class_labels=[0], image=image, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"image must have shape"):
        pipe(class_labels=[0], image=torch.zeros(1, 3, 8, 8), mask_image=torch.ones(8, 8), num_inference_steps=1)


def test_bad_configs_and_arguments():
    with pytest.raises(ValueError, match="Unknown softmax_variant='sparse'; valid choices"):
        HfGenUNet2DModel(**UNET, softmax_variant="sparse")
    with pytest.raises(ValueError, match="attention_levels"):
        HfGenUNet2DModel(**{**UNET, "attention_levels": (True,)})
    with pytest.raises(ValueError, match="must be a multiple of patch_size"):
        HfGenDiTModel(**{**DIT, "sample_size": 9})
    pipe = make_pipe(HfGenUNet2DModel(**UNET))
    with pytest.raises(ValueError, match="Unknown output_type 'jpg'; valid choices"):
        pipe(output_type="jpg", num_inference_steps=1)


def test_same_weights_as_diffusers_unet2d_give_the_same_noise_prediction():
    """The UNet is diffusers' UNet2DModel architecture: converted weights give the same outputs."""
    torch.manual_seed(0)
    reference = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                            attention_head_dim=8).eval()
    randomised(reference)
    ours = HfGenUNet2DModel.from_unet2d(reference).eval()
    assert ours.config.num_attention_heads == 2
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 250, 999])
    with torch.no_grad():
        assert torch.allclose(ours(x, t).sample, reference(x, t).sample, atol=1e-4, rtol=1e-4)
        variant = HfGenUNet2DModel.from_unet2d(reference, softmax_variant="off_by_one").eval()
        assert not torch.allclose(variant(x, t).sample, reference(x, t).sample, atol=1e-4)
