#!/usr/bin/env python
"""Pre-train an hfgen decoder (any attention/softmax/position variant) with causal language modelling on the
Python reference manual that ships with CPython, and save a Hub-ready folder.

    python recipes/pretrain_causal_lm.py recipes/configs/pretrain_tiny.yaml
    python recipes/pretrain_causal_lm.py recipes/configs/pretrain_tiny.yaml --softmax_variant off_by_one
    python recipes/pretrain_causal_lm.py --output_dir outputs/decoder_4_layers --num_hidden_layers 4 --max_steps 200
    torchrun --nproc_per_node 2 recipes/pretrain_causal_lm.py recipes/configs/pretrain_tiny.yaml
    python recipes/pretrain_causal_lm.py --train_file my_text.txt --validation_file my_valid.txt \
        --output_dir outputs/my_lm          # your own text: .txt, .jsonl, .csv, .parquet, or --dataset_name

A YAML file (first argument) gives values for any of the flags below; flags after it override them. Without
CUDA the run defaults to the CPU (use_cpu, gloo for DDP, no bf16/fp16).
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser, TrainingArguments

from hfgen.training.arguments import DataArguments, ModelArguments
from hfgen.training.pretrain import pretrain
from hfgen.training.recipe_common import build_recipe_parser, check_model_folder, parse_recipe_arguments

logger = logging.getLogger(__name__)

# What --model_name_or_path may name; checked before transformers would look a missing folder up on the Hub.
VALID_MODEL_FOLDERS = ("a causal-LM folder written by an earlier run (e.g. outputs/pretrain_tiny, "
                       "outputs/demo), or unset for a fresh model")


def build_parser() -> HfArgumentParser:
    return build_recipe_parser((ModelArguments, DataArguments, TrainingArguments),
                               description=__doc__.split("\n\n")[0],
                               epilog="Model fields left unset take HfGenDecoderConfig's defaults.",
                               output_dir="outputs/pretrain")


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values become defaults, flags override them."""
    return parse_recipe_arguments(build_parser(), argv)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_model_folder(model_args.model_name_or_path, "--model_name_or_path", VALID_MODEL_FOLDERS)
    result = pretrain(model_args, data_args, training_args)
    if training_args.process_index == 0:
        logger.info(f"validation perplexity: {result.eval_perplexity_before:.2f} before, "
                    f"{result.eval_perplexity_after:.2f} after; saved to {result.output_dir}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
