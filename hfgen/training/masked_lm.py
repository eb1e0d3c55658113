"""Masked-language-model pre-training of an hfgen encoder (BERT's objective) on the embedded corpus: the core of
``recipes/pretrain_masked_lm.py``.

Seed 003: "a fraction of the tokens are masked, and the task for the encoder is to predict those masked words".
Blocks of the corpus become ``[CLS] tokens [SEP]``; :class:`hfgen.data.MaskedLMCollator` chooses 15% of the
non-special tokens (80% mask, 10% random, 10% kept). The training core (``hfgen.training.core``) trains with
``transformers.Trainer`` (progress bars, DDP under ``torchrun``) and writes a Hub-ready output folder like the
causal-LM recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from ..data.user_data import row_count, text_blocks
from ..models import HfGenEncoderConfig, HfGenEncoderForMaskedLM
from ..models.modeling_hfgen_encoder import check_mlm_labels
from .arguments import ModelArguments, PretrainingDataArguments, build_config
from .core import (PretrainResult, check_sequence_length, finish_pretraining, load_model,
                   log_run_start, prepare_run, tokenized_splits, train_and_evaluate_with_noise, variant_title)

# Lived here before the training core (hfgen.training.arguments); stays importable from here.
from .arguments import EncoderModelArguments  # noqa: F401


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

    prepare_run(training_args, data_args)
    tokenizer = _load_tokenizer(model_args)
    # Masks keyed by (seed, epoch, block): a resumed run and N processes mask each block as one process does.
    collator = MaskedLMCollator(tokenizer, mlm_probability=data_args.mlm_probability,
                                seed=training_args.seed)  # checks the probability
    config = build_config(model_args, tokenizer, HfGenEncoderConfig)
    check_sequence_length(config, data_args.block_size, "block_size")
    model = load_model(HfGenEncoderForMaskedLM, config, model_args.model_name_or_path)
    train, validation = tokenized_splits(training_args, data_args, mlm_blocks, tokenizer, data_args.block_size)
    log_run_start(training_args, f"{row_count(train) or 'streamed'} training blocks of {data_args.block_size} "
                                 f"tokens, {model.num_parameters():,} parameters")
    run = train_and_evaluate_with_noise(MaskedPositionsTrainer, collator, callbacks, model=model, args=training_args,
                                        train_dataset=train, eval_dataset=validation, processing_class=tokenizer)
    return finish_pretraining(run, config, model_args.model_name_or_path,
                              {"block_size": data_args.block_size, "mlm_probability": data_args.mlm_probability},
                              task="masked-lm", title=variant_title(config, "MLM"))
