"""Crash-safe resuming: find the newest checkpoint that a killed run left complete, and resume the training cores
from it with ``--resume_from_checkpoint last``.

A run killed (SIGKILL, out of memory, pre-emption) while ``Trainer._save_checkpoint`` writes ``checkpoint-N/`` leaves
a folder that ``transformers.trainer_utils.get_last_checkpoint`` still picks (it only looks at the folder name), and
resuming from it fails with a traceback, or worse, silently restarts the optimizer. transformers 5.25 writes, in this
order: the model (``config.json``, ``model.safetensors`` or shards with ``model.safetensors.index.json``, tokenizer
files, ``training_args.bin``), then ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (mixed precision only),
``rng_state.pth`` (``rng_state_<rank>.pth`` per process under DDP, written by every rank), and ``trainer_state.json``
last, by the main process only. Each file is checked from its own bytes here, since under DDP another rank may still
be writing its RNG file when the main one writes ``trainer_state.json``, and a file can be cut short by a full disk
or a power loss after that.

Checkpoints written with DeepSpeed or FSDP (other file layouts) are not recognised; hfgen's training cores use
neither.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# transformers' own pattern for checkpoint folders (trainer_utils.PREFIX_CHECKPOINT_DIR + "-" + global step).
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Values of --resume_from_checkpoint that mean "the newest complete checkpoint in output_dir" / "do not resume".
RESUME_LAST = ("last", "true")
RESUME_NONE = ("", "false", "none")
# Optimizer state, learning-rate schedule: without them a resumed run restarts Adam's moments and the warm-up.
_REQUIRED_STATE_FILES = ("optimizer.pt", "scheduler.pt")
_OPTIONAL_STATE_FILES = ("scaler.pt",)  # written only with fp16/bf16 gradient scaling


def checkpoint_problems(path: str | os.PathLike, world_size: int = 1) -> list[str]:
    """What makes the ``checkpoint-N`` folder ``path`` unusable for an exact resume; an empty list when it is complete.

    Checked from the files themselves: ``trainer_state.json`` parses and its ``global_step`` is ``N``; the weights
    (``model.safetensors``, the shards a ``model.safetensors.index.json`` lists, or a PEFT ``adapter_model.safetensors``)
    have a safetensors header whose tensors end exactly at the end of the file; ``optimizer.pt``, ``scheduler.pt`` and
    the RNG state (``rng_state.pth``, or ``rng_state_<rank>.pth`` for each of ``world_size`` processes) are complete
    zip archives, the format of ``torch.save`` (the central directory at their end is written last).

    Args:
        path: the checkpoint folder.
        world_size: processes of the run that will resume (each needs its own RNG file when more than one).
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a folder"]
    problems = []
    match = _CHECKPOINT_NAME.match(path.name)
    problems += _state_problems(path, int(match.group(1)) if match else None)
    problems += _weights_problems(path)
    rng_files = ("rng_state.pth",) if world_size <= 1 else tuple(f"rng_state_{r}.pth" for r in range(world_size))
    for name in (*_REQUIRED_STATE_FILES, *rng_files):
        problems += _torch_file_problems(path / name, required=True)
    for name in _OPTIONAL_STATE_FILES:
        problems += _torch_file_problems(path / name, required=False)
    return problems


def last_complete_checkpoint(output_dir: str | os.PathLike, world_size: int = 1) -> str | None:
    """The newest (highest step) ``checkpoint-N`` folder in ``output_dir`` that ``checkpoint_problems`` finds
    complete, or ``None``; each newer, incomplete one is logged (warning) with what is wrong with it.

    Unlike ``transformers.trainer_utils.get_last_checkpoint``, which trusts the folder name, this skips the folders a
    run killed while saving leaves behind (empty, without ``trainer_state.json``, with a truncated ``optimizer.pt``).
    """
    for step, folder in reversed(_checkpoint_folders(output_dir)):
        problems = checkpoint_problems(folder, world_size)
        if not problems:
            return str(folder)
        logger.warning("Skipping incomplete checkpoint %s (step %d): %s", folder, step, "; ".join(problems))
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | os.PathLike,
                              world_size: int = 1) -> str | None:
    """The checkpoint folder that ``--resume_from_checkpoint value`` means, verified complete, or ``None``.

    ``last`` or ``true`` (as Trainer users write it; any case, or the bool ``True``): the newest complete checkpoint
    in ``output_dir``; ``None``, ``false``, ``none`` or empty: no resume; anything else: a checkpoint folder.

    Raises:
        ValueError: ``last``/``true`` and ``output_dir`` holds no complete checkpoint (the incomplete ones and why are
            named), or a given folder is missing or incomplete (what is missing is named).
    """
    text = value if isinstance(value, bool) or value is None else str(value).strip()
    if text is None or text is False or (isinstance(text, str) and text.lower() in RESUME_NONE):
        return None
    if text is True or text.lower() in RESUME_LAST:
        found = last_complete_checkpoint(output_dir, world_size)
        if found is None:
            seen = _checkpoint_folders(output_dir)
            detail = "; ".join(f"{folder.name}: {', '.join(checkpoint_problems(folder, world_size))}"
                               for _, folder in seen) if seen else "no checkpoint-N folders at all"
            raise ValueError(
                f"--resume_from_checkpoint {value}: no complete checkpoint in --output_dir {str(output_dir)!r} "
                f"({detail}). Valid: an output_dir where an earlier run saved a checkpoint (--save_steps), or drop "
                "--resume_from_checkpoint to start from scratch.")
        logger.info("Resuming from %s, the newest complete checkpoint in %s", found, output_dir)
        return found
    problems = checkpoint_problems(text, world_size)
    if problems:
        raise ValueError(
            f"--resume_from_checkpoint {text!r} is not a complete checkpoint: {'; '.join(problems)}. Valid: a "
            f"checkpoint-N folder that Trainer finished saving, or 'last' for the newest complete one in --output_dir.")
    return text


def train_resumable(trainer: Any, resume_from_checkpoint: str | bool | None = None):
    """``trainer.train()``, resumed from what ``resume_from_checkpoint`` names (see ``resolve_resume_checkpoint``),
    with the training loss and time of the whole run, the steps before the resume included.

    A ``RunTotalsCallback`` is added to ``trainer`` where it has none, so that every checkpoint carries the loss of
    each step up to it and the training time so far. The shared entry of hfgen's training cores.

    Returns:
        ``(train_output, totals)``: Trainer's ``TrainOutput`` (its metrics cover this call's steps only) and
        ``{"train_loss", "train_runtime_s"}`` over the whole run, plus ``"resumed_from_step"`` after a resume.
    """
    from .callbacks import RunTotalsCallback

    args = trainer.args
    checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, args.output_dir, args.world_size)
    if not any(isinstance(callback, RunTotalsCallback) for callback in trainer.callback_handler.callbacks):
        trainer.add_callback(RunTotalsCallback())
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    return train_output, whole_run_totals(trainer, train_output, checkpoint)


def whole_run_totals(trainer: Any, train_output: Any, checkpoint: str | None) -> dict[str, Any]:
    """Training loss and time of the whole run that ``trainer.train(resume_from_checkpoint=checkpoint)`` finished.

    Trainer's own ``train_loss`` and ``train_runtime`` cover only the steps of that call. The loss of the earlier
    steps is in the restored ``log_history`` (``RunTotalsCallback`` logs at every save, so it reaches the checkpoint's
    step); their time is the callback's record in the checkpoint's ``trainer_state.json``.
    """
    from .callbacks import RunTotalsCallback

    loss, runtime = train_output.metrics.get("train_loss"), train_output.metrics.get("train_runtime")
    if checkpoint is None:
        return {"train_loss": loss, "train_runtime_s": runtime}
    # The checkpoint's own state: trainer.state's stateful_callbacks have moved on with the saves of this call.
    saved = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    resumed_at = saved["global_step"]
    # (loss x steps) of each logged interval up to the checkpoint: "loss" is the mean since the previous log.
    before_sum, covered, last = 0.0, 0, 0
    for entry in trainer.state.log_history:
        if "loss" in entry and entry["step"] <= resumed_at:
            before_sum += entry["loss"] * (entry["step"] - last)
            covered += entry["step"] - last
            last = entry["step"]
    if covered < resumed_at:
        logger.warning("The checkpoint's log history ends at step %d, not at its step %d (saved without "
                       "RunTotalsCallback): the reported train_loss leaves those steps out", covered, resumed_at)
    after = trainer.state.global_step - resumed_at
    if loss is not None and covered + after > 0:
        loss = (before_sum + loss * after) / (covered + after)
    seconds_before = RunTotalsCallback.seconds_in(saved.get("stateful_callbacks"))
    if seconds_before is None:
        logger.warning("%s records no training time (saved without RunTotalsCallback): the reported "
                       "train_runtime_s covers the resumed steps only", checkpoint)
    elif runtime is not None:
        runtime = seconds_before + runtime
    return {"train_loss": loss, "train_runtime_s": runtime, "resumed_from_step": resumed_at}


def _checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder in ``output_dir``, by step."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), entry) for entry in output_dir.iterdir()
             if (m := _CHECKPOINT_NAME.match(entry.name)) and entry.is_dir()]
    return sorted(found)


def _state_problems(path: Path, step: int | None) -> list[str]:
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        return [f"no {TRAINER_STATE} (Trainer writes it last)"]
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return [f"{TRAINER_STATE} does not parse ({error})"]
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return [f"{TRAINER_STATE} has no integer global_step"]
    if step is not None and state["global_step"] != step:
        return [f"{TRAINER_STATE} says global_step {state['global_step']}, the folder name says {step}"]
    return []


def _weights_problems(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            return [f"{index.name} does not parse ({type(error).__name__}: {error})"]
        return [problem for shard in shards for problem in _safetensors_problems(path / shard)]
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (path / name).exists():
            return _safetensors_problems(path / name)
    return ["no weights (model.safetensors, model.safetensors.index.json or adapter_model.safetensors)"]


def _safetensors_problems(file: Path) -> list[str]:
    """A safetensors file is 8 bytes of header length, a JSON header, then the tensors' bytes; the last tensor's end
    offset plus the header must be the file size (a truncated or still-growing file is shorter)."""
    if not file.is_file():
        return [f"no {file.name}"]
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return [f"{file.name} is {size} bytes, shorter than a safetensors header"]
            (header_length,) = struct.unpack("<Q", head)
            if 8 + header_length > size:
                return [f"{file.name} is {size} bytes, shorter than its {header_length}-byte header"]
            header = json.loads(handle.read(header_length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return [f"{file.name}: the safetensors header does not parse ({error})"]
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return [f"{file.name} is {size} bytes, its header says {expected}"]
    return []


def _torch_file_problems(file: Path, required: bool) -> list[str]:
    """``torch.save`` writes a zip archive whose central directory comes last: a file cut short has none (or
    entries that run past its end)."""
    if not file.is_file():
        return [f"no {file.name}"] if required else []
    size = file.stat().st_size
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    return [f"{file.name}: entry {info.filename} runs past the end of the file ({size} bytes)"]
    except (OSError, zipfile.BadZipFile) as error:
        return [f"{file.name} ({size} bytes) is not a complete torch.save archive ({error})"]
    return []
