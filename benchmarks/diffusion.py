#!/usr/bin/env python
"""Speed of the hfgen UNet beside diffusers' own ``UNet2DModel`` of the same size (channels, levels, residual
blocks per level, attention levels and heads, GroupNorm groups), in one run: a training step (noise-prediction
MSE, AdamW) and 50-step DDIM sampling through the same HfGenDiffusionPipeline.

    python benchmarks/diffusion.py --quick      # a smoke run (small shapes, few steps); writes nothing
    python benchmarks/diffusion.py              # the full run; writes its section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

from common import CLOCK_HELP, CLOCKS, clock_description, interleaved, machine, paired_ratio, use_clock, write_section
from hfgen.diffusion import HfGenDiffusionPipeline, HfGenUNet2DModel

SECTION = "## Diffusion UNet (`benchmarks/diffusion.py`)"
TARGET = 1.0
SIZES = {
    "tiny": dict(image=16, channels=(32, 64), heads=4, batch=32, sample_batch=16),
    "small": dict(image=32, channels=(64, 128, 128), heads=4, batch=32, sample_batch=16),
}
QUICK = dict(image=8, channels=(16, 32), heads=2, batch=8, sample_batch=4)


def build_pair(size: dict, device: str):
    """hfgen's UNet and diffusers' UNet2DModel with the same architecture; attention on every level but the
    first (and in the middle)."""
    levels = len(size["channels"])
    attention = tuple(i > 0 for i in range(levels))
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    reference = UNet2DModel(sample_size=size["image"], in_channels=1, out_channels=1,
                            block_out_channels=size["channels"], layers_per_block=1, down_block_types=down,
                            up_block_types=up, attention_head_dim=size["channels"][-1] // size["heads"],
                            norm_num_groups=8)
    hfgen = HfGenUNet2DModel.from_unet2d(reference)  # the same weights
    return {"diffusers": reference.to(device), "hfgen": hfgen.to(device)}


def train_step(model, images, device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    generator = torch.Generator().manual_seed(0)

    def step():
        noise = torch.randn(images.shape, generator=generator).to(device)
        t = torch.randint(0, 1000, (images.shape[0],), generator=generator).to(device)
        loss = F.mse_loss(model(scheduler.add_noise(images, noise, t), t).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sampling(model, batch: int, steps: int):
    pipe = HfGenDiffusionPipeline(unet=model.eval(), scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)

    def run():
        pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
             output_type="pt")

    return run


def row(what: str, work: float, times: dict, unit: str) -> dict:
    return dict(what=what, ref=work / statistics.median(times["diffusers"]),
                hfgen=work / statistics.median(times["hfgen"]),
                ratio=paired_ratio(times, "diffusers", "hfgen"), unit=unit)


def bench_size(name: str, size: dict, args, notes: list[str]) -> list[dict]:
    torch.manual_seed(0)
    models = build_pair(size, args.device)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    x = torch.randn(2, 1, size["image"], size["image"]).to(args.device)
    t = torch.tensor([10, 900]).to(args.device)
    with torch.no_grad():
        diff = (models["hfgen"](x, t).sample - models["diffusers"](x, t).sample).abs().max().item()
    notes.append(f"{name}: parameters diffusers {counts['diffusers']:,}, hfgen {counts['hfgen']:,} (weights converted "
                 f"with `HfGenUNet2DModel.from_unet2d`); max |prediction difference| = {diff:.1e}.")
    label = f"{name} ({size['image']}×{size['image']}, channels {list(size['channels'])})"
    images = torch.rand(size["batch"], 1, size["image"], size["image"]).to(args.device) * 2 - 1
    times = interleaved({k: train_step(m.train(), images, args.device) for k, m in models.items()}, args.device,
                        args.repeats)
    rows = [row(f"{label}: training step, batch {size['batch']}", size["batch"], times, "img/s")]
    steps = args.sampling_steps
    times = interleaved({k: sampling(m, size["sample_batch"], steps) for k, m in models.items()}, args.device,
                        args.repeats)
    rows.append(row(f"{label}: {steps}-step DDIM sampling, batch {size['sample_batch']}", size["sample_batch"],
                    times, "img/s"))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| measurement | diffusers UNet2DModel | hfgen UNet | hfgen / diffusers | target |",
             "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        verdict = f"≥ {TARGET:.1f}× {'PASS' if r['ratio'] >= TARGET else 'FAIL'}"
        lines.append(f"| {r['what']} | {r['ref']:,.1f} {r['unit']} | {r['hfgen']:,.1f} {r['unit']} | "
                     f"{r['ratio']:.2f}× | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small shape, 5 sampling steps; writes nothing")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5, quick 2)")
    parser.add_argument("--sampling_steps", type=int, default=None, help="DDIM steps (default 50, quick 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None, help=CLOCK_HELP)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = use_clock(args.clock, args.device)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.sampling_steps = args.sampling_steps or (5 if args.quick else 50)
    notes: list[str] = []
    sizes = {"quick": QUICK} if args.quick else {name: SIZES[name] for name in args.sizes}
    started, load_before = time.time(), os.getloadavg()
    rows = [r for name, size in sizes.items() for r in bench_size(name, size, args, notes)]
    elapsed, load_after = time.time() - started, os.getloadavg()
    notes.append(f"Load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_before)} before and "
                 f"{'/'.join(f'{x:.2f}' for x in load_after)} after the {elapsed / 60:.1f}-minute run (a shared "
                 f"machine: the interleaved ratios, not the absolute rates, are the result).")
    passed = sum(r["ratio"] >= TARGET for r in rows)
    body = "\n".join([
        f"{SECTION}, {args.device}, float32", "",
        f"{datetime.date.today()} · {machine(args.device)} · float32 · torch {torch.__version__} · "
        f"{args.repeats} interleaved repetitions, medians · {'quick' if args.quick else 'full'} run · timed by "
        f"{clock_description(args.clock)}", "",
        "Same architecture and weights on both sides (one residual block per down level, two per up level, attention on every "
        "level but the first and in the middle, GroupNorm 8, time embedding 4×channels); sampling through the same "
        "HfGenDiffusionPipeline with DDIM. hfgen / diffusers is the median of per-repetition ratios.", "",
        table(rows), "",
        *[f"- {n}" for n in notes],
        f"- {passed}/{len(rows)} speed targets met.",
    ])
    print(body)
    if not (args.quick or args.no_write):
        write_section(args.results, body)


if __name__ == "__main__":
    main()
