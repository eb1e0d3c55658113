"""The VQ-VAE / VQ-VAE-2 (``HfGenVQModel``) against the formulas of the VQ-VAE paper written out here, against
diffusers' own ``VQModel`` with the same weights, and its prior over image tokens (hfgen decoder)."""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
from diffusers import VQModel
from diffusers.models.autoencoders.vae import VectorQuantizer
from transformers import LogitsProcessorList

from hfgen.diffusion.vq_hfgen import HfGenVectorQuantizer, HfGenVQModel
from hfgen.models import HfGenDecoderForCausalLM
from hfgen.training.vqvae import (
    CodebookRangeProcessor,
    codebook_bounds,
    prior_config,
    prior_sequences,
    sample_images,
)
from test_diffusion_recipes import classifier_dir, load_recipe  # noqa: F401  (a fixture)

TINY = dict(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, num_vq_embeddings=16, sample_size=8)


def model(levels: int = 1, **kwargs) -> HfGenVQModel:
    torch.manual_seed(0)
    return HfGenVQModel(**{**TINY, "num_levels": levels, **kwargs})


def test_quantizer_picks_the_nearest_code():
    torch.manual_seed(0)
    quantizer = HfGenVectorQuantizer(32, 3, beta=0.25, dead_code_steps=0)
    quantizer.embedding.weight.data.normal_()
    z = torch.randn(2, 3, 5, 4)
    out = quantizer(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    squared = ((vectors[:, None, :] - quantizer.embedding.weight[None]) ** 2).sum(-1)
    assert torch.equal(out.codes.flatten(), squared.argmin(1))
    nearest = quantizer.embedding.weight[squared.argmin(1)].reshape(2, 5, 4, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.quantized, nearest)


def test_straight_through_gradient_is_the_identity():
    torch.manual_seed(0)
    quantizer = HfGenVectorQuantizer(8, 3, beta=0.25, dead_code_steps=0)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4)
    (quantizer(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


def test_codebook_and_commitment_loss_formula():
    """VQ-VAE: ||sg[z] - e||^2 + beta ||z - sg[e]||^2 (means over elements): same value and same gradients for the
    encoder output (beta term only) and the codebook (first term only)."""
    torch.manual_seed(0)
    beta = 0.3
    quantizer = HfGenVectorQuantizer(8, 3, beta=beta, dead_code_steps=0)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = quantizer(z)
    out.loss.backward()
    grad_z, grad_e = z.grad.clone(), quantizer.embedding.weight.grad.clone()
    z.grad = None
    quantizer.embedding.weight.grad = None
    e = quantizer.embedding.weight[out.codes].permute(0, 3, 1, 2)
    expected = ((z.detach() - e) ** 2).mean() + beta * ((z - e.detach()) ** 2).mean()
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(grad_z, z.grad)
    torch.testing.assert_close(grad_e, quantizer.embedding.weight.grad)


def test_perplexity_is_exp_of_the_code_usage_entropy():
    torch.manual_seed(0)
    quantizer = HfGenVectorQuantizer(16, 2, beta=0.25, dead_code_steps=0)
    quantizer.embedding.weight.data.normal_()
    out = quantizer(torch.randn(4, 2, 6, 6))
    counts = torch.bincount(out.codes.flatten(), minlength=16).double()
    shares = [c / counts.sum() for c in counts.tolist() if c > 0]
    entropy = -sum(p * math.log(p) for p in shares)
    assert out.perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-5)
    assert out.usage.item() == pytest.approx(len(shares) / 16)


def test_dead_codes_restart_at_encoder_outputs():
    torch.manual_seed(0)
    steps = 3
    quantizer = HfGenVectorQuantizer(8, 2, beta=0.25, dead_code_steps=steps).train()
    quantizer.embedding.weight.data[:4] = torch.randn(4, 2) * 0.1
    quantizer.embedding.weight.data[4:] = 100.0  # never the nearest code of a standard normal vector
    before = quantizer.embedding.weight.detach().clone()
    z = torch.randn(2, 2, 4, 4)
    for _ in range(steps - 1):
        quantizer(z)
    assert torch.equal(quantizer.embedding.weight, before), "restarted before dead_code_steps"
    counts = torch.bincount(quantizer(z).codes.flatten(), minlength=8)
    after = quantizer.embedding.weight.detach()
    used = counts > 0
    assert torch.equal(after[used], before[used])
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for row in after[4:]:
        assert (vectors == row).all(1).any(), "a restarted code is not one of the encoder outputs"
    assert (quantizer.unused_steps[4:] == 0).all()
    quantizer.eval()(z)  # no restarts outside training
    assert torch.equal(quantizer.embedding.weight, after)


def test_same_weights_as_diffusers_vqmodel_give_the_same_codes_and_images():
    ours = model(dead_code_steps=0).eval()
    with torch.no_grad():
        ours.quantize.embedding.weight.normal_()
    keys = inspect.signature(VQModel.__init__).parameters
    theirs = VQModel(**{k: v for k, v in ours.config.items() if k in keys}).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert missing == [] and unexpected == ["quantize.unused_steps"]
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        h = ours.encode(x).latents
        assert torch.equal(h, theirs.encode(x).latents)
        _, their_loss, (_, _, their_codes) = theirs.quantize(h)
        assert torch.equal(ours(x).codes.flatten(), their_codes)
        assert torch.equal(ours.decode(h).sample, theirs.decode(h).sample)
        paper = VectorQuantizer(16, 4, beta=0.25, legacy=False)
        paper.embedding.weight.copy_(ours.quantize.embedding.weight)
        assert torch.equal(ours.decode(h).commit_loss, paper(h)[1])


@pytest.mark.parametrize("levels", [1, 2])
def test_tokens_round_trip_and_forward_outputs(levels):
    vq = model(levels).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        out = vq(x)
    tokens = vq.tokenize(x)
    grids = vq.token_grid()
    assert tokens.shape == (3, sum(r * c for r, c in grids)) and 0 <= tokens.min() and tokens.max() < vq.num_image_tokens
    # the straight-through value z + (e - z) equals the code vector e up to float rounding
    torch.testing.assert_close(vq.detokenize(tokens), out.sample)
    assert torch.equal(tokens[:, -16:] - (16 if levels == 2 else 0), out.codes.flatten(1))
    assert out.loss == out.reconstruction_loss + out.commit_loss
    torch.testing.assert_close(out.reconstruction_loss, ((out.sample - x) ** 2).mean())
    if levels == 2:
        assert out.top_codes.shape == (3, 2, 2) and torch.equal(tokens[:, :4], out.top_codes.flatten(1))


@pytest.mark.parametrize("levels", [1, 2])
def test_save_load_identical(tmp_path, levels):
    vq = model(levels).train()
    vq(torch.randn(4, 1, 8, 8))  # advance the unused-step counters
    vq.eval().save_pretrained(tmp_path)
    loaded = HfGenVQModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(vq(x).sample, loaded(x).sample)
    for key, value in vq.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("levels", [1, 2])
def test_prior_samples_decode_to_images(levels):
    vq = model(levels).eval()
    config = prior_config(vq, num_classes=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    prior = HfGenDecoderForCausalLM(config)
    images = sample_images(prior, vq, 5, labels=torch.arange(5), seed=0)
    assert images.shape == (5, 1, 8, 8) and torch.isfinite(images).all()
    # every sampled position stays in its level's codebook, whatever the prior prefers: push the logits towards
    # the start tokens and the other level's codes
    with torch.no_grad():
        prior.lm_head.weight.zero_()
        prior.lm_head.weight[vq.num_image_tokens:] = 1.0
        prior.model.norm.weight.fill_(1.0)
    bounds = codebook_bounds(vq)
    prompt = prior_sequences(vq, torch.zeros(4, 0, dtype=torch.long), torch.arange(4))
    out = prior.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                         max_new_tokens=len(bounds), logits_processor=LogitsProcessorList([CodebookRangeProcessor(bounds)]),
                         pad_token_id=vq.num_image_tokens)[:, 1:]
    assert ((out >= bounds[:, 0]) & (out < bounds[:, 1])).all()
    assert vq.detokenize(out).shape == (4, 1, 8, 8)


def test_bad_input():
    vq = model(2)
    with pytest.raises(ValueError, match=r"sample must be \[batch, 1"):
        vq(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="not divisible by the model's downsampling factor 4"):
        vq(torch.randn(2, 1, 6, 6))
    bad = torch.randn(2, 1, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or inf"):
        vq.encode(bad)
    with pytest.raises(ValueError, match=r"tokens must be integer \[batch, 20\]"):
        vq.detokenize(torch.zeros(2, 16, dtype=torch.long))
    tokens = torch.zeros(2, 20, dtype=torch.long)
    with pytest.raises(ValueError, match=r"tokens 4..19 must lie in \[16, 32\)"):
        vq.detokenize(tokens)
    with pytest.raises(ValueError, match="force_not_quantize needs num_levels=1"):
        vq.decode(torch.randn(1, 4, 4, 4), force_not_quantize=True)
    for key, value, message in [("num_levels", 3, "num_levels must be 1"), ("num_vq_embeddings", 1, ">= 2"),
                                ("norm_type", "spatial", "valid: 'group'"), ("dead_code_steps", -1, ">= 0"),
                                ("norm_num_groups", 3, "must divide")]:
        with pytest.raises(ValueError, match=message):
            HfGenVQModel(**{**TINY, key: value})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_images(HfGenDecoderForCausalLM(prior_config(vq, hidden_size=16, num_hidden_layers=1,
                                                           num_attention_heads=2)), vq, 1, temperature=0)


def test_recipe_few_steps(tmp_path, classifier_dir):  # noqa: F811  (the imported fixture)
    """Both stages of recipes/train_vqvae.py (VQ-VAE-2, class-conditional prior) in a few steps: saved models load
    through the Auto classes and the prior's samples are measured on the image generators' table."""
    from diffusers import AutoModel
    from transformers import AutoModelForCausalLM

    metrics = load_recipe("train_vqvae").main(
        ["--output_dir", str(tmp_path), "--max_train_steps", "3", "--prior_steps", "3", "--num_eval_samples", "12",
         "--train_batch_size", "16", "--classifier", classifier_dir, "--num_levels", "2", "--class_conditional",
         "--block_out_channels", "8", "16", "--latent_channels", "4", "--num_vq_embeddings", "16",
         "--prior_hidden_size", "16", "--prior_layers", "1"])
    assert metrics["model"] == "vqvae2_prior" and metrics["num_samples"] == 12
    assert {"fd", "conditional_accuracy", "perplexity", "top_perplexity", "prior_loss_per_token"} <= set(metrics)
    assert {"samples.png", "reconstructions.png", "metrics.md", "vqvae", "prior"} <= set(os.listdir(tmp_path))
    vq = AutoModel.from_pretrained(str(tmp_path / "vqvae"), trust_remote_code=True)
    prior = AutoModelForCausalLM.from_pretrained(tmp_path / "prior")
    assert prior.config.vocab_size == vq.num_image_tokens + 10


def test_image_tokens_round_trip_into_the_vlm_vocabulary(tmp_path):
    """Early fusion with VQ codes as words: the processor writes each image's codes (shifted past the text
    vocabulary) where the plain VLM processor writes its placeholders, the text ids stay as they were, the codes read
    back from the ids decode to the VQ-VAE's reconstruction, and the decoder over text + image tokens trains on the
    batch and never generates an image token."""
    from hfgen.data.captions import CAPTION_PROMPT, VlmCollator, vlm_examples, vlm_processor, vlm_tokenizer
    from hfgen.models import HfGenDecoderConfig
    from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
    from hfgen.models.configuration_hfgen_vlm import HfGenVlmConfig
    from hfgen.training.vqvae import ImageTokenCollator, ImageTokenProcessor, image_token_decoder

    vq = model(1).eval()
    tokenizer = vlm_tokenizer()
    text = HfGenDecoderConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, pad_token_id=tokenizer.pad_token_id)
    config = HfGenVlmConfig(text_config=text, vision_config=HfGenViTConfig(image_size=8, patch_size=2, hidden_size=16,
                                                                         intermediate_size=32, num_attention_heads=2),
                            fusion="early", image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    plain = vlm_processor(config, tokenizer)
    processor = ImageTokenProcessor(plain, vq, config.image_token_id, len(tokenizer))
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    prompts = [CAPTION_PROMPT, "<image> question: is it even? answer:", CAPTION_PROMPT]
    reference = plain(images=list(images), text=prompts, padding=True)
    inputs = processor(images=list(images), text=prompts, padding=True)
    assert "pixel_values" not in inputs
    slots = reference["input_ids"] == config.image_token_id
    assert torch.equal(inputs["input_ids"][~slots], reference["input_ids"][~slots])
    codes = inputs["input_ids"][slots].reshape(3, -1) - len(tokenizer)
    torch.testing.assert_close(vq.detokenize(codes), vq(reference["pixel_values"]).sample)

    decoder = image_token_decoder(text, vq)
    batch = ImageTokenCollator(VlmCollator(plain), processor)(vlm_examples(images, torch.tensor([1, 2, 3]))[:4])
    assert (batch["labels"][batch["input_ids"] >= len(tokenizer)] == -100).all()
    decoder(**batch).loss.backward()
    with torch.no_grad():
        decoder.lm_head.weight[len(tokenizer):] += 100.0  # make image tokens the likeliest: still never generated
    out = decoder.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert (out[:, inputs["input_ids"].shape[1]:] < len(tokenizer)).all()
    with pytest.raises(ValueError, match="image placeholders, but the images have"):
        ImageTokenProcessor(plain, model(2).eval(), config.image_token_id, len(tokenizer))(
            images=list(images[:1]), text=[CAPTION_PROMPT])


def test_vlm_recipe_with_image_tokens(tmp_path):
    """recipes/train_vlm.py --vqvae: early fusion with the codes as words trains beside patch early fusion; a folder
    that is not there fails before any training."""
    model(1, latent_channels=8).save_pretrained(tmp_path / "vq")
    flags = ["--output_dir", str(tmp_path / "vlm"), "--fusions", "early", "--lm_steps", "2", "--bridge_steps", "1",
             "--eval_images", "4", "--per_device_train_batch_size", "4"]
    with pytest.raises(ValueError, match="--vqvae"):
        load_recipe("train_vlm").main(flags + ["--vqvae", str(tmp_path / "missing")])
    assert not (tmp_path / "vlm").exists()
    results = load_recipe("train_vlm").main(flags + ["--vqvae", str(tmp_path / "vq")])
    assert {"early", "early_vq"} <= set(results) and results["early_vq"]["train_steps"] == 3
    assert {"caption_accuracy", "question_accuracy"} <= set(results["early_vq"])
    assert (tmp_path / "vlm" / "early_vq" / "config.json").exists()


def test_gato_image_tokens(tmp_path):
    """Gato with image_vocab_size: the codes are words after the placeholder (image modality by default, never
    generated); recipes/train_gato.py --vqvae feeds the images as codes, without pixel_values."""
    from hfgen.models.configuration_hfgen_gato import MODALITIES, HfGenGatoConfig
    from hfgen.models.modeling_hfgen_gato import HfGenGatoForCausalLM

    small = dict(text_vocab_size=50, num_bins=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2)
    config = HfGenGatoConfig(**small, image_vocab_size=16)
    assert config.vocab_size == HfGenGatoConfig(**small).vocab_size + 16 == config.first_image_code_id + 16
    gato = HfGenGatoForCausalLM(config).eval()
    ids = torch.tensor([[3, config.first_bin_id, config.first_image_code_id, config.vocab_size - 1]])
    assert gato.default_modality_ids(ids).tolist() == [[0, 2, 1, 1]] and MODALITIES[1] == "image"
    with torch.no_grad():
        gato.lm_head.weight[config.first_image_code_id:] += 100.0
    out = gato.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert (out[:, ids.shape[1]:] < config.image_token_id).all()
    with pytest.raises(ValueError, match="image_vocab_size must be an int >= 0"):
        HfGenGatoConfig(**small, image_vocab_size=-1)

    model(1, latent_channels=8).save_pretrained(tmp_path / "vq")
    results = load_recipe("train_gato").main(["--output_dir", str(tmp_path / "gato"), "--max_steps", "2",
                                              "--expert_episodes", "10", "--eval_episodes", "1", "--eval_images", "4",
                                              "--eval_text_blocks", "4", "--vqvae", str(tmp_path / "vq")])
    assert results["identical_logits_after_reload"] and 0 <= results["caption_accuracy"] <= 1
    saved = HfGenGatoConfig.from_pretrained(tmp_path / "gato" / "model")
    assert saved.image_vocab_size == 16


def test_recipe_on_an_image_folder(tmp_path):
    """recipes/train_vqvae.py on the user's images (datasets' imagefolder, --train_data_dir), class-conditional
    prior with the folder's labels."""
    from image_folders import digit_image_folder

    digit_image_folder(tmp_path / "images", count=40)
    metrics = load_recipe("train_vqvae").main(
        ["--output_dir", str(tmp_path / "out"), "--train_data_dir", str(tmp_path / "images"), "--max_train_steps", "2",
         "--prior_steps", "2", "--num_eval_samples", "0", "--train_batch_size", "8", "--class_conditional",
         "--block_out_channels", "8", "16", "--num_vq_embeddings", "16", "--prior_hidden_size", "16",
         "--prior_layers", "1"])
    assert 0 < metrics["reconstruction_mse"] and metrics["prior_loss_per_token"] > 0
    prior = HfGenDecoderForCausalLM.from_pretrained(tmp_path / "out" / "prior")
    vq = HfGenVQModel.from_pretrained(tmp_path / "out" / "vqvae")
    assert prior.config.vocab_size == vq.num_image_tokens + 10
