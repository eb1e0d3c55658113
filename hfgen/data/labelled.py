"""A labelled task built from the embedded corpus: which part of the Python documentation a paragraph comes from.

Every topic of ``pydoc_data.topics`` belongs to one chapter of the Language Reference (lexical analysis, data
model, execution model, expressions, simple statements, compound statements) or to the Library Reference (built-in
types, ``string`` formatting, ``pdb``). Its paragraphs (blocks between blank lines, at least ``min_characters``
long) are labelled with that group: a 7-way text classification with real, uneven classes and no download.

The split is fixed: a paragraph is in "test" when a sha256 of (``seed``, its text) falls below ``test_fraction``,
so it never depends on the order of topics or on which other paragraphs exist. Paragraphs repeated across topics
(the "compound" topic holds the whole chapter that "for", "while", ... hold in parts) are kept once; one whose
topics disagree on the group is dropped.

Seed 003's transfer-learning claim is measured on this task (``hfgen.training.transfer``): pre-training may read
the unlabelled text of the "train" paragraphs only -- :func:`manual_without_test_paragraphs` is the manual with
the "test" paragraphs cut out, so nothing a model is scored on was seen in pre-training.
"""

from __future__ import annotations

import re

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .corpus import _topic_documents, _unit_interval

# Class names, in label-id order. Each starts with a word that is one token of the shipped tokenizer (" lexical",
# " data", ...), distinct from the others: the text-to-text (seq2seq) classifier answers with that word.
LABELS = ("lexical analysis", "data model", "execution model", "expressions", "simple statements",
          "compound statements", "library")

# Topic of pydoc_data.topics -> group (index into LABELS), after the chapters of the Python documentation.
_GROUP_TOPICS = {
    "lexical analysis": ("floating", "id-classes", "identifiers", "imaginary", "integers", "numbers", "strings"),
    "data model": ("attribute-access", "callable-types", "context-managers", "customization", "numeric-types",
                   "objects", "sequence-types", "specialnames", "types"),
    "execution model": ("dynamic-features", "exceptions", "execmodel", "naming"),
    "expressions": ("atom-identifiers", "atom-literals", "attribute-references", "await", "binary", "bitwise",
                    "booleans", "calls", "comparisons", "conversions", "dict", "exprlists", "in", "lambda", "lists",
                    "operator-summary", "power", "shifting", "slicings", "subscriptions", "unary"),
    "simple statements": ("assert", "assignment", "augassign", "break", "continue", "del", "global", "import",
                          "nonlocal", "pass", "raise", "return", "yield"),
    "compound statements": ("async", "class", "compound", "else", "for", "function", "if", "try", "while", "with"),
    "library": ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects",
                "debugger", "formatstrings", "specialattrs", "string-methods", "truth", "typesfunctions",
                "typesmapping", "typesmethods", "typesmodules", "typesseq", "typesseq-mutable"),
}
TOPIC_GROUPS = {topic: LABELS.index(group) for group, topics in _GROUP_TOPICS.items() for topic in topics}

_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
_UNDERLINE = re.compile(r"^[*=\-^~\"]{3,}$")  # the reST rules under headings


def split_paragraphs(text: str, min_characters: int = 100) -> list[str]:
    """Blocks of ``text`` between blank lines, stripped, at least ``min_characters`` long; heading underlines
    (``*****``, ``=====``) are removed first so that a heading joins no paragraph of its own."""
    lines = [line for line in text.split("\n") if not _UNDERLINE.match(line.strip())]
    blocks = (block.strip() for block in _PARAGRAPH_SPLIT.split("\n".join(lines)))
    return [block for block in blocks if len(block) >= min_characters]


def _check(test_fraction: float, seed: int, min_characters: int) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1) (exclusive), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(min_characters, bool) or not isinstance(min_characters, int) or min_characters < 1:
        raise ValueError(f"min_characters must be an int >= 1, got {min_characters!r}")


def _labelled_paragraphs(min_characters: int) -> list[tuple[str, int, str]]:
    """(text, label, first topic) of every paragraph, in topic order, each text once."""
    documents = _topic_documents()
    unknown = sorted(name.removeprefix("topic:") for name in documents
                     if name.removeprefix("topic:") not in TOPIC_GROUPS)
    if unknown:  # a newer Python with new topics: say which, rather than labelling them by guess
        raise ValueError(f"pydoc_data.topics has topics without a group in hfgen.data.labelled: {unknown}")
    labels: dict[str, set[int]] = {}
    first_topic: dict[str, str] = {}
    for name, text in documents.items():
        topic = name.removeprefix("topic:")
        for paragraph in split_paragraphs(text, min_characters):
            labels.setdefault(paragraph, set()).add(TOPIC_GROUPS[topic])
            first_topic.setdefault(paragraph, topic)
    return [(text, next(iter(groups)), first_topic[text]) for text, groups in labels.items() if len(groups) == 1]


def load_reference_manual_groups(test_fraction: float = 0.25, seed: int = 0,
                                 min_characters: int = 100, validation_fraction: float = 0.0) -> DatasetDict:
    """The labelled task as a ``DatasetDict`` with splits "train" and "test" (and "validation" when
    ``validation_fraction`` > 0) and columns "text", "label" (a ``ClassLabel`` with names :data:`LABELS`) and
    "topic" (the pydoc topic it was taken from).

    Args:
        test_fraction: expected share of paragraphs in "test", strictly between 0 and 1.
        seed: picks a different, equally fixed split.
        min_characters: shorter paragraphs (headings, one-line grammar rules) are left out.
        validation_fraction: expected share of the *train* paragraphs moved to a "validation" split, in [0, 1):
            for choosing settings (a learning rate) without looking at "test". It is fixed the same way (a sha256
            of (``seed``, "validation:", text)), and "test" is the same whatever this value.
    """
    _check(test_fraction, seed, min_characters)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) \
            or not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}")
    rows = {"train": [], "test": []} if validation_fraction == 0 else {"train": [], "validation": [], "test": []}
    for text, label, topic in _labelled_paragraphs(min_characters):
        split = "test" if _unit_interval(text, seed) < test_fraction else "train"
        if split == "train" and _unit_interval("validation:" + text, seed) < validation_fraction:
            split = "validation"
        rows[split].append((text, label, topic))
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(LABELS)),
                         "topic": Value("string")})
    return DatasetDict({split: Dataset.from_dict(
        {"text": [r[0] for r in split_rows], "label": [r[1] for r in split_rows],
         "topic": [r[2] for r in split_rows]}, features=features) for split, split_rows in rows.items()})


def drop_test_paragraphs(corpus: DatasetDict, test_fraction: float = 0.25, seed: int = 0,
                         min_characters: int = 100) -> DatasetDict:
    """``corpus`` (splits with a "text" column) with every "test" paragraph of :func:`load_reference_manual_groups`
    (same arguments) cut out of every document; other text, docstrings included, is left as it is."""
    test = set(load_reference_manual_groups(test_fraction, seed, min_characters)["test"]["text"])

    def strip(batch: dict[str, list[str]]) -> dict[str, list[str]]:
        kept = []
        for text in batch["text"]:
            lines = [line for line in text.split("\n") if not _UNDERLINE.match(line.strip())]
            blocks = [block for block in _PARAGRAPH_SPLIT.split("\n".join(lines)) if block.strip() not in test]
            kept.append("\n\n".join(blocks))
        return {"text": kept}

    return DatasetDict({split: dataset.map(strip, batched=True, desc=f"drop test paragraphs from {split}")
                        for split, dataset in corpus.items()})


def manual_without_test_paragraphs(test_fraction: float = 0.25, seed: int = 0, min_characters: int = 100,
                                   validation_fraction: float = 0.1) -> DatasetDict:
    """The reference manual for pre-training, with every "test" paragraph of :func:`load_reference_manual_groups`
    (same arguments) cut out: ``hfgen.data.load_corpus(validation_fraction=...)`` (splits "train" and
    "validation" by document, column "text") through :func:`drop_test_paragraphs`, so a pre-trained model has
    never read the text it is scored on."""
    from .corpus import load_corpus

    return drop_test_paragraphs(load_corpus(validation_fraction=validation_fraction, seed=seed), test_fraction,
                                seed, min_characters)


__all__ = ["LABELS", "TOPIC_GROUPS", "drop_test_paragraphs", "load_reference_manual_groups",
           "manual_without_test_paragraphs", "split_paragraphs"]
