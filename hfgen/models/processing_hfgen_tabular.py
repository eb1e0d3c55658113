"""Tokenization of table rows for ``hfgen_tabular``: each column by its type, one vocabulary for the whole table.

* A **categorical** column is one cell: one token per category (plus one for "missing" where the column is nullable).
* A **numerical** column is two cells: a *bin* token (its quantile bin, ``num_bins`` bins whose edges are the
  training data's quantiles, so every bin holds about as many rows) then a *fine* token (which of
  ``num_fine_bins`` equal slices of that bin it falls in). The position inside the slice is the in-bin detail the
  model leaves uniform: generated numbers are drawn uniformly inside their slice and rounded to the column's
  ``decimals`` (the fewest decimal places that write every training value exactly), so they have the precision of
  the data. For full precision the tokenizer keeps each encoded number itself beside its tokens (``values``):
  ``decode(**encode(table))`` gives the table back bit for bit. (A 53-bit fraction of the slice cannot: it cannot
  address every float of a slice around zero, and scikit-learn's diabetes table is centred, at full precision.)
  Why bins + a fine token, not a continuous head: both tokens are categorical like every other cell, so one
  softmax head, one loss and exact per-cell log-probabilities serve every column; quantile bins put resolution
  where the rows are, and the fine token resolves a bin into ``num_bins * num_fine_bins`` levels.

The schema (``columns``) is plain JSON held by the config: a list of ``{"name", "type": "categorical",
"categories", "nullable"}`` or ``{"name", "type": "numerical", "edges", "decimals", "nullable"}``. Token 0 starts
every row; each column's tokens follow in schema order.

A table is any mapping of column name -> sequence of values (a dict of lists, a pandas DataFrame).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

COLUMN_TYPES = ("categorical", "numerical")
START_TOKEN_ID = 0


@dataclass(frozen=True)
class Cell:
    """One token of a row: ``column`` (index in the schema), ``kind`` (``value`` | ``bin`` | ``fine``) and the
    token range ``[start, end)`` it is drawn from."""

    column: int
    kind: str
    start: int
    end: int


def is_missing(value: object) -> bool:
    """``None`` or a float NaN (pandas' and numpy's missing values included)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _python_value(value: object) -> object:
    """numpy / torch scalars as the Python value JSON can hold (``np.float64(1.5)`` -> ``1.5``)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def check_columns(columns: object) -> None:
    """``ValueError`` naming the column and the key for a schema that is not a list of valid column dicts."""
    if not isinstance(columns, (list, tuple)):
        raise ValueError(f"columns must be a list of column dicts, got {type(columns).__name__}.")
    names = set()
    for column in columns:
        if not isinstance(column, Mapping) or not isinstance(column.get("name"), str):
            raise ValueError(f"Each entry of columns must be a dict with a 'name' string, got {column!r}.")
        name, kind = column["name"], column.get("type")
        if name in names:
            raise ValueError(f"columns holds the column name {name!r} twice.")
        names.add(name)
        if kind not in COLUMN_TYPES:
            raise ValueError(f"Column {name!r}: unknown type={kind!r}; valid types are {COLUMN_TYPES}.")
        if not isinstance(column.get("nullable", False), bool):
            raise ValueError(f"Column {name!r}: nullable must be a bool, got {column.get('nullable')!r}.")
        if kind == "categorical":
            _check_categories(name, column.get("categories"))
        else:
            _check_numerical(name, column.get("edges"), column.get("decimals"))


def _check_categories(name: str, categories: object) -> None:
    if not isinstance(categories, (list, tuple)) or not categories:
        raise ValueError(f"Column {name!r}: categories must be a non-empty list, got {categories!r}.")
    if any(is_missing(c) or not isinstance(c, (str, int, float, bool)) for c in categories):
        raise ValueError(f"Column {name!r}: categories must be strings or numbers (not missing), got {categories!r}.")
    if len(set(categories)) != len(categories):
        raise ValueError(f"Column {name!r}: categories hold a value twice: {categories!r}.")


def _check_numerical(name: str, edges: object, decimals: object) -> None:
    numbers = isinstance(edges, (list, tuple)) and all(
        isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in edges)
    if not numbers or len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"Column {name!r}: edges must be at least two finite, strictly increasing numbers, "
                         f"got {edges!r}.")
    if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int)
                                 or not 0 <= decimals <= 17):
        raise ValueError(f"Column {name!r}: decimals must be None or an integer in [0, 17], got {decimals!r}.")


def cell_layout(columns: Sequence[Mapping], num_fine_bins: int) -> list[Cell]:
    """Every cell of a row, in schema order (a numerical column's bin cell before its fine cell), with its token
    range; token ``START_TOKEN_ID`` comes first."""
    cells, start = [], START_TOKEN_ID + 1
    for index, column in enumerate(columns):
        nullable = int(bool(column.get("nullable", False)))
        if column["type"] == "categorical":
            sizes = (("value", len(column["categories"]) + nullable),)
        else:
            sizes = (("bin", len(column["edges"]) - 1 + nullable), ("fine", num_fine_bins))
        for kind, size in sizes:
            cells.append(Cell(index, kind, start, start + size))
            start += size
    return cells


def vocabulary_size(columns: Sequence[Mapping], num_fine_bins: int) -> int:
    """The start token plus every column's tokens."""
    cells = cell_layout(columns, num_fine_bins)
    return cells[-1].end if cells else START_TOKEN_ID + 1


def decimals_of(values: Sequence[float]) -> int | None:
    """The fewest decimal places (0..17) that write every value exactly (``round(x, d) == x``); None if none do."""
    for decimals in range(18):
        if all(round(v, decimals) == v for v in values):
            return decimals
    return None


def _fit_column(name: str, values: list, num_bins: int, categorical: bool, max_categories: int) -> dict:
    present = [_python_value(v) for v in values if not is_missing(_python_value(v))]
    nullable = len(present) < len(values)
    if not present:
        raise ValueError(f"Column {name!r} holds only missing values: nothing to fit.")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    distinct = sorted(set(present), key=lambda v: (str(type(v)), v))
    if categorical or not numbers or len(distinct) <= max_categories:
        return dict(name=name, type="categorical", categories=distinct, nullable=nullable)
    data = torch.tensor(present, dtype=torch.float64)
    quantiles = torch.quantile(data, torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)).tolist()
    edges = sorted(set(quantiles))
    return dict(name=name, type="numerical", edges=edges, decimals=decimals_of(present), nullable=nullable)


def fit_columns(table: Mapping[str, Sequence], num_bins: int = 32, categorical: Sequence[str] = (),
                max_categories: int = 10) -> list[dict]:
    """The schema of ``table``: a column is categorical when named in ``categorical``, when its values are not
    all numbers, or when it has at most ``max_categories`` distinct values; otherwise numerical with ``num_bins``
    quantile bins (fewer where quantiles coincide). Missing values (None / NaN) make a column nullable."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
    unknown = [name for name in categorical if name not in table.keys()]
    if unknown:
        raise ValueError(f"categorical names columns {unknown} that the table lacks; its columns: "
                         f"{list(table.keys())}.")
    return [_fit_column(name, list(table[name]), num_bins, name in categorical, max_categories)
            for name in table.keys()]


class HfGenTabularProcessor:
    """Turns tables into token ids and back for one schema (``config.columns``, ``config.num_fine_bins``).

    ``encode(table)`` -> ``{"input_ids": [N, cells], "values": [N, columns] (float64: the numbers, NaN elsewhere),
    "known": [N, cells]}``; ``decode(input_ids, values=None)`` -> ``{name: [values]}``. Bad input -- an unknown or missing column, a value
    outside a column's categories or range, a string in a numerical column, a missing value in a column that is not
    nullable -- is a ``ValueError`` naming the column and the value."""

    def __init__(self, columns: Sequence[Mapping], num_fine_bins: int):
        check_columns(columns)
        self.columns = [dict(c) for c in columns]
        self.names = [c["name"] for c in self.columns]
        self.num_fine_bins = num_fine_bins
        self.cells = cell_layout(self.columns, num_fine_bins)
        self.column_cells = [[i for i, cell in enumerate(self.cells) if cell.column == c]
                             for c in range(len(self.columns))]

    @classmethod
    def from_config(cls, config) -> HfGenTabularProcessor:
        return cls(config.columns, config.num_fine_bins)

    def cells_in_column_order(self, columns: torch.Tensor) -> torch.Tensor:
        """Cell orders ``[rows, cells]`` from column orders ``[rows, columns]`` (column indices, first drawn
        first): each column's cells in turn, a numerical column's bin before its fine cell."""
        table = torch.tensor([cells + [-1] * (2 - len(cells)) for cells in self.column_cells])
        expanded = table[columns.cpu()].flatten(1)
        return expanded[expanded >= 0].view(columns.shape[0], -1).to(columns.device)

    def check_table(self, table: Mapping[str, Sequence], partial: bool = False) -> int:
        """The row count of ``table`` after checking its column names (and lengths)."""
        if not hasattr(table, "keys"):
            raise ValueError(f"table must be a mapping of column name -> values (a dict, a DataFrame), got "
                             f"{type(table).__name__}.")
        unknown = [name for name in table.keys() if name not in self.names]
        if unknown:
            raise ValueError(f"Unknown column(s) {unknown}; the schema's columns are {self.names}.")
        absent = [name for name in self.names if name not in table.keys()]
        if absent and not partial:
            raise ValueError(f"table lacks the column(s) {absent} (columns: {self.names}).")
        lengths = {name: len(table[name]) for name in table.keys()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"table's columns differ in length: {lengths}.")
        return next(iter(lengths.values()), 0)

    def encode(self, table: Mapping[str, Sequence], partial: bool = False) -> dict[str, torch.Tensor]:
        """Token ids of every cell. ``partial=True`` (conditions, imputation): absent columns and missing values
        are *unknown* cells (``known`` False, placeholder ids) instead of an error."""
        rows = self.check_table(table, partial)
        input_ids = torch.zeros(rows, len(self.cells), dtype=torch.long)
        known = torch.zeros(rows, len(self.cells), dtype=torch.bool)
        numbers = torch.full((rows, len(self.columns)), math.nan, dtype=torch.float64)
        for index, column in enumerate(self.columns):
            cells = self.column_cells[index]
            if column["name"] not in table.keys():
                input_ids[:, cells] = torch.tensor([self.cells[c].start for c in cells])
                continue
            values = [_python_value(v) for v in table[column["name"]]]
            unknown = [partial and is_missing(v) for v in values]
            input_ids[:, cells], numbers[:, index] = self._encode_column(index, values, unknown)
            known[:, cells] = ~torch.tensor(unknown, dtype=torch.bool).reshape(-1, 1)
        return {"input_ids": input_ids, "values": numbers, "known": known}

    def _encode_column(self, index: int, values: list, unknown: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        column, cells = self.columns[index], [self.cells[c] for c in self.column_cells[index]]
        missing = [is_missing(v) and not skip for v, skip in zip(values, unknown)]
        if any(missing) and not column.get("nullable", False):
            row = missing.index(True)
            raise ValueError(f"Column {column['name']!r} is not nullable but row {row} holds a missing value "
                             f"({values[row]!r}).")
        if column["type"] == "categorical":
            lookup = {c: i for i, c in enumerate(column["categories"])}
            ids = [cells[0].start + (len(lookup) if m else 0 if u else self._category(column, lookup, v))
                   for v, m, u in zip(values, missing, unknown)]
            return torch.tensor(ids).reshape(-1, 1), torch.full((len(values),), math.nan, dtype=torch.float64)
        for row, value in enumerate(values):
            if not (unknown[row] or missing[row]):
                self._check_number(column, row, value)
        numbers = torch.tensor([math.nan if u or m else float(v) for v, m, u in zip(values, missing, unknown)],
                               dtype=torch.float64)
        bins, fine = self.bin_numbers(column, numbers.nan_to_num(column["edges"][0]))
        bins = torch.where(torch.tensor(missing, dtype=torch.bool), len(column["edges"]) - 1, bins)
        fine = torch.where(numbers.isnan(), 0, fine)
        return torch.stack([bins + cells[0].start, fine + cells[1].start], dim=1), numbers

    @staticmethod
    def _category(column: Mapping, lookup: dict, value: object) -> int:
        position = lookup.get(value) if isinstance(value, (str, int, float, bool)) else None
        if position is None:
            shown = column["categories"][:20]
            raise ValueError(f"Column {column['name']!r}: value {value!r} is not one of its categories "
                             f"{shown}{' ...' if len(column['categories']) > 20 else ''}.")
        return position

    @staticmethod
    def _check_number(column: Mapping, row: int, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Column {column['name']!r} is numerical: row {row} holds {value!r} "
                             f"({type(value).__name__}), expected a number.")
        low, high = column["edges"][0], column["edges"][-1]
        if not low <= value <= high:
            raise ValueError(f"Column {column['name']!r}: row {row} holds {value!r}, outside the range the model "
                             f"was fitted on [{low!r}, {high!r}].")

    def bin_numbers(self, column: Mapping, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantile bin and fine slice of each number (float64)."""
        edges = torch.tensor(column["edges"], dtype=torch.float64)
        bins = (torch.searchsorted(edges, numbers, right=True) - 1).clamp(0, len(edges) - 2)
        low, high = edges[bins], edges[bins + 1]
        fine = ((numbers - low) / (high - low) * self.num_fine_bins).floor().clamp(0, self.num_fine_bins - 1)
        return bins, fine.long()

    def slice_bounds(self, column: Mapping, bins: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Lower end and width of each number's fine slice."""
        edges = torch.tensor(column["edges"], dtype=torch.float64)
        bins = bins.clamp(max=len(edges) - 2)
        width = (edges[bins + 1] - edges[bins]) / self.num_fine_bins
        return edges[bins] + fine * width, width

    def decode(self, input_ids: torch.Tensor, values: torch.Tensor | None = None,
               generator: torch.Generator | None = None, known: torch.Tensor | None = None) -> dict[str, list]:
        """Values of every column. A number given in ``values`` (from :meth:`encode`: ``decode(**encode(t))``)
        comes back as it is, once checked against its tokens; the others are drawn uniformly inside their fine
        slice (``generator``) and rounded to the column's ``decimals``. (``known`` is accepted and unused, so that
        ``decode(**encode(table))`` works.)"""
        input_ids = torch.as_tensor(input_ids).cpu()
        if input_ids.dim() != 2 or input_ids.shape[1] != len(self.cells):
            raise ValueError(f"input_ids must have shape [rows, {len(self.cells)}], got {tuple(input_ids.shape)}.")
        given = torch.full((input_ids.shape[0], len(self.columns)), math.nan, dtype=torch.float64)
        if values is not None:
            if tuple(values.shape) != tuple(given.shape):
                raise ValueError(f"values must have shape {tuple(given.shape)}, got {tuple(values.shape)}.")
            given = values.cpu().double()
        uniform = torch.rand(given.shape, dtype=torch.float64, generator=generator)
        table = {}
        for index, column in enumerate(self.columns):
            local = []
            for c in self.column_cells[index]:
                ids, cell = input_ids[:, c] - self.cells[c].start, self.cells[c]
                if ids.numel() and (ids.min() < 0 or ids.max() >= cell.end - cell.start):
                    raise ValueError(f"input_ids hold a token outside column {column['name']!r}'s range "
                                     f"[{cell.start}, {cell.end}).")
                local.append(ids)
            table[column["name"]] = self._decode_column(column, local, given[:, index], uniform[:, index])
        return table

    def _decode_column(self, column: Mapping, local: list[torch.Tensor], given: torch.Tensor,
                       uniform: torch.Tensor) -> list:
        if column["type"] == "categorical":
            categories = column["categories"]
            return [categories[i] if i < len(categories) else None for i in local[0].tolist()]
        low, width = self.slice_bounds(column, local[0], local[1])
        outside = ~given.isnan() & ((given < low - 1e-9 * width) | (given > low + width * (1 + 1e-9)))
        if outside.any():
            row = int(outside.nonzero()[0])
            raise ValueError(f"Column {column['name']!r}: values[{row}] = {float(given[row])!r} lies outside the "
                             f"slice its tokens name [{float(low[row])!r}, {float(low[row] + width[row])!r}].")
        drawn, decimals = (low + uniform * width).tolist(), column.get("decimals")
        missing = (local[0] == len(column["edges"]) - 1).tolist()
        return [math.nan if m else g if g == g else (round(d, decimals) if decimals is not None else d)
                for m, g, d in zip(missing, given.tolist(), drawn)]
