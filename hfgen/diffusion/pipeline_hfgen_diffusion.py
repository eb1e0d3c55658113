"""``HfGenDiffusionPipeline``: sampling with any hfgen denoiser (or diffusers' own ``UNet2DModel``) and any
compatible diffusers scheduler, with classifier-free guidance, inpainting, an optional VAE latent space and an
optional text encoder.

The pipeline only orchestrates (DESIGN.md: model, scheduler and pipeline stay separate). The loop is diffusers'
own: ``set_timesteps`` -> ``scale_model_input`` -> denoiser -> ``step(...).prev_sample``.

Seed 001: diffusion models "can be used for image completion and inpainting tasks, where missing or corrupted
parts of an image are filled in accurately based on context". Inpainting here is the replacement method
(Lugmayr et al. 2022, RePaint without resampling): after every step the known part is overwritten with the
known image noised to the step's level, and with the known image itself at the end,

    x_{t-1} <- m * x_{t-1} + (1 - m) * (sqrt(abar_{t-1}) x_known + sqrt(1 - abar_{t-1}) eps),   m: 1 = generate

(``scheduler.add_noise``). In a VAE's latent space the same formula runs on the known image's latents with the
mask max-pooled to the latent grid, and after decoding the known pixels are pasted back.

This file imports nothing of hfgen but its sibling ``export_hfgen`` and ``models/model_card`` (standard library
and ``huggingface_hub`` only): ``save_pretrained`` writes it to the folder root with those inlined, and each custom
component's file, with every file it imports inlined, into that component's subfolder: one self-contained file
each, the layout ``DiffusionPipeline.from_pretrained(path_or_repo_id, trust_remote_code=True)`` loads without hfgen
installed (from the Hub it downloads only those files).
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.utils.torch_utils import randn_tensor

from ..models.model_card import write_pipeline_hub_card
from .export_hfgen import export_module

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver_multistep": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _as_image_batch(value, name: str) -> torch.Tensor:
    """A ``[B, C, H, W]`` float tensor from a tensor / array (``[C, H, W]`` or ``[B, C, H, W]``) or PIL image(s)."""
    if hasattr(value, "convert") or (isinstance(value, list) and value and hasattr(value[0], "convert")):
        pictures = value if isinstance(value, list) else [value]
        arrays = [np.asarray(p, dtype=np.float32) / 127.5 - 1.0 for p in pictures]
        value = np.stack([a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays])
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ValueError(f"{name} must be [batch, channels, height, width] or [channels, height, width], got "
                         f"shape {tuple(tensor.shape)}.")
    return tensor


class HfGenDiffusionPipeline(DiffusionPipeline):
    """Unconditional, class-conditional or text-conditional image generation, in pixel space or in a VAE's latent
    space.

    Components: ``unet`` (a denoiser: ``HfGenUNet2DModel``, ``HfGenDiTModel`` or diffusers' ``UNet2DModel``),
    ``scheduler`` (any diffusers noise scheduler; swap with ``set_scheduler`` or
    ``Scheduler.from_config(pipe.scheduler.config)``), optionally ``vae`` (``HfGenVAEModel`` or
    ``AutoencoderKL``: the denoiser then works on latents), ``text_encoder`` + ``tokenizer`` (a transformers
    encoder whose ``last_hidden_state`` the denoiser cross-attends to).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, vae=None, text_encoder=None, tokenizer=None):
        super().__init__()
        self._check_components(unet, scheduler, vae)
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer)

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _check_components(unet, scheduler, vae) -> None:
        if not (hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step")):
            raise ValueError(f"scheduler must be a diffusers scheduler (with set_timesteps and step), got "
                             f"{type(scheduler).__name__}; valid named choices: {', '.join(SCHEDULERS)}.")
        unet_in, unet_out = unet.config.in_channels, unet.config.out_channels
        if vae is not None:
            latent = vae.config.latent_channels
            if unet_in != latent or unet_out != latent:
                raise ValueError(f"Channel mismatch: the VAE's latents have {latent} channels but the denoiser "
                                 f"takes {unet_in} and returns {unet_out}.")
        elif unet_in != unet_out:
            raise ValueError(f"Channel mismatch: without a VAE the denoiser must return as many channels as it "
                             f"takes, got in_channels={unet_in}, out_channels={unet_out}.")

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def downsampling_factor(self) -> int:
        unet = self.unet
        if hasattr(unet, "downsampling_factor"):
            return unet.downsampling_factor
        return 2 ** (len(unet.config.block_out_channels) - 1)  # diffusers' UNet2DModel

    def set_scheduler(self, name: str, **overrides) -> None:
        """Swap the scheduler for ``name`` (see :data:`SCHEDULERS`), keeping the noise schedule of the current one
        (``from_config``)."""
        if name not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {name!r}; valid choices are: {', '.join(SCHEDULERS)}.")
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config, **overrides)

    # ---------------------------------------------------------------- conditions
    def encode_prompt(self, prompt: str | list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise and encode ``prompt`` with the pipeline's text encoder: ``(states, attention_mask)``."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("A prompt needs a text_encoder and a tokenizer in the pipeline; pass prompt_embeds "
                             "instead, or build the pipeline with both.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = self.tokenizer(prompts, padding=True, return_tensors="pt")
        mask = batch["attention_mask"].to(device)
        states = self.text_encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        return states, mask

    def _conditions(self, batch_size, class_labels, prompt, prompt_embeds, prompt_attention_mask, device):
        config = self.unet.config
        cond = {}
        if class_labels is not None:
            if not config.get("num_class_embeds"):
                raise ValueError("class_labels were given but the denoiser is not class-conditional "
                                 "(num_class_embeds is None).")
            labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
            cond["class_labels"] = labels
            batch_size = labels.shape[0]
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Give either prompt or prompt_embeds, not both.")
        if prompt is not None:
            prompt_embeds, prompt_attention_mask = self.encode_prompt(prompt, device)
        if prompt_embeds is not None:
            if not config.get("cross_attention_dim"):
                raise ValueError("A prompt was given but the denoiser has no cross-attention "
                                 "(cross_attention_dim is None).")
            if class_labels is not None and prompt_embeds.shape[0] != batch_size:
                raise ValueError(f"{prompt_embeds.shape[0]} prompts but {batch_size} class labels.")
            batch_size = prompt_embeds.shape[0]
            cond["encoder_hidden_states"] = prompt_embeds.to(device, self.unet.dtype)
            if prompt_attention_mask is not None:
                cond["encoder_attention_mask"] = prompt_attention_mask.to(device)
        return batch_size, cond

    def _predict(self, latents, t, cond, guidance_scale):
        """The denoiser's output; with guidance ``uncond + s * (cond - uncond)`` (Ho & Salimans 2022), the
        unconditional branch being the same call without any condition (hfgen denoisers: the null class, no
        text). diffusers' class-conditional ``UNet2DModel`` has no null class, so guidance needs an hfgen
        denoiser."""
        model_input = latents
        conditional = self.unet(model_input, t, **cond).sample
        if guidance_scale is None:
            return conditional
        unconditional = self.unet(model_input, t).sample
        return unconditional + guidance_scale * (conditional - unconditional)

    def _inpainting_inputs(self, image, mask_image, shape, device, dtype) -> dict | None:
        """The known image and its mask in pixel space (``image``, ``mask``) and in the denoiser's space
        (``latents``, ``latent_mask``: the same tensors without a VAE).

        With a VAE the known image is encoded to its posterior mean times ``scaling_factor`` (what the recipe
        trains the denoiser on), and a latent cell is kept only if every pixel of its ``f x f`` patch is kept
        (the mask max-pooled by the VAE factor ``f``): a cell that any generated pixel depends on is generated."""
        if image is None and mask_image is None:
            return None
        if image is None or mask_image is None:
            raise ValueError("Inpainting needs both image and mask_image.")
        b, c, h, w = shape
        factor = self.vae_scale_factor
        channels = self.vae.config.in_channels if self.vae is not None else c
        height, width = h * factor, w * factor
        known = _as_image_batch(image, "image").to(device, dtype)
        mask = torch.as_tensor(np.asarray(mask_image) if not torch.is_tensor(mask_image) else mask_image,
                               dtype=torch.float32)
        while mask.ndim < 4:
            mask = mask[None]
        if known.shape[1:] != (channels, height, width) or known.shape[0] not in (1, b):
            raise ValueError(f"image must have shape [{b} or 1, {channels}, {height}, {width}], got "
                             f"{tuple(known.shape)}.")
        if mask.shape[0] not in (1, b) or mask.shape[1] not in (1, channels) or mask.shape[2:] != (height, width):
            raise ValueError(f"mask_image must have shape [{b} or 1, 1, {height}, {width}] (or [{height}, {width}]): "
                             f"1 = generate, 0 = keep; got {tuple(mask.shape)}.")
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("mask_image must hold only 0 (keep the pixel) and 1 (generate it).")
        known = known.expand(b, channels, height, width)
        mask = mask.to(device, dtype).expand(b, channels, height, width)
        if self.vae is None:
            return {"image": known, "mask": mask, "latents": known, "latent_mask": mask}
        latents = self.vae.encode(known).latent_dist.mean * self.vae.config.scaling_factor
        latent_mask = F.max_pool2d(mask.amax(1, keepdim=True), factor).expand(b, c, h, w)
        return {"image": known, "mask": mask, "latents": latents.to(dtype), "latent_mask": latent_mask}

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 50, generator=None,
                 class_labels=None, prompt: str | list[str] | None = None, prompt_embeds: torch.Tensor | None = None,
                 prompt_attention_mask: torch.Tensor | None = None, guidance_scale: float | None = None,
                 image=None, mask_image=None, height: int | None = None, width: int | None = None,
                 eta: float = 0.0, use_clipped_model_output: bool | None = None, output_type: str = "pil",
                 return_dict: bool = True, guidance_callback=None):
        """Generate images.

        Args:
            batch_size: number of images (overridden by the number of class labels / prompts).
            num_inference_steps: scheduler steps.
            generator: a ``torch.Generator`` (or one per image) for reproducible noise.
            class_labels: one label per image for a class-conditional denoiser.
            prompt / prompt_embeds (+ prompt_attention_mask): text condition for a cross-attention denoiser.
            guidance_scale: classifier-free guidance ``s``; ``None`` = no unconditional pass. Needs a condition.
            image, mask_image: inpainting: the known image in ``[-1, 1]`` and a mask, 1 = generate, 0 = keep,
                both in pixel space (with a VAE too: the pipeline encodes the image and pools the mask).
            height, width: output size (default: the denoiser's ``sample_size`` times the VAE's factor).
            eta: DDIM's eta (passed to schedulers whose ``step`` takes it).
            use_clipped_model_output: for schedulers whose ``step`` takes it (DDIM): re-derive the noise from the
                clipped ``x_0`` prediction, as GLIDE does, so that the direction term of the step agrees with the
                clipped ``x_0``. ``None`` (default): on wherever the scheduler takes it (so guidance scale 1 stays
                the plain conditional); ``False``: diffusers' ``DDIMPipeline`` default. Classifier-free guidance
                extrapolates the noise prediction; with DDIM's ``clip_sample`` the extrapolated noise, not
                re-derived, disagrees with the clipped ``x_0`` and wrecks the images (measured on the
                text-conditional 8x8 digits model, 25 DDIM steps: prompted-digit accuracy 0.955 unguided either
                way; without re-deriving 0.615 at scale 3 and 0.100 at scale 5, with it 1.000 at 1.5, 3 and 5).
            output_type: ``"pil"``, ``"np"`` (``[B, H, W, C]`` in ``[0, 1]``), ``"pt"`` (``[B, C, H, W]`` in
                ``[0, 1]``) or ``"latent"``.
            guidance_callback: ``(pipe, latents, t, noise_pred) -> noise_pred``, applied to the noise prediction
                of every step before the scheduler's (e.g. CLIP guidance: ``hfgen.diffusion.clip_guidance``).
        """
        self.check_inputs(num_inference_steps, output_type)
        device = self._execution_device
        batch_size, cond = self._conditions(batch_size, class_labels, prompt, prompt_embeds, prompt_attention_mask,
                                            device)
        if guidance_scale is not None and not cond:
            raise ValueError("guidance_scale needs a conditional model and a condition (class_labels or a prompt); "
                             "for unconditional sampling leave guidance_scale=None.")
        step_kwargs = self._step_kwargs(eta, generator, use_clipped_model_output)
        shape = self._latent_shape(batch_size, height, width)
        inpaint = self._inpainting_inputs(image, mask_image, shape, device, self.unet.dtype)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        if inpaint is not None:
            inpaint["noise"] = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self._denoise(latents, cond, guidance_scale, inpaint, step_kwargs, guidance_callback)
        images = latents if output_type == "latent" else self._postprocess(self._decode(latents, inpaint), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @staticmethod
    def check_inputs(num_inference_steps: int, output_type: str) -> None:
        """Reject an unknown ``output_type`` or a step count that is not a positive integer."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; valid choices are: {', '.join(OUTPUT_TYPES)}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")

    def _step_kwargs(self, eta, generator, use_clipped_model_output) -> dict:
        """The keyword arguments of ``scheduler.step`` that this scheduler takes (``eta``, ``generator``,
        ``use_clipped_model_output``; the last on by default wherever it is taken, see ``__call__``)."""
        step_parameters = set(inspect.signature(self.scheduler.step).parameters)
        takes_clipped = "use_clipped_model_output" in step_parameters
        if use_clipped_model_output and not takes_clipped:
            raise ValueError(f"use_clipped_model_output=True needs a scheduler whose step takes it (DDIM); "
                             f"{type(self.scheduler).__name__} does not. Leave it None or use set_scheduler('ddim').")
        step_kwargs = {}
        if "eta" in step_parameters:
            step_kwargs["eta"] = eta
        if "generator" in step_parameters:
            step_kwargs["generator"] = generator
        if takes_clipped and use_clipped_model_output is not False:
            step_kwargs["use_clipped_model_output"] = True
        return step_kwargs

    def _latent_shape(self, batch_size: int, height: int | None, width: int | None) -> tuple[int, int, int, int]:
        """``[B, C, h, w]`` of the denoiser's input for an output of ``height x width`` pixels (default: the
        denoiser's ``sample_size`` times the VAE's factor), which both the VAE and the denoiser must divide."""
        factor = self.vae_scale_factor
        height = height or self.unet.config.sample_size * factor
        width = width or self.unet.config.sample_size * factor
        multiple = factor * self.downsampling_factor
        if height % multiple or width % multiple:
            raise ValueError(f"Image size ({height}, {width}) is not divisible by the denoiser's downsampling "
                             f"factor{' times the VAE factor' if factor > 1 else ''} ({multiple}).")
        return (batch_size, self.unet.config.in_channels, height // factor, width // factor)

    def _denoise(self, latents, cond, guidance_scale, inpaint, step_kwargs, guidance_callback=None) -> torch.Tensor:
        """The scheduler loop from pure noise to the sample, with the known part replaced after every step when
        inpainting."""
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            noise_pred = self._predict(model_input, t, cond, guidance_scale)
            if guidance_callback is not None:
                noise_pred = guidance_callback(self, model_input, t, noise_pred)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
            if inpaint is not None:
                next_t = timesteps[i + 1].reshape(1) if i + 1 < len(timesteps) else None
                latents = self._replace_known(latents, inpaint, next_t)
        return latents

    def _replace_known(self, latents, inpaint, next_t) -> torch.Tensor:
        """``x_{t-1} = m * generated + (1 - m) * known`` noised to the level of ``next_t`` (the known latents
        themselves after the last step, ``next_t=None``)."""
        known, mask = inpaint["latents"], inpaint["latent_mask"]
        level = known if next_t is None else self.scheduler.add_noise(known, inpaint["noise"], next_t)
        return mask * latents + (1 - mask) * level

    def _decode(self, latents, inpaint) -> torch.Tensor:
        """Pixels in ``[-1, 1]``: the VAE's decoding of the latents (with the known pixels pasted back when
        inpainting, the decoder being lossy), or the sample itself without a VAE."""
        if self.vae is None:
            return latents
        pixels = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        if inpaint is not None:
            pixels = inpaint["mask"] * pixels + (1 - inpaint["mask"]) * inpaint["image"]
        return pixels

    def _postprocess(self, pixels: torch.Tensor, output_type: str):
        """``[-1, 1]`` pixels to ``[0, 1]`` in the layout of ``output_type`` (``pt``, ``np`` or ``pil``)."""
        images = (pixels / 2 + 0.5).clamp(0, 1)
        if output_type in ("np", "pil"):
            images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        return images

    # ---------------------------------------------------------------- saving as code on the Hub
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained``, then the remote-code layout: this file at the root, each custom
        component's file (with every file it imports inlined) in its subfolder, and ``model_index.json``
        entries naming those files, so that ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)``
        loads the folder without hfgen installed."""
        super().save_pretrained(save_directory, *args, **kwargs)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as handle:
            index = json.load(handle)
        pipeline_file = inspect.getsourcefile(type(self))
        export_module(pipeline_file, save_directory)
        index["_class_name"] = [os.path.splitext(os.path.basename(pipeline_file))[0], type(self).__name__]
        for name, component in self.components.items():
            if component is None or not _is_custom(component):
                continue
            source = inspect.getsourcefile(type(component))
            export_module(source, os.path.join(save_directory, name))
            index[name] = [os.path.splitext(os.path.basename(source))[0], type(component).__name__]
        with open(index_path, "w") as handle:
            json.dump(index, handle, indent=2, sort_keys=True)

    def _upload_folder(self, working_dir, repo_id, token=None, commit_message=None, create_pr=False,
                       subfolder=None):
        """diffusers' upload of ``push_to_hub``, with hfgen's pipeline card in place of the generic one
        (``write_pipeline_hub_card``; a card someone wrote is kept)."""
        if not subfolder:
            write_pipeline_hub_card(working_dir, repo_id)
        return super()._upload_folder(working_dir, repo_id, token=token, commit_message=commit_message,
                                      create_pr=create_pr, subfolder=subfolder)


def _is_custom(component) -> bool:
    """Components whose class is not importable from an installed library by its top-level name alone."""
    root = type(component).__module__.split(".")[0]
    return root not in ("diffusers", "transformers", "torch", "tokenizers")
