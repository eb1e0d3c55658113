"""Causal-LM pre-training of an hfgen decoder on the embedded corpus: the core shared by
``recipes/pretrain_causal_lm.py`` and ``hfgen demo``.

Plain ``transformers.Trainer`` does the work (progress bars, logging, DDP under ``torchrun``); this module adds
what a recipe would otherwise repeat: a config built from the tokenizer and a few flags (any config key settable
through ``config_overrides``), perplexity before and after training, and a Hub-ready output folder with the model
code, the tokenizer, a loss curve and a model card.
"""

from __future__ import annotations

import logging
import difflib
import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from ..data.user_data import TextDataArguments, first_rows, row_count, text_blocks
from ..hub import write_model_card
from ..models import HfGenDecoderConfig, HfGenDecoderForCausalLM, variants
from ..models.configuration_common import VARIANT_DEFAULTS
from .checkpoints import train_resumable
from .start_evaluation import evaluate_then_train

logger = logging.getLogger(__name__)

LOSS_CURVE_FILE = "loss_curve.png"
# Fields of ModelArguments that are not config keys.
_NOT_CONFIG_KEYS = ("model_name_or_path", "config_overrides", "trust_remote_code")
# PreTrainedConfig bookkeeping that a user must not set by hand (the class and save_pretrained write them).
_RESERVED_CONFIG_KEYS = {"_name_or_path", "architectures", "auto_map", "model_type", "transformers_version"}


def _help(text: str) -> dict[str, Any]:
    return {"metadata": {"help": text}}


@dataclass
class ModelArguments:
    """Which model to train. Every architecture field left at None takes the config's default (a 6-layer,
    hidden-256 Llama); ``config_overrides`` reaches every other config key."""

    model_name_or_path: str | None = field(default=None, **_help(
        "Continue from a saved folder or Hub id (an hfgen or Llama-architecture checkpoint) instead of a fresh "
        "model. The fields below then change its config (variants that add weights initialise them)."))
    hidden_size: int | None = field(default=None, **_help("Width of the residual stream."))
    num_hidden_layers: int | None = field(default=None, **_help("Number of decoder layers."))
    num_attention_heads: int | None = field(default=None, **_help("Query heads per layer."))
    num_key_value_heads: int | None = field(default=None, **_help(
        "Key/value heads: 1 = multi-query, num_attention_heads = multi-head, in between = grouped-query."))
    intermediate_size: int | None = field(default=None, **_help("Hidden width of the MLP."))
    attention_scoring: Literal[variants.ATTENTION_SCORINGS] | None = field(default=None, **_help(
        "How queries meet keys."))
    softmax_variant: Literal[variants.SOFTMAX_VARIANTS] | None = field(default=None, **_help(
        "Normalisation of the attention scores."))
    softmax_temperature: float | None = field(default=None, **_help(
        "Temperature theta of softmax_variant=temperature."))
    attention_gate: bool | None = field(default=None, **_help("Per-head sigmoid gate on the attention output."))
    position_embedding: Literal[variants.POSITION_EMBEDDINGS] | None = field(default=None, **_help(
        "How positions enter the model."))
    norm_type: Literal[variants.NORM_TYPES] | None = field(default=None, **_help("Normalisation layer."))
    norm_position: Literal[variants.NORM_POSITIONS] | None = field(default=None, **_help(
        "Normalise before (pre) or after (post) each residual block."))
    mlp_type: Literal[variants.MLP_TYPES] | None = field(default=None, **_help("gated (SwiGLU) or standard MLP."))
    tie_word_embeddings: bool | None = field(default=None, **_help("Share the input embedding with the LM head."))
    trust_remote_code: bool = field(default=False, **_help(
        "Run code that the model_name_or_path folder or repository names in its auto_map (tokenizer classes, ...). "
        "Only for sources you trust: that code runs on this machine. hfgen's own models never need it."))
    config_overrides: str | None = field(default=None, **_help(
        "Any other config keys as 'key=value,key=value' (values read as JSON, else true/false/none, else "
        "text), e.g. 'rope_parameters={\"rope_theta\": 500000.0},attention_dropout=0.1'. Applied last."))

    def config_kwargs(self, config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> dict[str, Any]:
        """The config keys this run sets: the fields that are not None, then ``config_overrides`` (checked against
        ``config_class``'s keys). Fields a subclass adds for other purposes are listed in its ``NOT_CONFIG_KEYS``."""
        skip = (*_NOT_CONFIG_KEYS, *getattr(self, "NOT_CONFIG_KEYS", ()))
        kwargs = {key: value for key, value in vars(self).items() if key not in skip and value is not None}
        kwargs.update(parse_config_overrides(self.config_overrides, config_class))
        return kwargs


@dataclass
class DataArguments(TextDataArguments):
    """Which text to train on: the embedded corpus (or the user's data: ``--dataset_name`` / ``--train_file``),
    cut into fixed-length blocks."""

    block_size: int = field(default=128, **_help("Tokens per training sequence."))
    include_docstrings: bool = field(default=False, **_help(
        "Add the standard library's docstrings (about 4x more text) to the Python reference manual."))
    validation_fraction: float = field(default=0.1, **_help(
        "Expected share of the embedded corpus's documents held out for validation."))
    max_train_samples: int | None = field(default=None, **_help("Train on at most this many blocks (the first)."))
    max_eval_samples: int | None = field(default=None, **_help("Evaluate on at most this many blocks (the first)."))


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


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)  # ints, floats, true/false/null, quoted strings, lists, dicts
    except json.JSONDecodeError:
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):  # Python spelling, as typed on a command line
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def valid_config_keys(config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> tuple[list[str], list[str]]:
    """The keys ``config_overrides`` accepts: (the family's own keys, the generic PreTrainedConfig keys)."""
    own = [name for name, p in inspect.signature(config_class.__init__).parameters.items()
           if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if config_class.model_type.startswith("hfgen"):  # families taking the shared variant keys through **kwargs
        own += [key for key in (*VARIANT_DEFAULTS, "rope_parameters") if key not in own]
    generic = sorted(set(PreTrainedConfig().to_dict()) - set(own) - _RESERVED_CONFIG_KEYS)
    return own, generic


def parse_config_overrides(text: str | None,
                           config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> dict[str, Any]:
    """Parse ``"key=value,key=value"`` into a dict of config keys.

    Values are read as JSON (so ``3``, ``0.1``, ``true``, ``"x"``, ``[1, 2]`` and ``{"a": 1}`` keep their type),
    else ``True``/``False``/``None`` in any case, else as plain text. A comma splits entries only where a new
    ``key=`` follows, so JSON lists and dicts may contain commas.

    Raises:
        ValueError: for an entry that is not ``key=value`` or a key that ``config_class`` does not have; the
            message lists the valid keys.
    """
    if not text or not text.strip():
        return {}
    own, generic = valid_config_keys(config_class)
    overrides = {}
    for entry in re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)", text):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"config_overrides entry {entry!r} is not of the form key=value (in {text!r}).")
        if key not in own and key not in generic:
            close = difflib.get_close_matches(key, own + generic, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown config key {key!r} in config_overrides.{hint} Valid keys of {config_class.__name__}: "
                f"{', '.join(own)}; generic PreTrainedConfig keys: {', '.join(generic)}.")
        overrides[key] = _parse_value(value.strip())
    return overrides


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


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase,
                 config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> PreTrainedConfig:
    """The model config: the checkpoint's (with ``model_name_or_path``) or the family defaults, then the tokenizer's
    vocabulary and special ids, then the keys of ``model_args``. Validated before any weight is made.

    ``config_class`` is the family's config (the decoder's by default; the encoder's and the encoder-decoder's
    recipes pass theirs)."""
    kwargs: dict[str, Any] = {}
    if model_args.model_name_or_path is None:
        # A fresh model: its vocabulary is the tokenizer's. A checkpoint keeps its own embedding size.
        kwargs.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    kwargs.update(model_args.config_kwargs(config_class))
    if model_args.model_name_or_path is None:
        return config_class(**kwargs)
    # Through __init__ (not from_pretrained(**kwargs), which setattr's after validation) so that the changed
    # keys are checked together with the checkpoint's; a Llama config.json loads into this class unchanged.
    config_dict, _ = config_class.get_config_dict(model_args.model_name_or_path)
    for key in _RESERVED_CONFIG_KEYS:  # rewritten by this class and by save_pretrained
        config_dict.pop(key, None)
    config = config_class(**{**config_dict, **kwargs})
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocab_size is "
                         f"{config.vocab_size}: use the checkpoint's own tokenizer.")
    return config


def _load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    from ..data import load_tokenizer

    path = model_args.model_name_or_path
    if path is None or (os.path.isdir(path) and not os.path.exists(os.path.join(path, "tokenizer_config.json"))):
        return load_tokenizer()  # the tokenizer shipped with hfgen
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)


def _load_blocks(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, training_args: TrainingArguments):
    from ..data import load_corpus

    # The main process tokenizes first; under DDP every rank then builds identical blocks.
    with training_args.main_process_first(desc="tokenize the corpus"):
        texts = data_args.texts(lambda: load_corpus(include_docstrings=data_args.include_docstrings,
                                                    validation_fraction=data_args.validation_fraction, seed=0))
        blocks = text_blocks(texts, tokenizer, data_args.block_size, num_proc=data_args.preprocessing_num_workers,
                             max_eval_samples=data_args.max_eval_samples)
    return (first_rows(blocks["train"], data_args.max_train_samples),
            first_rows(blocks["validation"], data_args.max_eval_samples))


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


def pretrain(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
             callbacks: list[TrainerCallback] | None = None) -> PretrainResult:
    """Pre-train (or continue training) a decoder with causal language modelling and save a Hub-ready folder.

    Works in one process and under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU). Every process trains;
    the main one saves ``training_args.output_dir``: weights, config with ``auto_map`` and the model code (loads
    with ``trust_remote_code=True`` where hfgen is not installed), tokenizer, ``loss_curve.png``, ``README.md``.

    Args:
        callbacks: extra ``TrainerCallback`` objects for the ``Trainer`` (e.g. a ``TimeLimitCallback``).

    Returns:
        Validation perplexity before and after training, the logged training losses and the training time.
    """
    hub_commit = None
    from ..hub import check_push_arguments

    check_push_arguments(training_args)  # a bad repo id fails now, not after training; no pickle is uploaded
    data_args.check(training_args.max_steps)  # data flags that cannot work fail before anything is built
    set_seed(training_args.seed)  # before the model is built, so that every rank starts from the same weights
    tokenizer = _load_tokenizer(model_args)
    config = build_config(model_args, tokenizer)  # fails fast on a bad key, before the data is tokenized
    if data_args.block_size > config.max_position_embeddings:
        raise ValueError(f"block_size ({data_args.block_size}) exceeds max_position_embeddings "
                         f"({config.max_position_embeddings}); raise it with config_overrides.")
    if model_args.model_name_or_path is None:
        model = HfGenDecoderForCausalLM(config)
    else:
        model = HfGenDecoderForCausalLM.from_pretrained(model_args.model_name_or_path, config=config)
    train, validation = _load_blocks(data_args, tokenizer, training_args)
    logger.info("[hfgen] process %d of %d on %s: %s training blocks of %d tokens, %s parameters",
                training_args.process_index, training_args.world_size, training_args.device,
                row_count(train) or "streamed", data_args.block_size, f"{model.num_parameters():,}")

    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=callbacks)
    # "before" is measured once train() has wrapped the model: trainer.evaluate() first would leave DDP off.
    # --resume_from_checkpoint last/true: the newest complete checkpoint; totals cover the steps before it too.
    before_metrics, (train_output, totals) = evaluate_then_train(
        trainer, lambda: train_resumable(trainer, training_args.resume_from_checkpoint))
    before = before_metrics["eval_loss"]
    start_step = totals.get("resumed_from_step", 0)  # where "before" was measured (a resume: the checkpoint)
    after_metrics = trainer.evaluate()
    after = after_metrics["eval_loss"]
    trainer.log_metrics("train", train_output.metrics)
    trainer.log_metrics("eval", after_metrics)

    history = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    metrics = {
        "eval_perplexity_before": perplexity(before),
        "eval_perplexity": perplexity(after),
        "eval_loss": after,
        "train_loss": totals["train_loss"],
        "train_runtime_s": totals["train_runtime_s"],
        "resumed_from_step": totals.get("resumed_from_step"),
        "global_step": trainer.state.global_step,
        "total_train_batch_size": (training_args.per_device_train_batch_size * training_args.world_size
                                   * training_args.gradient_accumulation_steps),
        "block_size": data_args.block_size,
        "train_blocks": row_count(train),
        "eval_blocks": len(validation),
        "learning_rate": training_args.learning_rate,
        "world_size": training_args.world_size,
        "num_parameters": model.num_parameters(),
    }
    metrics = {key: value for key, value in metrics.items() if value is not None}
    # The main process writes weights, config, model code and tokenizer. With --push_to_hub the folder is pushed
    # below, once the card and the loss curve are in it (Trainer's own push would upload its generic card).
    trainer.save_model(_internal_call=True)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        out = Path(training_args.output_dir)
        write_loss_curve(history, out / LOSS_CURVE_FILE, [(start_step, before), (trainer.state.global_step, after)],
                         title=f"{config.model_type}: " + ", ".join(
                             f"{k}={getattr(config, k)}" for k in ("softmax_variant", "position_embedding")))
        hub_id = getattr(trainer, "hub_model_id", None) if training_args.push_to_hub else None
        write_model_card(out, config, metrics, base_model=model_args.model_name_or_path, model_name=hub_id)
        if training_args.push_to_hub:
            from ..hub import push_training_output

            hub_commit = push_training_output(trainer, out, commit_message="End of training (hfgen pretrain)")
    # Every rank waits for the main one to finish writing; ranks leaving early can abort the gloo group at exit.
    trainer.accelerator.wait_for_everyone()
    return PretrainResult(
        output_dir=str(training_args.output_dir), eval_perplexity_before=perplexity(before),
        eval_perplexity_after=perplexity(after), train_loss_history=history,
        train_runtime=float(totals["train_runtime_s"] or 0.0), world_size=training_args.world_size,
        metrics=metrics, model=trainer.model, hub_commit=hub_commit)
