"""Tiny pre-trained folders shared by the ``test_recipes_*`` and ``test_transfer_*`` modules (no tests here).

Each is made once per test process (``functools.cache``) by the real pre-training cores, a few steps on a few
blocks of the embedded corpus, so the classification and transfer tests start from genuinely pre-trained weights.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from transformers import TrainingArguments

import hfgen  # noqa: F401  (registers the Auto classes)
from hfgen.training.pretrain import ModelArguments, PretrainResult, cpu_training_defaults

# The same sizes for every family: the transfer experiment compares pre-trained and fresh models of one config.
TINY_MODEL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TINY_FLAGS = [arg for key, value in TINY_MODEL.items() for arg in (f"--{key}", str(value))]


def training_args(output_dir: Path | str, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  learning_rate=5e-3, lr_scheduler_type="constant", logging_steps=1, eval_strategy="no",
                  save_strategy="no", report_to="none", disable_tqdm=True, seed=0, max_steps=4,
                  **cpu_training_defaults())
    return TrainingArguments(**{**values, **overrides})


def _tmp(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"hfgen_{name}_")) / name


@functools.cache
def mlm_run() -> PretrainResult:
    """4 MLM steps of a 1-layer, hidden-32 encoder on 32 blocks of 32 tokens."""
    from hfgen.training.masked_lm import MaskedLMDataArguments, pretrain_masked_lm

    data = MaskedLMDataArguments(block_size=32, max_train_samples=32, max_eval_samples=8)
    return pretrain_masked_lm(ModelArguments(**TINY_MODEL), data, training_args(_tmp("mlm")))


@functools.cache
def span_run() -> PretrainResult:
    """4 span-corruption steps of a 1+1-layer, hidden-32 encoder-decoder on 32 blocks (32-token inputs)."""
    from hfgen.training.span_corruption import SpanCorruptionDataArguments, pretrain_span_corruption

    data = SpanCorruptionDataArguments(block_size=32, max_train_samples=32, max_eval_samples=8)
    return pretrain_span_corruption(ModelArguments(**TINY_MODEL), data, training_args(_tmp("span")))
