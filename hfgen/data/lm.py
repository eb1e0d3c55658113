"""Causal-language-modelling preprocessing: documents -> fixed-length blocks of token ids."""

from __future__ import annotations

from typing import Any

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase


def _check_args(dataset_dict: Any, tokenizer: Any, block_size: Any, num_proc: Any) -> None:
    if not isinstance(dataset_dict, DatasetDict):
        raise ValueError(f"dataset_dict must be a datasets.DatasetDict, got {type(dataset_dict).__name__}")
    for split, dataset in dataset_dict.items():
        if "text" not in dataset.column_names:
            raise ValueError(f"split {split!r} has no 'text' column (columns: {dataset.column_names})")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; it is needed to separate documents")
    max_length = tokenizer.model_max_length
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 2 <= block_size <= max_length:
        # Fewer than 2 tokens leaves nothing to predict after the shift; more than model_max_length is longer
        # than the tokenizer says the model takes (raise tokenizer.model_max_length to allow it).
        raise ValueError(
            f"block_size must be an int in [2, {max_length}] (tokenizer.model_max_length), got {block_size!r}"
        )
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be None or an int >= 1, got {num_proc!r}")


def tokenize_for_causal_lm(
    dataset_dict: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    num_proc: int | None = None,
) -> DatasetDict:
    """Tokenize every split's "text", end each document with eos, concatenate and cut into blocks.

    Each split becomes rows of exactly `block_size` tokens with columns "input_ids" and "attention_mask"; the
    tail shorter than a block is dropped. Blocks follow document order, so their concatenation is a prefix of
    the concatenated `tokens(doc) + [eos]` of the split. Labels are left to the collator
    (`DataCollatorForLanguageModeling(tokenizer, mlm=False)`), which shifts nothing and copies input_ids.

    Args:
        dataset_dict: splits with a "text" column.
        tokenizer: any transformers tokenizer with an eos token; no special tokens are added besides eos.
        block_size: tokens per row, in [2, tokenizer.model_max_length].
        num_proc: processes for tokenization (None: in this process); the result does not depend on it.

    Raises:
        ValueError: on bad arguments, or when a split has fewer than `block_size` tokens (it would be empty).
    """
    _check_args(dataset_dict, tokenizer, block_size, num_proc)
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        # add_special_tokens=False: the documents are joined by eos alone, whatever bos/cls the tokenizer adds;
        # verbose=False: long documents are expected here, they are cut into blocks afterwards.
        encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [ids + [eos] for ids in encoded]}

    def group(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat = [token for ids in batch["input_ids"] for token in ids]
        usable = len(flat) - len(flat) % block_size
        blocks = [flat[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}

    result = {}
    for split, dataset in dataset_dict.items():
        tokenized = dataset.map(
            tokenize, batched=True, num_proc=num_proc, remove_columns=dataset.column_names, desc=f"tokenize {split}"
        )
        # One batch for the whole split, in one process: grouping per batch or per shard would drop a tail in
        # each and break the prefix property (and make the blocks depend on num_proc).
        blocks = tokenized.map(group, batched=True, batch_size=None, desc=f"group {split} into blocks")
        if len(blocks) == 0:
            total = sum(len(ids) for ids in tokenized["input_ids"])
            raise ValueError(
                f"split {split!r} has {total} tokens, fewer than block_size={block_size}; use a smaller block_size"
            )
        result[split] = blocks
    return DatasetDict(result)
