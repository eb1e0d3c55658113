"""BERT's pre-training data (Devlin et al. 2019; seed 003: "a fraction of the tokens are masked, and the task for the
encoder is to predict those masked words ... BERT also optimizes for next sentence prediction"):

* :class:`MaskedLMCollator`: 15% of the non-special tokens are chosen; of those 80% become the mask token, 10% a
  random token, 10% stay as they are; ``labels`` hold the original ids there and -100 elsewhere. Built on
  ``transformers.DataCollatorForLanguageModeling`` (same sampling, whole-word masking included), with a stricter
  check of the probabilities. Each example's masks are drawn from its own generator, keyed by ``(seed, epoch, the
  example's tokens)`` (``hfgen.data.denoising.ExampleKeyedNoise``, shared with the denoising collators): a run
  resumed mid-epoch, a run split over N processes and a prefetching dataloader mask every block as one
  uninterrupted process does. Under Trainer, ``DenoisingEpochCallback(collator)`` moves the epoch on.
* :func:`next_sentence_pairs`: segment pairs from the embedded corpus, half of them the true next segment
  (``next_sentence_label=0``), half a segment of another document (``1``), with token type ids 0 / 1.
  Fed through :class:`MaskedLMCollator`, they train ``HfGenEncoderForPreTraining`` (MLM + NSP at once).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from .denoising import ExampleKeyedNoise

SEGMENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass
class MaskedLMCollator(ExampleKeyedNoise, DataCollatorForLanguageModeling):
    """``DataCollatorForLanguageModeling`` with ``mlm=True`` and BERT's defaults (``mlm_probability=0.15``,
    ``mask_replace_prob=0.8``, ``random_replace_prob=0.1``), padding every model input (``token_type_ids`` too) and
    passing ``next_sentence_label`` through. The tokenizer needs a mask token (``hfgen.data.load_encoder_tokenizer``).

    Each row is masked by transformers' own sampling on that example alone (its tokens without padding), from a
    generator keyed by ``(seed, epoch, its tokens)``: the same block gets the same masks in any batch, process or
    resumed run. ``seed=None`` draws the seed from torch's generator (reproducible under ``set_seed``); under
    Trainer add ``DenoisingEpochCallback(collator)`` so each epoch masks afresh, and use ``collator.fixed_noise(s)``
    for the same masks on a validation set before and after training.

    Raises ``ValueError`` before any batch for ``mlm_probability`` outside (0, 1) -- 0 would train on nothing and 1
    would leave no context -- and for a tokenizer without a mask token.
    """

    def __post_init__(self):
        self.seed = self.resolve_seed(self.seed)
        self.epoch = 0
        probability = self.mlm_probability
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 < probability < 1:
            raise ValueError(f"mlm_probability must be a number in the open interval (0, 1), got {probability!r} "
                             f"(BERT uses 0.15).")
        if not self.mlm:
            raise ValueError("MaskedLMCollator masks tokens: mlm must be True (use DataCollatorForLanguageModeling "
                             "with mlm=False for causal language modelling).")
        if self.tokenizer is None or self.tokenizer.mask_token is None:
            raise ValueError("The tokenizer has no mask token: load it with hfgen.data.load_encoder_tokenizer() or "
                             "pass it through hfgen.data.add_encoder_tokens().")
        super().__post_init__()

    def _example_part(self, row: Any) -> slice:
        """The positions of a padded row that hold the example itself: padding is trimmed from the padding side
        (a trailing real pad-id token is trimmed alone and in a batch alike, so the key is the same)."""
        pad, length = self.tokenizer.pad_token_id, len(row)
        if pad is None:
            return slice(0, length)
        ids = row.tolist()
        if self.tokenizer.padding_side == "left":
            start = next((i for i, t in enumerate(ids) if t != pad), length)
            return slice(start, length)
        end = next((i for i in range(length, 0, -1) if ids[i - 1] != pad), 0)
        return slice(0, end)

    def _mask_each_example(self, mask_tokens: Callable, generator: Callable[[int], Any], inputs: Any,
                           special_tokens_mask: Any, offset_mapping: Any) -> tuple[Any, Any]:
        """``mask_tokens`` (transformers' sampling) on each row's own tokens with that example's generator."""
        if special_tokens_mask is None:
            special_tokens_mask = [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                                   for row in inputs.tolist()]
        special = np.asarray(special_tokens_mask, dtype=bool)
        labels = inputs.clone() if isinstance(inputs, torch.Tensor) else inputs.copy()
        labels[:] = -100
        for index, row in enumerate(inputs):
            part = self._example_part(row)
            ids = row[part]
            self.generator = generator(int(self.example_rng(ids.tolist()).integers(2**62)))
            row_special = special[index, part][None]
            offsets = None if offset_mapping is None else offset_mapping[index, part][None]
            masked, row_labels = mask_tokens(ids[None].clone() if isinstance(ids, torch.Tensor) else ids[None].copy(),
                                             special_tokens_mask=torch.from_numpy(row_special)
                                             if isinstance(ids, torch.Tensor) else row_special,
                                             offset_mapping=offsets)
            inputs[index, part], labels[index, part] = masked[0], row_labels[0]
        return inputs, labels

    def torch_mask_tokens(self, inputs: Any, special_tokens_mask: Any | None = None,
                          offset_mapping: Any | None = None) -> tuple[Any, Any]:
        return self._mask_each_example(super().torch_mask_tokens, lambda s: torch.Generator().manual_seed(s),
                                       inputs, special_tokens_mask, offset_mapping)

    def numpy_mask_tokens(self, inputs: Any, special_tokens_mask: Any | None = None,
                          offset_mapping: Any | None = None) -> tuple[Any, Any]:
        return self._mask_each_example(super().numpy_mask_tokens, np.random.default_rng, inputs,
                                       special_tokens_mask, offset_mapping)


def split_segments(text: str, min_characters: int = 20) -> list[str]:
    """Sentences and paragraphs of ``text`` (split after ``.!?`` and at blank lines), at least ``min_characters``."""
    return [s.strip() for s in SEGMENT_SPLIT.split(text) if len(s.strip()) >= min_characters]


def next_sentence_pairs(texts: Iterable[str], tokenizer, max_length: int = 128, seed: int = 0,
                        max_pairs: int | None = None, min_characters: int = 20) -> Dataset:
    """A ``Dataset`` of segment pairs for next sentence prediction.

    For every segment that has a successor in its document: with probability 1/2 segment B is that successor
    (``next_sentence_label=0``), otherwise a segment drawn from another document (``1``). Encoded as
    ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` 0 for the first part and 1 for the second, truncated to
    ``max_length`` (longest segment first), with ``special_tokens_mask`` for the MLM collator.

    Args:
        texts: documents (e.g. ``load_corpus()["train"]["text"]``); at least two with two segments or more.
        tokenizer: a tokenizer with cls/sep tokens and the pair template (``load_encoder_tokenizer()``).
        max_length: tokens per pair, special tokens included.
        seed: fixes which pairs are true and which random segments are drawn.
        max_pairs: keep at most this many pairs (the first ones, in document order).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 5:
        raise ValueError(f"max_length must be an integer >= 5 (3 special tokens and both segments), got "
                         f"{max_length!r}.")
    if tokenizer.cls_token is None or tokenizer.sep_token is None:
        raise ValueError("The tokenizer has no cls/sep tokens: load it with hfgen.data.load_encoder_tokenizer().")
    documents = [split_segments(t, min_characters) for t in texts]
    documents = [d for d in documents if d]
    if len(documents) < 2 or not any(len(d) > 1 for d in documents):
        raise ValueError("next_sentence_pairs needs at least two documents, one of them with two segments or more.")
    rng = random.Random(seed)
    first, second, labels = [], [], []
    for index, segments in enumerate(documents):
        for position in range(len(segments) - 1):
            if max_pairs is not None and len(labels) >= max_pairs:
                break
            if rng.random() < 0.5:
                following, label = segments[position + 1], 0
            else:
                other = rng.randrange(len(documents) - 1)
                other += other >= index  # any document but this one
                following, label = rng.choice(documents[other]), 1
            first.append(segments[position])
            second.append(following)
            labels.append(label)
    encoded = tokenizer(first, second, truncation="longest_first", max_length=max_length,
                        return_token_type_ids=True, return_special_tokens_mask=True)
    return Dataset.from_dict({**{k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask",
                                                          "special_tokens_mask")},
                              "next_sentence_label": labels})
