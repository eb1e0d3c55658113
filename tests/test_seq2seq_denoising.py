"""The denoising collators of encoder-decoder pre-training: T5's span corruption and BART's noising.

Structural tests: putting the target's spans back into the input's sentinels (or undoing BART's noise) gives the
original tokens, hence the original text. Statistical tests: over many examples, the noise rate and the mean span
length are the configured ones (T5: 15%, mean span 3; BART: Poisson(3) infilling spans covering 30%)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from transformers import TrainerControl, TrainerState, TrainingArguments

from conftest import load_hfgen_tokenizer
from hfgen.data.denoising import (
    DataCollatorForBartDenoising,
    DataCollatorForSpanCorruption,
    DenoisingEpochCallback,
    add_sentinel_tokens,
    random_segmentation,
    random_spans_noise_mask,
    sentinel_token_ids,
    span_corruption_lengths,
    split_sentences,
)

TEXT = ("The with statement is used to wrap the execution of a block with methods defined by a context manager. "
        "This allows common try...except...finally usage patterns to be encapsulated for convenient reuse. "
        "Is it clear? It is! The execution proceeds as follows.")


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = load_hfgen_tokenizer()
    add_sentinel_tokens(tokenizer, 32)
    tokenizer.add_special_tokens({"mask_token": "<mask>"})
    return tokenizer


@pytest.fixture(scope="module")
def text_ids(tokenizer):
    return tokenizer(TEXT, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ span corruption


def fill_sentinels(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """Undo span corruption: each sentinel in the input takes the tokens that follow it in the target."""
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    return [t for token in inputs for t in (spans[token] if token in sentinels else [token])]


def test_sentinel_tokens_are_added_once_as_special_tokens(tokenizer):
    ids = sentinel_token_ids(tokenizer)
    assert len(ids) == 32 and add_sentinel_tokens(tokenizer, 32) == ids  # idempotent
    encoded = tokenizer("a <extra_id_3> b", add_special_tokens=False)["input_ids"]
    assert ids[3] in encoded
    assert "<extra_id_3>" not in tokenizer.decode(encoded, skip_special_tokens=True)


def test_span_corruption_reassembles_into_the_original_text(tokenizer, text_ids):
    collator = DataCollatorForSpanCorruption(tokenizer, seed=0)
    sentinels = sentinel_token_ids(tokenizer)
    features = [{"input_ids": text_ids}, {"input_ids": text_ids[:20]}, {"input_ids": text_ids[5:45]}]
    batch = collator(features)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for i, feature in enumerate(features):
        n_in, n_out = int(batch["attention_mask"][i].sum()), int((batch["labels"][i] != -100).sum())
        inputs, targets = batch["input_ids"][i, :n_in].tolist(), batch["labels"][i, :n_out].tolist()
        assert inputs[-1] == eos and targets[-1] == eos
        assert batch["input_ids"][i, n_in:].eq(pad).all() and batch["labels"][i, n_out:].eq(-100).all()
        used = [t for t in inputs if t in sentinels]
        assert used == sentinels[:len(used)] and used == [t for t in targets if t in sentinels]  # in order
        assert targets[0] == sentinels[0]  # the target starts with a sentinel, then the tokens it replaced
        original = fill_sentinels(inputs[:-1], targets[:-1], sentinels)
        assert original == feature["input_ids"]
        assert tokenizer.decode(original) == tokenizer.decode(feature["input_ids"])
    assert tokenizer.decode(fill_sentinels(batch["input_ids"][0, :-1].tolist(),
                                           batch["labels"][0, :-1].tolist(), sentinels)) == TEXT


def test_span_corruption_noise_rate_and_mean_span_length():
    """T5: round(15% of the tokens) in round(noise / 3) spans; span lengths vary but average 3."""
    rng = np.random.default_rng(0)
    noise = spans = total = 0
    lengths = []
    for length in rng.integers(60, 200, size=400):
        mask = random_spans_noise_mask(rng, int(length))
        starts = np.flatnonzero(mask & ~np.concatenate(([False], mask[:-1])))
        ends = np.flatnonzero(mask & ~np.concatenate((mask[1:], [False])))
        lengths += list(ends - starts + 1)
        noise, spans, total = noise + mask.sum(), spans + len(starts), total + length
        assert not mask[0] and mask[-1]  # T5's layout: starts clean, ends with noise
    assert abs(noise / total - 0.15) < 0.005
    assert abs(np.mean(lengths) - 3.0) < 0.1
    assert np.std(lengths) > 1.0 and min(lengths) == 1  # random lengths, not all 3


def test_span_corruption_lengths_match_t5():
    """T5's random_spans_helper: 568 raw tokens make 512 inputs and 114 targets."""
    assert span_corruption_lengths(512) == (568, 114)
    collator_lengths = []
    rng = np.random.default_rng(1)
    for _ in range(3):
        mask = random_spans_noise_mask(rng, 568)
        starts = mask & ~np.concatenate(([False], mask[:-1]))
        collator_lengths.append((int((~mask).sum() + starts.sum() + 1), int(mask.sum() + starts.sum() + 1)))
    assert set(collator_lengths) == {(512, 114)}


def test_random_segmentation_is_a_composition():
    rng = np.random.default_rng(0)
    for total, parts, minimum in ((10, 3, 1), (10, 4, 0), (5, 5, 1), (7, 1, 1)):
        lengths = random_segmentation(rng, total, parts, minimum)
        assert len(lengths) == parts and lengths.sum() == total and lengths.min() >= minimum


def test_too_few_sentinels_is_an_error_before_anything_is_produced(tokenizer, text_ids):
    collator = DataCollatorForSpanCorruption(tokenizer, sentinel_ids=sentinel_token_ids(tokenizer)[:2], seed=0)
    with pytest.raises(ValueError, match=r"makes \d+ noise spans, but only 2 sentinel tokens were added"):
        collator([{"input_ids": text_ids[:10]}, {"input_ids": text_ids}])
    with pytest.raises(ValueError, match=r"seed must be a non-negative int or None.*got -1"):
        DataCollatorForSpanCorruption(tokenizer, seed=-1)


def _row(batch: dict[str, torch.Tensor], i: int) -> tuple[list[int], list[int]]:
    """Row ``i`` of a padded batch: its input and target without padding."""
    return (batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist(),
            batch["labels"][i][batch["labels"][i] != -100].tolist())


@pytest.mark.parametrize("make", [
    lambda tokenizer, seed: DataCollatorForSpanCorruption(tokenizer, seed=seed),
    lambda tokenizer, seed: DataCollatorForBartDenoising(tokenizer, seed=seed),
], ids=["span-corruption", "bart"])
def test_noise_depends_on_seed_epoch_and_tokens_only(tokenizer, text_ids, make):
    """An example is corrupted the same way alone by a fresh collator, in a batch, in reverse order, after other
    batches (what a resumed run or another process sees of it); another epoch or seed corrupts it anew."""
    examples = [{"input_ids": text_ids[i:i + 40]} for i in range(0, 16, 2)]
    collator = make(tokenizer, 0)
    together = collator(examples)
    reverse = collator(examples[::-1])
    n = len(examples)
    for i, example in enumerate(examples):
        alone = make(tokenizer, 0)([example])
        assert _row(together, i) == _row(alone, 0) == _row(reverse, n - 1 - i)
    collator.epoch = 1
    later, other_seed = collator(examples), make(tokenizer, 1)(examples)
    assert sum(_row(later, i) != _row(together, i) for i in range(n)) >= n // 2
    assert sum(_row(other_seed, i) != _row(together, i) for i in range(n)) >= n // 2
    with collator.fixed_noise(0, epoch=0):
        assert all(_row(collator(examples), i) == _row(together, i) for i in range(n))
    assert (collator.seed, collator.epoch) == (0, 1)


def test_epoch_callback_sets_trainers_epoch(tokenizer, tmp_path):
    """Trainer's state.epoch is the epoch plus the share done (a fraction when resumed mid-epoch)."""
    collator = DataCollatorForSpanCorruption(tokenizer, seed=0)
    callback = DenoisingEpochCallback(collator)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    for epoch, expected in ((0.0, 0), (0.5, 0), (1.0, 1), (2.0 - 1e-12, 2), (2.75, 2)):
        callback.on_epoch_begin(args, TrainerState(epoch=epoch), TrainerControl())
        assert collator.epoch == expected


def test_span_corruption_bad_arguments():
    plain = load_hfgen_tokenizer()
    with pytest.raises(ValueError, match="no sentinel tokens.*add_sentinel_tokens"):
        DataCollatorForSpanCorruption(plain)
    with pytest.raises(ValueError, match=r"noise_density must be a number in \(0, 1\)"):
        DataCollatorForSpanCorruption(plain, noise_density=1.5, sentinel_ids=[5])
    with pytest.raises(ValueError, match="mean_noise_span_length must be a number >= 1"):
        DataCollatorForSpanCorruption(plain, mean_noise_span_length=0, sentinel_ids=[5])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        DataCollatorForSpanCorruption(plain, sentinel_ids=[5])([{"input_ids": [7]}])
    with pytest.raises(ValueError, match="count must be a positive integer"):
        add_sentinel_tokens(plain, 0)


def test_span_corruption_trains_a_seq2seq_model(tokenizer, text_ids):
    """The collator's batch is what the model takes: sentinel ids inside the (resized) vocabulary."""
    from conftest import build
    from hfgen import HfGenSeq2SeqForConditionalGeneration
    from test_seq2seq_fixtures import tiny_seq2seq_config

    model = build(HfGenSeq2SeqForConditionalGeneration,
                  tiny_seq2seq_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    batch = DataCollatorForSpanCorruption(tokenizer, seed=0)([{"input_ids": text_ids}] * 2)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.shared.weight.grad[sentinel_token_ids(tokenizer)[0]].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- BART


def infilling_pattern(noisy: list[int], mask_id: int) -> str:
    """A regex over token ids that the original must match: each mask stands for any (possibly empty) span."""
    return "".join("(?:\\d+,)*?" if t == mask_id else f"{t}," for t in noisy)


def as_text(ids: list[int]) -> str:
    return "".join(f"{t}," for t in ids)


def strip_eos(batch, i, tokenizer):
    n_in, n_out = int(batch["attention_mask"][i].sum()), int((batch["labels"][i] != -100).sum())
    inputs, labels = batch["input_ids"][i, :n_in].tolist(), batch["labels"][i, :n_out].tolist()
    assert inputs[-1] == labels[-1] == tokenizer.eos_token_id
    return inputs[:-1], labels[:-1]


def test_bart_target_is_the_original_and_each_noise_is_undoable(tokenizer, text_ids):
    mask_id = tokenizer.mask_token_id
    sentences = split_sentences(text_ids, DataCollatorForBartDenoising(tokenizer).sentence_ends)
    assert len(sentences) >= 5 and sum(sentences, []) == text_ids  # ("try...except" splits too)

    permute = DataCollatorForBartDenoising(tokenizer, permute_sentences=True, infilling_probability=0.0, seed=0)
    noisy, labels = strip_eos(permute([{"input_ids": text_ids}]), 0, tokenizer)
    assert labels == text_ids and tokenizer.decode(labels) == TEXT
    assert noisy != text_ids and sorted(split_sentences(noisy, permute.sentence_ends)) == sorted(sentences)

    infill = DataCollatorForBartDenoising(tokenizer, permute_sentences=False, seed=0)
    noisy, labels = strip_eos(infill([{"input_ids": text_ids}]), 0, tokenizer)
    assert mask_id in noisy and re.fullmatch(infilling_pattern(noisy, mask_id), as_text(text_ids))

    masking = DataCollatorForBartDenoising(tokenizer, permute_sentences=False, infilling_probability=0.0,
                                           masking_probability=0.3, seed=0)
    noisy, _ = strip_eos(masking([{"input_ids": text_ids}]), 0, tokenizer)
    assert len(noisy) == len(text_ids) and all(n in (o, mask_id) for n, o in zip(noisy, text_ids))

    deletion = DataCollatorForBartDenoising(tokenizer, permute_sentences=False, infilling_probability=0.0,
                                            deletion_probability=0.3, seed=0)
    noisy, _ = strip_eos(deletion([{"input_ids": text_ids}]), 0, tokenizer)
    assert len(noisy) < len(text_ids) and re.fullmatch("(?:\\d+,)*?".join(["", *map(as_text, [[t] for t in noisy]), ""]),
                                                       as_text(text_ids))


def test_bart_infilling_statistics(tokenizer):
    """Spans cover round(30%) of the tokens; their lengths are Poisson(3): mean 3, P(0) = e^-3 (insertions)."""
    collator = DataCollatorForBartDenoising(tokenizer, permute_sentences=False, seed=0)
    covered = total = 0
    lengths = []
    rng = np.random.default_rng(0)
    for length in rng.integers(80, 200, size=300):
        spans, gaps = collator.infill_spans(int(length), rng)
        assert spans.sum() + gaps.sum() == length and len(gaps) == len(spans) + 1
        covered, total = covered + spans.sum(), total + length
        lengths += list(spans[:-1])  # the last span is cut to fit the budget
    assert abs(covered / total - 0.3) < 0.005
    assert abs(np.mean(lengths) - 3.0) < 0.15 and abs(np.var(lengths) - 3.0) < 0.4
    assert abs(np.mean(np.array(lengths) == 0) - np.exp(-3)) < 0.02


def test_bart_masking_and_deletion_rates(tokenizer):
    ids = list(range(300, 2300))
    for key in ("masking_probability", "deletion_probability"):
        collator = DataCollatorForBartDenoising(tokenizer, permute_sentences=False, infilling_probability=0.0,
                                                **{key: 0.2}, seed=0)
        noisy, _ = strip_eos(collator([{"input_ids": ids}]), 0, tokenizer)
        rate = noisy.count(tokenizer.mask_token_id) / len(ids) if key.startswith("mask") else 1 - len(noisy) / len(ids)
        assert abs(rate - 0.2) < 0.03, (key, rate)


def test_bart_bad_arguments():
    plain = load_hfgen_tokenizer()
    with pytest.raises(ValueError, match="need a mask token.*add_special_tokens"):
        DataCollatorForBartDenoising(plain)
    with pytest.raises(ValueError, match=r"infilling_probability must be a number in \[0, 1\)"):
        DataCollatorForBartDenoising(plain, infilling_probability=1.0)
    with pytest.raises(ValueError, match="poisson_lambda must be a number > 0"):
        DataCollatorForBartDenoising(plain, infilling_probability=0.0, poisson_lambda=0)
