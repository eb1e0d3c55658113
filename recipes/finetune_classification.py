#!/usr/bin/env python
"""Fine-tune an hfgen model -- from scratch or from a pre-trained folder (e.g. the output of
recipes/pretrain_masked_lm.py or recipes/pretrain_span_corruption.py) -- to classify paragraphs of the Python
documentation by the part they come from (7 classes, fixed train/test split), scored with accuracy and macro-F1
through evaluate and the metric module hfgen ships.

    python recipes/finetune_classification.py recipes/configs/classification_tiny.yaml
    python recipes/finetune_classification.py recipes/configs/classification_tiny.yaml \
        --model_name_or_path outputs/mlm_tiny --max_train_samples 100
    python recipes/finetune_classification.py --model_type hfgen_decoder --hidden_size 128 \
        --output_dir outputs/classification_decoder
    torchrun --nproc_per_node 2 recipes/finetune_classification.py recipes/configs/classification_tiny.yaml
    python recipes/finetune_classification.py --model_name_or_path outputs/mlm_tiny --train_file train.csv \
        --validation_file test.csv --text_column sentence --label_column_name label --output_dir outputs/my_cls

Every family gets a sequence-classification head (AutoModelForSequenceClassification; an encoder-decoder as
T5ForSequenceClassification does it), or, with --seq2seq_head text_to_text, an encoder-decoder answers a word naming
the class (AutoModelForSeq2SeqLM). --validation_fraction 0.2 scores on a validation split carved out of train
instead of test (to choose settings). A YAML file (first argument) gives values for any of the flags below; flags
after it override them.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser, TrainingArguments

from hfgen.training.classification import (
    ClassificationDataArguments,
    ClassificationModelArguments,
    finetune_classification,
)
from hfgen.training.recipe_common import build_recipe_parser, check_model_folder, parse_recipe_arguments

logger = logging.getLogger(__name__)

# What --model_name_or_path may name; checked before transformers would look a missing folder up on the Hub.
VALID_MODEL_FOLDERS = ("a folder written by an earlier run (e.g. outputs/mlm_tiny from "
                       "recipes/pretrain_masked_lm.py), or unset to train from scratch")


def build_parser() -> HfArgumentParser:
    return build_recipe_parser((ClassificationModelArguments, ClassificationDataArguments, TrainingArguments),
                               description=__doc__.split("\n\n")[0],
                               epilog="Model fields left unset take the family's (or the checkpoint's) config.",
                               output_dir="outputs/classification")


def parse_arguments(argv: list[str]) -> tuple[ClassificationModelArguments, ClassificationDataArguments,
                                              TrainingArguments]:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values become defaults, flags override them."""
    return parse_recipe_arguments(build_parser(), argv)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_model_folder(model_args.model_name_or_path, "--model_name_or_path", VALID_MODEL_FOLDERS)
    result = finetune_classification(model_args, data_args, training_args)
    if training_args.process_index == 0:
        logger.info(f"test accuracy: {result.eval_accuracy_before:.3f} before, {result.eval_accuracy:.3f} after "
                    f"(macro-F1 {result.eval_macro_f1:.3f}, {result.train_examples} labelled examples); saved to "
              f"{result.output_dir}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
