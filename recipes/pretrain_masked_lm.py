#!/usr/bin/env python
"""Pre-train an hfgen encoder (BERT-like by default; any attention/softmax/position variant, DeBERTa's
disentangled attention included) with masked language modelling on the Python reference manual that ships with
CPython, and save a Hub-ready folder (fill-mask, and the start of recipes/finetune_classification.py).

    python recipes/pretrain_masked_lm.py recipes/configs/mlm_tiny.yaml
    python recipes/pretrain_masked_lm.py recipes/configs/mlm_tiny.yaml --position_embedding disentangled
    python recipes/pretrain_masked_lm.py --output_dir outputs/mlm_4_layers --num_hidden_layers 4 --mlm_probability 0.2
    torchrun --nproc_per_node 2 recipes/pretrain_masked_lm.py recipes/configs/mlm_tiny.yaml
    python recipes/pretrain_masked_lm.py --train_file corpus.jsonl --text_column body --streaming true \
        --validation_file valid.jsonl --max_steps 1000 --output_dir outputs/my_mlm   # your own text, streamed

A YAML file (first argument) gives values for any of the flags below; flags after it override them. Without
CUDA the run defaults to the CPU (use_cpu, gloo for DDP, no bf16/fp16). The labelled task's test paragraphs are
left out of the text unless --hold_out_task_test false.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser, TrainingArguments

from hfgen.training.arguments import EncoderModelArguments
from hfgen.training.masked_lm import MaskedLMDataArguments, pretrain_masked_lm
from hfgen.training.recipe_common import build_recipe_parser, check_model_folder, parse_recipe_arguments

logger = logging.getLogger(__name__)

# What --model_name_or_path may name; checked before transformers would look a missing folder up on the Hub.
VALID_MODEL_FOLDERS = ("an encoder folder written by an earlier run (e.g. outputs/mlm_tiny), or unset for a "
                       "fresh model")


def build_parser() -> HfArgumentParser:
    return build_recipe_parser((EncoderModelArguments, MaskedLMDataArguments, TrainingArguments),
                               description=__doc__.split("\n\n")[0],
                               epilog="Model fields left unset take HfGenEncoderConfig's defaults (BERT-like).",
                               output_dir="outputs/mlm")


def parse_arguments(argv: list[str]) -> tuple[EncoderModelArguments, MaskedLMDataArguments, TrainingArguments]:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values become defaults, flags override them."""
    return parse_recipe_arguments(build_parser(), argv)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_model_folder(model_args.model_name_or_path, "--model_name_or_path", VALID_MODEL_FOLDERS)
    result = pretrain_masked_lm(model_args, data_args, training_args)
    if training_args.process_index == 0:
        logger.info(f"masked-token validation perplexity: {result.eval_perplexity_before:.2f} before, "
                    f"{result.eval_perplexity_after:.2f} after; saved to {result.output_dir}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
