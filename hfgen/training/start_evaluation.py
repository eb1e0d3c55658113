"""A "before training" evaluation that leaves data-parallel training intact.

With transformers 5.25 and accelerate 1.16, ``trainer.evaluate()`` before ``trainer.train()`` breaks DDP: the
evaluation prepares the bare model with ``accelerator.prepare_model(model, evaluation_mode=True)``, which wraps
nothing but sets ``model._is_accelerate_prepared = True``. ``train()`` then calls
``accelerator.prepare(model, optimizer)``, whose ``prepare_model`` takes that flag for "already wrapped" and hands
the model back without ``DistributedDataParallel``. Every rank then trains its own copy on its own share of each
batch, with no gradient all-reduce, and the ranks drift apart from the first step (issue 20).

``evaluate_then_train`` evaluates from a ``TrainerCallback.on_train_begin`` instead, once ``train()`` has wrapped the
model (as ``TrainingArguments.eval_on_start`` does), so the numbers are those of the weights training starts from
and the model trains under DDP.
"""

from __future__ import annotations

from typing import Any, Callable

from transformers import Trainer, TrainerCallback


class _EvaluateAtTrainBegin(TrainerCallback):
    def __init__(self, evaluate: Callable[[], dict]):
        self.evaluate = evaluate
        self.metrics: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.metrics is None:  # one evaluation, whatever else calls on_train_begin
            self.metrics = self.evaluate()


def evaluate_then_train(trainer: Trainer, train: Callable[[], Any] | None = None,
                        evaluate: Callable[[], dict] | None = None) -> tuple[dict, Any]:
    """Evaluate the weights training starts from, then train, with the model wrapped for DDP as without the
    evaluation (see the module docstring for why ``trainer.evaluate()`` must not come first).

    Args:
        train: what trains (default ``trainer.train()``); it must call ``trainer.train`` once.
        evaluate: the evaluation (default ``trainer.evaluate()``); called on every rank, inside ``train()`` once the
            model is prepared. After a resume from a checkpoint it scores the checkpoint's weights.

    Returns:
        ``(metrics of the evaluation, what train returned)``.
    """
    callback = _EvaluateAtTrainBegin(evaluate or trainer.evaluate)
    trainer.add_callback(callback)
    try:
        result = train() if train is not None else trainer.train()
    finally:
        trainer.remove_callback(callback)
    if callback.metrics is None:
        raise RuntimeError("train() returned without calling trainer.train(): nothing was evaluated before training.")
    return callback.metrics, result
