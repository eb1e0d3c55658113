"""What every hfgen family config shares: the typed fields of the attention families (sizes, heads, the variant keys)
with their derivations (``head_dim``, ``num_key_value_heads``, ``rope_parameters`` with rotary positions only) in
:class:`HfGenAttentionConfig`, and how every family config checks its values where they are set
(:class:`ValidatedConfigMixin`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Iterable
from typing import ClassVar

from transformers import PreTrainedConfig

from .variants import (SPECIAL_TOKEN_ID_KEYS, check_config_value, check_token_id, close_match,
                       standard_rope_parameters, validate_attention_config)


PRETRAINED_FIELDS = frozenset(field.name for field in dataclasses.fields(PreTrainedConfig))
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
    """The keys a family's config documents: its fields, the ``__init__`` arguments of the class and its hfgen bases,
    the shared variant keys and the mixture-of-experts keys."""
    keys = set(VARIANT_DEFAULTS) | set(getattr(config_class, "extra_config_keys", ()))
    keys |= {field.name for field in dataclasses.fields(config_class)} - PRETRAINED_FIELDS
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
        key = type(self).attribute_map.get(key, key)  # (transformers' alias of a key: the key it stands for)
        if value is None and key in getattr(type(self), "derived_keys", ()) and not self.__dict__.get("_post_init_done"):
            super().__setattr__(key, value)  # a field whose None __post_init__ replaces with the derived value
            return
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


class HfGenConfig(ValidatedConfigMixin, PreTrainedConfig):
    """Base of the hfgen family configs, in transformers' dataclass style: a family declares its keys as typed
    fields, each value is checked where it is set (:class:`ValidatedConfigMixin`), ``__post_init__`` derives what
    depends on several keys and reads the legacy keys of older config.json files, and how the keys fit together is
    :meth:`validate_architecture`, run at the end of ``__post_init__`` and again before a model builds its weights
    (``from_pretrained(path, key=value)`` sets keys after the config is built)."""

    def __post_init__(self, **kwargs):
        # Every Auto class this folder serves, so a saved checkpoint loads through any of them with
        # trust_remote_code (save_pretrained alone would list only the class that was saved).
        kwargs["auto_map"] = {**self.AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__post_init__(**kwargs)
        self.validate()  # transformers' own class validators, as its dataclass configs run them after __init__
        self.validate_architecture()


class HfGenAttentionConfig(HfGenConfig):
    r"""The keys every family built on hfgen's attention layer shares, as typed fields with their defaults (the
    variant keys: DESIGN.md, "Public contract"; their meaning is documented in :class:`HfGenDecoderConfig`). A family
    declares its own keys as fields too, and re-declares a shared one to change its default (the encoder's
    ``position_embedding: str = "learned"``). ``__post_init__`` derives ``head_dim``, ``num_key_value_heads`` and
    ``rope_parameters`` (also from the legacy ``rope_theta`` / ``rope_scaling``).

    ``head_dim=None``: ``hidden_size // num_attention_heads``; ``num_key_value_heads=None``: multi-head. Without
    rotary positions ``rope_parameters`` stays unset: transformers validates it on every config and would reject
    an odd ``head_dim`` that ALiBi or relative bias handle fine.
    """

    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    attention_scoring: str = "scaled_dot_product"
    softmax_variant: str = "standard"
    softmax_temperature: float = 1.0
    clipped_softmax_gamma: float = -0.03
    clipped_softmax_zeta: float = 1.0
    attention_gate: bool = False
    position_embedding: str = "rotary"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_type: str = "rmsnorm"
    norm_position: str = "pre"
    mlp_type: str = "gated"
    query_chunk_size: int = 1024

    # Fields whose None __post_init__ replaces by a value derived from the others.
    derived_keys: ClassVar[tuple[str, ...]] = ("head_dim", "num_key_value_heads")

    def __post_init__(self, **kwargs):
        rope_theta = kwargs.pop("rope_theta", None)  # (left in kwargs, transformers would drop it for its default)
        # config.json files written before transformers 5 (Llama 3.x's among them) hold rope_scaling; as in
        # transformers' convert_rope_params_to_dict it wins over rope_parameters, and rope_theta completes it.
        rope = kwargs.pop("rope_scaling", None) or kwargs.pop("rope_parameters", None)
        derive_heads(self)
        if rope is not None or rope_theta is not None or self.position_embedding == "rotary":
            check_config_value("rope_parameters", rope, self.model_type)  # (not a dict)
            rope = dict(rope or {})
            rope.setdefault("rope_type", rope.get("type", "default"))  # ("type": before transformers 4.45)
            rope.setdefault("rope_theta", float(rope_theta) if rope_theta is not None else 10000.0)
            self.rope_parameters = rope  # last: transformers' rope validation reads the sizes set above
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """How the attention keys fit together (:func:`variants.validate_attention_config`); a family adds its own."""
        validate_attention_config(self)


def sub_config(name: str, value: PreTrainedConfig | dict | None, config_class: type) -> PreTrainedConfig:
    """A composite config's sub-config ``name`` as a ``config_class``: built from its dict (a saved config.json's,
    whose ``model_type`` the class already knows) or with the defaults (``None``)."""
    if value is None:
        return config_class()
    if isinstance(value, dict):
        return config_class(**{key: item for key, item in value.items() if key != "model_type"})
    if not isinstance(value, config_class):
        raise ValueError(f"{name} must be a {config_class.__name__} or its dict, got {type(value).__name__}.")
    return value


def set_derived_vocab_size(config, vocab_size: int) -> None:
    """Set a ``vocab_size`` that ``__post_init__`` derives from other keys, after checking the special-token ids
    against it: they were set (and checked) before the vocabulary they index was known."""
    for key in SPECIAL_TOKEN_ID_KEYS:
        check_token_id(key, getattr(config, key, None), vocab_size)
    config.vocab_size = vocab_size


def derive_heads(config) -> None:
    """``head_dim`` (``None``: ``hidden_size // num_attention_heads``) and ``num_key_value_heads`` (``None``:
    multi-head)."""
    hidden_size, heads = config.hidden_size, config.num_attention_heads
    if config.head_dim is None:
        if not isinstance(heads, int) or heads <= 0 or hidden_size % heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({heads}) "
                             f"(or give head_dim explicitly).")
        config.head_dim = hidden_size // heads
    if config.num_key_value_heads is None:
        config.num_key_value_heads = heads


# The variant keys every family shares, with their defaults: the fields of HfGenAttentionConfig from
# attention_bias on (one table, so a family cannot drift from the others).
_SHARED = [field.name for field in dataclasses.fields(HfGenAttentionConfig)]
VARIANT_DEFAULTS = {field.name: field.default for field in dataclasses.fields(HfGenAttentionConfig)
                    if _SHARED.index(field.name) >= _SHARED.index("attention_bias")}


class HfGenTextConfig(HfGenAttentionConfig):
    """The keys of a family that reads and writes tokens (the decoder, the encoder-decoder): a vocabulary, its
    special tokens and a cache."""

    vocab_size: int = 8192
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
