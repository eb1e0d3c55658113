"""The embedded text corpus: the Python reference manual that ships with CPython, optionally the standard
library's docstrings. Nothing is downloaded; the same interpreter always yields the same corpus and split."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from datasets import Dataset, DatasetDict

_DOCS_SCRIPT = Path(__file__).with_name("_stdlib_docs.py")


def _topic_documents() -> dict[str, str]:
    from pydoc_data.topics import topics

    return {f"topic:{name}": text for name, text in sorted(topics.items())}


@functools.lru_cache(maxsize=1)
def _docstring_documents() -> tuple[tuple[str, str], ...]:
    # A child interpreter (-I: no environment or user site, -S: no site-packages) so that importing hundreds of
    # modules neither changes this process nor pulls in third-party code; cached because it is fixed per
    # interpreter.
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(_DOCS_SCRIPT)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=True,
    )
    docs = json.loads(result.stdout)
    return tuple((f"module:{name}", text) for name, text in sorted(docs.items()))


def _unit_interval(key: str, seed: int) -> float:
    """A point in [0, 1) fixed by (seed, key): sha256, because Python's hash() of a str changes every run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_corpus(include_docstrings: bool = False, validation_fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """Load the embedded corpus as a `DatasetDict` with splits "train" and "validation" and one column "text".

    Each document is one topic of the reference manual (`pydoc_data.topics`, 78 distinct texts in Python 3.11)
    and, with `include_docstrings`, one standard-library module (its docstring and its public members'
    docstrings). Exact duplicate texts are kept once.

    A document goes to "validation" when a hash of (`seed`, its name) falls below `validation_fraction`, so its
    split never depends on which other documents are present: turning docstrings on leaves the topics' split
    unchanged. The fraction is therefore met in expectation over documents, not exactly; each split is kept
    non-empty by moving the document nearest the threshold if needed. Documents keep a fixed (sorted) order.

    Args:
        include_docstrings: also include the standard library's docstrings (about 1.3M characters more).
        validation_fraction: expected share of documents in "validation", strictly between 0 and 1.
        seed: picks a different, equally deterministic split.
    """
    if not isinstance(include_docstrings, bool):
        raise ValueError(f"include_docstrings must be a bool, got {include_docstrings!r}")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)):
        raise ValueError(f"validation_fraction must be a number in (0, 1), got {validation_fraction!r}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1) (exclusive), got {validation_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")

    documents = list(_topic_documents().items())
    if include_docstrings:
        documents += list(_docstring_documents())
    # Exact duplicates exist (topics "else" and "if" share one text); split apart they would put validation text
    # into train, so keep only the first of each.
    first_key_of: dict[str, str] = {}
    for key, text in documents:
        first_key_of.setdefault(text, key)
    documents = [(key, text) for text, key in first_key_of.items()]

    points = [_unit_interval(key, seed) for key, _ in documents]
    in_validation = [p < validation_fraction for p in points]
    # With few documents a small fraction can select none (or all); one split being empty would break every
    # trainer downstream, so move the single document whose hash lies closest to the threshold.
    if not any(in_validation):
        in_validation[min(range(len(points)), key=points.__getitem__)] = True
    elif all(in_validation):
        in_validation[max(range(len(points)), key=points.__getitem__)] = False

    texts = {"train": [], "validation": []}
    for (_, text), valid in zip(documents, in_validation):
        texts["validation" if valid else "train"].append(text)
    return DatasetDict({split: Dataset.from_dict({"text": column}) for split, column in texts.items()})
