#!/usr/bin/env python
"""Synthetic tables from hfgen_tabular against CTGAN and TVAE (sdv) and GReaT (be-great, and hfgen's own rows-as-text
route), in one run, on scikit-learn's bundled tables.

    /work/bench-tabular/bin/python benchmarks/tabular.py --output_dir outputs/bench_tabular
    /work/bench-tabular/bin/python benchmarks/tabular.py --datasets iris --great_datasets iris --great_steps 200

Runs in its own virtual environment (sdv 2.0 needs pandas < 3; benchmarks/requirements-tabular.txt has the exact
versions): ``python3 -m venv /work/bench-tabular; pip install torch==2.13.0; pip install -r
benchmarks/requirements-tabular.txt; pip install --no-deps -e .``.

For every table: an 80/20 split (seed), every generator fitted on the 80 % and asked for as many rows; then
sdmetrics' quality report (column shapes, column-pair trends, their mean), machine-learning efficacy (a random
forest trained on the synthetic rows, scored on the real 20 %: macro F1 or R^2; the same forest trained on the real
80 % as the reference) and the median distance to the closest real training record (DCR; the real 20 % as the
reference). cpu_seconds: the process's CPU time to fit and sample (one torch thread; wall time on the shared
machine counts other people's work). Writes results.json and tabular.png to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import pandas as pd
import torch

from hfgen.data.tables import SKLEARN_TABLES, load_sklearn_table, split_table
from hfgen.training.tabular import (
    distance_to_closest_record,
    machine_learning_efficacy,
    sample_great,
    sample_table,
    tabular_config,
    train_great,
    train_tabular,
)

logger = logging.getLogger(__name__)
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GENERATORS = ("hfgen_tabular", "ctgan", "tvae", "great_hfgen", "be_great")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=SKLEARN_TABLES, default=list(SKLEARN_TABLES),
                        help="tables to run")
    parser.add_argument("--generators", nargs="+", choices=GENERATORS, default=["hfgen_tabular", "ctgan", "tvae"],
                        help="generators to run on every table (GReaT routes: --great_datasets)")
    parser.add_argument("--great_datasets", nargs="*", choices=SKLEARN_TABLES, default=["iris"],
                        help="tables on which the two GReaT routes (SmolLM2-135M on 2 CPU cores) also run")
    parser.add_argument("--max_steps", type=int, default=800, help="hfgen_tabular training steps")
    parser.add_argument("--epochs", type=int, default=300, help="CTGAN / TVAE epochs (sdv's default)")
    parser.add_argument("--great_steps", type=int, default=200, help="fine-tuning steps of each GReaT route")
    parser.add_argument("--seed", type=int, default=0, help="split, training and sampling")
    parser.add_argument("--output_dir", default="outputs/bench_tabular", help="results.json and tabular.png")
    parser.add_argument("--merge", nargs="*", default=None,
                        help="run nothing: join the results.json of these output folders (runs split by table)")
    return parser


def fit_hfgen(train: pd.DataFrame, args, workdir: str) -> pd.DataFrame:
    from hfgen.models import HfGenTabularForGeneration

    torch.manual_seed(args.seed)
    fit, validation = split_table(train, 0.15, args.seed + 1)
    model = HfGenTabularForGeneration(tabular_config(train))
    trainer = train_tabular(model, fit, validation, workdir, max_steps=args.max_steps, seed=args.seed)
    return sample_table(trainer.model, len(train), seed=args.seed)


def detect_metadata(frame: pd.DataFrame):
    """sdv's metadata of one table, without key detection (a column of unique numbers is data here, not an id)."""
    from sdv.metadata import Metadata

    return Metadata.detect_from_dataframes({"table": frame}, infer_keys=None)


def fit_sdv(kind: str, train: pd.DataFrame, args) -> pd.DataFrame:
    from sdv.single_table import CTGANSynthesizer, TVAESynthesizer

    torch.manual_seed(args.seed)
    metadata = detect_metadata(train)
    synthesizer = (CTGANSynthesizer if kind == "ctgan" else TVAESynthesizer)(metadata, epochs=args.epochs)
    synthesizer.fit({"table": train})  # (sdv 2.0: single tables too are given as {name: frame})
    sample = synthesizer.sample(len(train))
    return sample["table"] if isinstance(sample, dict) else sample


def fit_be_great(train: pd.DataFrame, args, workdir: str) -> pd.DataFrame:
    """be-great's GReaT on the same SmolLM2 weights (hfgen's converted folder, loaded by transformers as the
    registered hfgen decoder), LoRA as be-great sets it up."""
    from be_great import GReaT

    from hfgen.pretrained import default_cache_dir, load_smollm2

    load_smollm2()  # converts the GGUF once
    folder = str(default_cache_dir() / "smollm2-135m-instruct")
    batch = 8
    epochs = max(1, round(args.great_steps * batch / len(train)))
    model = GReaT(llm=folder, experiment_dir=workdir, epochs=epochs, batch_size=batch, efficient_finetuning="lora",
                  lora_config={"target_modules": LLAMA_LINEAR}, use_cpu=True, report_to=[], save_strategy="no")
    model.fit(train)
    return model.sample(len(train), k=32, max_length=400, device="cpu")


def fit_great_hfgen(train: pd.DataFrame, args, workdir: str) -> tuple[pd.DataFrame, float]:
    from hfgen.models.processing_hfgen_tabular import HfGenTabularProcessor

    processor = HfGenTabularProcessor.from_config(tabular_config(train))
    model, tokenizer = train_great(train, workdir, max_steps=args.great_steps, seed=args.seed)
    return sample_great(model, tokenizer, processor, len(train), seed=args.seed)


def quality(real: pd.DataFrame, synthetic: pd.DataFrame) -> dict:
    from sdmetrics.reports.single_table import QualityReport

    metadata = detect_metadata(real).to_dict()["tables"]["table"]
    report = QualityReport()
    report.generate(real, synthetic[list(real.columns)], metadata, verbose=False)
    scores = report.get_properties().set_index("Property")["Score"]
    return {"quality": float(report.get_score()), "column_shapes": float(scores["Column Shapes"]),
            "column_pair_trends": float(scores["Column Pair Trends"])}


def evaluate(name: str, synthetic: pd.DataFrame, train, test, table, seconds: float) -> dict:
    synthetic = synthetic.astype({c: train[c].dtype for c in train.columns if train[c].dtype == object})
    return {"generator": name, "rows": len(synthetic), "cpu_seconds": round(seconds, 1), **quality(train, synthetic),
            "efficacy": machine_learning_efficacy(synthetic, test, table.target, table.task),
            "dcr": distance_to_closest_record(synthetic, train)}


def run_table(name: str, args) -> list[dict]:
    table = load_sklearn_table(name)
    train, test = split_table(table.frame, 0.2, args.seed)
    rows = [{"generator": "real (reference)", "rows": len(train), "cpu_seconds": 0.0, **quality(train, test),
             "efficacy": machine_learning_efficacy(train, test, table.target, table.task),
             "dcr": distance_to_closest_record(test, train)}]
    generators = list(args.generators) + ([g for g in ("great_hfgen", "be_great") if g not in args.generators]
                                          if name in args.great_datasets else [])
    for generator in generators:
        workdir = os.path.join(args.output_dir, name, generator)
        start = time.process_time()
        try:
            result = run_generator(generator, train, args, workdir)
        except Exception as error:  # a competitor that fails on a table is reported, not fatal to the run
            logger.exception("%s on %s failed", generator, name)
            rows.append({"generator": generator, "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        synthetic, extra = result if isinstance(result, tuple) else (result, None)
        synthetic.to_csv(os.path.join(workdir, "synthetic.csv"), index=False)
        rows.append(evaluate(generator, synthetic, train, test, table, time.process_time() - start)
                    | ({"parsed_fraction": extra} if extra is not None else {}))
        logger.info("%s %s: %s", name, generator, rows[-1])
    return [{"dataset": name, **row} for row in rows]


def run_generator(generator: str, train: pd.DataFrame, args, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    if generator == "hfgen_tabular":
        return fit_hfgen(train, args, workdir)
    if generator in ("ctgan", "tvae"):
        return fit_sdv(generator, train, args)
    if generator == "be_great":
        return fit_be_great(train, args, workdir)
    return fit_great_hfgen(train, args, workdir)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame([r for r in results if "error" not in r])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric, title in zip(axes, ("quality", "efficacy", "dcr"),
                                 ("sdmetrics quality score", "efficacy (F1 / R^2, test on real)",
                                  "median distance to closest record")):
        frame.pivot(index="dataset", columns="generator", values=metric).plot.bar(ax=ax, rot=0)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown_table(results: list[dict]) -> str:
    """The RESULTS.md table: one row per table and generator, best generated value of each table in bold."""
    columns = ("quality", "column_shapes", "column_pair_trends", "efficacy", "dcr", "cpu_seconds")
    lines = ["| table | generator | " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    for row in results:
        if "error" in row:
            lines.append(f"| {row['dataset']} | {row['generator']} | failed: {row['error'][:80]} |")
            continue
        generated = [r for r in results if r["dataset"] == row["dataset"] and "error" not in r
                     and not r["generator"].startswith("real")]
        cells = []
        for column in columns:
            value = row.get(column, float("nan"))
            best = column in ("quality", "column_shapes", "column_pair_trends", "efficacy") and \
                not row["generator"].startswith("real") and value == max(r.get(column, float("nan")) for r in generated)
            cells.append(f"**{value:.3f}**" if best else f"{value:.3f}" if column != "cpu_seconds" else f"{value:.0f}")
        lines.append(f"| {row['dataset']} | {row['generator']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.merge is not None:
        rows = [row for folder in args.merge for row in json.load(open(os.path.join(folder, "results.json")))]
        # One row per table and generator (a table's real reference row from the first folder that has it).
        results = list({(r["dataset"], r["generator"]): r for r in reversed(rows)}.values())[::-1]
    else:
        results = [row for name in args.datasets for row in run_table(name, args)]
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    plot(results, os.path.join(args.output_dir, "tabular.png"))
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(markdown_table(results) + "\n")
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
