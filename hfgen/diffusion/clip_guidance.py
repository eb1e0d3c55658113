"""CLIP guidance for :class:`HfGenDiffusionPipeline` (seed 002: CLIP-guided diffusion): at every step the noise
prediction is pushed so that the image the step is heading for matches a caption in a contrastive image-text
model's space (``hfgen_clip``, or any model with ``CLIPModel``'s ``get_image_features`` / ``get_text_features``).

Classifier guidance (Dhariwal & Nichol 2021) replaces the noise prediction by
``eps - sqrt(1 - abar_t) * grad_{x_t} log p(y | x_t)``. A CLIP trained on clean images cannot score the noisy
``x_t``, so it scores the denoiser's estimate of the clean image, ``x0 = (x_t - sqrt(1 - abar_t) eps) /
sqrt(abar_t)`` (clamped to the image range), with ``log p(y | x)`` taken as CLIP's logit
``exp(logit_scale) * cos(image(x), text(y))``, and its gradient is taken with respect to ``x0``:

    eps <- eps - scale * sqrt(1 - abar_t) * grad_{x0} exp(logit_scale) cos(image(x0), text(prompt))

(the chain rule through ``x0(x_t)`` would add a factor ``1 / sqrt(abar_t)``, which reaches hundreds at the
noisiest steps of a cosine schedule and throws the samples out of range; leaving it out weights the guidance
towards the late steps, where the estimate of ``x0`` is sharp.)

    pipe(batch_size=4, guidance_callback=ClipGuidance(clip, processor, "a handwritten seven", scale=3.0))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ClipGuidance:
    """The ``guidance_callback`` of :class:`HfGenDiffusionPipeline`: ``(pipe, latents, t, noise_pred) ->
    noise_pred``.

    Args:
        clip_model: an :class:`HfGenClipModel` (or transformers' ``CLIPModel``) whose image tower takes the
            pipeline's images (same size and channels, pixels in [-1, 1]).
        processor: its processor (only the tokenizer part is used, for ``prompt``).
        prompt: one caption for every image, or one per image.
        scale: the guidance strength (> 0).
    """

    def __init__(self, clip_model, processor, prompt: str | list[str], scale: float):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f"prompt must be a non-empty string or a list of them, got {prompt!r}.")
        self.clip_model = clip_model.eval()
        self.scale = float(scale)
        with torch.no_grad():
            text = clip_model.get_text_features(**processor(text=prompts).to(clip_model.device)).pooler_output
        self.text_embeds = F.normalize(text.float(), dim=-1)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's logit of each image against its prompt: ``exp(logit_scale) * cos`` (``[B]``)."""
        if self.text_embeds.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"{self.text_embeds.shape[0]} prompts for {images.shape[0]} images: give one prompt, or "
                             f"one per image.")
        features = self.clip_model.get_image_features(pixel_values=images).pooler_output
        cosine = (F.normalize(features.float(), dim=-1) * self.text_embeds.to(features.device)).sum(-1)
        scale = self.clip_model.logit_scale.exp().clamp(max=getattr(self.clip_model.config, "max_logit_scale", 100.0))
        return scale * cosine

    def __call__(self, pipe, latents: torch.Tensor, t, noise_pred: torch.Tensor) -> torch.Tensor:
        scheduler = pipe.scheduler
        if pipe.vae is not None:
            raise ValueError("CLIP guidance scores pixels: it needs a pipeline without a VAE.")
        if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon" or \
                getattr(scheduler, "alphas_cumprod", None) is None or scheduler.init_noise_sigma != 1.0:
            raise ValueError(f"CLIP guidance needs a noise-predicting scheduler on the DDPM scale (DDPM, DDIM); got "
                             f"{type(scheduler).__name__}. Use pipe.set_scheduler('ddim').")
        alpha_bar = scheduler.alphas_cumprod.to(latents.device)[t].to(latents.dtype)
        noise_scale = (1 - alpha_bar).sqrt()
        with torch.enable_grad():
            x0 = ((latents - noise_scale * noise_pred) / alpha_bar.sqrt()).clamp(-1, 1).detach().requires_grad_()
            gradient = torch.autograd.grad(self.score(x0).sum(), x0)[0]
        return noise_pred - self.scale * noise_scale * gradient.to(noise_pred.dtype)


@torch.no_grad()
def guided_digit_accuracy(pipe, classifier, clip_model, processor, scales, samples_per_digit: int = 20,
                          num_inference_steps: int = 25, seed: int = 0) -> dict[str, float]:
    """Prompted-digit accuracy of CLIP-guided samples: for each ``scale`` (``None``: no guidance),
    ``samples_per_digit`` images per digit prompted with its caption ("a handwritten seven"), the share that the
    measuring ``classifier`` (an :class:`HfGenDigitClassifier`, trained apart from CLIP) labels as that digit.
    Every scale samples from the same seeded noise. A text-conditional pipeline (with a ``text_encoder``) also gets
    the caption as its prompt; an unconditional one only the guidance (unguided: chance, about 0.1)."""
    from ..data.captions import caption

    labels = torch.arange(10).repeat_interleave(samples_per_digit)
    prompts = [caption(int(label)) for label in labels]
    condition = {"prompt": prompts} if getattr(pipe, "text_encoder", None) is not None else {}
    accuracy = {}
    for scale in scales:
        guidance = None if scale is None else ClipGuidance(clip_model, processor, prompts, scale)
        images = pipe(batch_size=len(labels), num_inference_steps=num_inference_steps, output_type="pt",
                      generator=torch.Generator().manual_seed(seed), guidance_callback=guidance,
                      **condition).images * 2 - 1
        predicted = classifier(images.to(next(classifier.parameters()).device)).argmax(-1).cpu()
        accuracy["none" if scale is None else str(scale)] = (predicted == labels).float().mean().item()
    return accuracy
