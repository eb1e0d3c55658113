#!/usr/bin/env python
"""Issue 8, section 1: does adaptive temperature keep attention sharp out of distribution? (seed 000;
Velickovic et al. 2024, "softmax is not enough (for sharp out-of-distribution)", arXiv:2410.01104)

Max retrieval: train an item MLP + one attention head + classifier MLP with the standard softmax on sets of 16
items; evaluate on 16, 32, ..., 4096 items with the standard softmax and with seed 000's adaptive temperature
(hfgen.models.softmax.adaptive_temperature_softmax) switched on at inference only. Several seeds per cell.

    OMP_NUM_THREADS=1 python recipes/experiments/adaptive_temperature.py            # default: a few minutes
    python recipes/experiments/adaptive_temperature.py --seeds 0 1 2 --steps 3000   # longer

Writes results.md / results.json / config.json / adaptive_temperature.png into --output_dir.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


from hfgen.experiments.max_retrieval import evaluate_max_retrieval, train_max_retrieval
from hfgen.experiments.report import new_figure, write_results

VARIANTS = ("standard", "adaptive_temperature")
PAPER = (
    "Velickovic et al. (2024) train the same kind of model (item MLP, one attention head, output MLP) on sets of "
    "16 items and test on up to thousands: the attention coefficients disperse as the set grows (their Theorem 2 "
    "proves any softmax head must disperse), and adaptive temperature applied at inference slows this, improving "
    "out-of-distribution accuracy by a few points while leaving in-distribution accuracy unchanged; they call it "
    "an ad-hoc fix, not a cure. (Their exact figures are not quoted here from memory; see their Table 1 and "
    "Figure 5.)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one trained model per seed")
    p.add_argument("--train_items", type=int, default=16, help="set size during training")
    p.add_argument("--eval_sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--eval_sets", type=int, default=256, help="sets per evaluated size")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--hidden_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results" / "adaptive_temperature"))
    return p.parse_args(argv)


def discussion(rows: list[dict], train_items: int) -> str:
    def mean(variant, size, metric):
        row = next(r for r in rows if r["cell"] == {"softmax": variant, "set_size": size})
        return row["summary"][metric]["mean"], row["summary"][metric]["std"]

    sizes = sorted({r["cell"]["set_size"] for r in rows})
    lo, hi = sizes[0], sizes[-1]
    (acc_lo, _), (acc_hi, _) = mean("standard", lo, "accuracy"), mean("standard", hi, "accuracy")
    (ent_lo, _), (ent_hi, _) = mean("standard", lo, "entropy"), mean("standard", hi, "entropy")
    ood = [s for s in sizes if s > train_items]
    gains = {s: mean("adaptive_temperature", s, "accuracy")[0] - mean("standard", s, "accuracy")[0] for s in ood}
    sharper = [s for s in ood if mean("adaptive_temperature", s, "max_coefficient")[0]
               > mean("standard", s, "max_coefficient")[0]]
    in_dist = [s for s in sizes if s <= train_items]
    id_gap = max((abs(mean("adaptive_temperature", s, "accuracy")[0] - mean("standard", s, "accuracy")[0])
                  for s in in_dist), default=float("nan"))
    lines = [
        f"**Measured.** With the standard softmax, accuracy falls from {acc_lo:.3f} at {lo} items to {acc_hi:.3f} at "
        f"{hi} items, and the attention entropy rises from {ent_lo:.2f} to {ent_hi:.2f} nats (the uniform "
        f"distribution over {hi} items has {math.log(hi):.2f}): sharpness decays with set size. "
        f"Adaptive temperature at inference gives a sharper max coefficient at {len(sharper)} of {len(ood)} "
        f"out-of-distribution sizes; accuracy change per size (adaptive − standard): "
        + ", ".join(f"{s}: {g:+.3f}" for s, g in gains.items())
        + f". In distribution (≤ {train_items} items) the largest accuracy difference is {id_gap:.3f}.",
        "",
        f"**Paper.** {PAPER}",
        "",
        "**Agreement.** "
        + ("Agrees: dispersion with set size is reproduced, and adaptive temperature slows it without changing "
           "in-distribution accuracy." if len(sharper) >= len(ood) // 2 and id_gap < 0.02 and
           sum(g > 0 for g in gains.values()) >= len(ood) // 2 else
           "Partly disagrees at this scale: see the numbers above.")
        + " Note that seed 000's polynomial is clamped to beta = 1 above an entropy of about 5.9 nats (and below "
          "0.5), so on the very largest sets, once the standard head is nearly uniform, it can no longer help: "
          "the fix is bounded by the range of entropies the polynomial was fitted on.",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
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

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from hfgen.experiments.report import aggregate

    summary = aggregate(rows)
    figure, axes = new_figure(3, width=4.2)
    for metric, ax in zip(("accuracy", "entropy", "max_coefficient"), axes):
        for v in VARIANTS:
            cells = [r for r in summary if r["cell"]["softmax"] == v]
            x = [r["cell"]["set_size"] for r in cells]
            y = [r["summary"][metric]["mean"] for r in cells]
            e = [r["summary"][metric]["std"] for r in cells]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=v)
        ax.axvline(args.train_items, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("set size (items)")
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"max retrieval, trained on {args.train_items} items ({len(args.seeds)} seeds, mean ± std)")
    figure.tight_layout()
    figure.savefig(out / "adaptive_temperature.png")
    config = {**vars(args), "experiment": "adaptive_temperature", "train_softmax": "standard",
              "final_train_loss_per_seed": final_losses}
    return write_results(out, "Adaptive temperature out of distribution (max retrieval)", config, rows,
                         discussion=discussion(summary, args.train_items),
                         metric_names=["accuracy", "entropy", "max_coefficient", "target_coefficient"],
                         plots=["adaptive_temperature.png"])


if __name__ == "__main__":
    main()
