#!/usr/bin/env python
"""Seed 003's transfer-learning claim, measured: pre-train an encoder with masked LM and an encoder-decoder with span
corruption on the Python reference manual (the labelled task's test paragraphs held out), then fine-tune each and
the same architecture from scratch, with the same budget, on growing numbers of labelled paragraphs (which part
of the Python documentation a paragraph comes from). Writes results.json, results.md and accuracy_vs_examples.png.

    python recipes/transfer_learning.py                              # defaults: both families, 3 seeds
    python recipes/transfer_learning.py recipes/configs/transfer_tiny.yaml --train_sizes 50,all
    python recipes/transfer_learning.py --families encoder --pretrained_dirs encoder=outputs/mlm_tiny
    python recipes/transfer_learning.py --merge_from outputs/a,outputs/b --output_dir outputs/transfer

Fine-tuning runs are reported as mean +- standard deviation over --finetune_seeds. Families or seeds may run as
separate processes (each with its own --output_dir); --merge_from combines their results into one table and plot.

A YAML file (first argument) gives values for any of the flags below; flags after it override them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hfgen.training.recipe_common import check_model_folder, parse_recipe_arguments
from hfgen.training.transfer import TransferArguments, run_transfer_experiment

logger = logging.getLogger(__name__)
EPILOG = ("A one-process measurement on the embedded labelled task (its test paragraphs are kept out of pre-training): "
          "run it with python (its runs under torchrun are not checked against one process); families or seeds may "
          "run as separate processes. To start from your own text, pre-train with recipes/pretrain_masked_lm.py or "
          "recipes/pretrain_span_corruption.py --train_file / --dataset_name and pass the folder with "
          "--pretrained_dirs encoder=FOLDER (or seq2seq=FOLDER).")


def build_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser((TransferArguments,), description=__doc__.split("\n\n")[0], epilog=EPILOG)


def parse_arguments(argv: list[str]) -> TransferArguments:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values become defaults, flags override them."""
    (args,) = parse_recipe_arguments(build_parser(), argv)
    args.check()  # a bad value fails here, before any training
    for folder in args.pretrained_dir_map().values():
        check_model_folder(folder, "--pretrained_dirs", "family=folder pairs whose folders an earlier run wrote, "
                           "e.g. encoder=outputs/mlm_tiny", hub=False)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    outcome = run_transfer_experiment(args)
    logger.info(Path(outcome["files"]["markdown"]).read_text())
    logger.info(f"wall time {outcome['wall_time_s']:.0f} s; saved to {args.output_dir} "
                f"({', '.join(outcome['files'].values())})")
    return outcome


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
