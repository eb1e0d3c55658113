"""The training core under hfgen's Trainer objectives (causal LM, masked LM, span corruption / BART denoising,
classification): what every such run does around ``transformers.Trainer`` -- the checks before anything is
built, the model from scratch or from a folder, "evaluate -> train (resumable) -> evaluate", the run's metrics and
the Hub-ready output folder (weights, model code, tokenizer, ``all_results.json``, loss curve, model card).

An objective is a small module on top: its data, its collator, its model class and the numbers it reports.
``Trainer`` gives every one of them DDP under ``torchrun``, schedules, logging integrations and checkpoints;
``hfgen.training.checkpoints`` resumes them from the newest complete checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import PreTrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import TrainOutput

from ..data.user_data import row_count
from ..hub import check_push_arguments, push_training_output, write_model_card
from ..models.positions import POSITION_TABLE
from .checkpoints import train_resumable
from .start_evaluation import evaluate_then_train

logger = logging.getLogger(__name__)

LOSS_CURVE_FILE = "loss_curve.png"


def cpu_training_defaults() -> dict[str, Any]:
    """TrainingArguments values a run needs on a machine without CUDA, to apply where the user set none:
    the CPU, no mixed precision (bf16/fp16 autocast is for GPUs) and, under a distributed launcher, DDP over gloo
    (NCCL needs GPUs); under ``accelerate launch`` with a DeepSpeed config, DeepSpeed's CPU accelerator.

    Raises:
        ValueError: under ``accelerate launch`` with an FSDP config, which accelerate cannot run without CUDA."""
    if torch.cuda.is_available():
        return {}
    # accelerate 1.16 reaches FSDP and DeepSpeed only for a run that is not use_cpu; a use_cpu run under
    # `accelerate launch --config_file fsdp2.yaml / deepspeed_zero*.yaml` trains with plain DDP without a word.
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError("accelerate launch asked for FSDP (ACCELERATE_USE_FSDP=true), which accelerate runs on "
                         "GPUs (or other accelerators) only: on this machine without CUDA it would train with DDP "
                         "instead. Use recipes/configs/accelerate/ddp.yaml (or deepspeed_zero*.yaml) here.")
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    defaults = {"use_cpu": not deepspeed, "bf16": False, "fp16": False}  # DeepSpeed has a CPU accelerator
    # Only when launched with several processes: accelerate takes any ddp_backend as a request for a process
    # group, and a single process then fails with "Default process group has not been initialized".
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        defaults["ddp_backend"] = "gloo"
    return defaults


def perplexity(loss: float) -> float:
    """``exp(loss)``, or ``inf`` where that overflows (an untrained or diverged model)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def write_loss_curve(history: list[tuple[int, float]], path: str | os.PathLike,
                     eval_points: list[tuple[int, float]] = (), title: str = "") -> Path:
    """Plot training loss per step (and validation loss at ``eval_points``) into a PNG at ``path``."""
    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if history:
        steps, losses = zip(*history)
        axes.plot(steps, losses, marker="." if len(history) < 50 else None, label="training loss")
    if eval_points:
        steps, losses = zip(*eval_points)
        # Markers only: two evaluations say nothing about the path between them.
        axes.plot(steps, losses, "o", label="validation loss")
        for step, loss in eval_points:
            axes.annotate(f"ppl {perplexity(loss):.1f}", (step, loss), textcoords="offset points", xytext=(4, 6))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)



def loss_history(trainer: Trainer) -> list[tuple[int, float]]:
    """(optimizer step, logged training loss) pairs of a finished ``Trainer`` run."""
    return [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def variant_title(config: Any, objective: str = "") -> str:
    """A plot title naming the family, the objective (if any) and the variant keys that matter most."""
    keys = ("softmax_variant", "position_embedding")
    family = f"{config.model_type} {objective}" if objective else config.model_type
    return f"{family}: " + ", ".join(f"{k}={getattr(config, k, None)}" for k in keys)


def prepare_run(training_args: TrainingArguments, data_args: Any = None) -> None:
    """What every run does before building anything: flags that cannot work fail now (a bad Hub repo id, data
    flags that ``data_args.check`` refuses), then the seed, so that every rank builds the same weights."""
    check_push_arguments(training_args)  # a bad repo id fails now, not after training; no pickle is uploaded
    if data_args is not None:
        data_args.check(training_args.max_steps)
    set_seed(training_args.seed)


def check_sequence_length(config: PreTrainedConfig, length: int, name: str, *, learned_only: bool = True) -> None:
    """Raise ``ValueError`` where sequences of ``length`` tokens (the flag ``name``) exceed the config's
    ``max_position_embeddings`` -- with ``learned_only``, only for positions that do not extrapolate (learned ones:
    the trait ``extrapolates`` of :data:`hfgen.models.positions.POSITION_TABLE`)."""
    if learned_only and POSITION_TABLE[config.position_embedding].extrapolates:
        return
    if length > config.max_position_embeddings:
        kind = " of learned positions" if learned_only else ""
        raise ValueError(f"{name} ({length}) exceeds max_position_embeddings ({config.max_position_embeddings})"
                         f"{kind}; raise it with config_overrides.")


def load_model(model_class: type[PreTrainedModel], config: PreTrainedConfig,
               model_name_or_path: str | None = None) -> PreTrainedModel:
    """A fresh ``model_class(config)``, or the weights of ``model_name_or_path`` under ``config`` (weights that
    the config's variants add are initialised)."""
    if model_name_or_path is None:
        return model_class(config)
    return model_class.from_pretrained(model_name_or_path, config=config)


def tokenized_splits(training_args: TrainingArguments, data_args: Any, cut: Callable, tokenizer: Any, length: int,
                     desc: str = "tokenize the corpus") -> tuple[Any, Any]:
    """``data_args.select`` of the splits ``cut(data_args.load_text(), tokenizer, length, num_proc=...,
    max_eval_samples=...)`` makes. The main process tokenizes first; under DDP every rank then builds the same
    rows (from the cache the main one wrote)."""
    with training_args.main_process_first(desc=desc):
        blocks = cut(data_args.load_text(), tokenizer, length, num_proc=data_args.preprocessing_num_workers,
                     max_eval_samples=data_args.max_eval_samples)
    return data_args.select(blocks["train"], blocks["validation"])


def log_run_start(training_args: TrainingArguments, description: str) -> None:
    """One log line per process: which process of how many, on which device, training what."""
    logger.info("[hfgen] process %d of %d on %s: %s", training_args.process_index, training_args.world_size,
                training_args.device, description)


def fixed_noise_evaluation(trainer: Trainer, collator: Any, seed: int) -> Callable[[], dict]:
    """``trainer.evaluate`` with ``collator``'s noise (masks, corruption) fixed by ``seed``: the same noise before
    and after training, whatever the training epoch."""
    def evaluate() -> dict:
        with collator.fixed_noise(seed):
            return trainer.evaluate()

    return evaluate


@dataclass
class TrainedRun:
    """A finished "evaluate -> train -> evaluate" run of :func:`train_and_evaluate`."""

    trainer: Trainer
    before: dict[str, float]  # the evaluation of the weights training started from (a resume: the checkpoint's)
    after: dict[str, float]  # the evaluation of the trained weights
    train_output: TrainOutput  # Trainer's own (its numbers cover this session's steps only)
    totals: dict[str, Any]  # train_loss and train_runtime_s over the whole run, resumed_from_step after a resume

    @property
    def train_runtime(self) -> float:
        """Seconds spent in ``Trainer.train``, the earlier sessions of a resumed run included."""
        return float(self.totals["train_runtime_s"] or 0.0)

    def eval_points(self, key: str = "eval_loss") -> list[tuple[int, float]]:
        """(step, ``key``) of both evaluations, for the loss curve; a resumed run measured "before" at its
        checkpoint."""
        return [(self.totals.get("resumed_from_step", 0), self.before[key]),
                (self.trainer.state.global_step, self.after[key])]

    def metrics(self, scores: dict[str, Any], settings: dict[str, Any] | None = None,
                unit: str = "blocks") -> dict[str, Any]:
        """What the run reports (``all_results.json``, the model card): the objective's ``scores``, the training
        numbers, the objective's ``settings``, the rows trained and scored on (``train_<unit>``, ``eval_<unit>``;
        None for a stream) and the optimisation's size. Entries that are None are left out."""
        trainer, args = self.trainer, self.trainer.args
        metrics = {
            **scores,
            "train_loss": self.totals["train_loss"],
            "train_runtime_s": self.totals["train_runtime_s"],
            "resumed_from_step": self.totals.get("resumed_from_step"),
            "global_step": trainer.state.global_step,
            "total_train_batch_size": (args.per_device_train_batch_size * args.world_size
                                       * args.gradient_accumulation_steps),
            **(settings or {}),
            f"train_{unit}": row_count(trainer.train_dataset),
            f"eval_{unit}": len(trainer.eval_dataset),
            "learning_rate": args.learning_rate,
            "world_size": args.world_size,
            "num_parameters": trainer.model.num_parameters(),
        }
        return {key: value for key, value in metrics.items() if value is not None}


def train_and_evaluate(trainer: Trainer, evaluate: Callable[[], dict] | None = None) -> TrainedRun:
    """Evaluate, train, evaluate again; the shared loop of hfgen's Trainer objectives.

    "Before" is measured once ``train()`` has wrapped the model (``hfgen.training.start_evaluation``:
    ``trainer.evaluate()`` first would leave DDP off). Training resumes as ``--resume_from_checkpoint`` asks
    (``last``/``true``: the newest complete checkpoint), and the totals cover the steps before the resume too.

    Args:
        evaluate: the evaluation (default ``trainer.evaluate``), called on every rank, before and after.
    """
    evaluate = evaluate or trainer.evaluate
    before, (train_output, totals) = evaluate_then_train(
        trainer, lambda: train_resumable(trainer, trainer.args.resume_from_checkpoint), evaluate)
    after = evaluate()
    trainer.log_metrics("train", train_output.metrics)
    trainer.log_metrics("eval", after)
    return TrainedRun(trainer=trainer, before=before, after=after, train_output=train_output, totals=totals)


def train_and_evaluate_with_noise(trainer_class: type[Trainer], collator: Any,
                                  callbacks: list[TrainerCallback] | None = None, **trainer_kwargs: Any) -> TrainedRun:
    """:func:`train_and_evaluate` for an objective whose collator draws noise per example (MLM masks, span
    corruption, BART denoising; ``hfgen.data.denoising.ExampleKeyedNoise``).

    The noise of each example is keyed by (seed, epoch, the example): ``DenoisingEpochCallback`` moves the
    collator's epoch with Trainer's, so a resumed run and N processes draw the noise of one uninterrupted process;
    both evaluations draw the same noise (seed ``args.seed + 1``), so "before" and "after" score the same task.
    """
    from ..data.denoising import DenoisingEpochCallback

    trainer = trainer_class(data_collator=collator, callbacks=[*(callbacks or []), DenoisingEpochCallback(collator)],
                            **trainer_kwargs)
    return train_and_evaluate(trainer, fixed_noise_evaluation(trainer, collator, trainer.args.seed + 1))


def save_run(trainer: Trainer, config: Any, metrics: dict[str, Any], *, task: str, title: str,
             base_model: str | None = None, eval_points: Sequence[tuple[int, float]] = (),
             commit_message: str | None = None) -> str | None:
    """Save the trained model and describe it: every process calls this, the main one writes the folder.

    Writes ``training_args.output_dir``: weights, config with ``auto_map`` and the model code, tokenizer (the
    trainer's ``processing_class``), ``all_results.json`` (``metrics``), ``loss_curve.png`` (training loss, and
    ``eval_points`` as markers) and ``README.md`` (``hfgen.hub.write_model_card`` with ``task``); with
    ``--push_to_hub`` pushes the finished folder. Every rank waits for the main one before returning (ranks leaving
    early can abort a gloo group at exit).

    Returns:
        The Hub commit id with ``--push_to_hub`` (on the main process), else None.
    """
    # With --push_to_hub the finished folder is pushed below, card and loss curve included (a plain save_model()
    # would upload at once, with Trainer's generic card).
    trainer.save_model(_internal_call=True)
    hub_commit = None
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        out = Path(trainer.args.output_dir)
        write_loss_curve(loss_history(trainer), out / LOSS_CURVE_FILE, list(eval_points), title=title)
        hub_id = getattr(trainer, "hub_model_id", None) if trainer.args.push_to_hub else None
        write_model_card(out, config, metrics, base_model=base_model, task=task, model_name=hub_id)
        if trainer.args.push_to_hub:
            hub_commit = push_training_output(
                trainer, out, commit_message=commit_message or f"End of training (hfgen {task})")
    trainer.accelerator.wait_for_everyone()
    return hub_commit


@dataclass
class PretrainResult:
    """What a ``pretrain`` run measured and where it saved the model."""

    output_dir: str
    eval_perplexity_before: float
    eval_perplexity_after: float
    train_loss_history: list[tuple[int, float]]  # (optimizer step, mean training loss since the last log)
    train_runtime: float  # seconds spent in Trainer.train (a resumed run: its earlier sessions included)
    world_size: int = 1
    metrics: dict[str, Any] = field(default_factory=dict)  # everything reported in the model card
    model: PreTrainedModel | None = field(default=None, repr=False)  # the trained model, as saved
    hub_commit: str | None = None  # the commit id on the Hub, with --push_to_hub



def finish_pretraining(run: TrainedRun, config: PreTrainedConfig, base_model: str | None,
                       settings: dict[str, Any], *, task: str, title: str, scores: dict[str, Any] | None = None,
                       commit_message: str | None = None) -> PretrainResult:
    """Report and save a language-modelling run (causal, masked, span corruption, denoising): validation
    perplexity before and after (``exp`` of ``eval_loss``), then ``scores``, ``settings`` and the run's numbers
    (:meth:`TrainedRun.metrics`), saved by :func:`save_run`."""
    before, after = run.before["eval_loss"], run.after["eval_loss"]
    metrics = run.metrics({"eval_perplexity_before": perplexity(before), "eval_perplexity": perplexity(after),
                           "eval_loss": after, **(scores or {})}, settings)
    hub_commit = save_run(run.trainer, config, metrics, task=task, title=title, base_model=base_model,
                          eval_points=run.eval_points(), commit_message=commit_message)
    args = run.trainer.args
    return PretrainResult(
        output_dir=str(args.output_dir), eval_perplexity_before=perplexity(before),
        eval_perplexity_after=perplexity(after), train_loss_history=loss_history(run.trainer),
        train_runtime=run.train_runtime, world_size=args.world_size, metrics=metrics, model=run.trainer.model,
        hub_commit=hub_commit)
