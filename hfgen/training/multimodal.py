"""Trainer pieces for the models whose loss is on a few labelled tokens of long mixed rows (the VLM's target after
image tokens and prompt, Gato's text and actions): the loss computed through the model's own ``forward`` (so DDP
synchronises it), with the language-model head applied only at positions where some row has a label.

Used by ``recipes/train_vlm.py`` and ``recipes/train_gato.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments


def labelled_token_loss(model: torch.nn.Module, inputs: dict[str, Any],
                        groups: Sequence[slice] | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (``labels`` -100 elsewhere): the model's own causal-LM
    loss, with the head applied only at the positions where at least one row of the batch has a next-token label
    (``logits_to_keep`` as a tensor of positions, which every hfgen causal head accepts).

    ``groups``: row slices whose losses are averaged separately and then summed (Gato's domains: a loss per domain,
    whatever their token counts)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    keep = (targets != -100).any(0).nonzero().squeeze(1)
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()
    targets = targets[:, keep]
    rows = groups or [slice(None)]
    return sum(F.cross_entropy(logits[r].flatten(0, 1), targets[r].flatten(), ignore_index=-100) for r in rows)


class LabelledTokenTrainer(Trainer):
    """A ``Trainer`` whose loss is :func:`labelled_token_loss` (a per-batch mean; the collator may put row groups
    under ``"loss_groups"``). Under several processes each rank's mean is averaged, as for any loss that is not a
    token sum."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is a per-batch mean: Trainer must scale it for gradient accumulation itself and must not
        # multiply it by the number of processes (what it does for models that take num_items_in_batch).
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        groups = inputs.pop("loss_groups", None)
        loss = labelled_token_loss(model, inputs, groups)
        return (loss, None) if return_outputs else loss


def plain_loop_defaults() -> dict[str, Any]:
    """``TrainingArguments`` defaults that train as the recipes' former AdamW loops did (constant learning rate,
    AdamW's weight decay 0.01, no clipping), with a log line every 10 steps, a checkpoint every 500 (the last one
    kept), no integration unless asked, and the collators' inputs passed through untouched; ``cpu_training_defaults``
    on a machine without CUDA."""
    from .pretrain import cpu_training_defaults

    return {**cpu_training_defaults(), "lr_scheduler_type": "constant", "weight_decay": 0.01, "max_grad_norm": 0.0,
            "logging_steps": 10, "save_steps": 500, "save_total_limit": 1, "report_to": "none",
            "remove_unused_columns": False, "seed": 0}


def stage_arguments(training_args: TrainingArguments, **changes: Any) -> TrainingArguments:
    """A copy of ``training_args`` with ``changes`` (a recipe that trains several models gives each its own
    ``output_dir``, ``max_steps`` and ``learning_rate``)."""
    return dataclasses.replace(training_args, **changes)


def resume_checkpoint(value: str | None, folder: str) -> str | None:
    """What ``Trainer.train(resume_from_checkpoint=...)`` gets for ``--resume_from_checkpoint VALUE``: ``None``
    (not given, or ``latest`` with no checkpoint in ``folder`` yet: a fresh start), the last complete checkpoint in
    ``folder`` for ``latest``/``true``, or ``VALUE`` itself (a checkpoint folder)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not value:
        return None
    if value.lower() not in ("latest", "true"):
        if not os.path.isdir(value):
            raise ValueError(f"--resume_from_checkpoint: no such folder: {value!r}. Valid: a checkpoint folder "
                             f"(e.g. {os.path.join(folder, 'checkpoint-500')}) or 'latest'.")
        return value
    return get_last_checkpoint(folder) if os.path.isdir(folder) else None
