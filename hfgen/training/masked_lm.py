"""Masked-language-model pre-training of an hfgen encoder (BERT's objective) on the embedded corpus: the core of
``recipes/pretrain_masked_lm.py``.

Seed 003: "a fraction of the tokens are masked, and the task for the encoder is to predict those masked words".
Blocks of the corpus become ``[CLS] tokens [SEP]``; :class:`hfgen.data.MaskedLMCollator` chooses 15% of the
non-special tokens (80% mask, 10% random, 10% kept). Plain ``transformers.Trainer`` trains (progress bars, DDP
under ``torchrun``); the output folder is Hub-ready like the causal-LM recipe's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..data.user_data import row_count, text_blocks
from ..hub import check_push_arguments
from ..models import HfGenEncoderConfig, HfGenEncoderForMaskedLM
from ..models.modeling_hfgen_encoder import check_mlm_labels
from ..models.variants import position_embeddings_of
from .checkpoints import train_resumable
from .pretrain import ModelArguments, PretrainResult, build_config, perplexity
from .recipe_common import PretrainingDataArguments, loss_history, save_run, variant_title
from .start_evaluation import evaluate_then_train

logger = logging.getLogger(__name__)


@dataclass
class EncoderModelArguments(ModelArguments):
    """The causal-LM recipe's model fields; ``position_embedding`` also offers the encoder's own kinds (DeBERTa's
    ``disentangled``). Fields left at None take ``HfGenEncoderConfig``'s (BERT-like) defaults."""

    position_embedding: Literal[position_embeddings_of("hfgen_encoder")] | None = field(
        default=None, metadata={"help": "How positions enter the model (disentangled: DeBERTa's attention)."})


@dataclass
class MaskedLMDataArguments(PretrainingDataArguments):
    """Text and masking of MLM pre-training. ``block_size`` counts ``[CLS]`` and ``[SEP]``."""

    mlm_probability: float = field(default=0.15, metadata={"help": (
        "Share of the non-special tokens chosen for prediction, in (0, 1); of those 80%% are masked, 10%% replaced "
        "by a random token, 10%% kept.")})


def masked_positions_loss(model: HfGenEncoderForMaskedLM, inputs: dict[str, torch.Tensor],
                          num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """``model(**inputs).loss`` computed with the MLM head only where ``labels`` is not -100.

    The loss is the same cross-entropy (mean over the labelled positions, or their sum over ``num_items_in_batch``
    as transformers' loss does under gradient accumulation); the head -- a vocabulary-wide projection and softmax,
    most of an MLM step's work at small sizes -- then runs on the ~15% of positions that count instead of all."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    check_mlm_labels(model.config, labels)
    hidden = model.bert(**inputs).last_hidden_state
    chosen = labels != -100
    logits = model.cls(hidden[chosen]).float()
    loss = F.cross_entropy(logits, labels[chosen], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else chosen.sum()
    if isinstance(count, torch.Tensor):
        count = count.to(loss.device)
    return loss / count


class MaskedPositionsTrainer(Trainer):
    """A ``Trainer`` whose training and evaluation loss is :func:`masked_positions_loss` (same value as the
    model's own loss, several times less head compute). Where the model is wrapped (DDP, ...), the wrapper's own
    forward is kept, so gradient synchronisation is untouched."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or self.accelerator.unwrap_model(model) is not model or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        return masked_positions_loss(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only or "labels" not in inputs or self.accelerator.unwrap_model(model) is not model:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            return masked_positions_loss(model, inputs).detach(), None, None


def _load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    path = model_args.model_name_or_path
    if path is None:
        from ..data import load_encoder_tokenizer

        return load_encoder_tokenizer()  # the shipped tokenizer with mask, cls and sep tokens
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)


def mlm_blocks(corpus, tokenizer: PreTrainedTokenizerBase, block_size: int, num_proc: int | None = None,
               max_eval_samples: int | None = None):
    """``corpus`` cut into ``[CLS] + (block_size - 2) tokens + [SEP]`` rows (documents joined by eos, as the
    causal-LM blocks), with ``token_type_ids`` 0 and ``special_tokens_mask`` (cls, sep and eos are never masked).
    A stream (``IterableDatasetDict``) is cut as it streams (``hfgen.data.user_data.text_blocks``)."""
    from datasets import Dataset

    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 4:
        raise ValueError(f"block_size must be an int >= 4 ([CLS], [SEP] and at least 2 tokens), got {block_size!r}.")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None or tokenizer.mask_token_id is None:
        raise ValueError("The tokenizer needs mask, cls and sep tokens: use hfgen.data.load_encoder_tokenizer().")
    special = set(tokenizer.all_special_ids)

    def wrap(batch):
        ids = [[cls, *row, sep] for row in batch["input_ids"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids],
                "token_type_ids": [[0] * len(row) for row in ids],
                "special_tokens_mask": [[int(t in special) for t in row] for row in ids]}

    blocks = text_blocks(corpus, tokenizer, block_size - 2, num_proc=num_proc, max_eval_samples=max_eval_samples)
    wrapped = {split: rows.map(wrap, batched=True, **({"desc": "add [CLS] and [SEP]"} if isinstance(rows, Dataset)
                                                      else {})) for split, rows in blocks.items()}
    return type(blocks)(wrapped)


def pretrain_masked_lm(model_args: ModelArguments, data_args: MaskedLMDataArguments,
                       training_args: TrainingArguments,
                       callbacks: list[TrainerCallback] | None = None) -> PretrainResult:
    """Pre-train (or continue training) an encoder with masked language modelling and save a Hub-ready folder.

    Works in one process and under ``torchrun --nproc_per_node N``. The main process saves
    ``training_args.output_dir``: weights, config with ``auto_map`` and the model code (loads with
    ``AutoModelForMaskedLM.from_pretrained(..., trust_remote_code=True)`` where hfgen is not installed, and as the
    starting point of ``AutoModelForSequenceClassification``), tokenizer, ``loss_curve.png``, ``README.md``.

    Returns:
        Validation perplexity on the masked tokens before and after training (the same masks both times), the
        logged training losses and the training time.

    Raises:
        ValueError: for ``mlm_probability`` outside (0, 1), an unknown config key, or ``block_size`` beyond
            ``max_position_embeddings`` -- before any data is tokenized or weight is made.
    """
    from ..data import MaskedLMCollator
    from ..data.denoising import DenoisingEpochCallback

    check_push_arguments(training_args)  # a bad repo id fails now, not after training; no pickle is uploaded
    data_args.check(training_args.max_steps)  # data flags that cannot work fail before anything is built
    set_seed(training_args.seed)
    tokenizer = _load_tokenizer(model_args)
    # Masks keyed by (seed, epoch, block): a resumed run and N processes mask each block as one process does.
    collator = MaskedLMCollator(tokenizer, mlm_probability=data_args.mlm_probability,
                                seed=training_args.seed)  # checks the probability
    config = build_config(model_args, tokenizer, HfGenEncoderConfig)
    if config.position_embedding == "learned" and data_args.block_size > config.max_position_embeddings:
        raise ValueError(f"block_size ({data_args.block_size}) exceeds max_position_embeddings "
                         f"({config.max_position_embeddings}) of learned positions; raise it with config_overrides.")
    if model_args.model_name_or_path is None:
        model = HfGenEncoderForMaskedLM(config)
    else:
        model = HfGenEncoderForMaskedLM.from_pretrained(model_args.model_name_or_path, config=config)

    with training_args.main_process_first(desc="tokenize the corpus"):
        blocks = mlm_blocks(data_args.load_text(), tokenizer, data_args.block_size,
                            num_proc=data_args.preprocessing_num_workers, max_eval_samples=data_args.max_eval_samples)
    train, validation = data_args.select(blocks["train"], blocks["validation"])
    logger.info("[hfgen] process %d of %d on %s: %s training blocks of %d tokens, %s parameters",
                training_args.process_index, training_args.world_size, training_args.device,
                row_count(train) or "streamed", data_args.block_size, f"{model.num_parameters():,}")

    trainer = MaskedPositionsTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                                     processing_class=tokenizer, data_collator=collator,
                                     callbacks=[*(callbacks or []), DenoisingEpochCallback(collator)])

    def evaluate() -> dict:
        with collator.fixed_noise(training_args.seed + 1):  # the same masks before and after training
            return trainer.evaluate()

    # "before" is measured once train() has wrapped the model: trainer.evaluate() first would leave DDP off.
    # --resume_from_checkpoint last/true: the newest complete checkpoint; totals cover the steps before it too.
    before_metrics, (train_output, totals) = evaluate_then_train(
        trainer, lambda: train_resumable(trainer, training_args.resume_from_checkpoint), evaluate)
    before = before_metrics["eval_loss"]
    start_step = totals.get("resumed_from_step", 0)  # where "before" was measured (a resume: the checkpoint)
    after_metrics = evaluate()
    after = after_metrics["eval_loss"]
    trainer.log_metrics("train", train_output.metrics)
    trainer.log_metrics("eval", after_metrics)

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
        "mlm_probability": data_args.mlm_probability,
        "train_blocks": row_count(train),
        "eval_blocks": len(validation),
        "learning_rate": training_args.learning_rate,
        "world_size": training_args.world_size,
        "num_parameters": model.num_parameters(),
    }
    metrics = {key: value for key, value in metrics.items() if value is not None}
    save_run(trainer, config, metrics, task="masked-lm", title=variant_title(config, "MLM"),
             base_model=model_args.model_name_or_path,
             eval_points=[(start_step, before), (trainer.state.global_step, after)])
    return PretrainResult(
        output_dir=str(training_args.output_dir), eval_perplexity_before=perplexity(before),
        eval_perplexity_after=perplexity(after), train_loss_history=loss_history(trainer),
        train_runtime=float(totals["train_runtime_s"] or 0.0), world_size=training_args.world_size,
        metrics=metrics, model=trainer.model)
