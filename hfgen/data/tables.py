"""Real tables that ship offline (scikit-learn's bundled data sets) and CSV files, for ``hfgen_tabular``.

Each table comes as a pandas DataFrame with its prediction target (the column machine-learning efficacy is
measured on) and the task on it. Class targets are written as their names (``malignant``, ``setosa``) so that
they are categorical to every generator and readable in rows serialized as text.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SKLEARN_TABLES = ("breast_cancer", "wine", "diabetes", "iris")
TASKS = ("classification", "regression")


@dataclass
class Table:
    """``frame``: the rows; ``target``: the column to predict; ``task``: ``classification`` | ``regression``."""

    name: str
    frame: pd.DataFrame
    target: str
    task: str


def load_sklearn_table(name: str) -> Table:
    """One of :data:`SKLEARN_TABLES` (breast cancer: 569 rows x 31; wine: 178 x 14; diabetes: 442 x 11; iris:
    150 x 5), with scikit-learn's column names and its target as the last column."""
    from sklearn import datasets

    if name not in SKLEARN_TABLES:
        raise ValueError(f"Unknown table {name!r}; the bundled tables are {SKLEARN_TABLES}.")
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    if name == "diabetes":
        return Table(name, frame, "target", "regression")
    frame["target"] = [str(bunch.target_names[i]) for i in bunch.target]
    return Table(name, frame, "target", "classification")


def load_csv_table(path: str, target: str | None = None, task: str | None = None) -> Table:
    """A CSV file with a header row. ``target`` defaults to the last column; ``task`` to classification when the
    target is not numeric or has at most 10 distinct values, else regression."""
    frame = pd.read_csv(path)
    if frame.empty or frame.shape[1] < 2:
        raise ValueError(f"{path} must hold a header and at least one row of two or more columns; got shape "
                         f"{frame.shape}.")
    target = frame.columns[-1] if target is None else target
    if target not in frame.columns:
        raise ValueError(f"target={target!r} is not a column of {path}; its columns: {list(frame.columns)}.")
    if task is None:
        numeric = pd.api.types.is_numeric_dtype(frame[target])
        task = "regression" if numeric and frame[target].nunique() > 10 else "classification"
    if task not in TASKS:
        raise ValueError(f"Unknown task={task!r}; valid tasks are {TASKS}.")
    return Table(path, frame, target, task)


def load_table(dataset: str | None = None, train_file: str | None = None, target: str | None = None) -> Table:
    """``train_file`` (CSV) when given, else the bundled table ``dataset``."""
    if train_file is not None:
        return load_csv_table(train_file, target)
    return load_sklearn_table(dataset or "iris")


def split_table(frame: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random split into training and held-out rows (indices reset)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
    test = frame.sample(frac=test_fraction, random_state=seed)
    return frame.drop(test.index).reset_index(drop=True), test.reset_index(drop=True)
