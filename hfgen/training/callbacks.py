"""Trainer callbacks that the Hugging Face trainers lack."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState


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


class RunTotalsCallback(TrainerCallback, ExportableState):
    """Make every checkpoint carry what a resumed run needs to report the whole run's training loss and time.

    At each step that saves a checkpoint it asks Trainer to log first, so the checkpoint's ``log_history`` holds the
    loss of every step up to it (Trainer otherwise logs every ``logging_steps`` only, and the steps since the last log
    would be lost with the killed process). Its ``state()`` (stored in ``trainer_state.json`` under
    ``stateful_callbacks``) is the training time so far, the earlier sessions' included. Logging does not touch the
    model, optimizer or random streams: the trained weights are the same with or without this callback.
    """

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = seconds_before  # training time of the sessions before this one (from the checkpoint)
        self._start: float | None = None

    @staticmethod
    def seconds_in(stateful_callbacks: dict[str, Any] | None) -> float | None:
        """The training time recorded in a ``TrainerState.stateful_callbacks``, or ``None`` where none is."""
        entry = (stateful_callbacks or {}).get(RunTotalsCallback.__name__)
        if isinstance(entry, list):  # Trainer keeps a list when several instances were saved
            entry = entry[-1] if entry else None
        try:
            return float(entry["attributes"]["seconds_before"])
        except (TypeError, KeyError, ValueError):
            return None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # On resume Trainer has loaded the checkpoint's state (stateful_callbacks included) before this call.
        self.seconds_before = self.seconds_in(state.stateful_callbacks) or 0.0
        self._start = time.time()  # the clock of Trainer's train_runtime

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if control.should_save:  # set by DefaultFlowCallback, which runs before this one
            control.should_log = True
        return control

    def state(self) -> dict[str, Any]:
        """Called by Trainer as it saves a checkpoint: the training time up to this moment."""
        elapsed = time.time() - self._start if self._start is not None else 0.0
        return {"args": {}, "attributes": {"seconds_before": self.seconds_before + elapsed}}
