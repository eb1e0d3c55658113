"""Configuration of the tabular generator (``hfgen_tabular``): an hfgen decoder over the cells of table rows,
generated column by column in any order (seed 000, "Tabular Models")."""

from __future__ import annotations

from .configuration_common import set_derived_vocab_size
from .configuration_hfgen_decoder import HfGenDecoderConfig
from .processing_hfgen_tabular import cell_layout, check_columns, vocabulary_size

TABULAR_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_tabular.HfGenTabularConfig",
    "AutoModel": "modeling_hfgen_tabular.HfGenTabularForGeneration",
}


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

    derived_keys = ("head_dim", "num_key_value_heads", "vocab_size")

    columns: list[dict] | None = None
    num_fine_bins: int = 16
    embedding_dropout: float = 0.1
    # A small decoder: the tables this is made for have hundreds to thousands of rows.
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    vocab_size: int | None = None  # derived from columns and num_fine_bins

    def __post_init__(self, **kwargs):
        self.columns = [dict(column) for column in (self.columns or [])]
        check_columns(self.columns)
        self.embedding_dropout = float(self.embedding_dropout)
        set_derived_vocab_size(self, vocabulary_size(self.columns, self.num_fine_bins))
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """The decoder's checks and the schema (``from_pretrained(path, columns=...)`` sets it after ``__init__``)."""
        super().validate_architecture()
        check_columns(self.columns)

    @property
    def num_cells(self) -> int:
        """Tokens per row: one per categorical column, two (bin, fine) per numerical column."""
        return len(cell_layout(self.columns, self.num_fine_bins))
