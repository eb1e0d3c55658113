"""Gist tokens for the tokenizer, and instruction data from the embedded corpus laid out for gist training
(Mu et al. 2023): ``instruction <gist_0> ... <gist_k-1> input output<eos>``, loss on the output only (decoder);
``instruction <gist_0> ... <gist_k-1> input`` into the encoder and ``output<eos>`` as the target (encoder-decoder).

The instructions are tasks over words of the Python reference manual (the embedded corpus): which task to do is
written only in the instruction, so a model can do it only through what the gist tokens carry from it.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import torch

from ..models.gist import gist_attention_mask
from ..models.gist_seq2seq import gist_cross_attention_mask, gist_encoder_attention_mask
from .corpus import load_corpus

GIST_TOKEN = "<|gist_{}|>"

# instruction -> what it does to the input words
TASKS = {
    "Repeat the words exactly.": lambda words: words,
    "Write the words in reverse order.": lambda words: words[::-1],
    "Write only the first and the last word.": lambda words: [words[0], words[-1]],
    "Write every word twice.": lambda words: [w for word in words for w in (word, word)],
}


def add_gist_tokens(tokenizer, num_gist_tokens: int = 1, model=None) -> list[int]:
    """Add ``num_gist_tokens`` special tokens ``<|gist_i|>`` to ``tokenizer`` (a no-op for those already there) and,
    with ``model``, grow its embeddings to the new vocabulary size. Returns their ids."""
    if isinstance(num_gist_tokens, bool) or not isinstance(num_gist_tokens, int) or num_gist_tokens < 1:
        raise ValueError(f"num_gist_tokens must be a positive integer, got {num_gist_tokens!r}.")
    tokens = [GIST_TOKEN.format(i) for i in range(num_gist_tokens)]
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return gist_token_ids(tokenizer, num_gist_tokens)


def gist_token_ids(tokenizer, num_gist_tokens: int = 1) -> list[int]:
    """The ids of ``<|gist_0|>`` ... ``<|gist_{k-1}|>``; a ``ValueError`` naming the missing ones otherwise."""
    tokens = [GIST_TOKEN.format(i) for i in range(num_gist_tokens)]
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(f"The tokenizer has no gist tokens {missing}: call add_gist_tokens(tokenizer, "
                         f"{num_gist_tokens}, model) first (it also grows the model's embeddings).")
    return [vocab[t] for t in tokens]


def corpus_words(split: str = "train", seed: int = 0) -> list[str]:
    """Plain alphabetic words of the embedded corpus (the Python reference manual), in order."""
    text = " ".join(load_corpus(seed=seed)[split]["text"])
    return re.findall(r"\b[a-z]{3,10}\b", text)


def word_pool(tokenizer, size: int, seed: int = 0) -> list[str]:
    """The ``size`` most frequent words of the training split that are one token each (after a space): a small
    closed vocabulary, so that a small model learns to copy and reorder the words within minutes on a CPU and the
    instruction -- which order to write them in -- decides the loss."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"word_pool size must be an integer >= 2, got {size!r}.")
    single = []
    for word, _ in Counter(corpus_words("train", seed)).most_common():  # most frequent first, until enough
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            single.append(word)
            if len(single) == size:
                return single
    raise ValueError(f"word_pool size {size} is more than the {len(single)} one-token words of the corpus.")


def instruction_rows(count: int, words_per_input: int = 4, split: str = "train", seed: int = 0,
                     tokenizer=None, pool: int | None = None) -> list[dict[str, str]]:
    """``count`` rows ``{"instruction", "input", "output"}`` of the embedded task (the layout of Alpaca-style
    instruction data, which :func:`gist_examples` also takes from the user's files): one of :data:`TASKS`' instructions,
    ``words_per_input`` consecutive words of the corpus, and those words as the instruction asks. ``pool``: only the
    ``word_pool(tokenizer, pool)`` words (the corpus's words in order, the others left out); ``None``: every word."""
    words = corpus_words(split, seed)
    if pool is not None:
        keep = set(word_pool(tokenizer, pool))
        words = [w for w in words if w in keep]
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        instruction, task = rng.choice(list(TASKS.items()))
        start = rng.randrange(len(words) - words_per_input)
        chosen = words[start:start + words_per_input]
        rows.append({"instruction": instruction, "input": " ".join(chosen), "output": " ".join(task(chosen))})
    return rows


def _row_parts(rows, tokenizer, num_gist_tokens: int):
    """Per row, the token ids ``(prompt, source, target)``: instruction + gist tokens, `` Input: <input>\nOutput:``
    (``\nOutput:`` alone where the row has no input), `` <output>`` + eos."""
    gist_ids = gist_token_ids(tokenizer, num_gist_tokens)
    for row in rows:
        source = f" Input: {row['input']}\nOutput:" if row.get("input") else "\nOutput:"
        yield (tokenizer(row["instruction"], add_special_tokens=False)["input_ids"] + gist_ids,
               tokenizer(source, add_special_tokens=False)["input_ids"],
               tokenizer(" " + row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])


def gist_examples(rows, tokenizer, num_gist_tokens: int, seq2seq: bool = False) -> list[dict[str, list[int]]]:
    """Rows ``{"instruction", "input" (optional), "output"}`` (the embedded task's :func:`instruction_rows`, or the
    user's) as training examples ``{"input_ids", "labels", "prompt_length"}``. A causal LM (``seq2seq=False``):
    instruction + gist tokens (the prompt), the input, then the output + eos, labels -100 everywhere but the output.
    An encoder-decoder: ``input_ids`` = instruction + gist tokens + input into the encoder, ``labels`` = the output +
    eos."""
    if seq2seq:
        return [{"input_ids": prompt + source, "labels": target, "prompt_length": len(prompt)}
                for prompt, source, target in _row_parts(rows, tokenizer, num_gist_tokens)]
    return [{"input_ids": prompt + source + target, "labels": [-100] * (len(prompt) + len(source)) + target,
             "prompt_length": len(prompt)} for prompt, source, target in _row_parts(rows, tokenizer, num_gist_tokens)]


def gist_instruction_examples(tokenizer, num_gist_tokens: int, count: int, words_per_input: int = 4,
                              split: str = "train", seed: int = 0,
                              word_pool: int | None = None) -> list[dict[str, list[int]]]:
    """``count`` examples of the embedded task (:func:`instruction_rows`) for a causal LM (:func:`gist_examples`).
    ``word_pool``: draw the words from the ``word_pool(tokenizer, word_pool)`` most frequent one-token words only."""
    gist_token_ids(tokenizer, num_gist_tokens)  # the gist tokens' error before the corpus is read
    rows = instruction_rows(count, words_per_input, split, seed, tokenizer, word_pool)
    return gist_examples(rows, tokenizer, num_gist_tokens)


def gist_seq2seq_examples(tokenizer, num_gist_tokens: int, count: int, words_per_input: int = 4,
                          split: str = "train", seed: int = 0,
                          word_pool: int | None = None) -> list[dict[str, list[int]]]:
    """The same examples as :func:`gist_instruction_examples` (same seed, same tasks and words) for an
    encoder-decoder (:func:`gist_examples` with ``seq2seq=True``)."""
    gist_token_ids(tokenizer, num_gist_tokens)
    rows = instruction_rows(count, words_per_input, split, seed, tokenizer, word_pool)
    return gist_examples(rows, tokenizer, num_gist_tokens, seq2seq=True)


class GistCollator:
    """Pads a list of examples on the right and builds the 4D gist mask of ``mode`` (``gist``, ``positive``,
    ``negative``) as ``attention_mask``, for any causal LM that accepts a boolean 4D mask."""

    def __init__(self, gist_token_ids: list[int], pad_token_id: int, mode: str = "gist"):
        self.gist_token_ids, self.pad_token_id, self.mode = list(gist_token_ids), pad_token_id, mode
        gist_attention_mask(torch.zeros(1, 1, dtype=torch.long), self.gist_token_ids, mode=mode)  # checks mode

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        padding = torch.zeros(len(examples), width, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n], labels[row, :n], padding[row, :n] = (torch.tensor(example["input_ids"]),
                                                               torch.tensor(example["labels"]), 1)
        return {"input_ids": ids, "labels": labels,
                "attention_mask": gist_attention_mask(ids, self.gist_token_ids, padding, self.mode)}


class GistSeq2SeqCollator:
    """Pads a list of :func:`gist_seq2seq_examples` on the right and builds the encoder's gist mask of ``mode``
    (``gist``, ``positive``, ``negative``) as a 4D ``attention_mask`` and the decoder's ``cross_attention_mask``,
    for an hfgen encoder-decoder (``HfGenSeq2SeqForConditionalGeneration``); labels padded with -100."""

    def __init__(self, gist_token_ids: list[int], pad_token_id: int, mode: str = "gist"):
        self.gist_token_ids, self.pad_token_id, self.mode = list(gist_token_ids), pad_token_id, mode
        gist_encoder_attention_mask(torch.zeros(1, 1, dtype=torch.long), self.gist_token_ids, mode=mode)  # checks

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, padding = _right_padded([e["input_ids"] for e in examples], self.pad_token_id)
        labels, _ = _right_padded([e["labels"] for e in examples], -100)
        return {"input_ids": ids, "labels": labels,
                "attention_mask": gist_encoder_attention_mask(ids, self.gist_token_ids, padding, self.mode),
                "cross_attention_mask": gist_cross_attention_mask(ids, self.gist_token_ids, padding, self.mode)}


def _right_padded(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, longest], mask)``: the rows padded on the right with ``fill``; mask 1 on real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask
