"""The evaluate modules hfgen ships (hfgen/metrics: Hub metrics cannot be loaded offline) against their formulas
written out, and the recipes' accuracies computed through them against the counts they replace."""

from __future__ import annotations

import random

import pytest
import torch

from hfgen.metrics import load_metric


def test_exact_match_is_the_share_of_identical_texts():
    rng = random.Random(0)
    words = ["a cat", "A Cat", "a dog", "", " a cat"]
    predictions = [rng.choice(words) for _ in range(50)]
    references = [rng.choice(words) for _ in range(50)]
    metric = load_metric("exact_match")
    same = sum(p == r for p, r in zip(predictions, references)) / 50
    same_ignoring_case = sum(p.lower() == r.lower() for p, r in zip(predictions, references)) / 50
    assert same != same_ignoring_case  # the draw exercises the option
    assert metric.compute(predictions=predictions, references=references)["exact_match"] == pytest.approx(same)
    assert metric.compute(predictions=predictions, references=references, ignore_case=True)["exact_match"] == \
        pytest.approx(same_ignoring_case)
    with pytest.raises(ValueError, match="at least one prediction"):
        metric.compute(predictions=[], references=[])


def test_classifier_accuracy_is_the_share_of_argmax_hits():
    from hfgen.diffusion import classifier_accuracy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    images, labels = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    with torch.no_grad():
        expected = (model(images).argmax(-1) == labels).float().mean().item()
        assert classifier_accuracy(model, images, labels) == pytest.approx(expected)


def test_gist_exact_match_is_the_share_of_rows_with_every_labelled_token_right():
    """Random logits and labels with -100 holes, a causal LM (shifted) and an encoder-decoder (aligned): the module
    on token ids written as text gives the per-row all-correct share counted here."""
    from hfgen.training.gist import exact_match

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, 3, generator=generator)
    labels = torch.randint(0, 3, (64, 5), generator=generator)
    labels[torch.rand(64, 5, generator=generator) < 0.5] = -100
    for shifted in (True, False):
        guess, gold = (logits[:, :-1], labels[:, 1:]) if shifted else (logits, labels)
        expected = sum(all(g == -100 or g == p for p, g in zip(row_guess.argmax(-1).tolist(), row_gold.tolist()))
                       for row_guess, row_gold in zip(guess, gold)) / 64
        assert 0 < expected < 1
        assert exact_match(logits, labels, shifted=shifted) == pytest.approx(expected)
