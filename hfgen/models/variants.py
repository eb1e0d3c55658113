"""The names of every attention, softmax, position, norm and MLP variant, and the checks on them.

One registry of valid names per config key, shared by every family's config, so that an unknown value fails
the same way everywhere: a ``ValueError`` that names the key, the bad value and the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterable

ATTENTION_SCORINGS = ("scaled_dot_product", "dot_product", "general", "additive")
SOFTMAX_VARIANTS = ("standard", "temperature", "adaptive_temperature", "off_by_one", "clipped")
POSITION_EMBEDDINGS = ("rotary", "sinusoidal", "learned", "relative_bias", "alibi", "none")
# Position kinds that only some families' layers implement (on top of POSITION_EMBEDDINGS), with those families'
# model types. DeBERTa's disentangled attention (He et al. 2021) is defined for bidirectional self-attention.
FAMILY_POSITION_EMBEDDINGS = {"disentangled": ("hfgen_encoder",)}
NORM_TYPES = ("rmsnorm", "layernorm")
NORM_POSITIONS = ("pre", "post")
MLP_TYPES = ("gated", "standard")


def check_choice(key: str, value: object, choices: Iterable[str]) -> None:
    """Raise a ``ValueError`` naming ``key`` and the valid ``choices`` when ``value`` is not one of them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Unknown {key}={value!r}; valid choices are: {', '.join(map(repr, choices))}.")


def position_embeddings_of(model_type: str | None) -> tuple[str, ...]:
    """The position kinds a family (by model type) implements: the shared ones plus its own."""
    own = tuple(kind for kind, families in FAMILY_POSITION_EMBEDDINGS.items() if model_type in families)
    return POSITION_EMBEDDINGS + own


def check_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}.")


def validate_attention_config(config) -> None:
    """Check every attention-related key of ``config`` before any weight is created.

    Shared by all families (decoder, encoder, seq2seq, ...): they hold the same keys with the same meaning.
    """
    check_choice("attention_scoring", config.attention_scoring, ATTENTION_SCORINGS)
    check_choice("softmax_variant", config.softmax_variant, SOFTMAX_VARIANTS)
    model_type = getattr(config, "model_type", None)
    families = FAMILY_POSITION_EMBEDDINGS.get(config.position_embedding)
    if families is not None and model_type not in families:
        raise ValueError(
            f"position_embedding={config.position_embedding!r} is implemented only by the {', '.join(families)} "
            f"family, not by {model_type!r}; valid choices here are: {', '.join(map(repr, POSITION_EMBEDDINGS))}."
        )
    check_choice("position_embedding", config.position_embedding, position_embeddings_of(model_type))
    check_choice("norm_type", config.norm_type, NORM_TYPES)
    check_choice("norm_position", config.norm_position, NORM_POSITIONS)
    check_choice("mlp_type", config.mlp_type, MLP_TYPES)
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers",
                "intermediate_size", "vocab_size", "query_chunk_size"):
        check_positive_int(key, getattr(config, key))
    check_no_chunked_attention(getattr(config, "attention_chunk_size", None))
    if config.num_attention_heads % config.num_key_value_heads != 0:
        raise ValueError(
            f"num_attention_heads ({config.num_attention_heads}) must be a multiple of num_key_value_heads "
            f"({config.num_key_value_heads}): each key/value head serves a whole group of query heads "
            f"(1 = multi-query, num_attention_heads = multi-head, in between = grouped-query)."
        )
    if config.position_embedding == "rotary" and config.head_dim % 2 != 0:
        raise ValueError(f"Rotary positions rotate pairs of channels: head_dim must be even, got {config.head_dim}.")
    if config.position_embedding == "sinusoidal" and config.hidden_size % 2 != 0:
        raise ValueError(f"Sinusoidal positions pair sin/cos channels: hidden_size must be even, got {config.hidden_size}.")
    temperature = config.softmax_temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"softmax_temperature must be a number > 0, got {temperature!r}.")
    if config.softmax_variant != "temperature" and temperature != 1.0:
        raise ValueError(
            f"softmax_temperature={temperature} only applies with softmax_variant='temperature' "
            f"(got softmax_variant={config.softmax_variant!r})."
        )
    gamma, zeta = config.clipped_softmax_gamma, config.clipped_softmax_zeta
    if not gamma <= 0 < 1 <= zeta:
        raise ValueError(
            "Clipped softmax stretches probabilities to (zeta - gamma) * p + gamma before clipping to [0, 1]; "
            f"it needs clipped_softmax_gamma <= 0 and clipped_softmax_zeta >= 1, got gamma={gamma}, zeta={zeta}."
        )
    if not 0.0 <= config.attention_dropout < 1.0:
        raise ValueError(f"attention_dropout must be in [0, 1), got {config.attention_dropout}.")


def check_no_chunked_attention(attention_chunk_size) -> None:
    """transformers reads ``attention_chunk_size`` as Llama 4's chunked attention and would build a sliding-window
    KV cache that silently forgets every token older than the chunk: refuse the key instead."""
    if attention_chunk_size is not None:
        raise ValueError(
            f"attention_chunk_size={attention_chunk_size} is Llama 4's chunked attention, which hfgen does not "
            f"implement; the rows per query chunk of hfgen's chunked kernels are set with query_chunk_size."
        )
