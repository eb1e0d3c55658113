#!/usr/bin/env python
"""Train a diffusion denoiser (hfgen UNet or DiT; unconditional or class-conditional with classifier-free
guidance) on the shipped digits with Accelerate, and save a Hub-loadable HfGenDiffusionPipeline.

    python recipes/train_diffusion.py --output_dir outputs/diffusion --max_train_steps 3000
    python recipes/train_diffusion.py --model dit --conditioning class --guidance_scale 2 --scheduler ddim
    python recipes/train_diffusion.py --vae outputs/vae/vae      # latent diffusion in a trained VAE's space
    python recipes/train_diffusion.py --conditioning text --guidance_scale 2   # captions through an hfgen encoder
    accelerate launch recipes/train_diffusion.py --mixed_precision bf16 --dataset mnist --image_size 16

Follows diffusers' ``examples/unconditional_image_generation/train_unconditional.py``: noise-prediction MSE at
uniformly drawn timesteps (DDPM's simplified objective), AdamW with warm-up + cosine decay, EMA weights
(``EMAModel``) used for sampling and saving, a sample grid every ``--save_images_steps``. Finally the EMA pipeline
is saved, samples are drawn with ``--scheduler`` and measured (hfgen.diffusion.quality).

Conditioning: ``none``; ``class`` (the digit's label; a "no label" class for guidance); ``text``: the caption of
the digit ("a handwritten seven", ``hfgen.data.captions``) encoded by an hfgen encoder (``--text_encoder``: a saved
encoder folder with its tokenizer, e.g. from ``recipes/pretrain_masked_lm.py``; default a freshly initialised,
seeded ``HfGenEncoderModel`` with the shipped tokenizer), kept frozen as Stable Diffusion keeps its text encoder;
the denoiser cross-attends to its ``last_hidden_state``. For classifier-free guidance (Ho & Salimans 2022) the
condition is dropped with probability ``--class_dropout`` (label -> "no label"; caption -> an all-zero text mask,
which the denoiser treats exactly as no text). The saved pipeline holds the encoder and tokenizer, so it generates
from a prompt: ``pipe(prompt="a handwritten three", guidance_scale=2)``. Conditional models also report
``conditional_accuracy``: the fraction of samples the measuring classifier labels as the requested digit.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_common import (  # noqa: E402
    TrainingLoop,
    add_common_arguments,
    check_arguments,
    is_save_step,
    load_split,
    report,
)

from hfgen import HfGenEncoderConfig, HfGenEncoderModel  # noqa: E402
from hfgen.data.captions import caption  # noqa: E402
from hfgen.data.encoder_tokenizer import load_encoder_tokenizer  # noqa: E402
from hfgen.data.images import save_image_grid  # noqa: E402
from hfgen.diffusion import (  # noqa: E402
    SCHEDULERS,
    HfGenDiffusionPipeline,
    HfGenDiTModel,
    HfGenUNet2DModel,
    HfGenVAEModel,
)
from hfgen.models.variants import ATTENTION_SCORINGS, SOFTMAX_VARIANTS  # noqa: E402
from hfgen.training.recipe_common import check_model_folder  # noqa: E402


logger = logging.getLogger(__name__)

# CPU time of one core (OMP_NUM_THREADS=1), measured 2026-12-07 with getrusage on a shared machine: what the
# run takes on an idle one. The README quotes the same.
MAX_TRAIN_STEPS = 3000
STEPS_HELP = ("training steps (about 0.1 s each on one core: the default ab"
              "out 6 min, then the samples of the quality report)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "diffusion")
    model = parser.add_argument_group("denoiser")
    model.add_argument("--model", choices=("unet", "dit"), default="unet", help="the denoiser's architecture")
    model.add_argument("--conditioning", choices=("none", "class", "text"), default="class",
                       help="what the denoiser is told: nothing, the digit's label, or its caption")
    model.add_argument("--text_encoder", default=None,
                       help="--conditioning text: a saved hfgen encoder folder with its tokenizer (default: a fresh "
                            "seeded HfGenEncoderModel, hidden 64, 2 layers, with the shipped tokenizer)")
    model.add_argument("--trust_remote_code", action="store_true",
                       help="let --text_encoder run code its folder names in auto_map (only for folders you trust)")
    model.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64], help="UNet levels")
    model.add_argument("--layers_per_block", type=int, default=1, help="residual blocks per UNet level")
    model.add_argument("--hidden_size", type=int, default=64, help="DiT width")
    model.add_argument("--num_layers", type=int, default=4, help="DiT blocks")
    model.add_argument("--patch_size", type=int, default=2, help="DiT patch size")
    model.add_argument("--num_attention_heads", type=int, default=4, help="heads of every attention block")
    model.add_argument("--vae", default=None,
                       help="a saved HfGenVAEModel folder (recipes/train_vae.py): latent diffusion in its space")
    model.add_argument("--softmax_variant", choices=SOFTMAX_VARIANTS, default="standard",
                       help="the attention softmax (as the text models' config key)")
    model.add_argument("--attention_scoring", choices=ATTENTION_SCORINGS, default="scaled_dot_product",
                       help="the attention score function (as the text models' config key)")
    train = parser.add_argument_group("training")
    train.add_argument("--num_train_timesteps", type=int, default=1000, help="DDPM's noise levels T")
    train.add_argument("--beta_schedule", default="squaredcos_cap_v2", help="DDPMScheduler's beta schedule")
    train.add_argument("--train_batch_size", type=int, default=64, help="images per step")
    train.add_argument("--max_train_steps", type=int, default=MAX_TRAIN_STEPS, help=STEPS_HELP)
    train.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW's peak learning rate")
    train.add_argument("--ema_decay", type=float, default=0.999, help="decay of the EMA weights that are saved")
    train.add_argument("--class_dropout", type=float, default=0.1,
                       help="probability of training without the condition: the 'no label' class or no caption "
                            "(classifier-free guidance)")
    train.add_argument("--save_images_steps", type=int, default=500, help="sample grid every N steps (0: never)")
    sample = parser.add_argument_group("sampling")
    sample.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="ddim",
                        help="the diffusers scheduler used to sample")
    sample.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps per sample")
    sample.add_argument("--guidance_scale", type=float, default=None,
                        help="classifier-free guidance (class or text models)")
    parser.set_defaults(lr_warmup_steps=100)
    return parser


def build_text_encoder(args):
    """The frozen text encoder and its tokenizer (``--text_encoder`` or a fresh seeded hfgen encoder)."""
    if args.text_encoder:
        tokenizer = AutoTokenizer.from_pretrained(args.text_encoder, trust_remote_code=args.trust_remote_code)
        encoder = AutoModel.from_pretrained(args.text_encoder, trust_remote_code=args.trust_remote_code)
    else:
        tokenizer = load_encoder_tokenizer()
        torch.manual_seed(args.seed)
        encoder = HfGenEncoderModel(HfGenEncoderConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, pad_token_id=tokenizer.pad_token_id))
    return encoder.eval().requires_grad_(False), tokenizer


@torch.no_grad()
def caption_states(encoder, tokenizer, num_classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder states ``[classes, K, D]`` and padding masks ``[classes, K]`` of every digit's caption, computed
    once (the encoder is frozen); a batch then indexes them by label."""
    batch = tokenizer([caption(label) for label in range(num_classes)], padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    states = encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
    return states.to(device), mask.to(device)


def condition_kwargs(args, labels: torch.Tensor, num_classes: int, captions, draws: torch.Tensor) -> dict:
    """The denoiser's condition for a batch, dropped where ``draws`` (uniform in [0, 1), one per sample) fall below
    ``--class_dropout``."""
    if args.conditioning == "none":
        return {}
    dropped = draws < args.class_dropout
    if args.conditioning == "class":
        return {"class_labels": labels.masked_fill(dropped, num_classes)}
    states, mask = captions
    return {"encoder_hidden_states": states[labels],
            "encoder_attention_mask": mask[labels].masked_fill(dropped[:, None], 0)}


def build_denoiser(args, num_classes: int, sample_size: int, channels: int, cross_attention_dim: int | None = None):
    common = dict(sample_size=sample_size, in_channels=channels, out_channels=channels,
                  num_attention_heads=args.num_attention_heads, softmax_variant=args.softmax_variant,
                  attention_scoring=args.attention_scoring,
                  num_class_embeds=num_classes if args.conditioning == "class" else None,
                  cross_attention_dim=cross_attention_dim)
    if args.model == "unet":
        levels = len(args.block_out_channels)
        return HfGenUNet2DModel(block_out_channels=tuple(args.block_out_channels),
                                layers_per_block=args.layers_per_block,
                                attention_levels=tuple(i == levels - 1 for i in range(levels)),
                                norm_num_groups=min(8, math.gcd(*args.block_out_channels)), **common)
    return HfGenDiTModel(patch_size=args.patch_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
                         **common)


@torch.no_grad()
def sample_images(pipe, args, count: int, seed: int) -> torch.Tensor:
    """``count`` images in ``[-1, 1]``; a conditional model is asked for the digits 0..9 in turn (by label or by
    caption)."""
    images = []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, 250):
        n = min(250, count - start)
        kwargs = {"batch_size": n}
        labels = [(start + i) % 10 for i in range(n)]
        if args.conditioning == "class":
            kwargs = {"class_labels": labels, "guidance_scale": args.guidance_scale}
        elif args.conditioning == "text":
            kwargs = {"prompt": [caption(label) for label in labels], "guidance_scale": args.guidance_scale}
        out = pipe(generator=generator, num_inference_steps=args.num_inference_steps, output_type="pt", **kwargs)
        images.append(out.images.cpu() * 2 - 1)
    return torch.cat(images)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    if args.guidance_scale is not None and args.conditioning == "none":
        raise ValueError("--guidance_scale needs a conditional model: --conditioning class or text.")
    if args.text_encoder and args.conditioning != "text":
        raise ValueError("--text_encoder is only used with --conditioning text.")
    check_model_folder(args.vae, "--vae", "a saved HfGenVAEModel folder, e.g. outputs/vae/vae from "
                       "recipes/train_vae.py", hub=False)
    check_model_folder(args.text_encoder, "--text_encoder", "a saved hfgen encoder folder with its tokenizer, "
                       "e.g. outputs/mlm_tiny from recipes/pretrain_masked_lm.py")
    loop = TrainingLoop(args, "diffusion")
    accelerator = loop.accelerator
    split = load_split(args)
    train_images, vae = split.train_images, None
    if args.vae:  # latent diffusion: train on the VAE's posterior means, scaled to unit variance
        vae = HfGenVAEModel.from_pretrained(args.vae).eval()
        with torch.no_grad():
            train_images = vae.encode(split.train_images).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / train_images.std()))
        train_images = train_images * vae.config.scaling_factor
        vae.to(accelerator.device)
    text_encoder = tokenizer = captions = None
    if args.conditioning == "text":
        text_encoder, tokenizer = build_text_encoder(args)
        captions = caption_states(text_encoder, tokenizer, split.num_classes, accelerator.device)
        text_encoder.to(accelerator.device)
    model = build_denoiser(args, split.num_classes, train_images.shape[-1], train_images.shape[1],
                           text_encoder.config.hidden_size if text_encoder is not None else None)
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    lr_scheduler = loop.scheduler(optimizer)
    dataset = torch.utils.data.TensorDataset(train_images, split.train_labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader, lr_scheduler = loop.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=args.ema_decay)
    ema.to(accelerator.device)
    loop.register(ema)
    os.makedirs(args.output_dir, exist_ok=True)

    def ema_pipeline():
        unet = accelerator.unwrap_model(model)
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        pipe = HfGenDiffusionPipeline(unet=unet, scheduler=noise_scheduler, vae=vae, text_encoder=text_encoder,
                                      tokenizer=tokenizer)
        pipe.set_scheduler(args.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    losses = []
    for images, labels in loop.batches(loader):
        noise = loop.draw("randn", tuple(images.shape)).to(images.dtype)
        timesteps = loop.draw("randint", (images.shape[0],), high=args.num_train_timesteps)
        noisy = noise_scheduler.add_noise(images, noise, timesteps)
        kwargs = condition_kwargs(args, labels, split.num_classes, captions, loop.draw("rand", (images.shape[0],)))
        with accelerator.accumulate(model), accelerator.autocast():
            loss = F.mse_loss(model(noisy, timesteps, **kwargs).sample.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            ema.step(accelerator.unwrap_model(model).parameters())
        if not loop.step_done({"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]}):
            continue
        step = loop.step
        losses.append(loss.item())
        if accelerator.is_main_process and args.save_images_steps and step % args.save_images_steps == 0:
            pipe = ema_pipeline()
            save_image_grid(sample_images(pipe, args, 20, args.seed),
                            os.path.join(args.output_dir, f"samples_step_{step}.png"), columns=10)
            ema.restore(accelerator.unwrap_model(model).parameters())
        if accelerator.is_main_process and is_save_step(args, step):
            save_pipeline(ema_pipeline(), args, step)
            ema.restore(accelerator.unwrap_model(model).parameters())
    accelerator.wait_for_everyone()
    step = loop.step
    metrics = {}
    if accelerator.is_main_process:
        pipe = ema_pipeline()  # keeps the EMA weights: they are what is saved and measured
        save_pipeline(pipe, args, step)
        samples = sample_images(pipe, args, args.num_eval_samples, args.seed + 1) if args.num_eval_samples else None
        tail = losses[-50:] or [float("nan")]  # a run resumed at its last step trains no batch
        name = f"{'latent-' if vae is not None else ''}diffusion-{args.model}-{args.conditioning}"
        requested = None
        if samples is not None and args.conditioning != "none":
            requested = torch.arange(len(samples)) % 10
        metrics = report(args, name, split, samples, sample_labels=requested,
                         extra={"train_loss_last50": sum(tail) / len(tail), "steps": step, "scheduler": args.scheduler,
                                "num_inference_steps": args.num_inference_steps,
                                "guidance_scale": args.guidance_scale})
    loop.end()
    logger.info("saved to %s (pipeline/, samples.png, metrics.json)", args.output_dir)
    return metrics


def save_pipeline(pipe: HfGenDiffusionPipeline, args: argparse.Namespace, step: int) -> None:
    """Write the EMA pipeline to OUTPUT_DIR/pipeline (a checkpoint along the way, replaced at the end)."""
    pipe.save_pretrained(os.path.join(args.output_dir, "pipeline"))
    logger.info("step %d: pipeline saved to %s", step, os.path.join(args.output_dir, "pipeline"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
