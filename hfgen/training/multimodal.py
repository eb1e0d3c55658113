"""Trainer pieces for the models whose loss is on a few labelled tokens of long mixed rows (the VLM's target after
image tokens and prompt, Gato's text and actions): the loss computed through the model's own ``forward`` (so DDP
synchronises it), with the language-model head applied only at the labelled tokens.

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


def labelled_token_loss(model: torch.nn.Module, inputs: dict[str, Any], groups: Sequence[slice] | None = None,
                        group_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (``labels`` -100 elsewhere): the model's own causal-LM
    loss, with the language-model head applied only at the labelled tokens.

    The model runs through its own ``forward`` (so a DDP wrapper synchronises every parameter), asked for its
    final hidden states and for the logits of one position only; the head (``get_output_embeddings``) is then
    applied to the hidden states of the labelled tokens. Its weight thus gets its gradient outside ``forward``,
    which DDP's per-parameter hooks synchronise as any other.

    ``groups``: row slices whose losses are averaged separately and then summed (Gato's domains: a loss per domain,
    whatever their token counts). ``group_sizes``: the token count each group's sum is divided by, in place of the
    group's own (under several processes: the whole step's count over the number of processes, see
    :class:`LabelledTokenTrainer`)."""
    from accelerate.utils import extract_model_from_parallel

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    outputs = model(**inputs, logits_to_keep=1, output_hidden_states=True, use_cache=False)
    hidden = outputs.hidden_states[-1][:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    head = extract_model_from_parallel(model).get_output_embeddings()
    losses = F.cross_entropy(head(hidden[keep]).float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    total = 0
    for index, chosen in enumerate(group_rows(rows, groups, labels.shape[0])):
        total = total + (losses[chosen].mean() if group_sizes is None else losses[chosen].sum() / group_sizes[index])
    return total


def group_rows(rows: torch.Tensor, groups: Sequence[slice] | None, batch_size: int) -> list[torch.Tensor]:
    """For each row slice of ``groups`` (default: the whole batch), which of the labelled tokens (their ``rows``)
    fall in it."""
    chosen = []
    for group in groups or [slice(None)]:
        start, stop, _ = group.indices(batch_size)
        chosen.append((rows >= start) & (rows < stop))
    return chosen


class LabelledTokenTrainer(Trainer):
    """A ``Trainer`` whose loss is :func:`labelled_token_loss` (a per-batch mean; the collator may put row groups
    under ``"loss_groups"``). Under several processes each group's token sum is divided by the step's token count of
    that group over all processes (times the number of processes, which DDP's gradient average divides out), so N
    processes train the model one process trains on the same global batch; a per-rank mean weighted the tokens of a
    rank with fewer of them more (Gato, 2 processes: weights 0.3 of a tensor's scale apart after 4 steps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is a per-batch mean: Trainer must scale it for gradient accumulation itself and must not
        # multiply it by the number of processes (what it does for models that take num_items_in_batch).
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        groups = inputs.pop("loss_groups", None)
        sizes = None
        if self.accelerator.num_processes > 1:
            keep = inputs["labels"][:, 1:] != -100
            rows = keep.nonzero()[:, 0]
            local = torch.stack([chosen.sum() for chosen in group_rows(rows, groups, keep.shape[0])]).float()
            sizes = self.accelerator.reduce(local, reduction="sum") / self.accelerator.num_processes
        loss = labelled_token_loss(model, inputs, groups, sizes)
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
