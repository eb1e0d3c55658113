"""Denoising objectives of encoder-decoder pre-training, as collators: T5's span corruption and BART's noising.

Seed 003: "FLAN-T5 is trained using span corruption. In span corruption, a part of the input sequence is masked
and replaced by a sentinel token. These sentinel tokens are special tokens added to the vocabulary ... The decoder
then has to reconstruct the sentence autoregressively. The output is the sentinel token followed by the predicted
tokens."

* :class:`DataCollatorForSpanCorruption` follows T5's ``random_spans_noise_mask`` (Raffel et al. 2020, section
  3.1.4; ``t5.data.preprocessors``): ``round(length * noise_density)`` noise tokens in
  ``round(noise / mean_noise_span_length)`` spans, span and gap lengths a uniformly random composition, gaps
  first. Each noise span becomes one sentinel ``<extra_id_k>`` in the input; the target is each sentinel followed
  by the tokens it replaced. Both end with eos. Example: ``Thank you for inviting me to your party last week`` ->
  input ``Thank you <extra_id_0> me to your party <extra_id_1> week`` and target
  ``<extra_id_0> for inviting <extra_id_1> last``.
* :class:`DataCollatorForBartDenoising` follows BART (Lewis et al. 2020, section 2.2): sentence permutation, text
  infilling (spans with Poisson(lambda = 3) lengths, each replaced by one mask token; a 0-length span inserts a
  mask), token masking and token deletion. The target is the original text.

Inputs are features with ``input_ids`` (token ids without special tokens, e.g. blocks of the embedded corpus);
outputs are padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding). Seq2seq models shift the
labels right themselves (``prepare_decoder_input_ids_from_labels``).

The noise of an example is a function of ``(seed, epoch, the example's tokens)`` only, drawn from its own generator
(:meth:`ExampleKeyedNoise.example_rng`), never from a stream that earlier batches advanced: a run resumed from a
checkpoint, a run split over N processes, and a dataloader that prefetches or skips batches all corrupt each block
exactly as one uninterrupted process does (seqio derives T5's noise from per-example seeds for the same reason).
:class:`DenoisingEpochCallback` tells the collator Trainer's epoch, so each epoch corrupts a block afresh.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

SENTINEL_TEMPLATE = "<extra_id_{}>"


def add_sentinel_tokens(tokenizer: PreTrainedTokenizerBase, count: int = 100) -> list[int]:
    """Add ``<extra_id_0>`` ... ``<extra_id_{count-1}>`` as special tokens (never split, skipped by
    ``decode(..., skip_special_tokens=True)``) where missing; return their ids in sentinel order. Resize the
    model's embeddings afterwards: ``model.resize_token_embeddings(len(tokenizer))``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}.")
    tokens = [SENTINEL_TEMPLATE.format(k) for k in range(count)]
    vocab = tokenizer.get_vocab()  # once: each call builds the whole vocabulary dict
    tokenizer.add_tokens([t for t in tokens if t not in vocab], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(tokens)


def sentinel_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in the tokenizer, up to the first one missing (T5's
    tokenizers hold 100 of them, at the end of the vocabulary in descending order; ``add_sentinel_tokens`` adds
    them to any tokenizer)."""
    vocab, ids = tokenizer.get_vocab(), []
    while SENTINEL_TEMPLATE.format(len(ids)) in vocab:
        ids.append(vocab[SENTINEL_TEMPLATE.format(len(ids))])
    return ids


def random_segmentation(rng: np.random.Generator, total: int, segments: int, min_length: int = 1) -> np.ndarray:
    """Lengths of ``segments`` parts, each at least ``min_length``, summing to ``total``: a uniformly random
    composition (T5's ``_random_segmentation``, which has ``min_length=1``; ``0`` allows empty parts)."""
    free = total - segments * min_length
    if free < 0:
        raise ValueError(f"Cannot split {total} items into {segments} parts of at least {min_length}.")
    # Stars and bars: segments - 1 bars among free + segments - 1 slots.
    bars = np.sort(rng.choice(free + segments - 1, size=segments - 1, replace=False))
    bounds = np.concatenate(([-1], bars, [free + segments - 1])).astype(np.int64)
    return np.diff(bounds) - 1 + min_length


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(noise tokens, noise spans)`` of a ``length``-token sequence, exactly as T5 rounds them: at least one
    noise token, at least one clean token, at least one span."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    return noise, max(int(round(noise / mean_noise_span_length)), 1)


def random_spans_noise_mask(rng: np.random.Generator, length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """T5's noise mask (boolean, ``length``): spans of noise, clean gaps before each (the sequence starts clean
    and ends with noise, as in T5's preprocessor)."""
    if length < 2:
        raise ValueError(f"Span corruption needs at least 2 tokens (one noise, one kept), got {length}.")
    noise, spans = span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(rng, noise, spans)
    clean_lengths = random_segmentation(rng, length - noise, spans)
    interleaved = np.stack((clean_lengths, noise_lengths), axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), interleaved)


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(raw tokens, target length)``: how many raw tokens to feed so that the corrupted input is exactly
    ``inputs_length`` tokens with its eos (T5's ``random_spans_helper``). Use it to cut corpus blocks."""
    def lengths(tokens: int) -> tuple[int, int]:
        noise, spans = span_counts(tokens, noise_density, mean_noise_span_length)
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return tokens, lengths(tokens)[1]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _check_probability(name: str, value: float, upper_inclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0):
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")


class ExampleKeyedNoise:
    """Noise keyed by ``(seed, epoch, an example's tokens)``: the mechanism every collator here that draws noise
    shares (span corruption, BART noising, and ``hfgen.data.mlm.MaskedLMCollator``'s masks). A subclass sets
    ``self.seed`` (:meth:`resolve_seed`) and draws each example's noise from :meth:`example_rng`;
    :class:`DenoisingEpochCallback` keeps ``self.epoch`` at Trainer's epoch."""

    seed: int
    epoch: int = 0  # set by DenoisingEpochCallback under Trainer

    @staticmethod
    def resolve_seed(seed: int | None) -> int:
        """``seed`` checked, or for None one drawn from torch's global generator (so ``transformers.set_seed``
        makes the noise reproducible, as it does for transformers' own unseeded collators)."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None (drawn from torch's random generator), "
                             f"got {seed!r}.")
        return int(torch.randint(2**62, ())) if seed is None else seed

    def example_rng(self, ids: Sequence[int]) -> np.random.Generator:
        """The generator of one example's noise, keyed by ``(seed, epoch, ids)``: the same example in the same epoch
        gets the same noise whatever was drawn before it (in this process, another one, or before a resume)."""
        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16).digest()
        return np.random.default_rng([self.seed, self.epoch, *np.frombuffer(digest, dtype=np.uint32).tolist()])

    @contextmanager
    def fixed_noise(self, seed: int, epoch: int = 0) -> Iterator[None]:
        """Draw noise with ``seed`` and ``epoch`` inside the block (e.g. the same noise on the validation set before
        and after training), then restore the collator's own."""
        saved = self.seed, self.epoch
        self.seed, self.epoch = seed, epoch
        try:
            yield
        finally:
            self.seed, self.epoch = saved


class _DenoisingCollator(ExampleKeyedNoise):
    """Shared plumbing: the tokenizer's special ids, each example's generator, padding into a batch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, seed: int | None, add_eos: bool):
        seed = self.resolve_seed(seed)
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (it pads inputs and is the "
                             "decoder's start token in T5-style models).")
        if add_eos and tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no eos token: set tokenizer.eos_token, or pass add_eos=False.")
        self.tokenizer = tokenizer
        self.add_eos = add_eos
        self.seed = seed
        self.epoch = 0

    def _ids(self, feature: Any) -> list[int]:
        ids = feature["input_ids"] if isinstance(feature, dict) else feature
        ids = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        if len(ids) < 2:
            raise ValueError(f"Each example needs at least 2 tokens to corrupt, got {len(ids)}.")
        return ids

    def _batch(self, inputs: list[list[int]], targets: list[list[int]]) -> dict[str, torch.Tensor]:
        eos = [self.tokenizer.eos_token_id] if self.add_eos else []
        inputs = [row + eos for row in inputs]
        targets = [row + eos for row in targets]
        input_ids = _pad(inputs, self.tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": _pad([[1] * len(r) for r in inputs], 0),
                "labels": _pad(targets, -100)}


class DataCollatorForSpanCorruption(_DenoisingCollator):
    """T5's span corruption (see the module docstring). ``sentinel_ids``: ids of ``<extra_id_0>``, ... (default:
    from the tokenizer, :func:`sentinel_token_ids`); an example needing more spans than there are sentinels is
    an error, before anything is produced."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0, sentinel_ids: Sequence[int] | None = None,
                 seed: int | None = None, add_eos: bool = True):
        super().__init__(tokenizer, seed, add_eos)
        if isinstance(noise_density, bool) or not isinstance(noise_density, (int, float)) or not 0 < noise_density < 1:
            raise ValueError(f"noise_density must be a number in (0, 1), got {noise_density!r}.")
        if (isinstance(mean_noise_span_length, bool) or not isinstance(mean_noise_span_length, (int, float))
                or not mean_noise_span_length >= 1):
            raise ValueError(f"mean_noise_span_length must be a number >= 1, got {mean_noise_span_length!r}.")
        self.sentinel_ids = list(sentinel_token_ids(tokenizer) if sentinel_ids is None else sentinel_ids)
        if not self.sentinel_ids:
            raise ValueError("The tokenizer has no sentinel tokens (<extra_id_0>, ...): add them with "
                             "hfgen.data.denoising.add_sentinel_tokens(tokenizer, count) and resize the model's "
                             "embeddings (model.resize_token_embeddings(len(tokenizer))).")
        self.noise_density = float(noise_density)
        self.mean_noise_span_length = float(mean_noise_span_length)

    def corrupt(self, ids: list[int], rng: np.random.Generator | None = None) -> tuple[list[int], list[int]]:
        """``(input, target)`` of one example, without eos; the noise comes from ``rng`` (default: the example's
        own, :meth:`example_rng`)."""
        rng = self.example_rng(ids) if rng is None else rng
        mask = random_spans_noise_mask(rng, len(ids), self.noise_density, self.mean_noise_span_length)
        inputs, targets, span = [], [], -1
        for position, token in enumerate(ids):
            if not mask[position]:
                inputs.append(token)
                continue
            if position == 0 or not mask[position - 1]:  # a span starts: one sentinel in both
                span += 1
                inputs.append(self.sentinel_ids[span])
                targets.append(self.sentinel_ids[span])
            targets.append(token)
        return inputs, targets

    def __call__(self, features: list[Any]) -> dict[str, torch.Tensor]:
        examples = [self._ids(f) for f in features]
        for ids in examples:  # every check before any randomness is drawn
            spans = span_counts(len(ids), self.noise_density, self.mean_noise_span_length)[1]
            if spans > len(self.sentinel_ids):
                raise ValueError(
                    f"Span corruption of a {len(ids)}-token example makes {spans} noise spans, but only "
                    f"{len(self.sentinel_ids)} sentinel tokens were added to the vocabulary: add at least {spans} "
                    f"(add_sentinel_tokens(tokenizer, {spans})), or use shorter examples."
                )
        inputs, targets = zip(*(self.corrupt(ids) for ids in examples))
        return self._batch(list(inputs), list(targets))


def sentence_end_token_ids(tokenizer: PreTrainedTokenizerBase, ends: tuple[str, ...] = (".", "!", "?")) -> set[int]:
    """Ids of the tokens whose text ends a sentence (ends with ``.``, ``!`` or ``?``, trailing spaces aside)."""
    return {i for token, i in tokenizer.get_vocab().items()
            if tokenizer.convert_tokens_to_string([token]).rstrip().endswith(ends)}


def split_sentences(ids: list[int], sentence_ends: set[int]) -> list[list[int]]:
    """Consecutive runs of ``ids``, each ending after a sentence-end token (the last one may not)."""
    sentences, current = [], []
    for token in ids:
        current.append(token)
        if token in sentence_ends:
            sentences.append(current)
            current = []
    return sentences + ([current] if current else [])


class DataCollatorForBartDenoising(_DenoisingCollator):
    """BART's noising functions, applied in this order to each example; the target is the original.

    Args:
        permute_sentences: shuffle the sentences (split after ``sentence_end_ids``, default: the tokenizer's tokens
            ending in ``.``, ``!``, ``?``).
        infilling_probability: fraction of tokens covered by text-infilling spans; span lengths ~ Poisson(
            ``poisson_lambda``); each span, 0-length ones included, becomes one mask token.
        masking_probability: each (remaining) token independently replaced by the mask token.
        deletion_probability: each (remaining) token independently deleted.
    BART's pre-training used text infilling (30% of tokens) with sentence permutation, the defaults here.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, permute_sentences: bool = True,
                 infilling_probability: float = 0.3, poisson_lambda: float = 3.0, masking_probability: float = 0.0,
                 deletion_probability: float = 0.0, sentence_end_ids: set[int] | None = None,
                 seed: int | None = None, add_eos: bool = True):
        super().__init__(tokenizer, seed, add_eos)
        _check_probability("infilling_probability", infilling_probability)
        _check_probability("masking_probability", masking_probability, upper_inclusive=True)
        _check_probability("deletion_probability", deletion_probability)
        if isinstance(poisson_lambda, bool) or not isinstance(poisson_lambda, (int, float)) or not poisson_lambda > 0:
            raise ValueError(f"poisson_lambda must be a number > 0, got {poisson_lambda!r}.")
        if (infilling_probability or masking_probability) and tokenizer.mask_token_id is None:
            raise ValueError("Text infilling and token masking need a mask token, and the tokenizer has none: "
                             "tokenizer.add_special_tokens({'mask_token': '<mask>'}), then "
                             "model.resize_token_embeddings(len(tokenizer)).")
        self.mask_id = tokenizer.mask_token_id
        self.permute_sentences = permute_sentences
        self.sentence_ends = (sentence_end_token_ids(tokenizer) if permute_sentences and sentence_end_ids is None
                              else set(sentence_end_ids or ()))
        self.infilling_probability = float(infilling_probability)
        self.poisson_lambda = float(poisson_lambda)
        self.masking_probability = float(masking_probability)
        self.deletion_probability = float(deletion_probability)

    def infill_spans(self, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(span lengths, gap lengths)``: Poisson span lengths drawn until they cover
        ``round(length * infilling_probability)`` tokens (the last one cut to fit), placed uniformly at random
        without overlap (``len(spans) + 1`` gaps, possibly empty)."""
        target = int(round(length * self.infilling_probability))
        spans: list[int] = []
        while sum(spans) < target:
            spans.append(min(int(rng.poisson(self.poisson_lambda)), target - sum(spans)))
        spans = np.array(spans, dtype=np.int64)
        return spans, random_segmentation(rng, length - int(spans.sum()), len(spans) + 1, min_length=0)

    def corrupt(self, ids: list[int], rng: np.random.Generator | None = None) -> list[int]:
        """The noisy input of one example, without eos; the noise comes from ``rng`` (default: the example's own,
        :meth:`example_rng`)."""
        rng = self.example_rng(ids) if rng is None else rng
        if self.permute_sentences:
            sentences = split_sentences(ids, self.sentence_ends)
            ids = [t for k in rng.permutation(len(sentences)) for t in sentences[k]]
        if self.infilling_probability:
            spans, gaps = self.infill_spans(len(ids), rng)
            out, position = [], 0
            for gap, span in zip(gaps, [*spans, None]):
                out += ids[position:position + gap]
                position += gap
                if span is not None:
                    out.append(self.mask_id)
                    position += span
            ids = out
        if self.masking_probability:
            masked = rng.random(len(ids)) < self.masking_probability
            ids = [self.mask_id if m else t for t, m in zip(ids, masked)]
        if self.deletion_probability:
            kept = rng.random(len(ids)) >= self.deletion_probability
            ids = [t for t, k in zip(ids, kept) if k] or ids[:1]
        return ids

    def __call__(self, features: list[Any]) -> dict[str, torch.Tensor]:
        examples = [self._ids(f) for f in features]
        return self._batch([self.corrupt(ids) for ids in examples], examples)


class DenoisingEpochCallback(TrainerCallback):
    """Sets a collator's ``epoch`` (any :class:`ExampleKeyedNoise`: the denoising collators, the MLM collator) when
    Trainer starts an epoch (a resumed one included), so every epoch draws each block's noise anew and a resumed run
    draws it as the uninterrupted run did. Dataloader workers get the
    collator's epoch when Trainer starts each epoch's iterator; ``dataloader_persistent_workers`` would keep epoch 0."""

    def __init__(self, collator: ExampleKeyedNoise):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is epoch + steps done / steps per epoch (a fraction when resumed mid-epoch); the slack guards
        # an integer that float division left a hair below.
        self.collator.epoch = math.floor(state.epoch + 1e-6)


__all__ = [
    "DataCollatorForBartDenoising",
    "DataCollatorForSpanCorruption",
    "DenoisingEpochCallback",
    "ExampleKeyedNoise",
    "add_sentinel_tokens",
    "random_spans_noise_mask",
    "sentence_end_token_ids",
    "sentinel_token_ids",
    "span_corruption_lengths",
    "split_sentences",
]
