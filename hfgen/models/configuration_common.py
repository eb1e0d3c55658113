"""What every hfgen family config does with the keys they share (sizes, heads, positions, the variant keys):
derive ``head_dim`` and ``num_key_value_heads``, build ``rope_parameters`` with rotary positions only, set them all.

A family's ``__init__`` keeps its explicit, documented signature and hands this its keyword arguments."""

from __future__ import annotations

from .variants import check_no_chunked_attention

# Passed to PreTrainedConfig.__init__ rather than set here.
SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")

# The variant keys every family shares (DESIGN.md, "Public contract"), with their defaults: one table, so a family
# cannot drift from the others. Their meaning is documented in HfGenDecoderConfig.
VARIANT_DEFAULTS = dict(
    attention_bias=False,
    attention_dropout=0.0,
    mlp_bias=False,
    attention_scoring="scaled_dot_product",
    softmax_variant="standard",
    softmax_temperature=1.0,
    clipped_softmax_gamma=-0.03,
    clipped_softmax_zeta=1.0,
    attention_gate=False,
    position_embedding="rotary",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    norm_type="rmsnorm",
    norm_position="pre",
    mlp_type="gated",
    query_chunk_size=1024,
)


def init_model_keys(config, keys: dict, kwargs: dict, rope_theta: float | None = None) -> None:
    """Set ``keys`` (a family ``__init__``'s arguments, see :func:`init_arguments`) and the variant keys -- popped
    from the ``__init__``'s ``kwargs``, :data:`VARIANT_DEFAULTS` where absent -- on ``config``.
    ``head_dim=None``: ``hidden_size // num_attention_heads``; ``num_key_value_heads=None``: multi-head. Without
    rotary positions ``rope_parameters`` stays unset: transformers validates it on every config and would reject
    an odd ``head_dim`` that ALiBi or relative bias handle fine."""
    check_no_chunked_attention(kwargs.get("attention_chunk_size"))
    keys = {**{k: kwargs.pop(k, v) for k, v in VARIANT_DEFAULTS.items()}, **keys}
    keys["rope_parameters"] = kwargs.pop("rope_parameters", keys.get("rope_parameters"))
    hidden_size, heads = keys["hidden_size"], keys["num_attention_heads"]
    if keys.get("head_dim") is None:
        if not isinstance(heads, int) or heads <= 0 or hidden_size % heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({heads}) "
                             f"(or give head_dim explicitly).")
        keys["head_dim"] = hidden_size // heads
    if keys.get("num_key_value_heads") is None:
        keys["num_key_value_heads"] = heads
    rope = keys.pop("rope_parameters", None)
    if rope is not None or rope_theta is not None or keys["position_embedding"] == "rotary":
        rope = dict(rope or {})
        rope.setdefault("rope_type", "default")
        rope.setdefault("rope_theta", float(rope_theta) if rope_theta is not None else 10000.0)
        if rope["rope_type"] != "default":
            raise ValueError(f"Unsupported rope_parameters['rope_type']={rope['rope_type']!r}; valid choices: "
                             f"'default'.")
        config.rope_parameters = rope
    for key, value in keys.items():
        setattr(config, key, value)


def init_arguments(local_variables: dict) -> dict:
    """A family ``__init__``'s own arguments from its ``locals()``: without ``self``, ``kwargs``, ``__class__`` (the
    cell ``super()`` adds) and the special-token ids."""
    skip = ("self", "kwargs", "__class__", *SPECIAL_TOKEN_KEYS)
    return {k: v for k, v in local_variables.items() if k not in skip}
