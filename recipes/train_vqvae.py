#!/usr/bin/env python
"""Train the hfgen VQ-VAE (or VQ-VAE-2) on the shipped digits with Accelerate, then an autoregressive prior over its
image tokens (the hfgen decoder), save both Hub-loadable, and report reconstruction, codebook use and the quality
of the prior's samples on the image generators' table.

    python recipes/train_vqvae.py --output_dir outputs/vqvae
    python recipes/train_vqvae.py --num_levels 2 --output_dir outputs/vqvae2     # VQ-VAE-2: top and bottom codes
    python recipes/train_vqvae.py --train_data_dir my_images/ --image_size 16    # datasets' imagefolder

Two stages, each the image recipes' Accelerate loop (``--max_train_steps`` for the VQ-VAE, ``--prior_steps`` for
the prior; training state under OUTPUT_DIR and OUTPUT_DIR/prior_state, ``--resume_from_checkpoint latest``
continues either). Writes OUTPUT_DIR/vqvae (``HfGenVQModel``), OUTPUT_DIR/prior (``HfGenDecoderForCausalLM`` over
the image tokens, ``AutoModelForCausalLM``-loadable), ``reconstructions.png``, ``samples.png`` and the metrics.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_common import (  # noqa: E402
    TrainingLoop,
    add_common_arguments,
    check_arguments,
    is_save_step,
    load_split,
    report,
)

from hfgen.data.images import save_image_grid  # noqa: E402
from hfgen.diffusion.vq_hfgen import HfGenVQModel  # noqa: E402
from hfgen.models import HfGenDecoderForCausalLM  # noqa: E402
from hfgen.training.vqvae import prior_config, prior_loss, prior_sequences, sample_images  # noqa: E402

logger = logging.getLogger(__name__)

# Wall time on the shared 2-core machine, OMP_NUM_THREADS=1, measured 2026-12-08: the README quotes the same.
MAX_TRAIN_STEPS = 1000
PRIOR_STEPS = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "vqvae")
    vq = parser.add_argument_group("VQ-VAE")
    vq.add_argument("--num_levels", type=int, choices=(1, 2), default=1, help="1: VQ-VAE; 2: VQ-VAE-2 (top codes)")
    vq.add_argument("--num_vq_embeddings", type=int, default=64, help="codebook size (of each level)")
    vq.add_argument("--latent_channels", type=int, default=8, help="channels of the latents and code vectors")
    vq.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64],
                    help="channels of each encoder level (one halving between two)")
    vq.add_argument("--commitment_cost", type=float, default=0.25, help="beta of the commitment loss")
    vq.add_argument("--dead_code_steps", type=int, default=20,
                    help="restart codes unused for this many steps at encoder outputs (0: never)")
    vq.add_argument("--train_batch_size", type=int, default=64, help="images per step (both stages)")
    vq.add_argument("--max_train_steps", type=int, default=MAX_TRAIN_STEPS, help="VQ-VAE training steps")
    vq.add_argument("--learning_rate", type=float, default=2e-3, help="Adam's peak learning rate (cosine decay)")
    prior = parser.add_argument_group("prior over the image tokens (hfgen decoder)")
    prior.add_argument("--prior_steps", type=int, default=PRIOR_STEPS, help="prior training steps (0: no prior)")
    prior.add_argument("--prior_hidden_size", type=int, default=128, help="the prior decoder's width")
    prior.add_argument("--prior_layers", type=int, default=4, help="the prior decoder's layers")
    prior.add_argument("--prior_learning_rate", type=float, default=1e-3, help="the prior's peak learning rate")
    prior.add_argument("--class_conditional", action="store_true",
                       help="start each sequence with its class (samples are asked for every class equally)")
    prior.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the prior")
    return parser


def train_vqvae(args: argparse.Namespace, split) -> HfGenVQModel:
    """Stage 1: reconstruction + codebook + commitment loss (the model's ``loss``)."""
    loop = TrainingLoop(args, "vqvae")
    accelerator = loop.accelerator
    model = HfGenVQModel(in_channels=1, out_channels=1, block_out_channels=tuple(args.block_out_channels),
                         latent_channels=args.latent_channels, sample_size=args.image_size,
                         num_vq_embeddings=args.num_vq_embeddings, commitment_cost=args.commitment_cost,
                         dead_code_steps=args.dead_code_steps, num_levels=args.num_levels)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.train_images),
                                         batch_size=args.train_batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader, schedule = loop.prepare(model, optimizer, loader, loop.scheduler(optimizer))
    for (images,) in loop.batches(loader):
        with accelerator.accumulate(model), accelerator.autocast():
            out = model(images)
            accelerator.backward(out.loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        if loop.step_done({"mse": out.reconstruction_loss.item(), "perplexity": out.perplexity.item()}) and \
                accelerator.is_main_process and is_save_step(args, loop.step):
            accelerator.unwrap_model(model).save_pretrained(os.path.join(args.output_dir, "vqvae"))
    loop.end()
    vq = accelerator.unwrap_model(model).eval()
    if accelerator.is_main_process:
        vq.save_pretrained(os.path.join(args.output_dir, "vqvae"))
    return vq


def train_prior(args: argparse.Namespace, vq: HfGenVQModel, sequences: torch.Tensor) -> HfGenDecoderForCausalLM:
    """Stage 2: next-token cross-entropy over ``[start] + image tokens``, the same loop with its own state folder."""
    stage = copy.copy(args)
    stage.max_train_steps, stage.learning_rate = args.prior_steps, args.prior_learning_rate
    stage.output_dir = os.path.join(args.output_dir, "prior_state")
    loop = TrainingLoop(stage, "vqvae_prior")
    accelerator = loop.accelerator
    torch.manual_seed(args.seed)
    config = prior_config(vq, args.num_classes if args.class_conditional else 0, args.prior_hidden_size,
                          args.prior_layers)
    model = HfGenDecoderForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.prior_learning_rate, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(sequences), batch_size=args.train_batch_size,
                                         shuffle=True, drop_last=True)
    model, optimizer, loader, schedule = loop.prepare(model, optimizer, loader, loop.scheduler(optimizer))
    for (batch,) in loop.batches(loader):
        with accelerator.accumulate(model), accelerator.autocast():
            loss = model(input_ids=batch, labels=batch).loss
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        loop.step_done({"loss": loss.item()})
    loop.end()
    prior = accelerator.unwrap_model(model).eval()
    if accelerator.is_main_process:
        prior.save_pretrained(os.path.join(args.output_dir, "prior"))
    return prior


@torch.no_grad()
def codebook_metrics(vq: HfGenVQModel, images: torch.Tensor) -> dict:
    """Held-out reconstruction error, perplexity and codebook usage of every level."""
    out = vq(images)
    metrics = {"reconstruction_mse": out.reconstruction_loss.item(), "perplexity": out.perplexity.item(),
               "codebook_usage": out.codebook_usage.item()}
    if out.top_codes is not None:
        metrics.update(top_perplexity=out.top_perplexity.item(), top_codebook_usage=out.top_codebook_usage.item())
    return metrics


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    if args.prior_steps < 0 or not args.temperature > 0:
        raise ValueError(f"--prior_steps must be >= 0 and --temperature > 0, got {args.prior_steps} and "
                         f"{args.temperature}.")
    split = load_split(args)
    args.num_classes = split.num_classes
    vq = train_vqvae(args, split)
    test_images = split.test_images.to(vq.device)
    metrics = {"steps": args.max_train_steps, **codebook_metrics(vq, test_images)}
    pairs = torch.stack([test_images[:20], vq(test_images[:20]).sample.clamp(-1, 1)], 1).flatten(0, 1)
    save_image_grid(pairs.cpu(), os.path.join(args.output_dir, "reconstructions.png"), columns=10)
    samples = labels = None
    if args.prior_steps:
        conditional = args.num_classes if args.class_conditional else 0
        train_labels = split.train_labels if conditional else None
        prior = train_prior(args, vq, prior_sequences(vq, vq.tokenize(split.train_images.to(vq.device)), train_labels))
        held = prior_sequences(vq, vq.tokenize(test_images), split.test_labels if conditional else None)
        metrics["prior_loss_per_token"] = prior_loss(prior, held)
        if args.num_eval_samples:
            labels = torch.arange(args.num_eval_samples) % args.num_classes if conditional else None
            samples = sample_images(prior, vq, args.num_eval_samples, labels, seed=args.seed + 1,
                                    temperature=args.temperature).cpu().clamp(-1, 1)
    name = "vqvae2_prior" if args.num_levels == 2 else "vqvae_prior"
    metrics = report(args, name, split, samples, metrics, sample_labels=labels)
    logger.info("saved to %s (vqvae/, prior/, reconstructions.png, samples.png, metrics.json)", args.output_dir)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
