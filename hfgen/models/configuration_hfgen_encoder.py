"""Configuration of the encoder-only family (``hfgen_encoder``, BERT-like)."""

from __future__ import annotations

from .configuration_common import HfGenAttentionConfig
from .parallel_plans import ENCODER_PP_PLAN, encoder_tp_plan
from .moe import MOE_DEFAULTS, MOE_OUTPUT_KEYS, init_moe_config, validate_moe_config
from .variants import validate_attention_config

ENCODER_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_encoder.HfGenEncoderConfig",
    "AutoModel": "modeling_hfgen_encoder.HfGenEncoderModel",
    "AutoModelForMaskedLM": "modeling_hfgen_encoder.HfGenEncoderForMaskedLM",
    "AutoModelForPreTraining": "modeling_hfgen_encoder.HfGenEncoderForPreTraining",
    "AutoModelForSequenceClassification": "modeling_hfgen_encoder.HfGenEncoderForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_hfgen_encoder.HfGenEncoderForTokenClassification",
}

# The keys that make the model BERT (Devlin et al. 2019): learned absolute positions, LayerNorm after each residual
# block, a two-layer GELU MLP, biases everywhere, token type (segment) embeddings. They are also the defaults.
BERT_LIKE_KEYS = dict(
    position_embedding="learned",
    attention_scoring="scaled_dot_product",
    softmax_variant="standard",
    norm_type="layernorm",
    norm_position="post",
    mlp_type="standard",
    hidden_act="gelu",
    attention_bias=True,
    mlp_bias=True,
    type_vocab_size=2,
    tie_word_embeddings=True,
)

# The keys that make the attention DeBERTa-v2/v3's (He et al. 2021): no absolute positions, relative position
# embeddings in log buckets read by the content (c2p) and read by the positions (p2c).
DEBERTA_LIKE_KEYS = dict(BERT_LIKE_KEYS, position_embedding="disentangled", type_vocab_size=0)

# BertConfig key -> HfGenEncoderConfig key, where the names differ.
BERT_CONFIG_RENAMES = {"attention_probs_dropout_prob": "attention_dropout"}
BERT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                    "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


class HfGenEncoderConfig(HfGenAttentionConfig):
    r"""Configuration of :class:`HfGenEncoderModel` and its heads (masked LM, pre-training = MLM + next sentence
    prediction, sequence and token classification).

    Bidirectional self-attention over the whole input (seed 003: "Autoencoding models build bidirectional context
    representations of the input sequence"), built from hfgen's shared attention layer, so every variant key below
    applies. The defaults are :data:`BERT_LIKE_KEYS`: with them the model has BERT's parameter names and gives the
    logits of ``transformers.BertForMaskedLM`` with the same weights, so BERT checkpoints load into it directly
    (:meth:`from_bert_config` translates a ``BertConfig``).

    Family keys (BERT's names):
        type_vocab_size (`int`, 2): token type (segment) ids, 0 for none; ``token_type_ids`` must lie below it.
        layer_norm_eps (`float`, 1e-12): epsilon of every norm (LayerNorm or RMSNorm).
        hidden_dropout_prob (`float`, 0.1): dropout on the embeddings and every residual branch (and before the
            classifiers unless ``classifier_dropout`` is set). ``attention_dropout`` is BERT's
            ``attention_probs_dropout_prob``.
        classifier_dropout (`float`, None): dropout before the classification heads.
        tie_word_embeddings (`bool`, True): the MLM decoder reuses the word embedding.
        position_buckets (`int`, None) / max_relative_positions (`int`, -1): DeBERTa's relative-position log
            buckets (with ``position_embedding="disentangled"``): distances below ``position_buckets // 2`` keep their
            own embedding, longer ones share logarithmic buckets up to ``max_relative_positions`` (``-1``:
            ``max_position_embeddings``); ``2 * position_buckets`` relative embeddings in all. ``None``: DeBERTa-v3's
            256, or half of ``max_relative_positions`` where that is smaller. Distances beyond
            ``max_relative_positions`` share the outermost buckets (no length limit).
        norm_relative_embeddings (`bool`, True): DeBERTa-v2's LayerNorm on the relative embeddings.

    Mixture of experts (``moe.py``; the same keys as the decoder's):
        num_experts (`int`, 0): a sparse mixture of that many experts in place of each layer's MLP
            (``encoder.layer.N.block_sparse_moe``: router ``gate``, ``experts`` in transformers' 3D layout; on disk
            ``experts.M.w1/w2`` and ``w3`` when gated); 0:
            BERT's plain MLP, exactly as without these keys. Each expert has the MLP's form: GELU
            ``w2(act(w1 x))`` with ``mlp_type="standard"``, ``w2(act(w1 x) * w3 x)`` with ``"gated"``.
        num_experts_per_tok (`int`, 2): experts per token (top-k of the router's softmax, weights renormalised over
            the k), between 1 and ``num_experts``.
        router_aux_loss_coef / router_z_loss_coef (`float`, 0.001 with experts, 0 without): weights of the load-balancing
            loss ``E * sum_e f_e P_e`` and the router z-loss ``mean (logsumexp z)^2`` (real tokens only) added to
            the masked-LM, pre-training and classification losses; the outputs carry ``aux_loss``, ``z_loss`` and
            ``router_logits``.
        output_router_logits (`bool`, on with experts): return the router logits and add the router losses.
        router_jitter_noise (`float`, 0.0): multiplicative input noise in training.
        Capacity: none -- every token is processed by all of its top-k experts however unbalanced the routing
        ("dropless", as Mixtral), so no token is ever dropped, silently or otherwise; imbalance costs time, not
        quality. Padding tokens are routed too but never count in the losses or the utilisation.

    Variant keys, shared by every family (meaning: :class:`HfGenDecoderConfig`): ``attention_scoring``,
    ``softmax_variant``, ``softmax_temperature``, ``clipped_softmax_gamma`` / ``clipped_softmax_zeta``,
    ``attention_gate``, ``position_embedding`` (here also ``"disentangled"``: DeBERTa's disentangled attention),
    ``relative_attention_num_buckets`` / ``relative_attention_max_distance``, ``rope_parameters``, ``norm_type``,
    ``norm_position``, ``mlp_type``, ``attention_bias``, ``mlp_bias``, ``attention_dropout``,
    ``query_chunk_size``; and ``num_key_value_heads`` (1 = multi-query).
    """

    model_type = "hfgen_encoder"
    extra_config_keys = tuple(MOE_DEFAULTS)
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = ENCODER_AUTO_MAP
    # Parallel plans in transformers' format (parallel_plans.py); no TP plan for variants it cannot split.
    base_model_tp_plan = property(encoder_tp_plan)
    base_model_pp_plan = ENCODER_PP_PLAN
    keys_to_ignore_at_inference = list(MOE_OUTPUT_KEYS)  # Trainer's predictions: the logits alone

    # BERT's attention_probs_dropout_prob (config.json files of BERT) is this family's attention_dropout.
    attribute_map = {"attention_probs_dropout_prob": "attention_dropout"}
    derived_keys = ("head_dim", "num_key_value_heads", "position_buckets")

    # BERT's sizes and choices (BERT_LIKE_KEYS) where they differ from the shared defaults
    vocab_size: int = 8192
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    hidden_act: str = "gelu"
    attention_bias: bool = True
    attention_dropout: float = 0.1
    mlp_bias: bool = True
    position_embedding: str = "learned"
    norm_type: str = "layernorm"
    norm_position: str = "post"
    mlp_type: str = "standard"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True
    position_buckets: int | None = None
    max_relative_positions: int = -1
    norm_relative_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # A BERT config.json loads as it is: its position type where it means learned positions.
        position_type = kwargs.pop("position_embedding_type", None)
        if position_type not in (None, "absolute"):
            raise ValueError(f"BERT's position_embedding_type={position_type!r} has no counterpart here; only "
                             f"'absolute' (position_embedding='learned') converts.")
        if self.position_buckets is None:  # DeBERTa-v3's 256 for its 512 positions; fewer for shorter inputs
            limit = self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings
            self.position_buckets = min(256, max(4, limit // 2)) if isinstance(limit, int) else 256
        init_moe_config(self, kwargs)  # num_experts / num_experts_per_tok / router_*: see moe.py (0: plain MLP)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        validate_encoder_config(self)

    @property
    def relative_span(self) -> int:
        """DeBERTa's ``att_span``: relative distances are embedded in ``[-span, span)``."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_distance

    @property
    def max_relative_distance(self) -> int:
        return self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings

    @classmethod
    def from_bert_config(cls, bert_config, **overrides) -> HfGenEncoderConfig:
        """The config of a BERT (a ``transformers.BertConfig`` or its dict) with the same shapes and math."""
        values = bert_config if isinstance(bert_config, dict) else bert_config.to_dict()
        keys = {BERT_CONFIG_RENAMES.get(k, k): values[k] for k in BERT_CONFIG_KEYS if k in values}
        return cls(**{**BERT_LIKE_KEYS, **keys, "position_embedding_type": values.get("position_embedding_type"),
                      **overrides})


def validate_encoder_config(config) -> None:
    """The shared variant checks plus the encoder's own (how its keys fit together; each value is checked where it
    is set)."""
    validate_attention_config(config)  # (position_embedding="disentangled": positions.check_disentangled)
    validate_moe_config(config)
