"""The labelled task of the embedded corpus (hfgen.data.labelled) and the shipped evaluate metric module
(hfgen.metrics), against plain computations written out here and scikit-learn's metrics."""

from __future__ import annotations

import hashlib
from collections import Counter

import evaluate
import numpy as np
import pytest
from pydoc_data.topics import topics
from sklearn.metrics import accuracy_score, f1_score

from hfgen.data import load_corpus
from hfgen.data.labelled import (
    LABELS,
    TOPIC_GROUPS,
    drop_test_paragraphs,
    load_reference_manual_groups,
    split_paragraphs,
)
from hfgen.data.tokenizer import load_tokenizer
from hfgen.metrics import METRICS, load_metric, metric_path
from hfgen.training.classification import label_token_ids


@pytest.fixture(scope="module")
def task():
    return load_reference_manual_groups()


def test_every_topic_has_a_group_and_every_group_has_examples(task):
    assert set(TOPIC_GROUPS) == set(topics)
    for split in ("train", "test"):
        assert set(task[split]["label"]) == set(range(len(LABELS))), split
    assert task["train"].features["label"].names == list(LABELS)
    assert len(task["train"]) > 2 * len(task["test"]) > 200


def test_labels_follow_the_topic_of_each_paragraph(task):
    for row in task["train"].select(range(0, len(task["train"]), 7)):
        assert row["label"] == TOPIC_GROUPS[row["topic"]]
        assert row["text"] in split_paragraphs(topics[row["topic"]])


def test_split_is_the_hash_rule_and_splits_are_disjoint(task):
    def in_test(text: str) -> bool:  # the rule, written out: sha256 of "seed:text", first 8 bytes as a fraction
        return int.from_bytes(hashlib.sha256(f"0:{text}".encode()).digest()[:8], "big") / 2**64 < 0.25

    assert all(in_test(t) for t in task["test"]["text"])
    assert not any(in_test(t) for t in task["train"]["text"])
    assert not set(task["train"]["text"]) & set(task["test"]["text"])
    again = load_reference_manual_groups()
    assert list(again["test"]["text"]) == list(task["test"]["text"])  # fixed across calls


def test_validation_split_is_carved_out_of_train_by_its_own_hash_rule(task):
    """validation_fraction moves train paragraphs (sha256 of "seed:validation:text" below it) to "validation";
    test is untouched and train + validation is the train split as before."""
    carved = load_reference_manual_groups(validation_fraction=0.2)

    def in_validation(text: str) -> bool:
        return int.from_bytes(hashlib.sha256(f"0:validation:{text}".encode()).digest()[:8], "big") / 2**64 < 0.2

    assert list(carved["test"]["text"]) == list(task["test"]["text"])
    assert sorted(list(carved["train"]["text"]) + list(carved["validation"]["text"])) == sorted(task["train"]["text"])
    assert all(in_validation(t) for t in carved["validation"]["text"])
    assert not any(in_validation(t) for t in carved["train"]["text"])
    assert 0.1 * len(task["train"]) < len(carved["validation"]) < 0.3 * len(task["train"])
    with pytest.raises(ValueError, match=r"validation_fraction must be a number in \[0, 1\)"):
        load_reference_manual_groups(validation_fraction=1.0)


def test_paragraphs_are_unique_and_long_enough(task):
    texts = list(task["train"]["text"]) + list(task["test"]["text"])
    assert len(texts) == len(set(texts))
    assert min(len(t) for t in texts) >= 100 and not any(t.startswith("****") for t in texts)


def test_bad_arguments():
    for kwargs, message in (({"test_fraction": 0}, "test_fraction"), ({"test_fraction": 1.0}, "test_fraction"),
                            ({"seed": -1}, "seed"), ({"min_characters": 0}, "min_characters")):
        with pytest.raises(ValueError, match=message):
            load_reference_manual_groups(**kwargs)


def test_pretraining_text_never_contains_a_test_paragraph(task):
    held_out = drop_test_paragraphs(load_corpus())
    text = "\n".join(list(held_out["train"]["text"]) + list(held_out["validation"]["text"]))
    assert not [p for p in task["test"]["text"] if p in text]
    kept = list(task["train"]["text"])[::10]
    assert all(p in text for p in kept)  # only the test paragraphs went


def test_class_words_are_single_distinct_tokens():
    tokenizer = load_tokenizer()
    ids = label_token_ids(tokenizer, LABELS)
    assert len(set(ids)) == len(LABELS)
    with pytest.raises(ValueError, match="do not start with distinct tokens"):
        label_token_ids(tokenizer, ["data model", "data types"])


def _plain_macro_f1(predictions, references, classes):
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(predictions, references))
        fp = sum(p == c and r != c for p, r in zip(predictions, references))
        fn = sum(p != c and r == c for p, r in zip(predictions, references))
        scores.append(0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def test_metric_module_matches_plain_computation_and_sklearn():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 7, 300).tolist()
    predictions = [r if rng.random() < 0.6 else int(rng.integers(0, 6)) for r in references]  # class 6 rarer
    metric = evaluate.load(metric_path("classification_report"))  # evaluate's own loader, on the shipped folder
    result = metric.compute(predictions=predictions, references=references, num_labels=7)
    assert result["accuracy"] == pytest.approx(sum(p == r for p, r in zip(predictions, references)) / 300)
    assert result["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert result["macro_f1"] == pytest.approx(_plain_macro_f1(predictions, references, range(7)))
    assert result["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    # Batches added one at a time give the same result as one call.
    for start in range(0, 300, 64):
        metric.add_batch(predictions=predictions[start:start + 64], references=references[start:start + 64])
    assert metric.compute(num_labels=7) == result


def test_metric_module_absent_classes_and_bad_input():
    metric = load_metric()
    assert "classification_report" in METRICS
    # Without num_labels only classes that occur are averaged; with it, absent classes count as F1 = 0.
    assert metric.compute(predictions=[0, 1], references=[0, 1])["macro_f1"] == 1.0
    assert metric.compute(predictions=[0, 1], references=[0, 1], num_labels=4)["macro_f1"] == 0.5
    assert metric.compute(predictions=[0, 1], references=[0, 1], num_labels=4)["per_class_f1"] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 2\)"):
        metric.compute(predictions=[0, 2], references=[0, 1], num_labels=2)
    with pytest.raises(ValueError, match="Unknown hfgen metric 'accuracy'; valid choices: classification_report"):
        load_metric("accuracy")


def test_majority_baseline_is_below_half(task):
    # The task is not trivial: always answering the commonest class is right on under a third of the test split.
    counts = Counter(task["test"]["label"])
    assert max(counts.values()) / len(task["test"]) < 1 / 3
