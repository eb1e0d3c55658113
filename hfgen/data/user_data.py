"""The user's own data for the text recipes, through ``datasets.load_dataset``: one job, shared by every recipe.

The flags follow transformers' example scripts (``run_clm.py``, ``run_mlm.py``, ``run_classification.py``):
``--dataset_name`` (+ ``--dataset_config_name``) for a Hub id or a local dataset folder, or ``--train_file`` /
``--validation_file`` read by the loader their extension names (text, json/jsonl, csv, parquet); without a
validation split the first ``--validation_split_percentage`` % of train is held out (as ``train[:5%]``);
``--streaming`` reads the data as an ``IterableDataset`` (corpora larger than memory: ``--max_steps`` is then
required, and texts are cut into blocks as they stream). No flag: the recipe's embedded data, as before.

Every check that needs no data runs in :meth:`UserDataArguments.check`, before a tokenizer or a weight exists;
the column check runs as soon as the data is opened, before tokenization. Each error is a ``ValueError`` naming the
flag, what it got and what is valid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

# File extension -> datasets' packaged loader (run_clm's mapping: "txt" is read by "text", "jsonl" by "json").
LOADERS = {"txt": "text", "text": "text", "json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
STREAM_BATCH = 1000  # texts tokenized together while streaming (the blocks do not depend on it)


def _help(text: str) -> dict[str, Any]:
    return {"metadata": {"help": text}}


@dataclass
class UserDataArguments:
    """Where the training text comes from: the recipe's embedded data (no flag), a dataset, or files."""

    dataset_name: str | None = field(default=None, **_help(
        "Train on this dataset instead of the embedded data: a local dataset folder (data files, no script) or a "
        "Hub dataset id (needs the network, or a cached copy with HF_HUB_OFFLINE=1)."))
    dataset_config_name: str | None = field(default=None, **_help("The configuration of --dataset_name."))
    train_file: str | None = field(default=None, **_help(
        "Train on this file instead of the embedded data: .txt (one row per line), .json/.jsonl, .csv or "
        ".parquet."))
    validation_file: str | None = field(default=None, **_help(
        "Evaluate on this file (same formats as --train_file). Unset: the dataset's validation split, else the "
        "first --validation_split_percentage %% of train."))
    validation_split_percentage: int = field(default=5, **_help(
        "Share of train (in %%, 1-99) held out for evaluation when the data has no validation split."))
    keep_linebreaks: bool = field(default=True, **_help("For .txt files: keep the line break at the end of each row."))
    streaming: bool = field(default=False, **_help(
        "Read the training data as a stream (IterableDataset: larger than memory), tokenized and cut into blocks "
        "on the fly, in file order (no shuffling: shuffle the data beforehand). Needs --max_steps; the validation "
        "split is read into memory (cap it with --max_eval_samples)."))

    @property
    def uses_user_data(self) -> bool:
        """Whether the user named data (else the recipe's embedded data is used)."""
        return self.dataset_name is not None or self.train_file is not None

    def check(self, max_steps: int | None = None) -> None:
        """Raise ``ValueError`` for flags that cannot work, before any data, tokenizer or weight is made.

        Args:
            max_steps: the run's ``TrainingArguments.max_steps`` (a stream has no length, so it must be > 0);
                None: not checked.
        """
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError(f"Give either --dataset_name ({self.dataset_name!r}) or --train_file "
                             f"({self.train_file!r}), not both.")
        if self.validation_file is not None and self.train_file is None:
            raise ValueError(f"--validation_file ({self.validation_file!r}) needs --train_file (the training data "
                             f"in the same format).")
        if self.dataset_config_name is not None and self.dataset_name is None:
            raise ValueError(f"--dataset_config_name ({self.dataset_config_name!r}) needs --dataset_name.")
        percentage = self.validation_split_percentage
        if isinstance(percentage, bool) or not isinstance(percentage, int) or not 1 <= percentage <= 99:
            raise ValueError(f"--validation_split_percentage must be an int in [1, 99], got {percentage!r}.")
        extensions = {flag: _loader(flag, path) for flag, path in
                      (("--train_file", self.train_file), ("--validation_file", self.validation_file)) if path}
        if len(set(extensions.values())) > 1:
            raise ValueError(f"--train_file and --validation_file must have the same format, got "
                             f"{self.train_file!r} and {self.validation_file!r}.")
        if self.streaming and max_steps is not None and max_steps <= 0:
            raise ValueError(f"--streaming needs --max_steps > 0 (a stream has no length from which to count "
                             f"epochs), got max_steps={max_steps!r}.")

    def load(self, columns: Sequence[str]) -> DatasetDict | IterableDatasetDict:
        """The user's data as splits "train" and "validation" (``IterableDataset``\\ s with ``streaming``).

        Args:
            columns: the columns the recipe reads; a missing one is an error that lists those present.
        """
        self.check()  # max_steps is the caller's to check (it is not known here)
        if self.train_file is not None:
            loader = _loader("--train_file", self.train_file)
            files = {"train": self.train_file, **({"validation": self.validation_file} if self.validation_file else {})}
            kwargs = {"keep_linebreaks": self.keep_linebreaks} if loader == "text" else {}
            data = _load("--train_file", self.train_file, loader, data_files=files, streaming=self.streaming,
                         **kwargs)
            source = (loader, {"data_files": files, **kwargs})
        else:
            _check_dataset_name(self.dataset_name)
            data = _load("--dataset_name", self.dataset_name, self.dataset_name, self.dataset_config_name,
                         streaming=self.streaming)
            source = (self.dataset_name, {"name": self.dataset_config_name})
        if "train" not in data:
            raise ValueError(f"The data has no 'train' split (splits: {', '.join(data)}).")
        for split in ("train", "validation"):
            if split in data:
                _check_columns(data[split], split, columns)
        if "validation" not in data:
            if self.streaming:
                raise ValueError("--streaming needs a validation split: give --validation_file, or a dataset "
                                 "with a 'validation' split (a stream cannot be cut by percentage).")
            # As run_clm: the first percentage of train for validation, the rest for training.
            name, kwargs = source
            percentage, rows = self.validation_split_percentage, len(data["train"])
            if rows * percentage // 100 < 1 or rows * (100 - percentage) // 100 < 1:
                raise ValueError(f"--validation_split_percentage {percentage} of the {rows} train rows leaves one "
                                 f"part empty: give --validation_file, or more rows.")
            data = DatasetDict({
                "train": _load("--train_file", name, name, split=f"train[{percentage}%:]", **kwargs),
                "validation": _load("--train_file", name, name, split=f"train[:{percentage}%]", **kwargs)})
        return type(data)({split: data[split] for split in ("train", "validation")})


    def load_one_of(self, formats: Sequence[Sequence[str]]) -> DatasetDict | IterableDatasetDict:
        """The user's data in one of ``formats`` (each the columns of one layout, e.g. TRL's ``("prompt",
        "completion")``), all columns kept; the first layout whose columns train has must be in validation too.

        Raises:
            ValueError: when train has none of the layouts, listing them and the columns it has.
        """
        data = self.load([])
        present = _column_names(data["train"])
        for columns in formats:
            if all(column in present for column in columns):
                _check_columns(data["validation"], "validation", columns)
                return data
        layouts = " or ".join("(" + ", ".join(columns) + ")" for columns in formats)
        raise ValueError(f"The train split has the columns {', '.join(present)}; this recipe reads {layouts}.")


@dataclass
class TextDataArguments(UserDataArguments):
    """The user's data for recipes that read one text per row."""

    text_column: str = field(default="text", **_help("The column holding the text (of --dataset_name or the files; "
                                                     ".txt rows are always 'text')."))
    preprocessing_num_workers: int | None = field(default=None, **_help(
        "Processes for tokenization (data in memory; a stream is tokenized as it is read)."))

    def load_user_text(self) -> DatasetDict | IterableDatasetDict:
        """The user's data with one column, "text" (``text_column`` renamed), the others dropped."""
        column = "text" if self.train_file is not None and _loader("--train_file", self.train_file) == "text" \
            else self.text_column
        data = self.load([column])
        return type(data)({split: _only_column(dataset, column, "text") for split, dataset in data.items()})

    def texts(self, embedded: Callable[[], DatasetDict]) -> DatasetDict | IterableDatasetDict:
        """The training text: the user's (:meth:`load_user_text`), else ``embedded()``; a stream with
        ``streaming``."""
        texts = self.load_user_text() if self.uses_user_data else embedded()
        return as_stream(texts) if self.streaming and isinstance(texts, DatasetDict) else texts


def _loader(flag: str, path: str) -> str:
    extension = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if extension not in LOADERS:
        raise ValueError(f"{flag}: cannot tell the format of {path!r} from its extension {extension!r}; valid "
                         f"extensions: {', '.join('.' + e for e in LOADERS)}.")
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: no such file: {path!r} (relative to {os.getcwd()}).")
    return LOADERS[extension]


def _check_dataset_name(name: str) -> None:
    """A local folder passes; a Hub id is asked about once, with a short timeout, instead of load_dataset's
    retries (about 25 s offline), and a failure names the flag."""
    if os.path.isdir(os.path.expanduser(name)):
        return
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"--dataset_name: {name!r} is neither a local folder (relative to {os.getcwd()}) nor a "
                         f"Hub dataset id 'namespace/name'.") from None
    if constants.HF_HUB_OFFLINE:
        return  # load_dataset looks in the cache only; a miss is reported by _load
    try:
        HfApi().dataset_info(name, timeout=10)
    except GatedRepoError:
        return
    except RepositoryNotFoundError:
        raise ValueError(f"--dataset_name: {name!r} is no local folder and the Hub has no dataset of that "
                         f"name.") from None
    except Exception as error:  # noqa: BLE001  (any network failure)
        raise ValueError(f"--dataset_name: {name!r} is no local folder and the Hub could not be reached "
                         f"({type(error).__name__}: {error}); for a copy in the cache set HF_HUB_OFFLINE=1, or "
                         f"pass local files with --train_file.") from None


def _load(flag: str, value: str, *args: Any, **kwargs: Any):
    from datasets import load_dataset

    try:
        return load_dataset(*args, **kwargs)
    except (ConnectionError, FileNotFoundError) as error:
        raise ValueError(f"{flag}: cannot load {value!r}: {error}") from error


def _check_columns(dataset: Dataset | IterableDataset, split: str, columns: Sequence[str]) -> None:
    present = _column_names(dataset)
    missing = [column for column in columns if column not in present]
    if missing:
        raise ValueError(f"Column {missing[0]!r} is not in the {split} split; its columns are: "
                         f"{', '.join(present)}. Name the right one with the column flag (--help).")


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset), None)  # a stream whose features are not declared: read one row
    return [] if first is None else list(first)


def _only_column(dataset: Dataset | IterableDataset, column: str, name: str) -> Dataset | IterableDataset:
    dataset = dataset.select_columns([column])
    return dataset if column == name else dataset.rename_column(column, name)


def stream_blocks(texts: IterableDataset, tokenizer: Any, block_size: int) -> IterableDataset:
    """``texts`` ("text" column) as a stream of ``block_size``-token rows ("input_ids", "attention_mask"): each
    text's tokens then eos, concatenated across texts and cut, the remainder carried into the next batch -- the
    same blocks, in the same order, as ``hfgen.data.tokenize_for_causal_lm`` makes of the whole split."""
    return IterableDataset.from_generator(_generate_blocks, gen_kwargs={
        "texts": texts, "tokenizer": tokenizer, "block_size": block_size})


def _generate_blocks(texts: IterableDataset, tokenizer: Any, block_size: int) -> Iterator[dict[str, list[int]]]:
    eos, buffer = tokenizer.eos_token_id, []
    for batch in texts.iter(batch_size=STREAM_BATCH):
        for ids in tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]:
            buffer += ids + [eos]
        usable = len(buffer) - len(buffer) % block_size
        for start in range(0, usable, block_size):
            yield {"input_ids": buffer[start : start + block_size], "attention_mask": [1] * block_size}
        del buffer[:usable]


def text_blocks(texts: DatasetDict | IterableDatasetDict, tokenizer: Any, block_size: int,
                num_proc: int | None = None, max_eval_samples: int | None = None) -> DatasetDict:
    """Splits "train" and "validation" of ``texts`` cut into blocks (``hfgen.data.tokenize_for_causal_lm``).

    A stream (``IterableDatasetDict``) keeps "train" a stream (:func:`stream_blocks`) and reads the first
    ``max_eval_samples`` validation blocks (all where None) into memory, so that evaluation is the same as for
    data in memory; ``num_proc`` applies to data in memory only.

    Raises:
        ValueError: when the validation stream holds fewer than ``block_size`` tokens.
    """
    from .lm import tokenize_for_causal_lm

    if isinstance(texts, DatasetDict):
        return tokenize_for_causal_lm(texts, tokenizer, block_size, num_proc=num_proc)
    validation = list(islice(_generate_blocks(texts["validation"], tokenizer, block_size), max_eval_samples))
    if not validation:
        raise ValueError(f"The validation split has fewer than block_size={block_size} tokens.")
    return {"train": stream_blocks(texts["train"], tokenizer, block_size),
            "validation": Dataset.from_list(validation)}


def first_rows(dataset: Dataset | IterableDataset, count: int | None) -> Dataset | IterableDataset:
    """The first ``count`` rows of ``dataset`` (all where None): ``select`` in memory, ``take`` on a stream."""
    if count is None:
        return dataset
    if isinstance(dataset, IterableDataset):
        return dataset.take(count)
    return dataset.select(range(min(count, len(dataset))))


def as_stream(data: DatasetDict) -> IterableDatasetDict:
    """The embedded data, in memory, as a stream (``--streaming`` without user data): the same rows in order."""
    return IterableDatasetDict({split: dataset.to_iterable_dataset() for split, dataset in data.items()})


def row_count(dataset: Dataset | IterableDataset) -> int | None:
    """``len(dataset)``, or None for a stream (its length is unknown until read)."""
    return None if isinstance(dataset, IterableDataset) else len(dataset)


__all__ = ["LOADERS", "TextDataArguments", "UserDataArguments", "as_stream", "first_rows", "row_count",
           "stream_blocks", "text_blocks"]
