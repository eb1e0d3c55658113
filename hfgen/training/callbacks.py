"""Trainer callbacks that the Hugging Face trainers lack."""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class TimeLimitCallback(TrainerCallback):
    """Stop training after the optimizer step during which ``max_seconds`` of training time ran out.

    Under DDP every rank stops at the same step: rank 0's clock decides and is broadcast, since a rank that stops
    alone would leave the others waiting in their next gradient all-reduce.
    """

    def __init__(self, max_seconds: float):
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.max_seconds = max_seconds
        self.stopped_at_step: int | None = None  # set when the limit, not max_steps, ended training
        self._start = 0.0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._start = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        expired = torch.tensor(float(time.monotonic() - self._start > self.max_seconds), device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(expired, src=0)
        if expired.item() and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control
