"""Configuration of the encoder-decoder family (``hfgen_seq2seq``)."""

from __future__ import annotations

import copy

from transformers import PreTrainedConfig

from .configuration_common import HfGenTextConfig
from .parallel_plans import SEQ2SEQ_PP_PLAN, seq2seq_tp_plan
from .variants import INITIALIZER_SCHEMES, validate_attention_config  # noqa: F401  (re-exported)

SEQ2SEQ_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_seq2seq.HfGenSeq2SeqConfig",
    "AutoModel": "modeling_hfgen_seq2seq.HfGenSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_hfgen_seq2seq.HfGenSeq2SeqForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_hfgen_seq2seq.HfGenSeq2SeqForSequenceClassification",
}

# The keys that make the model T5 (Raffel et al. 2020; T5 v1.0 with ``hidden_act="relu"``, mlp_type="standard";
# T5 v1.1 / FLAN-T5 with ``mlp_type="gated", hidden_act="gelu_new"``, untied embeddings). Sizes are free.
T5_LIKE_KEYS = dict(
    position_embedding="relative_bias",
    attention_scoring="dot_product",  # T5 does not scale QK^T (its initialisation absorbs 1/sqrt(d_k))
    norm_type="rmsnorm",
    norm_position="pre",
    mlp_type="standard",
    hidden_act="relu",
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=True,
)



class HfGenSeq2SeqConfig(HfGenTextConfig):
    r"""Configuration of :class:`HfGenSeq2SeqModel` and :class:`HfGenSeq2SeqForConditionalGeneration`.

    An encoder (bidirectional self-attention) and a decoder (causal self-attention, then cross-attention over the
    encoder output) built from hfgen's shared layers, so every variant key below applies to the encoder's and the
    decoder's self-attention and to the cross-attention alike -- except positions, which are a property of one
    sequence: rotary, ALiBi and relative biases act within the encoder and within the decoder, never across.
    Bidirectional position buckets / ALiBi distances in the encoder, unidirectional ones in the decoder (T5).

    With :data:`T5_LIKE_KEYS` the model is T5 (same logits as ``transformers.T5ForConditionalGeneration`` with the
    same weights; see ``HfGenSeq2SeqForConditionalGeneration.from_t5`` for the weight mapping).

    Family keys:
        num_hidden_layers (`int`, 4): encoder layers (T5's ``num_layers``).
        num_decoder_layers (`int`, None): decoder layers; defaults to ``num_hidden_layers``.
        decoder_start_token_id (`int`, None): first decoder input (T5 uses the pad token); defaults to
            ``pad_token_id``. ``labels`` are shifted right behind it to give ``decoder_input_ids``.
        tie_word_embeddings (`bool`, True): the LM head reuses the shared token embedding.
        scale_decoder_outputs (`bool`, None): multiply the decoder output by ``hidden_size**-0.5`` before the LM
            head, as T5 does with tied embeddings; defaults to ``tie_word_embeddings``.
        hidden_dropout (`float`, 0.0): dropout on the embeddings, every residual branch and the final output
            (T5's ``dropout_rate``; ``attention_dropout`` is the one on attention probabilities).
        initializer_scheme (`str`, "t5"): how fresh weights are drawn. ``"t5"`` (the default): the scales of Mesh
            TensorFlow T5 (Raffel et al. 2020) that give every projection unit-variance outputs: token embeddings
            (and an untied LM head) std 1, query ``(hidden_size * head_dim)**-0.5`` with unscaled ``dot_product``
            scoring (``hidden_size**-0.5`` when the scoring divides by ``sqrt(head_dim)`` itself), key / value
            ``hidden_size**-0.5``, attention output ``(heads * head_dim)**-0.5``, MLP input ``hidden_size**-0.5``
            and output ``intermediate_size**-0.5``, relative position bias ``hidden_size**-0.5``. ``"normal"``:
            every matrix and embedding from N(0, ``initializer_range``), as the other hfgen families. Why T5's
            scales are the default here: with 0.02 everywhere cross-attention starts nearly uniform and a tied,
            rescaled LM head (``scale_decoder_outputs``) starts with logits of std about 0.02, and the decoder
            learns to read its encoder very slowly: copying 32-token blocks of the corpus (2+2 layers, hidden 128,
            300 AdamW steps of 32 at 2e-3) ends at loss 6.4 (the unigram level) with ``"normal"`` and at 3.4 with
            ``"t5"`` (transformers' ``T5ForConditionalGeneration`` of that size: 3.8); in the gist experiment the
            positive control went from 5% to 96% exact match.

    Variant keys, shared by every family (meaning: :class:`HfGenDecoderConfig`; defaults: the fields of
    ``configuration_common.HfGenAttentionConfig``): ``attention_scoring``, ``softmax_variant``, ``softmax_temperature``,
    ``clipped_softmax_gamma`` / ``clipped_softmax_zeta``, ``attention_gate``, ``position_embedding``,
    ``relative_attention_num_buckets`` / ``relative_attention_max_distance``, ``rope_parameters``, ``norm_type``,
    ``norm_position``, ``mlp_type``, ``attention_bias``, ``mlp_bias``, ``attention_dropout``,
    ``query_chunk_size``; and ``num_key_value_heads`` (1 = multi-query).
    """

    model_type = "hfgen_seq2seq"
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = SEQ2SEQ_AUTO_MAP
    # Parallel plans in transformers' format (parallel_plans.py); no TP plan for variants it cannot split.
    base_model_tp_plan = property(seq2seq_tp_plan)
    base_model_pp_plan = SEQ2SEQ_PP_PLAN
    keys_to_ignore_at_inference = ["cache", "encoder_last_hidden_state"]

    derived_keys = ("head_dim", "num_key_value_heads", "num_decoder_layers", "scale_decoder_outputs")

    # (the shared sizes, heads, vocabulary and variant keys: HfGenTextConfig's fields)
    num_hidden_layers: int = 4
    num_decoder_layers: int | None = None
    decoder_start_token_id: int | None = None
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    hidden_dropout: float = 0.0
    initializer_scheme: str = "t5"

    def __post_init__(self, **kwargs):
        kwargs.pop("is_encoder_decoder", None)  # always True here
        self.is_encoder_decoder = True
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_hidden_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        validate_seq2seq_config(self)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The decoder's view when ``decoder=True`` (what transformers' caches are built from): as many layers as the
        decoder has (not the encoder's ``num_hidden_layers``), each a plain full-attention layer."""
        if decoder and not encoder:
            view = copy.deepcopy(self)
            view.num_hidden_layers = self.num_decoder_layers
            view.layer_types = ["full_attention"] * self.num_decoder_layers
            return view
        return super().get_text_config(decoder=decoder, encoder=encoder)


def validate_seq2seq_config(config) -> None:
    """The shared variant checks (how the keys fit together; each value is checked where it is set, including
    ``num_decoder_layers``, ``hidden_dropout`` and ``initializer_scheme``: ``variants.VALUE_CHECKS``)."""
    validate_attention_config(config)
