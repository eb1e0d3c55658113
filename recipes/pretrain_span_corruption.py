#!/usr/bin/env python
"""Pre-train an hfgen encoder-decoder (any attention/softmax/position variant; T5-like with
config_overrides) with T5's span corruption on the Python reference manual that ships with CPython, and save a
Hub-ready folder (text2text generation, and the start of recipes/finetune_classification.py). With
--objective bart_denoising it pre-trains with BART's objective instead (text infilling, sentence permutation; the
decoder writes the whole original block).

    python recipes/pretrain_span_corruption.py recipes/configs/span_corruption_tiny.yaml
    python recipes/pretrain_span_corruption.py recipes/configs/span_corruption_tiny.yaml --noise_density 0.3
    python recipes/pretrain_span_corruption.py --output_dir outputs/span_relative_bias \
        --position_embedding relative_bias
    python recipes/pretrain_span_corruption.py --output_dir outputs/bart_denoising --objective bart_denoising
    torchrun --nproc_per_node 2 recipes/pretrain_span_corruption.py recipes/configs/span_corruption_tiny.yaml
    python recipes/pretrain_span_corruption.py --dataset_name path/to/dataset_folder --output_dir outputs/my_t5

A YAML file (first argument) gives values for any of the flags below; flags after it override them. Without
CUDA the run defaults to the CPU (use_cpu, gloo for DDP, no bf16/fp16). block_size is the corrupted encoder
input; the labelled task's test paragraphs are left out of the text unless --hold_out_task_test false.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser, TrainingArguments

from hfgen.training.arguments import ModelArguments
from hfgen.training.recipe_common import build_recipe_parser, check_model_folder, parse_recipe_arguments
from hfgen.training.span_corruption import SpanCorruptionDataArguments, pretrain_span_corruption

logger = logging.getLogger(__name__)

# What --model_name_or_path may name; checked before transformers would look a missing folder up on the Hub.
VALID_MODEL_FOLDERS = ("an encoder-decoder folder written by an earlier run (e.g. "
                       "outputs/span_corruption_tiny), or unset for a fresh model")


def build_parser() -> HfArgumentParser:
    return build_recipe_parser((ModelArguments, SpanCorruptionDataArguments, TrainingArguments),
                               description=__doc__.split("\n\n")[0],
                               epilog="Model fields left unset take HfGenSeq2SeqConfig's defaults.",
                               output_dir="outputs/span_corruption")


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, SpanCorruptionDataArguments, TrainingArguments]:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values become defaults, flags override them."""
    return parse_recipe_arguments(build_parser(), argv)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_model_folder(model_args.model_name_or_path, "--model_name_or_path", VALID_MODEL_FOLDERS)
    result = pretrain_span_corruption(model_args, data_args, training_args)
    if training_args.process_index == 0:
        logger.info(f"target validation perplexity: {result.eval_perplexity_before:.2f} before, "
                    f"{result.eval_perplexity_after:.2f} after; saved to {result.output_dir}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
