"""Data that ships with hfgen: the embedded corpus, the trained tokenizer, and language-modelling preprocessing.

Names are resolved lazily so that `python -m hfgen.data.tokenizer` does not find its own module already imported
(runpy warns about that), and so that importing the package does not load `datasets` before it is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .corpus import load_corpus
    from .encoder_tokenizer import add_encoder_tokens, load_encoder_tokenizer
    from .mlm import MaskedLMCollator, next_sentence_pairs
    from .lm import tokenize_for_causal_lm
    from .instructions import instruction_dataset, mentions_keyword, preference_dataset, prompt_dataset
    from .tokenizer import TOKENIZER_DIR, load_tokenizer, train_tokenizer
    from .images import ImageSplit, load_images, save_image_grid

_EXPORTS = {
    "load_corpus": "corpus",
    "add_encoder_tokens": "encoder_tokenizer",
    "load_encoder_tokenizer": "encoder_tokenizer",
    "MaskedLMCollator": "mlm",
    "next_sentence_pairs": "mlm",
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "TOKENIZER_DIR": "tokenizer",
    "tokenize_for_causal_lm": "lm",
    "instruction_dataset": "instructions",
    "preference_dataset": "instructions",
    "prompt_dataset": "instructions",
    "mentions_keyword": "instructions",
    "ImageSplit": "images",
    "load_images": "images",
    "save_image_grid": "images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
