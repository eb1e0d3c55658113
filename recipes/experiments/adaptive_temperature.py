#!/usr/bin/env python
"""Issue 8, section 1: does adaptive temperature keep attention sharp out of distribution? (seed 000;
Velickovic et al. 2024, "softmax is not enough (for sharp out-of-distribution)", arXiv:2410.01104)

Max retrieval: train an item MLP + one attention head + classifier MLP with the standard softmax on sets of 16
items; evaluate on 16, 32, ..., 4096 items with the standard softmax and with seed 000's adaptive temperature
(hfgen.models.softmax.adaptive_temperature_softmax) switched on at inference only. Several seeds per cell.

    OMP_NUM_THREADS=1 python recipes/experiments/adaptive_temperature.py            # default: a few minutes
    python recipes/experiments/adaptive_temperature.py --seeds 0 1 2 --steps 3000   # longer

Writes results.md / results.json / config.json / adaptive_temperature.png into --output_dir.

A one-process measurement of small models: run it with python, not torchrun (each process would run the whole
experiment); run seeds or settings as separate processes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from hfgen.experiments import papers
from hfgen.experiments.max_retrieval import evaluate_max_retrieval, train_max_retrieval
from hfgen.experiments.report import aggregate, new_figure, write_results

VARIANTS = ("standard", "adaptive_temperature")
PAPER = papers.ADAPTIVE_TEMPERATURE


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default after its help."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one trained model per seed")
    p.add_argument("--train_items", type=int, default=16, help="set size during training")
    p.add_argument("--eval_sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                   help="set sizes evaluated (beyond the training size: how the softmax temperature generalises)")
    p.add_argument("--eval_sets", type=int, default=256, help="sets per evaluated size")
    p.add_argument("--num_classes", type=int, default=10, help="classes of the set items")
    p.add_argument("--hidden_size", type=int, default=32, help="width of each trained model")
    p.add_argument("--steps", type=int, default=1000, help="training steps per model")
    p.add_argument("--batch_size", type=int, default=128, help="examples per training step")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="peak learning rate (AdamW)")
    p.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results" / "adaptive_temperature"),
                   help="where results.json, results.md and the plot are written")
    p.add_argument("--rerender", action="store_true",
                   help="only rewrite results.md, the plot and the discussion from the results.json in --output_dir")
    return p.parse_args(argv)


def discussion(rows: list[dict], train_items: int, num_classes: int) -> str:
    """Measured numbers, the paper's setup (``papers.ADAPTIVE_TEMPERATURE``) and a verdict per part of the claim,
    each judged against the seeds' spread."""
    def stat(variant, size, metric):
        row = next(r for r in rows if r["cell"] == {"softmax": variant, "set_size": size})
        return row["summary"][metric]["mean"], row["summary"][metric]["std"]

    def diff(size, metric):  # adaptive - standard, and whether it exceeds the seeds' combined spread
        (a, sa), (b, sb) = stat("adaptive_temperature", size, metric), stat("standard", size, metric)
        return a - b, abs(a - b) > math.hypot(sa, sb)

    sizes = sorted({r["cell"]["set_size"] for r in rows})
    lo, hi = sizes[0], sizes[-1]
    (acc_lo, _), (acc_hi, _) = stat("standard", lo, "accuracy"), stat("standard", hi, "accuracy")
    entropy = [stat("standard", s, "entropy")[0] for s in sizes]
    max_coef = [stat("standard", s, "max_coefficient")[0] for s in sizes]
    disperses = all(a < b for a, b in zip(entropy, entropy[1:])) and all(a > b for a, b in zip(max_coef, max_coef[1:]))
    ood = [s for s in sizes if s > train_items]
    gains = {s: diff(s, "accuracy") for s in ood}
    sharper = [s for s in ood if diff(s, "max_coefficient")[0] > 0]
    clear_gains = [s for s, (g, clear) in gains.items() if g > 0 and clear]
    in_dist = [s for s in sizes if s <= train_items]
    id_diffs = {s: diff(s, "accuracy") for s in in_dist}
    id_unchanged = all(not clear for _, clear in id_diffs.values())
    chance = 1 / num_classes
    near_chance = [s for s in ood if max(stat(v, s, "accuracy")[0] for v in VARIANTS) < 2 * chance]
    best = max(gains, key=lambda s: gains[s][0]) if gains else None
    lines = [
        f"**Measured.** With the standard softmax, accuracy falls from {acc_lo:.3f} at {lo} items to {acc_hi:.3f} at "
        f"{hi} items (chance: {chance:.2f}), and the attention entropy rises from {entropy[0]:.2f} to "
        f"{entropy[-1]:.2f} nats (the uniform distribution over {hi} items has {math.log(hi):.2f}). Adaptive "
        f"temperature at inference gives a sharper max coefficient at {len(sharper)} of {len(ood)} "
        "out-of-distribution sizes; accuracy change per size (adaptive − standard; * = larger than the seeds' "
        "combined spread): " + ", ".join(f"{s}: {g:+.3f}{'*' if c else ''}" for s, (g, c) in gains.items())
        + ". In distribution: " + ", ".join(f"{s} items {g:+.3f}{'*' if c else ''}" for s, (g, c) in id_diffs.items())
        + ".",
        "",
        f"**Paper.** {PAPER}",
        "",
        "**Agreement, part by part.** (1) Dispersion with set size: "
        + ("reproduced — entropy rises and the max coefficient falls at every step of set size."
           if disperses else "NOT monotonic here — see the table.")
        + f" (2) Adaptive temperature slows it: sharper at {len(sharper)} of {len(ood)} larger sizes; accuracy "
        f"clearly better (beyond the spread) at {len(clear_gains)} of {len(ood)}"
        + (f", most at {best} items ({gains[best][0]:+.3f})" if best is not None else "") + " — "
        + ("agrees." if len(clear_gains) >= max(1, len(ood) // 2) else "only partly reproduced at this scale.")
        + " (3) In-distribution accuracy unchanged: "
        + ("agrees (every difference is within the seeds' spread)." if id_unchanged else
           "DISAGREES here: the in-distribution accuracy changes by more than the seeds' spread.")
        + (f" At {', '.join(map(str, near_chance))} items both heads are below twice chance, so gains there are "
           "small in absolute terms." if near_chance else "")
        + " Seed 000's polynomial falls below 1 above an entropy of about 5.9 nats and beta is then clamped to 1 "
          "(also below 0.5), so once the standard head is nearly uniform the fix can no longer sharpen it. The size "
          "of the effect cannot be compared with the paper's: no per-size numbers of theirs were found in stored "
          "text.",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    started = time.time()
    args = parse_args(argv)
    if args.rerender:
        saved = json.loads((Path(args.output_dir) / "results.json").read_text())
        rows = [{k: v for k, v in row.items() if k != "summary"} for row in saved["rows"]]
        return render(Path(args.output_dir), saved["config"], rows, environment=saved.get("environment"))
    if not args.seeds:
        raise ValueError("--seeds needs at least one seed")
    per_seed = {(v, n): {"accuracy": [], "entropy": [], "max_coefficient": [], "target_coefficient": []}
                for v in VARIANTS for n in args.eval_sizes}
    final_losses = []
    for seed in args.seeds:
        model, losses = train_max_retrieval(seed, args.num_classes, args.hidden_size, args.train_items, args.steps,
                                            args.batch_size, args.learning_rate, progress=True)
        model.eval()
        final_losses.append(sum(losses[-20:]) / len(losses[-20:]))
        for n in args.eval_sizes:
            for v in VARIANTS:
                metrics = evaluate_max_retrieval(model, n, args.eval_sets, v, seed=10_000 + seed,
                                                 num_classes=args.num_classes)
                for k, value in metrics.items():
                    per_seed[(v, n)][k].append(value)
            print(f"seed {seed} size {n}: " + ", ".join(
                f"{v} acc {per_seed[(v, n)]['accuracy'][-1]:.3f}" for v in VARIANTS), flush=True)
    rows = [{"cell": {"softmax": v, "set_size": n}, "metrics": per_seed[(v, n)]} for v in VARIANTS
            for n in args.eval_sizes]

    config = {**vars(args), "experiment": "adaptive_temperature", "train_softmax": "standard",
              "final_train_loss_per_seed": final_losses}
    return render(Path(args.output_dir), config, rows, started=started)


def render(out: Path, config: dict, rows: list[dict], started: float | None = None,
           environment: dict | None = None) -> dict:
    """Plot, table and discussion from the per-seed ``rows`` (also used by ``--rerender``)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = aggregate(rows)
    train_items, seeds = config["train_items"], config["seeds"]
    figure, axes = new_figure(3, width=4.2)
    for metric, ax in zip(("accuracy", "entropy", "max_coefficient"), axes):
        for v in VARIANTS:
            cells = [r for r in summary if r["cell"]["softmax"] == v]
            x = [r["cell"]["set_size"] for r in cells]
            y = [r["summary"][metric]["mean"] for r in cells]
            e = [r["summary"][metric]["std"] for r in cells]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=v)
        ax.axvline(train_items, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("set size (items)")
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"max retrieval, trained on {train_items} items ({len(seeds)} seeds, mean ± std)")
    figure.tight_layout()
    figure.savefig(out / "adaptive_temperature.png")
    return write_results(out, "Adaptive temperature out of distribution (max retrieval)", config, rows,
                         discussion=discussion(summary, train_items, config["num_classes"]),
                         metric_names=["accuracy", "entropy", "max_coefficient", "target_coefficient"],
                         plots=["adaptive_temperature.png"], started=started, environment=environment)


if __name__ == "__main__":
    main()
