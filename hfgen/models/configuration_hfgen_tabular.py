"""Configuration of the tabular generator (``hfgen_tabular``): an hfgen decoder over the cells of table rows,
generated column by column in any order (seed 000, "Tabular Models")."""

from __future__ import annotations

from .configuration_hfgen_decoder import HfGenDecoderConfig
from .processing_hfgen_tabular import cell_layout, check_columns, vocabulary_size
from .variants import check_number, check_positive_int

TABULAR_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_tabular.HfGenTabularConfig",
    "AutoModel": "modeling_hfgen_tabular.HfGenTabularForGeneration",
}
# A small decoder: the tables this is made for have hundreds to thousands of rows.
TABULAR_DEFAULTS = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4)


class HfGenTabularConfig(HfGenDecoderConfig):
    r"""Configuration of :class:`HfGenTabularForGeneration`: every key of :class:`HfGenDecoderConfig` (the decoder
    that reads the cells, any attention variant; smaller defaults: 4 layers, hidden 128) plus

    Args:
        columns (`list[dict]`): the table's schema, JSON (``processing_hfgen_tabular`` describes it; build it from
            data with ``processing_hfgen_tabular.fit_columns``). Empty by default: a model needs columns.
        num_fine_bins (`int`, 16): equal slices of each quantile bin (the fine token of a numerical column).
        embedding_dropout (`float`, 0.1): dropout on the summed cell embeddings while training.
    ``vocab_size`` is derived from the schema (start token + every column's tokens).
    """

    model_type = "hfgen_tabular"
    AUTO_MAP = TABULAR_AUTO_MAP

    def __init__(self, columns: list[dict] | None = None, num_fine_bins: int = 16, embedding_dropout: float = 0.1,
                 **kwargs):
        columns = [dict(c) for c in (columns or [])]
        check_columns(columns)
        check_positive_int("num_fine_bins", num_fine_bins)
        check_number("embedding_dropout", embedding_dropout, 0.0, 1.0, high_open=True)
        self.columns = columns
        self.num_fine_bins = num_fine_bins
        self.embedding_dropout = float(embedding_dropout)
        for key, value in TABULAR_DEFAULTS.items():
            kwargs.setdefault(key, value)
        kwargs["vocab_size"] = vocabulary_size(columns, num_fine_bins)
        super().__init__(**kwargs)

    @property
    def num_cells(self) -> int:
        """Tokens per row: one per categorical column, two (bin, fine) per numerical column."""
        return len(cell_layout(self.columns, self.num_fine_bins))
