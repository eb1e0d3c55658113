"""Training with gist masks, and the paper's comparison (Mu et al. 2023): the gist model beside a positive control
(plain causal attention: sees the whole instruction) and a negative control (instruction masked), trained on the
same examples from the same initial weights, scored by the validation loss on the output tokens."""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from ..data.gist import GistCollator, GistSeq2SeqCollator
from ..models.gist import GIST_MODES
from .pretrain import cpu_training_defaults


@dataclass
class GistRun:
    mode: str
    model: torch.nn.Module
    train_losses: list[float] = field(default_factory=list)
    validation_loss: float = float("nan")
    validation_exact_match: float = float("nan")  # share of outputs whose every token is the argmax (= greedy output)


def train_with_gist_mask(initial: torch.nn.Module, train: list[dict], validation: list[dict],
                         gist_token_ids: list[int], pad_token_id: int, mode: str = "gist", batch_size: int = 16,
                         learning_rate: float = 3e-3, seed: int = 0, progress: bool = True,
                         output_dir: str | None = None, report_to: str = "none") -> GistRun:
    """One pass over ``train`` in order, in batches, with ``Trainer`` (torch's AdamW at a constant ``learning_rate``,
    no clipping), from a copy of ``initial``, under the ``mode`` mask (``gist``, ``positive``,
    ``negative``); then the validation loss under the same mask. An encoder-decoder (``config.is_encoder_decoder``)
    takes :func:`gist_seq2seq_examples` and the encoder/cross-attention masks, a causal LM
    :func:`gist_instruction_examples` and the causal gist mask. ``output_dir``: where Trainer writes (default a
    temporary folder; nothing is saved); ``report_to``: Trainer's logging integrations. ``batch_size`` is the batch
    of a step over all processes: under ``torchrun`` / ``accelerate launch`` each of N processes takes
    ``batch_size / N`` examples of it (and Trainer divides the loss by the step's labelled tokens over all processes),
    so N processes train the weights of one."""
    if mode not in GIST_MODES:
        raise ValueError(f"Unknown gist mask mode={mode!r}; valid choices are: {', '.join(map(repr, GIST_MODES))}.")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size < processes or batch_size % processes:
        raise ValueError(f"batch_size={batch_size} (examples per step over all processes) must be a multiple of the "
                         f"{processes} processes of this launch.")
    torch.manual_seed(seed)
    model = copy.deepcopy(initial).train()
    seq2seq = getattr(initial.config, "is_encoder_decoder", False)
    collate = (GistSeq2SeqCollator if seq2seq else GistCollator)(gist_token_ids, pad_token_id, mode=mode)
    run = GistRun(mode=mode, model=model)
    steps = len(train) // batch_size
    if steps:
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(**{
                **cpu_training_defaults(), "output_dir": output_dir or scratch, "max_steps": steps,
                "per_device_train_batch_size": batch_size // processes, "learning_rate": learning_rate,
                "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
                "train_sampling_strategy": "sequential", "dataloader_drop_last": True, "logging_steps": 1,
                "save_strategy": "no", "report_to": report_to, "seed": seed, "remove_unused_columns": False,
                "disable_tqdm": not progress})
            # torch's AdamW with its default weight decay on every parameter, as the paper's comparison was run
            # (Trainer's own optimizer exempts biases and norms from decay)
            optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
            trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate,
                              optimizers=(optimizer, None))
            trainer.train()
        run.train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    model.eval()
    with torch.no_grad():
        batch = collate(validation)
        out = model(**batch)
    run.validation_loss = out.loss.item()
    run.validation_exact_match = exact_match(out.logits, batch["labels"], shifted=not seq2seq)
    return run


def exact_match(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> float:
    """Share of rows whose every labelled token (label != -100) is the argmax of its logits under teacher forcing --
    the same as greedy decoding writing exactly the target -- scored by the ``exact_match`` evaluate module
    (``hfgen.metrics``) on each row's labelled token ids written as text. ``shifted``: a causal LM (logits at ``t``
    predict the label at ``t + 1``); else an encoder-decoder (aligned)."""
    from ..metrics import load_metric

    if shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    labelled = labels != -100
    as_text = lambda ids, keep: " ".join(map(str, ids[keep].tolist()))  # noqa: E731
    return load_metric("exact_match").compute(
        predictions=[as_text(ids, keep) for ids, keep in zip(logits.argmax(-1), labelled)],
        references=[as_text(ids, keep) for ids, keep in zip(labels, labelled)])["exact_match"]


def compare_with_controls(initial, train, validation, gist_token_ids, pad_token_id, **kwargs) -> dict[str, GistRun]:
    """The gist model and both controls, trained alike. ``recovered_gap`` of the result tells how much of the
    negative-to-positive gap the gist model closes."""
    return {mode: train_with_gist_mask(initial, train, validation, gist_token_ids, pad_token_id, mode=mode, **kwargs)
            for mode in ("positive", "gist", "negative")}


def recovered_gap(runs: dict[str, GistRun]) -> float:
    """``(L_negative - L_gist) / (L_negative - L_positive)``: 1 = as good as seeing the instruction, 0 = as bad as not
    seeing it at all."""
    positive, gist, negative = (runs[m].validation_loss for m in ("positive", "gist", "negative"))
    return (negative - gist) / (negative - positive) if negative != positive else float("nan")
