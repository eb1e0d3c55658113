#!/usr/bin/env python
"""Train the hfgen normalizing flow (actnorm, invertible 1x1 convolutions, affine couplings) on the shipped
digits by exact maximum likelihood with Accelerate; save it Hub-loadable and report held-out bits/dim and the
quality numbers of its samples.

    python recipes/train_flow.py --output_dir outputs/flow --max_train_steps 3000
    python recipes/train_flow.py --num_steps 8 --temperature 0.7

Images are dequantised with uniform noise of one intensity level (``2 / num_bins`` in ``[-1, 1]``) before the
likelihood, which makes bits/dim an honest bound for the discrete data.
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
from hfgen.diffusion import HfGenFlowModel  # noqa: E402


logger = logging.getLogger(__name__)

# CPU time of one core (OMP_NUM_THREADS=1), measured 2026-12-07 with getrusage on a shared machine: what the
# run takes on an idle one. The README quotes the same.
MAX_TRAIN_STEPS = 3000
STEPS_HELP = "training steps (the default: about 2 min in all on one core)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "flow")
    parser.add_argument("--num_steps", type=int, default=8, help="flow steps (actnorm, 1x1, coupling)")
    parser.add_argument("--hidden_channels", type=int, default=64, help="width of each coupling's network")
    parser.add_argument("--train_batch_size", type=int, default=64, help="images per step")
    parser.add_argument("--max_train_steps", type=int, default=MAX_TRAIN_STEPS, help=STEPS_HELP)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam's peak learning rate (cosine decay)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--save_images_steps", type=int, default=500, help="sample grid every N steps (0: never)")
    return parser


def dequantize(images: torch.Tensor, num_bins: int, generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Snap ``[-1, 1]`` images to ``num_bins`` levels and spread each uniformly over its bin (by ``noise``, uniform in
    [0, 1) and shaped as ``images``, or drawn with ``generator``)."""
    levels = ((images + 1) / 2 * (num_bins - 1)).round()
    if noise is None:
        noise = torch.rand(images.shape, generator=generator).to(images.device)
    return (levels + noise) / num_bins * 2 - 1


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    loop = TrainingLoop(args, "flow")
    accelerator = loop.accelerator
    split = load_split(args)
    model = HfGenFlowModel(in_channels=1, sample_size=args.image_size, num_steps=args.num_steps,
                           hidden_channels=args.hidden_channels)
    bins = model.config.num_bins
    with torch.no_grad():  # actnorm's data-dependent initialisation on one batch
        model.train()(dequantize(split.train_images[:512], bins))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    schedule = loop.scheduler(optimizer)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.train_images),
                                         batch_size=args.train_batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader, schedule = loop.prepare(model, optimizer, loader, schedule)
    os.makedirs(args.output_dir, exist_ok=True)
    for (images,) in loop.batches(loader):
        with accelerator.accumulate(model), accelerator.autocast():
            out = model(dequantize(images, bins, noise=loop.draw("rand", tuple(images.shape))))
            accelerator.backward(out.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        if not loop.step_done({"bits_per_dim": out.bits_per_dim.mean().item()}):
            continue
        step = loop.step
        if accelerator.is_main_process and args.save_images_steps and step % args.save_images_steps == 0:
            flow = accelerator.unwrap_model(model).eval()
            save_image_grid(flow.sample(20, torch.Generator().manual_seed(args.seed), args.temperature).clamp(-1, 1),
                            os.path.join(args.output_dir, f"samples_step_{step}.png"), columns=10)
            flow.train()
        if accelerator.is_main_process and is_save_step(args, step):
            save_flow(accelerator.unwrap_model(model), args, step)
    accelerator.wait_for_everyone()
    step = loop.step
    metrics = {}
    if accelerator.is_main_process:
        flow = accelerator.unwrap_model(model).eval()
        save_flow(flow, args, step)
        with torch.no_grad():
            held = flow(dequantize(split.test_images, bins, torch.Generator().manual_seed(args.seed)).to(flow.device))
        samples = (flow.sample(args.num_eval_samples, torch.Generator().manual_seed(args.seed + 1),
                               args.temperature).cpu().clamp(-1, 1) if args.num_eval_samples else None)
        metrics = report(args, "flow", split, samples, {"bits_per_dim": held.bits_per_dim.mean().item(),
                                                         "steps": step, "temperature": args.temperature})
    loop.end()
    logger.info("saved to %s (flow/, samples.png, metrics.json)", args.output_dir)
    return metrics


def save_flow(flow: HfGenFlowModel, args: argparse.Namespace, step: int) -> None:
    """Write the flow to OUTPUT_DIR/flow (a checkpoint along the way, replaced by the final model at the end)."""
    flow.save_pretrained(os.path.join(args.output_dir, "flow"))
    logger.info("step %d: flow saved to %s", step, os.path.join(args.output_dir, "flow"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
