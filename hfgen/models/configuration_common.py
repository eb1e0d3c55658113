"""What every hfgen family config does with the keys they share (sizes, heads, positions, the variant keys):
derive ``head_dim`` and ``num_key_value_heads``, build ``rope_parameters`` with rotary positions only, set them all;
and how every family config checks its values where they are set (:class:`ValidatedConfigMixin`).

A family's ``__init__`` keeps its explicit, documented signature and hands this its keyword arguments."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Iterable

from transformers import PreTrainedConfig

from .variants import (SPECIAL_TOKEN_ID_KEYS, check_config_value, check_token_id, close_match,
                       standard_rope_parameters)

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
    keys = {**{k: kwargs.pop(k, v) for k, v in VARIANT_DEFAULTS.items()}, **keys}
    keys["rope_parameters"] = kwargs.pop("rope_parameters", keys.get("rope_parameters"))
    # config.json files written before transformers 5 (Llama 3.x's among them) hold rope_scaling; as in
    # transformers' convert_rope_params_to_dict it wins over rope_parameters, and rope_theta completes it.
    keys["rope_parameters"] = kwargs.pop("rope_scaling", None) or keys["rope_parameters"]
    if rope_theta is None:  # (left in kwargs, transformers' __post_init__ would drop it for the dict's default)
        rope_theta = kwargs.pop("rope_theta", None)
    hidden_size, heads = keys["hidden_size"], keys["num_attention_heads"]
    if keys.get("head_dim") is None:
        if not isinstance(heads, int) or heads <= 0 or hidden_size % heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({heads}) "
                             f"(or give head_dim explicitly).")
        keys["head_dim"] = hidden_size // heads
    if keys.get("num_key_value_heads") is None:
        keys["num_key_value_heads"] = heads
    rope = keys.pop("rope_parameters", None)
    for key, value in keys.items():
        setattr(config, key, value)
    if rope is not None or rope_theta is not None or keys["position_embedding"] == "rotary":
        check_config_value("rope_parameters", rope, getattr(type(config), "model_type", None))  # (not a dict)
        rope = dict(rope or {})
        rope.setdefault("rope_type", rope.get("type", "default"))  # ("type": before transformers 4.45)
        rope.setdefault("rope_theta", float(rope_theta) if rope_theta is not None else 10000.0)
        config.rope_parameters = rope  # last: transformers' rope validation reads the sizes set above


def init_arguments(local_variables: dict) -> dict:
    """A family ``__init__``'s own arguments from its ``locals()``: without ``self``, ``kwargs``, ``__class__`` (the
    cell ``super()`` adds) and the special-token ids."""
    skip = ("self", "kwargs", "__class__", *SPECIAL_TOKEN_KEYS)
    return {k: v for k, v in local_variables.items() if k not in skip}


# Attributes any transformers config may carry (from config.json, from transformers or from the libraries around it):
# never taken for a misspelling of a family key, however close.
PRETRAINED_CONFIG_KEYS = frozenset(
    {f.name for f in dataclasses.fields(PreTrainedConfig)}
    | {k for k in dir(PreTrainedConfig) if not k.startswith("__")}
    | {"transformers_version", "architectures", "auto_map", "torch_dtype", "dtype", "id2label", "label2id",
       "num_labels", "problem_type", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
       "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "model_type",
       "name_or_path", "use_cache", "tie_word_embeddings", "is_decoder", "add_cross_attention",
       "cross_attention_hidden_size", "tie_encoder_decoder", "output_attentions", "output_hidden_states",
       "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "layer_types", "base_model_tp_plan",
       "base_model_pp_plan", "keys_to_ignore_at_inference", "attribute_map"})


@functools.cache
def family_keys(config_class: type) -> frozenset[str]:
    """The keys a family's config documents: the ``__init__`` arguments of the class and its hfgen bases, the shared
    variant keys and the mixture-of-experts keys."""
    keys = set(VARIANT_DEFAULTS) | set(getattr(config_class, "extra_config_keys", ()))
    for klass in config_class.__mro__:
        if klass is PreTrainedConfig:
            break
        init = klass.__dict__.get("__init__")
        if init is not None:
            keys |= {name for name, parameter in inspect.signature(init).parameters.items()
                     if parameter.kind is parameter.KEYWORD_ONLY or parameter.kind is parameter.POSITIONAL_OR_KEYWORD}
    keys.discard("self")
    return frozenset(keys)


def check_misspelt_keys(config_class: type, keys: Iterable[str], known: Iterable[str] = ()) -> None:
    """``ValueError`` for a key that is not one of ``config_class``'s own keys but close to one (a misspelling such as
    ``softmax_varient`` or ``num_kv_heads``), naming the key it is probably meant to be. Keys of every
    transformers config (``architectures``, ``torch_dtype``, ``id2label``, ...), private ones and ``known`` never
    count: transformers and config.json pass many legitimate keys a family does not declare."""
    own = family_keys(config_class)
    known = set(known)
    for key in keys:
        if not isinstance(key, str) or key in own or key in known or key.startswith("_") \
                or key in PRETRAINED_CONFIG_KEYS:
            continue
        suggestion = close_match(key, own)
        if suggestion is not None:
            raise ValueError(f"Unknown {config_class.__name__} key {key!r}: did you mean {suggestion!r}? (A "
                             f"misspelt key would otherwise be stored and silently ignored.)")


class ValidatedConfigMixin:
    """Checks every value of an hfgen config where it is set: the family ``__init__``, ``from_pretrained(path,
    key=value)`` (transformers sets such keys after building the config) and ``config.key = value`` alike.

    One value: :data:`variants.VALUE_CHECKS` (key -> check), the same table for every family; special-token ids
    also against ``vocab_size`` (and ``vocab_size`` against them), whichever is set last. A new key close to one
    of the family's own keys is refused as a misspelling (:func:`check_misspelt_keys`). The ``ValueError`` is raised
    before the attribute changes, so a refused assignment leaves the config as it was. How keys fit together is
    checked by each family's ``validate_*_config`` once the ``__init__`` has set them all, and again before a model
    builds its weights (an assignment cannot be checked against keys that may be changed next)."""

    def __setattr__(self, key: str, value: object) -> None:
        check_config_value(key, value, getattr(type(self), "model_type", None))
        if key in SPECIAL_TOKEN_ID_KEYS:
            check_token_id(key, value, getattr(self, "vocab_size", None))
        elif key == "vocab_size":  # (checked above as a size) the special ids already set must stay inside it
            for name in SPECIAL_TOKEN_ID_KEYS:
                try:
                    check_token_id(name, getattr(self, name, None), value)
                except ValueError:
                    raise ValueError(f"vocab_size={value!r} leaves {name}={getattr(self, name)!r} outside the "
                                     f"vocabulary: set {name} first (or None).") from None
        if key == "rope_parameters" and value is not None and value is not self.__dict__.get(key):
            # transformers' own completion and validation, as its configs run them in __init__ (a dict assigned
            # back by that completion itself is the one already checked). Llama's frequencies are fixed when the
            # model is built: a new dict takes effect in models built afterwards (RotaryEmbedding).
            value = standard_rope_parameters(self, value)
        if key == "rope_theta" and "position_embedding" in family_keys(type(self)) \
                and "rope_theta" not in family_keys(type(self)):
            # Pre-transformers-5 spelling of rope_parameters['rope_theta'], which is what the rotary module reads:
            # stored beside it, it would be saved and never used.
            self.rope_parameters = {**(getattr(self, "rope_parameters", None) or {"rope_type": "default"}),
                                    "rope_theta": value}
            return
        if key not in self.__dict__ and not hasattr(type(self), key):
            check_misspelt_keys(type(self), (key,), known=self.__dict__)
        super().__setattr__(key, value)
