"""Encoder pre-training data: the encoder tokenizer keeps the decoder's ids, the MLM collator has BERT's statistics
(15% chosen; of those 80% mask, 10% random, 10% kept; specials and padding never chosen), and the NSP pairs are
half true successors and half segments of other documents, with BERT's segment ids."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hfgen import HfGenEncoderForPreTraining
from hfgen.data import MaskedLMCollator, load_corpus, load_encoder_tokenizer, load_tokenizer, next_sentence_pairs
from hfgen.data.mlm import split_segments
from test_encoder_fixtures import tiny_encoder_config


@pytest.fixture(scope="module")
def tokenizer():
    return load_encoder_tokenizer()


@pytest.fixture(scope="module")
def documents():
    return load_corpus()["train"]["text"][:40]


@pytest.fixture(scope="module")
def pairs(tokenizer, documents):
    return next_sentence_pairs(documents, tokenizer, max_length=512, seed=0, max_pairs=600)


def _within(observed: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


def test_encoder_tokenizer_keeps_the_shipped_ids(tokenizer, documents):
    plain = load_tokenizer()
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == [plain.convert_ids_to_tokens(i) for i in range(4)]
    assert len(tokenizer) == len(plain) + 3
    added = {tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id}
    assert added == set(range(len(plain), len(plain) + 3))
    text = documents[0][:2000]
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == plain(text)["input_ids"]
    single = tokenizer(text[:100])
    assert single["input_ids"][0] == tokenizer.cls_token_id and single["input_ids"][-1] == tokenizer.sep_token_id
    assert tokenizer.decode(single["input_ids"], skip_special_tokens=True) == text[:100]


def test_mlm_collator_statistics(tokenizer, documents):
    ids = tokenizer("\n".join(documents), add_special_tokens=False)["input_ids"][:64 * 126]
    rows = [[tokenizer.cls_token_id, *ids[i:i + 126], tokenizer.sep_token_id] for i in range(0, len(ids), 126)]
    rows[-1] = rows[-1][:60]  # one short row: padding
    examples = [{"input_ids": r, "special_tokens_mask": tokenizer.get_special_tokens_mask(
        r, already_has_special_tokens=True)} for r in rows]
    batch = MaskedLMCollator(tokenizer=tokenizer, seed=0)(examples)
    original = tokenizer.pad({"input_ids": rows}, return_tensors="pt")["input_ids"]
    chosen = batch["labels"] != -100
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (chosen & special).any()  # [CLS], [SEP] and padding are never chosen
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])
    candidates, n = int((~special).sum()), int(chosen.sum())
    assert _within(n / candidates, 0.15, candidates)
    masked = batch["input_ids"][chosen] == tokenizer.mask_token_id
    kept = batch["input_ids"][chosen] == original[chosen]
    randomised = ~masked & ~kept
    for part, expected in ((masked, 0.8), (randomised, 0.1), (kept, 0.1)):
        assert _within(float(part.float().mean()), expected, n), (float(part.float().mean()), expected)


def test_nsp_pairs_are_half_true_half_random_with_segment_ids(tokenizer, documents, pairs):
    labels = torch.tensor(pairs["next_sentence_label"])
    assert _within(float(labels.float().mean()), 0.5, len(labels))
    segments = [split_segments(d) for d in documents]
    successors, origins = {}, {}  # a text may occur more than once (headings): every successor, every document
    for document, parts in enumerate(segments):
        for i, part in enumerate(parts):
            origins.setdefault(part, set()).add(document)
            if i + 1 < len(parts):
                successors.setdefault(part, set()).add(parts[i + 1])
    checked = 0
    for example in pairs.select(range(300)):
        ids, types = example["input_ids"], example["token_type_ids"]
        first_sep = ids.index(tokenizer.sep_token_id)
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        a, b = tokenizer.decode(ids[1:first_sep]), tokenizer.decode(ids[first_sep + 1:-1])
        if a not in successors or b not in origins:  # truncated: its text is no longer a whole segment
            continue
        checked += 1
        if example["next_sentence_label"] == 0:
            assert b in successors[a]
        else:  # drawn from another document than A's
            assert not origins[b] <= origins[a]
    assert checked > 250


def test_pairs_train_the_pretraining_model(tokenizer, pairs):
    model = HfGenEncoderForPreTraining(copy.deepcopy(tiny_encoder_config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512)))
    short = pairs.filter(lambda e: len(e["input_ids"]) <= 64).select(range(8))
    batch = MaskedLMCollator(tokenizer=tokenizer, seed=0)([short[i] for i in range(8)])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
