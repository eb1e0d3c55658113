"""Checks of what a forward or ``generate`` call receives, made before any work starts (and before any state -- a
cache, a decoding plan -- changes): a ``ValueError`` that names the argument, the shape or value seen and what is
valid, instead of an index error deep inside torch or silently wrong numbers.

Speed: shapes and dtypes are free to check. Values (token-id range, mask entries, position ids) are reduced on the
device and read back in ONE transfer per call (:func:`check_inputs`), as the token-id range check always was: one
device sync per decoding step, however many arguments are checked. A tensor whose values were checked once is not
checked again while it is unchanged (:data:`_CHECKED`): a wrapper model (Gato, the VLM) checks the mask and the
decoder inside it sees the same tensor.
"""

from __future__ import annotations

import weakref

import torch
from transformers import GenerationMixin

from .positions import POSITION_TABLE

IGNORE_INDEX = -100  # transformers' loss functions skip these label positions


class _CheckedTensors:
    """The last few tensors whose values passed a check, each with its version counter at the time (an in-place
    change bumps it, so a changed tensor is checked again). Weak references: nothing is kept alive."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: list[tuple[weakref.ref, int]] = []

    def __contains__(self, tensor: torch.Tensor) -> bool:
        if tensor.is_inference():  # (inference tensors have no version counter)
            return False
        return any(ref() is tensor and version == tensor._version for ref, version in self.entries)

    def add(self, tensor: torch.Tensor) -> None:
        if not tensor.is_inference():
            self.entries = [(weakref.ref(tensor), tensor._version), *self.entries[: self.size - 1]]


_CHECKED = _CheckedTensors()


def check_token_ids(name: str, ids: object) -> None:
    """Shape and dtype of a batch of token ids: a 2D integer tensor ``[batch, tokens]`` with at least one token."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor of token ids [batch, tokens], got {type(ids).__name__}.")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2D [batch, tokens], got shape {tuple(ids.shape)}"
                         f"{' (add a batch dimension: ids[None])' if ids.dim() == 1 else ''}.")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): give at least one sequence of at least one "
                         f"token (a prompt holds at least a BOS token).")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}.")


def check_embeddings(name: str, embeds: object, hidden_size: int) -> None:
    """Shape and dtype of input embeddings: a floating-point ``[batch, tokens, hidden_size]`` tensor."""
    if not isinstance(embeds, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor [batch, tokens, {hidden_size}], got {type(embeds).__name__}.")
    if embeds.dim() != 3 or embeds.shape[-1] != hidden_size:
        raise ValueError(f"{name} must have shape [batch, tokens, {hidden_size}] (hidden_size), got "
                         f"{tuple(embeds.shape)}.")
    if embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(embeds.shape)}): give at least one token.")
    if not embeds.is_floating_point():
        raise ValueError(f"{name} must be floating point (vectors, not token ids), got dtype {embeds.dtype}.")


def check_mask_shape(attention_mask: torch.Tensor, batch: int, length: int, past_length: int | torch.Tensor,
                     name: str = "attention_mask") -> None:
    """``past_length``: the cache's length, a 0-d tensor for a static cache. Its value is unknown while
    ``torch.compile`` traces, so a compiled step checks the batch size only (the key count in eager calls: generate's
    first step, which sets the layout every later step extends)."""
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(attention_mask).__name__}.")
    if attention_mask.dim() == 2:
        if isinstance(past_length, torch.Tensor) and torch.compiler.is_compiling():
            if attention_mask.shape[0] != batch:
                raise ValueError(f"{name} has {attention_mask.shape[0]} rows for a batch of {batch}.")
            return
        past_length = int(past_length)
        expected = (batch, past_length + length)
        if tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"{name} has shape {tuple(attention_mask.shape)}, expected {expected}: one row per sequence "
                f"and one column per token seen so far ({past_length} cached + {length} new)."
            )
    elif attention_mask.dim() == 4:
        if attention_mask.shape[0] not in (1, batch) or attention_mask.shape[2] != length:
            raise ValueError(
                f"A 4D {name} must have shape [batch|1, 1|heads, {length}, keys]; got "
                f"{tuple(attention_mask.shape)} for a batch of {batch}."
            )
    else:
        raise ValueError(f"{name} must be 2D [batch, keys] or 4D, got {attention_mask.dim()} dimensions.")


def check_position_ids_shape(position_ids: torch.Tensor, batch: int, length: int, name: str = "position_ids") -> None:
    if not isinstance(position_ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor [batch, tokens], got {type(position_ids).__name__}.")
    if position_ids.dim() != 2 or position_ids.shape[0] not in (1, batch) or position_ids.shape[1] != length:
        raise ValueError(f"{name} has shape {tuple(position_ids.shape)}, expected ({batch}, {length}) or "
                         f"(1, {length}): one position per new token.")
    if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer positions, got dtype {position_ids.dtype}.")


def mask_row_range(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a 2D mask, ``(low, high)`` ``[batch]`` each, such that the row holds an entry other than 0 and 1
    exactly when ``low < 0 or high > 1`` and holds a 1 when ``high == 1`` (a 0/1 row). For integer masks -- what
    tokenizers and ``generate`` pass -- that is the row's smallest and largest entry: one reduction. A float mask
    can hold 0.5, which a range cannot show: its non-binary rows get ``low = -1``."""
    if mask.dtype == torch.bool:
        high = mask.any(-1)
        return torch.zeros_like(high), high
    if mask.is_floating_point():
        return -((mask != 0) & (mask != 1)).any(-1).long(), (mask == 1).any(-1)
    return torch.aminmax(mask, dim=-1)


def int64(values: torch.Tensor) -> torch.Tensor:
    return values if values.dtype == torch.int64 else values.long()


def bad_mask_rows(low: list[int], high: list[int]) -> tuple[int, list[int]]:
    """From :func:`mask_row_range` read back: (rows with a value other than 0/1, rows with no 1)."""
    not_binary = sum(1 for lo, hi in zip(low, high) if lo < 0 or hi > 1)
    return not_binary, [row for row, hi in enumerate(high) if hi == 0]


def explain_mask(mask: torch.Tensor, low: list[int], high: list[int], name: str = "attention_mask") -> None:
    """Raise for a 2D mask whose row ranges (:func:`mask_row_range`, read back) show a problem (the error path may
    sync again to say what it found)."""
    not_binary, empty_rows = bad_mask_rows(low, high)
    if not_binary:
        bad = mask[(mask != 0) & (mask != 1)]
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (token); got {bad.numel()} other value(s) in "
                         f"{not_binary} row(s), e.g. {bad[0].item()!r}. A mask is not a weight: use 0/1 (or bool).")
    if empty_rows:
        raise ValueError(f"{name} masks every token of row(s) {empty_rows[:8]}: each row needs at least one 1 (a "
                         f"row with nothing to attend to has no defined output).")


def check_inputs(config, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                 attention_mask: torch.Tensor | None, past_length: int,
                 position_ids: torch.Tensor | None = None, prefix: str = "") -> tuple[int, int] | None:
    """Check the inputs of a text forward before any state (cache, weights) is touched: ``input_ids`` (2D, not
    empty, integer, within ``config.vocab_size``) or ``inputs_embeds`` (``[batch, tokens, hidden_size]``, floating,
    finite),
    ``attention_mask`` (2D ``[batch, cached + new]`` of 0/1 with a 1 in every row, or 4D) and ``position_ids``
    (``[batch|1, tokens]``, >= 0, below ``max_position_embeddings`` with learned positions). The values are read back
    in one device sync; none under ``torch.compile`` (which cannot branch on them). Returns the smallest and
    largest token id (``None`` without ``input_ids`` or under ``torch.compile``), for checks of special ids that
    need no second sync. ``prefix``: of the argument names in messages (``"decoder_"`` in an encoder-decoder)."""
    if input_ids is not None:
        check_token_ids(f"{prefix}input_ids", input_ids)
        batch, length = input_ids.shape
    else:
        check_embeddings(f"{prefix}inputs_embeds", inputs_embeds, config.hidden_size)
        batch, length = inputs_embeds.shape[:2]
    if attention_mask is not None:
        check_mask_shape(attention_mask, batch, length, past_length, f"{prefix}attention_mask")
    if position_ids is not None:
        check_position_ids_shape(position_ids, batch, length, f"{prefix}position_ids")
    if torch.compiler.is_compiling():
        return None
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 \
        and attention_mask not in _CHECKED else None
    positions = position_ids if position_ids is not None and position_ids not in _CHECKED else None
    embeds = inputs_embeds if input_ids is None and inputs_embeds not in _CHECKED else None
    read, batch_rows = _read_back(input_ids, embeds, positions, mask)
    if read is None:
        return None
    return _check_read_values(config, read, batch_rows, input_ids, embeds, positions, mask, prefix)


def _read_back(input_ids, embeds, positions, mask) -> tuple[list | None, int]:
    """Everything :func:`check_inputs` needs, read back in one transfer: the id and position ranges (whole-tensor
    reductions, the cheapest), the count of non-finite embedding values and the mask's per-row ranges (empty rows
    need them); and the mask's row count. ``(None, 0)``: nothing to read."""
    scalars = [*torch.aminmax(input_ids)] if input_ids is not None else []
    if embeds is not None:
        scalars.append((~torch.isfinite(embeds)).sum())
    if positions is not None:
        scalars += torch.aminmax(positions)
    rows = list(mask_row_range(mask)) if mask is not None else []
    if not scalars and not rows:
        return None, 0
    if not rows and len({x.dtype for x in scalars}) == 1:  # (the common decoding step: ids alone, as before)
        read = torch.stack(scalars).tolist()  # the one device sync
    else:
        pieces = ([torch.stack([int64(x) for x in scalars])] if scalars else []) + [int64(x) for x in rows]
        read = (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).tolist()  # the one device sync
    return read, (len(rows[0]) if rows else 0)


def _check_read_values(config, read: list, batch_rows: int, input_ids, embeds, positions, mask,
                       prefix: str) -> tuple[int, int] | None:
    """The value checks of :func:`check_inputs` on what :func:`_read_back` read, in its order."""
    id_range = None
    if input_ids is not None:
        low, high, *read = read
        if low < 0 or high >= config.vocab_size:
            raise ValueError(
                f"Token ids must lie in [0, {config.vocab_size}) (vocab_size); got ids from {low} to {high} in "
                f"{prefix}input_ids. Was the input encoded with a different tokenizer?"
            )
        id_range = (low, high)
    if embeds is not None:
        bad, *read = read
        if bad:  # (sdpa on CPU returns 0 for NaN queries: finite garbage downstream, not NaN)
            raise ValueError(f"{prefix}inputs_embeds hold {bad} NaN or inf value(s) (of {embeds.numel()}); every "
                             f"value must be finite.")
        _CHECKED.add(embeds)
    if positions is not None:
        low, high, *read = read
        kind = POSITION_TABLE.get(getattr(config, "position_embedding", None))
        limit = config.max_position_embeddings if kind is not None and not kind.extrapolates else None
        if low < 0 or (limit is not None and high >= limit):
            valid = f"lie in [0, {limit}) (max_position_embeddings, learned positions)" if limit else "be >= 0"
            raise ValueError(f"{prefix}position_ids must {valid}; got positions from {low} to {high}.")
        _CHECKED.add(positions)
    if mask is not None:
        explain_mask(mask, read[:batch_rows], read[batch_rows:], f"{prefix}attention_mask")
        _CHECKED.add(mask)
    return id_range


def mark_checked(embeddings: torch.Tensor) -> torch.Tensor:
    """``embeddings`` a wrapper model (Gato, the VLM) made from ids and images it has checked, returned as they are:
    the decoder inside takes them as ``inputs_embeds`` without reading their values back again (one device sync
    per decoding step in all)."""
    if not torch.compiler.is_compiling():
        _CHECKED.add(embeddings)
    return embeddings


def check_finite(name: str, values: torch.Tensor) -> None:
    """NaN or inf in ``values`` (images, timesteps): a ``ValueError`` instead of NaN outputs, or finite garbage where
    a kernel maps NaN to 0. One device sync, once per tensor (:data:`_CHECKED`)."""
    if torch.compiler.is_compiling() or not values.is_floating_point() or values in _CHECKED:
        return
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{name} hold {bad} NaN or inf value(s) (of {values.numel()}); every value must be finite.")
    _CHECKED.add(values)


def check_encoder_output(encoder_hidden_states: object, hidden_size: int,
                         name: str = "encoder_outputs.last_hidden_state") -> None:
    """The encoder output a decoder cross-attends to: ``[batch, source tokens, hidden_size]``, floating point (shape
    and dtype only: it is normally this model's own encoder's output)."""
    if not isinstance(encoder_hidden_states, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor [batch, source tokens, {hidden_size}], got "
                         f"{type(encoder_hidden_states).__name__}.")
    if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[-1] != hidden_size \
            or not encoder_hidden_states.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor [batch, source tokens, {hidden_size}] (hidden_size),"
                         f" got shape {tuple(encoder_hidden_states.shape)} and dtype {encoder_hidden_states.dtype}.")


def check_lm_labels(labels: torch.Tensor, vocab_size: int, shape: tuple[int, ...], name: str = "labels") -> None:
    """Language-modelling labels: the shape of the input ids, token ids in ``[0, vocab_size)`` or -100 (ignored).
    One device sync, at training time only."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor of token ids, got {type(labels).__name__}.")
    if labels.dim() != 2:
        raise ValueError(f"{name} must be 2D [batch, tokens] like the input ids, got shape {tuple(labels.shape)}.")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(labels.shape)}, expected {tuple(shape)} (the shape of the input "
                         f"ids: the loss shifts them by one position itself).")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {labels.dtype}.")
    if labels.numel() and not torch.compiler.is_compiling():
        # (ignored positions read as 0: one reduction and one sync, no boolean indexing)
        low, high = torch.stack(torch.aminmax(labels.masked_fill(labels == IGNORE_INDEX, 0))).tolist()
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} must be token ids in [0, {vocab_size}) (vocab_size) or {IGNORE_INDEX} "
                             f"(ignored); got values from {low} to {high}.")


def check_head_inputs(config, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                      labels: torch.Tensor | None, logits_to_keep: object = 0, vocab_size: int | None = None) -> None:
    """What a language-modelling head checks before its model runs: ``logits_to_keep``, and ``labels`` against the
    input (checked first, so a bad input is named as such rather than as a label mismatch)."""
    check_logits_to_keep(logits_to_keep)
    if labels is None:
        return
    if input_ids is not None:
        check_token_ids("input_ids", input_ids)
        shape = input_ids.shape
    elif inputs_embeds is not None:
        check_embeddings("inputs_embeds", inputs_embeds, inputs_embeds.shape[-1] if inputs_embeds.dim() else 0)
        shape = inputs_embeds.shape[:2]
    else:
        return  # (the model names the missing input)
    check_lm_labels(labels, vocab_size if vocab_size is not None else config.vocab_size, shape)


def check_classification_labels(config, labels: torch.Tensor | None, input_ids: torch.Tensor | None,
                                inputs_embeds: torch.Tensor | None, per_token: bool = False) -> None:
    """Class labels as transformers' classification losses read them, checked before the model runs: with
    ``per_token`` one class id in ``[0, num_labels)`` or -100 per input token; otherwise, by ``problem_type`` (unset:
    regression for ``num_labels == 1``, single-label for integer labels, multi-label for float ones), one value
    per sequence, one class id in ``[0, num_labels)`` per sequence, or ``[batch, num_labels]`` targets."""
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch tensor, got {type(labels).__name__}.")
    reference = input_ids if input_ids is not None else inputs_embeds
    if not isinstance(reference, torch.Tensor) or reference.dim() < 2:
        return  # (the model names the bad input)
    batch, num_labels = reference.shape[0], config.num_labels
    integer = not labels.is_floating_point() and labels.dtype != torch.bool
    problem = config.problem_type
    if not per_token and (problem == "regression" or (problem is None and num_labels == 1)):
        if labels.numel() != batch * num_labels:
            raise ValueError(f"labels (regression, num_labels={num_labels}) have shape {tuple(labels.shape)}; "
                             f"expected {batch * num_labels} values for a batch of {batch}.")
        return
    if not per_token and (problem == "multi_label_classification" or (problem is None and not integer)):
        if tuple(labels.shape) != (batch, num_labels):
            raise ValueError(f"labels (multi-label classification) have shape {tuple(labels.shape)}, expected "
                             f"({batch}, {num_labels}): one 0/1 target per class (num_labels) and sequence.")
        return
    expected = tuple(reference.shape[:2]) if per_token else (batch,)
    if not integer:
        raise ValueError(f"labels must hold integer class ids in [0, {num_labels}), got dtype {labels.dtype}.")
    if tuple(labels.shape) != expected and not (not per_token and labels.numel() == batch):
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {expected}: one class id per "
                         f"{'token' if per_token else 'sequence'}.")
    if labels.numel() and not torch.compiler.is_compiling():
        ignored = labels == IGNORE_INDEX if per_token else torch.zeros_like(labels, dtype=torch.bool)
        low, high = torch.stack(torch.aminmax(labels.masked_fill(ignored, 0))).tolist()  # one sync, training only
        if low < 0 or high >= num_labels:
            raise ValueError(f"labels must be class ids in [0, {num_labels}) (num_labels)"
                             f"{' or -100 (ignored)' if per_token else ''}; got values from {low} to {high}.")


def check_logits_to_keep(logits_to_keep: object) -> None:
    """``logits_to_keep``: an integer >= 0 (0: every position, k: the last k) or a 1D tensor of positions."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.dim() != 1 or logits_to_keep.is_floating_point():
            raise ValueError(f"logits_to_keep as a tensor must be 1D integer positions, got shape "
                             f"{tuple(logits_to_keep.shape)} and dtype {logits_to_keep.dtype}.")
        return
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an integer >= 0 (0: logits at every position, k: at the last k) "
                         f"or a 1D tensor of positions, got {logits_to_keep!r}.")


def check_generate_inputs(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
    """What ``generate`` receives, before it derives anything from it: transformers drops an all-ones mask and
    computes positions from the mask, so a mask shorter than the prompt or holding 2 would otherwise fail deep in
    a layer or shift positions silently."""
    if not isinstance(input_ids, torch.Tensor):
        return  # (inputs_embeds only, or an encoder-decoder's own inputs: checked by forward)
    check_token_ids("input_ids", input_ids)
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(f"attention_mask has shape {shape}, but the prompt (input_ids) has shape "
                         f"{tuple(input_ids.shape)}: generate needs one mask entry per prompt token.")
    if not torch.compiler.is_compiling():
        low, high = (piece.tolist() for piece in mask_row_range(attention_mask))
        explain_mask(attention_mask, low, high)


class HfGenGenerationMixin(GenerationMixin):
    """transformers' ``GenerationMixin`` whose ``generate`` checks the prompt and its mask first
    (:func:`check_generate_inputs`), and an encoder-decoder's ``encoder_outputs`` (:func:`check_encoder_output`)."""

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        check_generate_inputs(inputs if inputs is not None else kwargs.get("input_ids"), kwargs.get("attention_mask"))
        if kwargs.get("encoder_outputs") is not None:  # (generate reads its batch size from it first)
            check_encoder_output(kwargs["encoder_outputs"][0], self.config.hidden_size)
        return super().generate(inputs, *args, **kwargs)
