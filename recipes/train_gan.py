#!/usr/bin/env python
"""Train the hfgen DCGAN on the shipped digits with Accelerate: alternating discriminator and generator updates
with the non-saturating loss, spectral normalisation in the discriminator and an optional R1 penalty; save both
networks Hub-loadable and report the quality numbers (the class spread is the mode-collapse check).

    python recipes/train_gan.py --output_dir outputs/gan --max_train_steps 3000
    python recipes/train_gan.py --r1_gamma 1.0 --no_spectral_norm
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
from torch import nn

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
from hfgen.diffusion import (  # noqa: E402
    HfGenGANDiscriminator,
    HfGenGANGenerator,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)


logger = logging.getLogger(__name__)

# CPU time of one core (OMP_NUM_THREADS=1), measured 2026-12-07 with getrusage on a shared machine: what the
# run takes on an idle one. The README quotes the same.
MAX_TRAIN_STEPS = 3000
STEPS_HELP = "training steps (the default: about 1 min in all on one core)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "gan")
    parser.add_argument("--latent_dim", type=int, default=32, help="size of the generator's noise input z")
    parser.add_argument("--base_channels", type=int, default=64, help="channels of both networks' widest level")
    parser.add_argument("--no_spectral_norm", action="store_true", help="drop the discriminator's spectral norm")
    parser.add_argument("--r1_gamma", type=float, default=0.0, help="R1 penalty weight gamma (0: off)")
    parser.add_argument("--train_batch_size", type=int, default=64, help="real images per step")
    parser.add_argument("--max_train_steps", type=int, default=MAX_TRAIN_STEPS, help=STEPS_HELP)
    parser.add_argument("--learning_rate", type=float, default=2e-4, help="Adam's learning rate (both networks)")
    parser.add_argument("--save_images_steps", type=int, default=500,
                        help="grid of the same 20 latents every N steps (0: never)")
    parser.set_defaults(lr_scheduler="constant")  # DCGAN's constant learning rate
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    if args.gradient_accumulation_steps != 1:
        raise ValueError(f"--gradient_accumulation_steps must be 1 for the GAN (its two networks step in turn on "
                         f"each batch), got {args.gradient_accumulation_steps}.")
    loop = TrainingLoop(args, "gan")
    accelerator = loop.accelerator
    split = load_split(args)
    generator = HfGenGANGenerator(latent_dim=args.latent_dim, image_size=args.image_size,
                                  base_channels=args.base_channels)
    if accelerator.num_processes > 1:
        generator = global_batch_norm(generator)
    discriminator = HfGenGANDiscriminator(image_size=args.image_size, base_channels=args.base_channels,
                                          spectral_norm=not args.no_spectral_norm)
    betas = (0.5, 0.999)  # DCGAN's Adam settings
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.learning_rate, betas=betas)
    schedule_g, schedule_d = loop.scheduler(opt_g), loop.scheduler(opt_d)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.train_images),
                                         batch_size=args.train_batch_size, shuffle=True, drop_last=True)
    generator, discriminator, opt_g, opt_d, schedule_g, schedule_d, loader = loop.prepare(
        generator, discriminator, opt_g, opt_d, schedule_g, schedule_d, loader)
    fixed_z = torch.randn(20, args.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    os.makedirs(args.output_dir, exist_ok=True)
    for (real,) in loop.batches(loader):
        z = loop.draw("randn", (real.shape[0], args.latent_dim))
        with accelerator.autocast():
            fake = generator(z)
            loss_d = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        if args.r1_gamma > 0:
            loss_d = loss_d + args.r1_gamma / 2 * r1_penalty(discriminator, real)
        opt_d.zero_grad()
        accelerator.backward(loss_d)
        opt_d.step()
        schedule_d.step()
        with accelerator.autocast():
            loss_g = generator_loss(discriminator(fake))
        opt_g.zero_grad()
        accelerator.backward(loss_g)
        opt_g.step()
        schedule_g.step()
        loop.step_done({"loss_d": loss_d.item(), "loss_g": loss_g.item()})
        step = loop.step
        if accelerator.is_main_process and args.save_images_steps and step % args.save_images_steps == 0:
            g = accelerator.unwrap_model(generator).eval()
            with torch.no_grad():
                save_image_grid(g(fixed_z.to(real.device)), os.path.join(args.output_dir,
                                                                         f"samples_step_{step}.png"), columns=10)
            g.train()
        if accelerator.is_main_process and is_save_step(args, step):
            save_gan(accelerator.unwrap_model(generator), accelerator.unwrap_model(discriminator), args, step)
    accelerator.wait_for_everyone()
    step = loop.step
    metrics = {}
    if accelerator.is_main_process:
        g = accelerator.unwrap_model(generator).eval()
        save_gan(g, accelerator.unwrap_model(discriminator), args, step)
        samples = (g.sample(args.num_eval_samples, torch.Generator().manual_seed(args.seed + 1)).cpu()
                   if args.num_eval_samples else None)
        metrics = report(args, "gan", split, samples, {"steps": step, "spectral_norm": not args.no_spectral_norm,
                                                       "r1_gamma": args.r1_gamma})
    loop.end()
    logger.info("saved to %s (generator/, discriminator/, samples.png, metrics.json)", args.output_dir)
    return metrics


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the global batch: the per-channel sums are added
    over the processes (``torch.distributed.nn.functional.all_reduce``, which carries the gradient back to every
    process's rows), so N processes normalise as one process with their batches joined and keep its running
    statistics (torch's ``SyncBatchNorm`` does the same on GPUs only). Mean first, then the centred squares, as
    ``nn.BatchNorm2d``'s two-pass variance. Without a process group it is ``nn.BatchNorm2d``; in eval mode it uses
    the running statistics and communicates nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not torch.distributed.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        torch.distributed.all_reduce(count)
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        variance = all_reduce(centred.square().sum(dims)) / count
        with torch.no_grad():
            self._track(mean, variance * count / (count - 1))
        out = centred * torch.rsqrt(variance + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out

    def _track(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        if self.track_running_stats:
            self.num_batches_tracked += 1
            momentum = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(unbiased_variance, momentum)


def global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by a :class:`GlobalBatchNorm2d` holding the same
    parameters and buffers (the state dict's names and values are unchanged)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement.train(child.training))
        else:
            global_batch_norm(child)
    return module


def save_gan(generator: HfGenGANGenerator, discriminator: HfGenGANDiscriminator, args: argparse.Namespace,
             step: int) -> None:
    """Write both networks to OUTPUT_DIR (a checkpoint along the way, replaced by the final ones at the end)."""
    generator.save_pretrained(os.path.join(args.output_dir, "generator"))
    discriminator.save_pretrained(os.path.join(args.output_dir, "discriminator"))
    logger.info("step %d: generator and discriminator saved to %s", step, args.output_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
