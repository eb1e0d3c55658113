"""The tabular generator (``hfgen_tabular``; seed 000, "Tabular Models"): an hfgen decoder that writes a table row
one cell at a time, in any order.

A row is the cells of ``processing_hfgen_tabular`` (one token per categorical column, a bin and a fine token per
numerical column). The decoder reads them in a chosen *order* -- a permutation of the cells, a different one for
every row -- as an any-order autoregressive model (XLNet's permutation objective; sigma-GPT's "double position"):
the input at step ``t`` is the embedding of the token of cell ``order[t-1]`` (the start token at ``t = 0``) plus an
embedding of *which* cell that was, plus an embedding of the cell ``order[t]`` to be predicted there (the order
embedding). The head's logits are restricted to that cell's tokens. Trained on random orders, one model gives
``p(cell | any subset of cells)``: conditional generation puts the fixed cells first, imputation the known ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_hfgen_tabular import HfGenTabularConfig
from .input_checks import mark_checked
from .modeling_hfgen_decoder import HfGenDecoderModel, HfGenDecoderPreTrainedModel
from .processing_hfgen_tabular import START_TOKEN_ID, HfGenTabularProcessor


def _is_column(value: object) -> bool:
    """A sequence of values (list, array, Series), as opposed to one value for every row."""
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes))


@dataclass
class TabularGenerationOutput(ModelOutput):
    """``logits`` ``[batch, cells, vocab]`` in the schema's cell order: row ``b``'s cell ``c`` holds the model's
    logits for that cell given the cells before it in ``order[b]`` (-inf-like outside the cell's tokens)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class TabularSampleOutput(ModelOutput):
    """``sequences`` ``[rows, cells]`` (schema order), ``order`` ``[rows, cells]`` (the order they were drawn in) and
    ``log_probs`` ``[rows]``: the sum over the drawn (not given) cells of ``log p(cell | cells before it)`` under
    the model at temperature 1."""

    sequences: torch.LongTensor | None = None
    order: torch.LongTensor | None = None
    log_probs: torch.FloatTensor | None = None


class HfGenTabularForGeneration(HfGenDecoderPreTrainedModel):
    """The decoder, the cell and order embeddings, and a head over the table's vocabulary.

    ``forward(input_ids, order=None, labels=None)``: ``input_ids`` ``[batch, cells]`` in schema order (the
    processor's ``encode``), ``order`` a permutation of the cells per row (``[batch, cells]`` or ``[cells]``;
    default: schema order), ``labels`` like ``input_ids`` with -100 where no loss is wanted. ``sample`` draws rows
    (some cells given); ``generate_rows`` and ``impute`` work on tables (dicts of columns, DataFrames)."""

    config_class = HfGenTabularConfig
    config: HfGenTabularConfig
    # The loss is a mean over the labelled cells of the batch (Trainer must not rescale it by a token count).
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenTabularConfig):
        if not config.columns:
            raise ValueError("HfGenTabularConfig has no columns: build the config with columns=fit_columns(table) "
                             "(hfgen.models.processing_hfgen_tabular).")
        super().__init__(config)
        self.processor = HfGenTabularProcessor.from_config(config)
        num_cells = len(self.processor.cells)
        self.model = HfGenDecoderModel(config)
        self.cell_embedding = nn.Embedding(num_cells + 1, config.hidden_size)  # + the start position
        self.order_embedding = nn.Embedding(num_cells, config.hidden_size)  # the cell predicted next
        self.dropout = nn.Dropout(config.embedding_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def cell_ranges(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """First and one-past-last token id of every cell, ``[cells]`` each."""
        cells = self.processor.cells
        return (torch.tensor([c.start for c in cells], device=device),
                torch.tensor([c.end for c in cells], device=device))

    def check_cells(self, input_ids: torch.Tensor, name: str = "input_ids") -> None:
        """``[batch, cells]`` integer ids, each within its cell's token range."""
        cells = len(self.processor.cells)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] != cells \
                or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"{name} must be an integer tensor [batch, {cells}] (one token per cell), got {shape}.")
        start, end = self.cell_ranges(input_ids.device)
        bad = ((input_ids < start) | (input_ids >= end)) & (input_ids != -100 if name == "labels" else True)
        if bad.any():
            row, cell = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name}[{row}, {cell}] = {int(input_ids[row, cell])} is outside cell {cell}'s tokens "
                             f"[{int(start[cell])}, {int(end[cell])}) (column "
                             f"{self.processor.names[self.processor.cells[cell].column]!r}).")

    def check_order(self, order: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``order`` as ``[batch, cells]``: every row a permutation of the cells (default: schema order)."""
        cells = len(self.processor.cells)
        if order is None:
            return torch.arange(cells, device=device).expand(batch, cells)
        order = torch.as_tensor(order, device=device)
        if order.dim() == 1:
            order = order.expand(batch, -1)
        if order.dim() != 2 or tuple(order.shape) != (batch, cells) or order.is_floating_point() \
                or not torch.equal(order.sort(dim=1).values, torch.arange(cells, device=device).expand(batch, -1)):
            raise ValueError(f"order must be a permutation of the {cells} cells per row ([{cells}] or "
                             f"[{batch}, {cells}] integers), got {order.tolist() if order.numel() < 50 else order.shape}.")
        return order

    def embed_steps(self, tokens_in: torch.Tensor, cells_in: torch.Tensor, cells_next: torch.Tensor) -> torch.Tensor:
        """Input of each step: the token just written, which cell it was, and which cell comes next."""
        embeds = self.model.embed_tokens(tokens_in) + self.cell_embedding(cells_in) + self.order_embedding(cells_next)
        return mark_checked(self.dropout(embeds))

    def cell_logits(self, hidden_states: torch.Tensor, cells_next: torch.Tensor) -> torch.Tensor:
        """Head logits kept only on the tokens of the cell predicted at each step."""
        logits = self.lm_head(hidden_states).float()
        start, end = self.cell_ranges(logits.device)
        vocab = torch.arange(logits.shape[-1], device=logits.device)
        allowed = (vocab >= start[cells_next].unsqueeze(-1)) & (vocab < end[cells_next].unsqueeze(-1))
        return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor, order: torch.LongTensor | None = None,
                labels: torch.LongTensor | None = None, cache: Cache | None = None, use_cache: bool | None = None,
                **kwargs) -> TabularGenerationOutput:
        """Logits of every cell given the cells before it in ``order`` (teacher forcing), in schema order."""
        self.check_cells(input_ids)
        if labels is not None:
            self.check_cells(labels, "labels")
        batch, cells = input_ids.shape
        order = self.check_order(order, batch, input_ids.device)
        tokens = input_ids.gather(1, order)
        start = torch.full((batch, 1), START_TOKEN_ID, dtype=tokens.dtype, device=tokens.device)
        tokens_in = torch.cat([start, tokens[:, :-1]], dim=1)
        cells_in = torch.cat([torch.full_like(start, cells), order[:, :-1]], dim=1)
        outputs = self.model(inputs_embeds=self.embed_steps(tokens_in, cells_in, order), cache=cache,
                             use_cache=use_cache, **kwargs)
        step_logits = self.cell_logits(outputs.last_hidden_state, order)  # (step t predicts cell order[t])
        logits = step_logits.scatter(1, order.unsqueeze(-1).expand_as(step_logits), step_logits)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten().to(logits.device),
                                               ignore_index=-100)
        return TabularGenerationOutput(loss=loss, logits=logits, cache=outputs.cache,
                                       hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    @torch.no_grad()
    def sample(self, input_ids: torch.LongTensor | None = None, known: torch.BoolTensor | None = None,
               order: torch.LongTensor | None = None, num_rows: int | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> TabularSampleOutput:
        """Draw the cells of ``num_rows`` rows (or of ``input_ids``' rows) one at a time in ``order`` (default:
        schema order), with a key/value cache. Cells where ``known`` is True keep their ``input_ids`` token (put
        them first in ``order`` to condition on them); the others are drawn from ``softmax(logits / temperature)``."""
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
        cells, device = len(self.processor.cells), self.lm_head.weight.device
        if input_ids is None:
            if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows <= 0:
                raise ValueError(f"num_rows must be a positive integer when no input_ids are given, got {num_rows!r}.")
            input_ids = self.cell_ranges(device)[0].expand(num_rows, cells).clone()
            known = None
        self.check_cells(input_ids)
        sequences = input_ids.to(device).clone()
        known = torch.zeros_like(sequences, dtype=torch.bool) if known is None else known.to(device).bool()
        order = self.check_order(order, sequences.shape[0], device)
        return self._draw(sequences, known, order, temperature, generator)

    def _draw(self, sequences: torch.Tensor, known: torch.Tensor, order: torch.Tensor, temperature: float,
              generator: torch.Generator | None) -> TabularSampleOutput:
        rows, cells = sequences.shape
        index = torch.arange(rows, device=sequences.device)
        token = torch.full((rows,), START_TOKEN_ID, device=sequences.device)
        cell_in = torch.full((rows,), cells, device=sequences.device)
        cache, log_probs = DynamicCache(config=self.config), torch.zeros(rows, device=sequences.device)
        for step in range(cells):
            cell = order[:, step]
            hidden = self.model(inputs_embeds=self.embed_steps(token[:, None], cell_in[:, None], cell[:, None]),
                                cache=cache, use_cache=True).last_hidden_state
            logits = self.cell_logits(hidden, cell[:, None])[:, 0]
            drawn = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
            given = known[index, cell]
            token = torch.where(given, sequences[index, cell], drawn)
            log_probs += torch.where(given, 0.0, torch.log_softmax(logits, -1)[index, token])
            sequences[index, cell] = token
            cell_in = cell
        return TabularSampleOutput(sequences=sequences, order=order, log_probs=log_probs)

    def cell_order(self, known: torch.Tensor, order: str | Sequence[str] | None = "random",
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Per row, a cell order with its known cells first: columns in ``order`` (column names, all of them) or a
        random column order per row (``"random"``/None); a numerical column's bin before its fine cell."""
        names, rows = self.processor.names, known.shape[0]
        if order is None or (isinstance(order, str) and order == "random"):
            rank = torch.rand(rows, len(names), generator=generator).argsort(dim=1).argsort(dim=1)
        elif isinstance(order, str) or sorted(order) != sorted(names):
            raise ValueError(f"order must be 'random' or a list of every column name once (any order); got "
                             f"{order!r}; the columns are {names}.")
        else:
            rank = torch.tensor([list(order).index(n) for n in names]).expand(rows, -1)
        known_columns = torch.stack([known[:, cells[0]].cpu() for cells in self.processor.column_cells], dim=1)
        columns = (rank + (~known_columns).long() * len(names)).argsort(dim=1)
        return self.processor.cells_in_column_order(columns).to(known.device)

    def generate_rows(self, num_rows: int | None = None, conditions: Mapping[str, Sequence] | None = None,
                      order: str | Sequence[str] | None = "random", temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> dict[str, list]:
        """New rows as ``{column: values}``. ``conditions`` (``{column: values}``, one value per row, or a single
        value for every row) fixes those columns, which come back unchanged; the rest are drawn given them."""
        conditions = dict(conditions or {})
        sizes = {len(v) for v in conditions.values() if _is_column(v)}
        if num_rows is None and len(sizes) == 1:
            num_rows = sizes.pop()
        if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows <= 0:
            raise ValueError(f"num_rows must be a positive integer (or given by the conditions' length), got "
                             f"{num_rows!r}.")
        table = {k: list(v) if _is_column(v) else [v] * num_rows for k, v in conditions.items()}
        return self.impute(table or {self.processor.names[0]: [None] * num_rows}, order=order,
                           temperature=temperature, generator=generator)

    def impute(self, table: Mapping[str, Sequence], order: str | Sequence[str] | None = "random",
               temperature: float = 1.0, generator: torch.Generator | None = None) -> dict[str, list]:
        """``table`` with its missing cells (None / NaN, and absent columns) drawn given the known cells of their
        row; known cells come back exactly as given."""
        encoded = self.processor.encode(table, partial=True)
        device = self.lm_head.weight.device
        known = encoded["known"].to(device)
        drawn = self.sample(encoded["input_ids"].to(device), known, self.cell_order(known, order, generator),
                            temperature=temperature, generator=generator)
        return self.processor.decode(drawn.sequences.cpu(), encoded["values"], generator=generator)
