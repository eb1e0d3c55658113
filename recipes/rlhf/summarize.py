#!/usr/bin/env python
"""Mean and spread over seeds of ``recipes/rlhf/run.py`` results: one row per run, then mean +- sample standard
deviation (and min..max) of every quantity the recipe's docstring quotes.

    for seed in 0 1 2; do python recipes/rlhf/run.py --seed $seed --output_dir outputs/rlhf_ppo_s$seed; done
    python recipes/rlhf/summarize.py outputs/rlhf_ppo_s0 outputs/rlhf_ppo_s1 outputs/rlhf_ppo_s2 \\
        --output recipes/rlhf/results/summary_ppo.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

logger = logging.getLogger("hfgen.recipes.rlhf.summarize")

# (name in the summary, path in results.json): the stages' own numbers, then each evaluation quantity of the SFT
# model ("before") and the tuned one ("after").
QUANTITIES = (
    ("sft_rule_success", ("stages", "sft", "rule_success")),
    ("reward_model_heldout_accuracy", ("stages", "reward_model", "heldout_accuracy_after")),
    *((f"{name}_{when}", (when, name)) for name in ("rule_success", "rule_success_heldout", "mean_reward",
                                                     "mean_words", "short_answers") for when in ("before", "after")),
    ("win_rate_vs_sft", ("after", "win_rate_vs_sft")),
    ("kl_to_sft", ("after", "kl_to_reference")),
)


def _get(results: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run values and, for each quantity present in every run, ``mean``, ``std`` (sample, 0 for one run),
    ``min`` and ``max``. Runs of different methods, rewards or RL settings are refused: their spread would mix
    settings with seeds."""
    if not runs:
        raise ValueError("No results to summarize.")
    settings = {json.dumps([run.get("method"), run.get("reward"), run.get("rl")], sort_keys=True) for run in runs}
    if len(settings) > 1:
        raise ValueError(f"The runs differ in method, reward or RL settings: {sorted(settings)}.")
    summary: dict[str, Any] = {"method": runs[0].get("method"), "reward": runs[0].get("reward"),
                               "rl": runs[0].get("rl"), "seeds": [run.get("seed") for run in runs],
                               "per_seed": {}, "stats": {}}
    for name, path in QUANTITIES:
        values = [_get(run, path) for run in runs]
        if any(value is None for value in values):
            continue
        summary["per_seed"][name] = values
        summary["stats"][name] = {"mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                  "min": min(values), "max": max(values)}
    timing = [run.get("timing", {}) for run in runs]
    walls = [sum(v for k, v in t.items() if k.endswith("_wall_s")) for t in timing]
    if all(walls):
        summary["wall_s_per_run"] = walls
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="Output folders of recipes/rlhf/run.py (or their results.json).")
    parser.add_argument("--output", default=None, help="Write the summary as JSON here (default: only log it).")
    args = parser.parse_args(argv)
    files = [Path(run) / "results.json" if Path(run).is_dir() else Path(run) for run in args.runs]
    summary = summarize([json.loads(path.read_text()) for path in files])
    for name, stats in summary["stats"].items():
        values = ", ".join(f"{value:.4g}" for value in summary["per_seed"][name])
        logger.info(f"{name:32s} {stats['mean']:.4g} +- {stats['std']:.2g}  [{values}]")
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2))
        logger.info(f"saved to {args.output}")
    return summary


if __name__ == "__main__":
    main()
