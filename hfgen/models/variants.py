"""The names of every attention, softmax, position, norm and MLP variant, and the checks on every config value.

One registry of valid names per config key, shared by every family's config, so that an unknown value fails
the same way everywhere: a ``ValueError`` that names the key, the bad value and the valid choices.

:data:`VALUE_CHECKS` is the one table of what each config key may hold (key -> check). Every family's config
applies it where a value is set -- in its ``__init__`` and on any later assignment, ``from_pretrained(path,
key=value)`` and ``config.key = value`` included (``configuration_common.ValidatedConfigMixin``). Checks that
relate several keys (heads that must divide, a temperature that needs its variant) run once the whole config is
known: at the end of the config's ``__init__`` and again before a model builds its weights.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterable

from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .positions import POSITION_TABLE
from .scoring import SCORING_TABLE
from .softmax import SOFTMAX_TABLE

# The valid names are the keys of the variant tables: a new entry there is a valid config value here.
ATTENTION_SCORINGS = tuple(SCORING_TABLE)
SOFTMAX_VARIANTS = tuple(SOFTMAX_TABLE)
POSITION_EMBEDDINGS = tuple(name for name, kind in POSITION_TABLE.items() if kind.families is None)
# Position kinds that only some families' layers implement (on top of POSITION_EMBEDDINGS), with those families'
# model types.
FAMILY_POSITION_EMBEDDINGS = {name: kind.families for name, kind in POSITION_TABLE.items() if kind.families}
NORM_TYPES = ("rmsnorm", "layernorm")
NORM_POSITIONS = ("pre", "post")
MLP_TYPES = ("gated", "standard")
RETENTION_MODES = ("parallel", "chunkwise", "recurrent")
FUSIONS = ("early", "projection", "cross_attention")
INITIALIZER_SCHEMES = ("normal", "t5")


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
    """``ValueError`` naming ``key`` unless ``value`` is an integer > 0 (``bool`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}.")


def is_number(value: object) -> bool:
    """A real number that JSON can hold: ``int`` or ``float``, not ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(key: str, value: object, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """``ValueError`` naming ``key`` unless ``value`` is a finite number within the given bounds. NaN and inf are
    never valid: NaN compares false with everything and inf turns into NaN one product later, so either would
    surface (if at all) as garbage logits far from the config."""
    finite = is_number(value) and math.isfinite(value)
    inside = finite
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            bounds = f" {'<' if high_open else '<='} {high:g}"
        else:
            bounds = ""
        why = [] if finite or not is_number(value) else ["finite: NaN and inf are never valid"]
        why += [what] if what else []
        explanation = f" ({'; '.join(why)})" if why else ""
        raise ValueError(f"{key} must be a number{bounds}, got {value!r}{explanation}.")


def check_int_at_least(minimum: int, why: str = "") -> Callable[[str, object], None]:
    """A check (key, value) that ``value`` is an integer >= ``minimum``; ``why`` explains the bound."""
    def check(key: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{key} must be an integer >= {minimum}{why}, got {value!r}.")
    return check


def check_bool(key: str, value: object) -> None:
    """A switch: ``True`` or ``False`` (not 0/1 or "yes": a string is always truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}.")


def check_activation(key: str, value: object) -> None:
    """An activation name from transformers' ``ACT2FN`` table, the one every layer looks its function up in."""
    if not isinstance(value, str) or value not in ACT2FN:
        suggestion = close_match(value, ACT2FN.keys()) if isinstance(value, str) else None
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        raise ValueError(f"Unknown {key}={value!r} (not in transformers.activations.ACT2FN).{hint} Valid choices "
                         f"are: {', '.join(map(repr, sorted(ACT2FN.keys())))}.")


# Special-token ids of every transformers config that index the embedding or the LM head.
SPECIAL_TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id")


def check_token_id(key: str, value: object, vocab_size: object = None) -> None:
    """``None`` or a token id in ``[0, vocab_size)`` (``eos_token_id`` also a list of them, as Llama 3's). transformers
    only warns: an id beyond the vocabulary crashes inside ``nn.Embedding`` (pad: its ``padding_idx``) or in the
    middle of ``generate``, and a negative one counts from the end (``padding_idx=-1`` silently makes the last token
    the never-trained padding row)."""
    if value is None:
        return
    ids = value if key == "eos_token_id" and isinstance(value, (list, tuple)) and value else [value]
    known = vocab_size if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) else None
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int) or token < 0 \
                or (known is not None and token >= known):
            valid = f"in [0, {known}) (vocab_size={known})" if known is not None else ">= 0"
            raise ValueError(f"{key} must be None or a token id {valid}, got {value!r}"
                             f"{' (a list: every id)' if len(ids) > 1 or ids is value else ''}.")


def check_probability(key: str, value: object) -> None:
    """A dropout probability in [0, 1) (1 would drop everything)."""
    if not (is_number(value) and 0.0 <= value < 1.0):  # (NaN fails the comparison)
        raise ValueError(f"{key} must be in [0, 1) (a dropout probability), got {value!r}.")


def check_optional_probability(key: str, value: object) -> None:
    """A dropout probability, or ``None`` (fall back to another key's)."""
    if value is not None:
        check_probability(key, value)


def check_rope_theta(key: str, value: object) -> None:
    # theta^(-2i/d) are the rotation frequencies: theta <= 1 makes them grow with i (or all equal 1 at theta = 1),
    # inf makes every angle 0 -- no position information at all -- and 0 or less gives inf or NaN.
    check_number(key, value, 1.0, low_open=True, what="the base of the rotation frequencies theta^(-2i/d)")


def rope_types() -> tuple[str, ...]:
    """The rope types hfgen's rotary positions implement: ``"default"`` and every entry of transformers'
    ``ROPE_INIT_FUNCTIONS`` (read now: a type registered there later is valid too)."""
    return ("default", *ROPE_INIT_FUNCTIONS)


# rope_parameters numbers that divide or scale the frequencies (or cos/sin): NaN, inf, 0 or a negative value would
# surface as garbage logits, where transformers' own validation only logs a warning (or nothing).
ROPE_POSITIVE_NUMBERS = ("factor", "attention_factor", "low_freq_factor", "high_freq_factor", "beta_fast",
                         "beta_slow")


def check_rope_parameters(key: str, value: object) -> None:
    """transformers' ``rope_parameters`` dict, value by value: a rope type of :func:`rope_types` (also under the
    legacy key ``type``), a valid ``rope_theta``, finite positive scale factors, a positive
    ``original_max_position_embeddings``, ``short_factor`` / ``long_factor`` lists of positive numbers, and no
    partial rotation (``partial_rotary_factor`` below 1 is only the ``proportional`` type's: hfgen's attention, as
    Llama's, rotates whole heads). What each type requires, and how the dict fits the config, is transformers'
    own validation (:func:`standard_rope_parameters`), run where the config sets the dict."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a dict such as {{'rope_type': 'default', 'rope_theta': 10000.0}} or "
                         f"{{'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 10000.0}}, got {value!r}.")
    rope_type = value.get("rope_type", value.get("type", "default"))
    check_choice(f"{key}['rope_type']", rope_type, rope_types())
    if "rope_theta" in value:
        check_rope_theta(f"{key}['rope_theta']", value["rope_theta"])
    for name in ROPE_POSITIVE_NUMBERS:
        if value.get(name) is not None:
            check_number(f"{key}[{name!r}]", value[name], 0.0, low_open=True)
    if value.get("original_max_position_embeddings") is not None:
        check_positive_int(f"{key}['original_max_position_embeddings']", value["original_max_position_embeddings"])
    for name in ("short_factor", "long_factor"):
        factors = value.get(name)
        if factors is not None and not (isinstance(factors, (list, tuple)) and factors and all(
                is_number(f) and math.isfinite(f) and f > 0 for f in factors)):
            raise ValueError(f"{key}[{name!r}] must be a list of positive numbers (one per rotated channel pair), "
                             f"got {factors!r}.")
    partial = value.get("partial_rotary_factor", 1.0)
    if rope_type == "proportional":
        check_number(f"{key}['partial_rotary_factor']", partial, 0.0, 1.0, low_open=True)
    elif partial != 1.0:
        raise ValueError(f"{key}['partial_rotary_factor']={partial!r}: hfgen rotates whole heads (as Llama does); "
                         f"only 1.0 is valid, or rope_type='proportional' for a rotated share of each head.")


def standard_rope_parameters(config, value: dict) -> dict:
    """``value`` as transformers makes a ``rope_parameters`` dict of ``config``'s: completed by its
    ``standardize_rope_params`` (``rope_type`` from a legacy ``type``; ``original_max_position_embeddings`` =
    ``max_position_embeddings`` for llama3, yarn and longrope where absent) and checked by its ``validate_rope``
    (the keys each type requires; its warnings stay warnings). A missing ``rope_theta`` is the config's current one
    (10000 without one). Runs on a shallow copy of ``config``: a refused dict changes nothing, and the caller's
    dict is never edited. ``ValueError`` naming what is missing."""
    rope = copy.deepcopy(value)
    current = getattr(config, "rope_parameters", None) or {}
    rope.setdefault("rope_theta", current.get("rope_theta", config.default_theta))
    trial = copy.copy(config)
    trial.__dict__["rope_parameters"] = rope
    try:
        trial.standardize_rope_params()
        trial.validate_rope()
    except KeyError as error:  # transformers: "Missing required keys in `rope_parameters` for 'rope_type'=..."
        raise ValueError(f"rope_parameters={value!r}: {error.args[0]}") from None
    return trial.rope_parameters


def check_position_embedding(key: str, value: object, model_type: str | None = None) -> None:
    """A position kind the family of ``model_type`` implements (:func:`position_embeddings_of`)."""
    families = FAMILY_POSITION_EMBEDDINGS.get(value) if isinstance(value, str) else None
    if families is not None and model_type not in families:
        raise ValueError(
            f"{key}={value!r} is implemented only by the {', '.join(families)} family, not by {model_type!r}; "
            f"valid choices here are: {', '.join(map(repr, POSITION_EMBEDDINGS))}.")
    check_choice(key, value, position_embeddings_of(model_type))


def choice_of(choices: Iterable[str]) -> Callable[[str, object], None]:
    """A check (key, value) that ``value`` is one of ``choices`` (:func:`check_choice`)."""
    choices = tuple(choices)
    return lambda key, value: check_choice(key, value, choices)


def check_no_chunked_attention(attention_chunk_size) -> None:
    """transformers reads ``attention_chunk_size`` as Llama 4's chunked attention and would build a sliding-window
    KV cache that silently forgets every token older than the chunk: refuse the key instead."""
    if attention_chunk_size is not None:
        raise ValueError(
            f"attention_chunk_size={attention_chunk_size} is Llama 4's chunked attention, which hfgen does not "
            f"implement; the rows per query chunk of hfgen's chunked kernels are set with query_chunk_size."
        )


def _check_num_experts(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be 0 (no mixture of experts: a plain MLP) or a positive integer, got {value!r}.")


def check_initializer_scheme(key: str, value: object) -> None:
    """One of :data:`INITIALIZER_SCHEMES` (the seq2seq family's weight initialisation)."""
    if value not in INITIALIZER_SCHEMES:
        raise ValueError(f"{key} must be one of {', '.join(INITIALIZER_SCHEMES)}, got {value!r}.")


def _positive_number(what: str = "") -> Callable[[str, object], None]:
    return lambda key, value: check_number(key, value, 0.0, low_open=True, what=what)


def _non_negative_number(what: str = "") -> Callable[[str, object], None]:
    return lambda key, value: check_number(key, value, 0.0, what=what)


# key -> check(key, value): what every hfgen config key may hold, whichever family holds it (a family holds only
# some of them; a key it does not hold is never looked up). Checks of one value only: those relating two keys are
# in the families' validate_* functions.
VALUE_CHECKS: dict[str, Callable[[str, object], None]] = {
    # sizes
    **{key: check_positive_int for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_decoder_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "query_chunk_size", "max_position_embeddings",
        "relative_attention_max_distance", "image_size", "patch_size", "num_channels", "text_vocab_size",
        "value_factor", "retention_chunk_size", "cross_attention_interval", "position_buckets", "num_fine_bins")},
    # (num_experts_per_tok: between 1 and num_experts, checked with it in moe.validate_moe_config)
    # T5 buckets: half of them (of each direction's half, bidirectionally) are exact distances, the rest logarithmic;
    # fewer than 4 leaves no exact bucket and the log buckets divide by zero.
    "relative_attention_num_buckets": check_int_at_least(4, " (half of each direction's buckets are exact distances)"),
    "num_bins": check_int_at_least(2),
    "num_experts": _check_num_experts,
    "type_vocab_size": check_int_at_least(0, " (0: no token types)"),
    "max_relative_positions": lambda key, value: (
        None if value == -1 and type(value) is int else check_positive_int(key + " (-1: max_position_embeddings)",
                                                                             value)),
    # epsilons, temperatures, bases
    "rms_norm_eps": _positive_number("added to the variance before its square root"),
    "layer_norm_eps": _positive_number("added to the variance before its square root"),
    "softmax_temperature": _positive_number("softmax(z / temperature)"),
    "clipped_softmax_gamma": lambda key, value: check_number(
        key, value, high=0.0, what="clipped softmax stretches p to (zeta - gamma) * p + gamma, then clips to [0, 1]"),
    "clipped_softmax_zeta": lambda key, value: check_number(
        key, value, low=1.0, what="clipped softmax stretches p to (zeta - gamma) * p + gamma, then clips to [0, 1]"),
    "rope_theta": check_rope_theta,
    "rope_parameters": check_rope_parameters,
    "mu_law_mu": _positive_number("mu-law companding log(|x| mu + 1) / log(M mu + 1)"),
    "mu_law_max": _positive_number("the largest |value| M that mu-law companding maps onto [-1, 1]"),
    "cross_attention_gate_init": lambda key, value: check_number(
        key, value, -10.0, 10.0, what="the gates pass through tanh"),
    # coefficients and scales
    "initializer_range": _non_negative_number("the standard deviation of fresh weights"),
    "router_aux_loss_coef": _non_negative_number(),
    "router_z_loss_coef": _non_negative_number(),
    "router_jitter_noise": lambda key, value: check_number(
        key, value, 0.0, 1.0, high_open=True, what="inputs are scaled by uniform(1 - noise, 1 + noise)"),
    # probabilities
    "attention_dropout": check_probability,
    "hidden_dropout": check_probability,
    "hidden_dropout_prob": check_probability,
    "embedding_dropout": check_probability,
    "classifier_dropout": check_optional_probability,
    # activations
    "hidden_act": check_activation,
    "projector_hidden_act": check_activation,
    # choices
    "attention_scoring": choice_of(ATTENTION_SCORINGS),
    "softmax_variant": choice_of(SOFTMAX_VARIANTS),
    "norm_type": choice_of(NORM_TYPES),
    "norm_position": choice_of(NORM_POSITIONS),
    "mlp_type": choice_of(MLP_TYPES),
    "retention_mode": choice_of(RETENTION_MODES),
    "fusion": choice_of(FUSIONS),
    "initializer_scheme": check_initializer_scheme,
    # (position_embedding depends on the family: check_config_value passes the model type)
    # switches
    **{key: check_bool for key in ("attention_bias", "mlp_bias", "attention_gate", "decoding_weight_copies",
                                   "norm_relative_embeddings", "scale_decoder_outputs", "tie_word_embeddings")},
    # special-token ids (their range against vocab_size: ValidatedConfigMixin, which knows the config)
    **{key: check_token_id for key in SPECIAL_TOKEN_ID_KEYS},
    "attention_chunk_size": lambda key, value: check_no_chunked_attention(value),
}


# Families with a rotation of their own that takes no rope_parameters: why, for the error.
ROPE_FREE_MODEL_TYPES = {
    "hfgen_retnet": "hfgen_retnet takes no rope_parameters (got {value!r}): its xPos-style rotation has one key, "
                    "rope_theta. transformers' rope types rescale the frequencies of rotary attention for longer "
                    "contexts; retention's reach is set by its per-head decays, and no reference implementation "
                    "of a rescaled retention exists to test one against.",
}


def check_config_value(key: str, value: object, model_type: str | None = None) -> None:
    """Apply :data:`VALUE_CHECKS` to one key (nothing for a key without a check)."""
    if key == "position_embedding":
        check_position_embedding(key, value, model_type)
        return
    if key == "rope_parameters" and value is not None and model_type in ROPE_FREE_MODEL_TYPES:
        raise ValueError(ROPE_FREE_MODEL_TYPES[model_type].format(value=value))
    check = VALUE_CHECKS.get(key)
    if check is not None:
        check(key, value)


def close_match(key: object, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``key`` when one is close enough to be a misspelling of it (``softmax_varient`` ->
    ``softmax_variant``, ``num_kv_heads`` -> ``num_key_value_heads``), else ``None``."""
    if not isinstance(key, str):
        return None
    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.75)
    return matches[0] if matches else None


def validate_attention_config(config) -> None:
    """Check how the attention-related keys of ``config`` fit together, before any weight is created (each key's own
    value is checked where it is set: :data:`VALUE_CHECKS`).

    Shared by all families (decoder, encoder, seq2seq, ...): they hold the same keys with the same meaning.
    """
    if config.num_attention_heads % config.num_key_value_heads != 0:
        raise ValueError(
            f"num_attention_heads ({config.num_attention_heads}) must be a multiple of num_key_value_heads "
            f"({config.num_key_value_heads}): each key/value head serves a whole group of query heads "
            f"(1 = multi-query, num_attention_heads = multi-head, in between = grouped-query)."
        )
    rope = getattr(config, "rope_parameters", None)
    check_rope_parameters("rope_parameters", rope)  # (again: the dict may have been edited in place since it was set)
    if rope and config.position_embedding != "rotary" \
            and rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"rope_parameters={rope!r} scales rotary positions, but position_embedding="
                         f"{config.position_embedding!r}: set position_embedding='rotary', or leave rope_type "
                         f"'default' (its rope_theta is kept for switching rotary back on).")
    POSITION_TABLE[config.position_embedding].validate(config)  # how the kind's keys fit the sizes
    temperature = config.softmax_temperature
    if config.softmax_variant != "temperature" and temperature != 1.0:
        raise ValueError(
            f"softmax_temperature={temperature} only applies with softmax_variant='temperature' "
            f"(got softmax_variant={config.softmax_variant!r})."
        )
