#!/usr/bin/env python
"""Pre-train a HuBERT-style speech encoder (``hfgen_speech``) on synthesised keywords in two iterations, then
fine-tune it for keyword classification with a few labels, against the same model trained from scratch.

    python recipes/pretrain_speech.py --output_dir outputs/speech
    python recipes/pretrain_speech.py --labels_per_class 2 --softmax_variant off_by_one

The corpus is espeak-ng speaking 20 words (the digit names and 10 commands) in several voices, rates and pitches
(``hfgen.data.speech``); the last ``--held_out_voices`` voices are never seen in training and make the test set.
Iteration 1 predicts k-means clusters of MFCCs at masked frames, iteration 2 (a new model, as in HuBERT) predicts
k-means clusters of iteration 1's layer ``--feature_layer``. Each pre-trained encoder and a randomly initialised one
are then fine-tuned on ``--labels_per_class`` clips per word (training voices) with identical settings.

Writes into ``--output_dir``: ``iteration1/``, ``iteration2/`` (pre-trained, ``AutoModelForPreTraining``),
``classifier/`` (iteration 2 fine-tuned, with its feature extractor: ``pipeline("audio-classification",
model=OUTPUT_DIR/classifier)``), ``results.json``.
"""

# No "from __future__ import annotations": HfArgumentParser must resolve the dataclass's field types when this file
# is loaded with importlib (notebooks, tests).
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

from hfgen.data.speech import (PITCHES, RATES, VOICES, WORDS, keyword_corpus, speech_feature_extractor,
                               split_by_voice)
from hfgen.models import register_auto_classes
from hfgen.models.configuration_hfgen_speech import HfGenSpeechConfig
from hfgen.models.modeling_hfgen_speech import HfGenSpeechForPreTraining, HfGenSpeechForSequenceClassification
from hfgen.models.variants import SOFTMAX_VARIANTS
from hfgen.training.multimodal import plain_loop_defaults, stage_arguments
from hfgen.training.recipe_common import parse_recipe_arguments
from hfgen.training.speech import (classification_accuracy, cluster_targets, few_label_subset, layer_frames,
                                   mfcc_frames, normalized_inputs, train_on)

logger = logging.getLogger(__name__)


@dataclass
class SpeechArguments:
    """The corpus, the model and the two stages (optimiser, batch size, seed, logging are ``TrainingArguments``;
    ``--max_steps`` is the pre-training steps of each iteration)."""

    num_words: int = field(default=len(WORDS), metadata={"help": f"words used, the first N of {WORDS}"})
    num_voices: int = field(default=12, metadata={"help": f"espeak-ng voices used, the first N of {len(VOICES)}"})
    held_out_voices: int = field(default=3, metadata={"help": "the last N voices make the test set"})
    conv_channels: int = field(default=32, metadata={"help": "channels of each of the 7 feature-encoder convolutions"})
    hidden_size: int = field(default=128, metadata={"help": "width of the transformer"})
    num_hidden_layers: int = field(default=4, metadata={"help": "transformer layers"})
    softmax_variant: str = field(default="standard", metadata={"help": "softmax of the attention",
                                                               "choices": SOFTMAX_VARIANTS})
    mfcc_clusters: int = field(default=50, metadata={"help": "k-means clusters of iteration 1 (over MFCCs)"})
    feature_clusters: int = field(default=50, metadata={"help": "k-means clusters of iteration 2 (model features)"})
    feature_layer: int = field(default=2, metadata={"help": "iteration 1's layer whose output iteration 2 clusters"})
    labels_per_class: int = field(default=4, metadata={"help": "labelled clips per word for fine-tuning"})
    finetune_steps: int = field(default=200, metadata={"help": "fine-tuning steps"})
    finetune_learning_rate: float = field(default=5e-4, metadata={"help": "fine-tuning learning rate"})


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((SpeechArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**{**plain_loop_defaults(), "lr_scheduler_type": "cosine", "save_strategy": "no"},
                        output_dir="outputs/speech", learning_rate=5e-4, max_steps=300, per_device_train_batch_size=32,
                        warmup_steps=30)
    return parser


def speech_config(args: SpeechArguments, num_clusters: int, **extra) -> HfGenSpeechConfig:
    return HfGenSpeechConfig(conv_dim=[args.conv_channels] * 7, hidden_size=args.hidden_size,
                             intermediate_size=2 * args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                             softmax_variant=args.softmax_variant, num_clusters=num_clusters, **extra)


def pretrain(args, training_args, name: str, inputs, targets, num_clusters: int, extractor) -> tuple[str, list]:
    """A new pre-training model trained on ``targets``, saved to ``OUTPUT_DIR/name``: the folder and the logged
    (step, loss) pairs."""
    torch.manual_seed(training_args.seed)
    model = HfGenSpeechForPreTraining(speech_config(args, num_clusters))
    folder = os.path.join(training_args.output_dir, name)
    losses = train_on(model, inputs, targets, extractor, stage_arguments(training_args, output_dir=folder))
    logger.info("%s: masked-prediction loss %.3f -> %.3f", name, losses[0][1], losses[-1][1])
    model.save_pretrained(folder)
    return folder, losses


def finetune(args, training_args, start: str | None, data: dict, extractor) -> tuple[float, object]:
    """Fine-tune from the pre-trained folder ``start`` (None: random weights) on the few labels; test accuracy."""
    torch.manual_seed(training_args.seed)
    words = WORDS[:args.num_words]
    labels = dict(num_labels=len(words), id2label=dict(enumerate(words)),
                  label2id={word: i for i, word in enumerate(words)})
    model = (HfGenSpeechForSequenceClassification.from_pretrained(start, **labels) if start else
             HfGenSpeechForSequenceClassification(speech_config(args, args.mfcc_clusters, **labels)))
    model.freeze_feature_encoder()
    stage = stage_arguments(training_args, output_dir=os.path.join(training_args.output_dir, "finetune"),
                            max_steps=args.finetune_steps, learning_rate=args.finetune_learning_rate)
    train_on(model, data["few_inputs"], data["few_labels"], extractor, stage)
    return classification_accuracy(model, data["test_inputs"], data["test_labels"], extractor), model


def load_data(args: SpeechArguments, seed: int, extractor) -> dict:
    corpus = keyword_corpus(words=WORDS[:args.num_words], voices=VOICES[:args.num_voices], rates=RATES,
                            pitches=PITCHES)
    train, test = split_by_voice(corpus, args.held_out_voices)
    train_inputs = normalized_inputs(extractor, train)
    few = few_label_subset(train["label"], args.labels_per_class, seed)
    return {"train": train, "train_inputs": train_inputs, "test_inputs": normalized_inputs(extractor, test),
            "test_labels": test["label"], "few_inputs": [train_inputs[i] for i in few],
            "few_labels": [train["label"][i] for i in few]}


def pretrain_two_iterations(args, training_args, data: dict, extractor) -> tuple[tuple[str, str], dict]:
    """Iteration 1 on k-means of MFCCs, iteration 2 (a new model) on k-means of iteration 1's ``feature_layer``:
    the two saved folders and their logged losses."""
    config = speech_config(args, args.mfcc_clusters)
    mfccs = [mfcc_frames(a["array"], config) for a in data["train"]["audio"]]
    _, targets = cluster_targets(mfccs, args.mfcc_clusters, training_args.seed)
    first, first_losses = pretrain(args, training_args, "iteration1", data["train_inputs"], targets,
                                   args.mfcc_clusters, extractor)
    features = layer_frames(HfGenSpeechForPreTraining.from_pretrained(first), data["train_inputs"],
                            args.feature_layer)
    _, targets = cluster_targets(features, args.feature_clusters, training_args.seed)
    second, second_losses = pretrain(args, training_args, "iteration2", data["train_inputs"], targets,
                                     args.feature_clusters, extractor)
    return (first, second), {"iteration1": first_losses, "iteration2": second_losses}


def main(argv: list[str] | None = None) -> dict:
    args, training_args = parse_recipe_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
    register_auto_classes()
    start = time.perf_counter()
    extractor = speech_feature_extractor()
    data = load_data(args, training_args.seed, extractor)
    (first, second), losses = pretrain_two_iterations(args, training_args, data, extractor)
    accuracy = {}
    for name, folder in (("scratch", None), ("iteration1", first), ("iteration2", second)):
        accuracy[name], model = finetune(args, training_args, folder, data, extractor)
        logger.info("fine-tuned from %s: held-out accuracy %.3f", name, accuracy[name])
    model.save_pretrained(os.path.join(training_args.output_dir, "classifier"))
    extractor.save_pretrained(os.path.join(training_args.output_dir, "classifier"))
    results = {"held_out_accuracy": accuracy, "chance": 1 / args.num_words, "train_clips": len(data["train_inputs"]),
               "labelled_clips": len(data["few_inputs"]), "test_clips": len(data["test_inputs"]),
               "runtime_s": round(time.perf_counter() - start, 1),
               "pretraining_losses": losses}
    with open(os.path.join(training_args.output_dir, "results.json"), "w") as handle:
        json.dump({"args": {**asdict(args), "seed": training_args.seed, "max_steps": training_args.max_steps},
                   "results": results}, handle, indent=2)
    logger.info("held-out accuracy: %s (chance %.3f)", json.dumps(accuracy), results["chance"])
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
