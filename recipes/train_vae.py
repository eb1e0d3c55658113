#!/usr/bin/env python
"""Train the hfgen VAE on the shipped digits with Accelerate (maximise the ELBO = reconstruction - KL), save it
Hub-loadable, and report the held-out ELBO, prior samples, a latent interpolation and the quality numbers.

    python recipes/train_vae.py --output_dir outputs/vae --max_train_steps 3000
    python recipes/train_vae.py --dataset mnist --image_size 16 --latent_channels 4

The saved VAE is the latent space of a latent-diffusion pipeline: pass ``HfGenVAEModel.from_pretrained(...)`` as
``vae=`` to ``HfGenDiffusionPipeline`` with a denoiser of ``in_channels = latent_channels``.
"""

from __future__ import annotations

import argparse
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
from hfgen.diffusion import HfGenVAEModel  # noqa: E402

logger = logging.getLogger(__name__)

# CPU time of one core (OMP_NUM_THREADS=1), measured 2026-12-07 with getrusage on a shared machine: what the
# run takes on an idle one. The README quotes the same.
MAX_TRAIN_STEPS = 3000
STEPS_HELP = "training steps (the default: about 3 min in all on one core)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "vae")
    parser.add_argument("--latent_channels", type=int, default=4, help="channels of the latent z")
    parser.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64],
                        help="channels of each encoder level (the decoder mirrors them)")
    parser.add_argument("--decoder_std", type=float, default=0.2, help="std of the Gaussian decoder p(x|z)")
    parser.add_argument("--train_batch_size", type=int, default=64, help="images per step")
    parser.add_argument("--max_train_steps", type=int, default=MAX_TRAIN_STEPS, help=STEPS_HELP)
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="Adam's peak learning rate (cosine decay)")
    parser.add_argument("--save_images_steps", type=int, default=500,
                        help="grid of prior samples every N steps (0: never)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    loop = TrainingLoop(args, "vae")
    accelerator = loop.accelerator
    split = load_split(args)
    model = HfGenVAEModel(in_channels=1, latent_channels=args.latent_channels,
                          block_out_channels=tuple(args.block_out_channels), sample_size=args.image_size,
                          norm_num_groups=8, decoder_std=args.decoder_std)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    schedule = loop.scheduler(optimizer)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.train_images),
                                         batch_size=args.train_batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader, schedule = loop.prepare(model, optimizer, loader, schedule)
    os.makedirs(args.output_dir, exist_ok=True)
    for (images,) in loop.batches(loader):
        with accelerator.accumulate(model), accelerator.autocast():
            # The posterior sample's noise: this process's rows of one draw for the global batch (the generator is
            # saved with the checkpoints), so N processes train the weights of one.
            latent = accelerator.unwrap_model(model).latent_shape(images.shape[0], *images.shape[-2:])
            out = model(images, noise=loop.draw("randn", latent))
            accelerator.backward(out.loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        if not loop.step_done({"elbo_per_dim": -out.loss.item(), "kl": out.kl.mean().item()}):
            continue
        step = loop.step
        if accelerator.is_main_process and args.save_images_steps and step % args.save_images_steps == 0:
            vae = accelerator.unwrap_model(model).eval()
            save_image_grid(vae.sample_prior(20, torch.Generator().manual_seed(args.seed)),
                            os.path.join(args.output_dir, f"samples_step_{step}.png"), columns=10)
            vae.train()
        if accelerator.is_main_process and is_save_step(args, step):
            save_vae(accelerator.unwrap_model(model), args, step)
    accelerator.wait_for_everyone()
    step = loop.step
    metrics = {}
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(model).eval()
        save_vae(vae, args, step)
        with torch.no_grad():
            held = vae(split.test_images.to(accelerator.device), generator=torch.Generator().manual_seed(args.seed))
        dims = split.test_images[0].numel()
        path = torch.cat([vae.interpolate(split.test_images[i], split.test_images[i + 1], steps=10) for i in range(4)])
        save_image_grid(path, os.path.join(args.output_dir, "interpolation.png"), columns=10)
        samples = (vae.sample_prior(args.num_eval_samples, torch.Generator().manual_seed(args.seed + 1)).cpu()
                   .clamp(-1, 1) if args.num_eval_samples else None)
        metrics = report(args, "vae", split, samples,
                         {"elbo_per_image": held.elbo.mean().item(), "elbo_per_dim": held.elbo.mean().item() / dims,
                          "reconstruction_per_image": held.reconstruction.mean().item(),
                          "kl_per_image": held.kl.mean().item(), "steps": step})
    loop.end()
    logger.info("saved to %s (vae/, samples.png, interpolation.png, metrics.json)", args.output_dir)
    return metrics


def save_vae(vae: HfGenVAEModel, args: argparse.Namespace, step: int) -> None:
    """Write the VAE to OUTPUT_DIR/vae (a checkpoint along the way, replaced by the final model at the end)."""
    vae.save_pretrained(os.path.join(args.output_dir, "vae"))
    logger.info("step %d: VAE saved to %s", step, os.path.join(args.output_dir, "vae"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
