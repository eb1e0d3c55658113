"""BERT's pre-training data (Devlin et al. 2019; seed 003: "a fraction of the tokens are masked, and the task for the
encoder is to predict those masked words ... BERT also optimizes for next sentence prediction"):

* :class:`MaskedLMCollator`: 15% of the non-special tokens are chosen; of those 80% become the mask token, 10% a
  random token, 10% stay as they are; ``labels`` hold the original ids there and -100 elsewhere. Built on
  ``transformers.DataCollatorForLanguageModeling`` (same sampling), with a stricter check of the probabilities.
* :func:`next_sentence_pairs`: segment pairs from the embedded corpus, half of them the true next segment
  (``next_sentence_label=0``), half a segment of another document (``1``), with token type ids 0 / 1.
  Fed through :class:`MaskedLMCollator`, they train ``HfGenEncoderForPreTraining`` (MLM + NSP at once).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

SEGMENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass
class MaskedLMCollator(DataCollatorForLanguageModeling):
    """``DataCollatorForLanguageModeling`` with ``mlm=True`` and BERT's defaults (``mlm_probability=0.15``,
    ``mask_replace_prob=0.8``, ``random_replace_prob=0.1``), padding every model input (``token_type_ids`` too) and
    passing ``next_sentence_label`` through. The tokenizer needs a mask token (``hfgen.data.load_encoder_tokenizer``).

    Raises ``ValueError`` before any batch for ``mlm_probability`` outside (0, 1) -- 0 would train on nothing and 1
    would leave no context -- and for a tokenizer without a mask token.
    """

    def __post_init__(self):
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
