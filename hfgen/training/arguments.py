"""The ``HfArgumentParser`` dataclasses of hfgen's training objectives -- which model (``ModelArguments``, its config
keys and ``config_overrides``) and which text (``DataArguments``) -- and the model config they build.

Shared by every objective (``pretrain``, ``masked_lm``, ``span_corruption``, ``classification``), the recipes and
``hfgen demo``; the objectives add their own fields by subclassing.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from ..data.user_data import TextDataArguments, first_rows
from ..models import HfGenDecoderConfig, variants
from ..models.configuration_common import VARIANT_DEFAULTS
from ..models.variants import position_embeddings_of

# Fields of ModelArguments that are not config keys.
_NOT_CONFIG_KEYS = ("model_name_or_path", "config_overrides", "trust_remote_code")
# PreTrainedConfig bookkeeping that a user must not set by hand (the class and save_pretrained write them).
_RESERVED_CONFIG_KEYS = {"_name_or_path", "architectures", "auto_map", "model_type", "transformers_version"}


def _help(text: str) -> dict[str, Any]:
    return {"metadata": {"help": text}}


@dataclass
class ModelArguments:
    """Which model to train. Every architecture field left at None takes the config's default (a 6-layer,
    hidden-256 Llama); ``config_overrides`` reaches every other config key."""

    model_name_or_path: str | None = field(default=None, **_help(
        "Continue from a saved folder or Hub id (an hfgen or Llama-architecture checkpoint) instead of a fresh "
        "model. The fields below then change its config (variants that add weights initialise them)."))
    hidden_size: int | None = field(default=None, **_help("Width of the residual stream."))
    num_hidden_layers: int | None = field(default=None, **_help("Number of decoder layers."))
    num_attention_heads: int | None = field(default=None, **_help("Query heads per layer."))
    num_key_value_heads: int | None = field(default=None, **_help(
        "Key/value heads: 1 = multi-query, num_attention_heads = multi-head, in between = grouped-query."))
    intermediate_size: int | None = field(default=None, **_help("Hidden width of the MLP."))
    attention_scoring: Literal[variants.ATTENTION_SCORINGS] | None = field(default=None, **_help(
        "How queries meet keys."))
    softmax_variant: Literal[variants.SOFTMAX_VARIANTS] | None = field(default=None, **_help(
        "Normalisation of the attention scores."))
    softmax_temperature: float | None = field(default=None, **_help(
        "Temperature theta of softmax_variant=temperature."))
    attention_gate: bool | None = field(default=None, **_help("Per-head sigmoid gate on the attention output."))
    position_embedding: Literal[variants.POSITION_EMBEDDINGS] | None = field(default=None, **_help(
        "How positions enter the model."))
    norm_type: Literal[variants.NORM_TYPES] | None = field(default=None, **_help("Normalisation layer."))
    norm_position: Literal[variants.NORM_POSITIONS] | None = field(default=None, **_help(
        "Normalise before (pre) or after (post) each residual block."))
    mlp_type: Literal[variants.MLP_TYPES] | None = field(default=None, **_help("gated (SwiGLU) or standard MLP."))
    tie_word_embeddings: bool | None = field(default=None, **_help("Share the input embedding with the LM head."))
    trust_remote_code: bool = field(default=False, **_help(
        "Run code that the model_name_or_path folder or repository names in its auto_map (tokenizer classes, ...). "
        "Only for sources you trust: that code runs on this machine. hfgen's own models never need it."))
    config_overrides: str | None = field(default=None, **_help(
        "Any other config keys as 'key=value,key=value' (values read as JSON, else true/false/none, else "
        "text), e.g. 'rope_parameters={\"rope_theta\": 500000.0},attention_dropout=0.1'. Applied last."))

    def config_kwargs(self, config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> dict[str, Any]:
        """The config keys this run sets: the fields that are not None, then ``config_overrides`` (checked against
        ``config_class``'s keys). Fields a subclass adds for other purposes are listed in its ``NOT_CONFIG_KEYS``."""
        skip = (*_NOT_CONFIG_KEYS, *getattr(self, "NOT_CONFIG_KEYS", ()))
        kwargs = {key: value for key, value in vars(self).items() if key not in skip and value is not None}
        kwargs.update(parse_config_overrides(self.config_overrides, config_class))
        return kwargs


@dataclass
class EncoderModelArguments(ModelArguments):
    """The causal-LM recipe's model fields; ``position_embedding`` also offers the encoder's own kinds (DeBERTa's
    ``disentangled``). Fields left at None take ``HfGenEncoderConfig``'s (BERT-like) defaults."""

    position_embedding: Literal[position_embeddings_of("hfgen_encoder")] | None = field(
        default=None, metadata={"help": "How positions enter the model (disentangled: DeBERTa's attention)."})


@dataclass
class DataArguments(TextDataArguments):
    """Which text to train on: the embedded corpus (or the user's data: ``--dataset_name`` / ``--train_file``),
    cut into fixed-length blocks."""

    block_size: int = field(default=128, **_help("Tokens per training sequence."))
    include_docstrings: bool = field(default=False, **_help(
        "Add the standard library's docstrings (about 4x more text) to the Python reference manual."))
    validation_fraction: float = field(default=0.1, **_help(
        "Expected share of the embedded corpus's documents held out for validation."))
    max_train_samples: int | None = field(default=None, **_help("Train on at most this many blocks (the first)."))
    max_eval_samples: int | None = field(default=None, **_help("Evaluate on at most this many blocks (the first)."))


    def embedded_text(self):
        """The embedded corpus (``hfgen.data.load_corpus``) split as these fields ask."""
        from ..data import load_corpus

        return load_corpus(include_docstrings=self.include_docstrings, validation_fraction=self.validation_fraction,
                           seed=0)

    def load_text(self):
        """The training text as these fields ask: the user's data (``dataset_name`` / ``train_file``), else the
        embedded corpus; a ``DatasetDict``, or an ``IterableDatasetDict`` with ``streaming``."""
        return self.texts(self.embedded_text)

    def select(self, train, validation):
        """The first ``max_train_samples`` / ``max_eval_samples`` rows of each split, where set."""
        return first_rows(train, self.max_train_samples), first_rows(validation, self.max_eval_samples)


@dataclass
class PretrainingDataArguments(DataArguments):
    """The causal-LM recipe's data fields, plus keeping the labelled task's test text out of pre-training."""

    hold_out_task_test: bool = field(default=True, metadata={"help": (
        "Cut the test paragraphs of the labelled task (hfgen.data.labelled) out of the embedded pre-training text, "
        "so that a model fine-tuned on that task afterwards is scored on text it has never read.")})

    def embedded_text(self):
        """The embedded corpus, without the labelled task's test paragraphs where ``hold_out_task_test``."""
        from ..data.labelled import drop_test_paragraphs

        corpus = super().embedded_text()
        return drop_test_paragraphs(corpus) if self.hold_out_task_test else corpus


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)  # ints, floats, true/false/null, quoted strings, lists, dicts
    except json.JSONDecodeError:
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):  # Python spelling, as typed on a command line
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def valid_config_keys(config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> tuple[list[str], list[str]]:
    """The keys ``config_overrides`` accepts: (the family's own keys, the generic PreTrainedConfig keys)."""
    own = [name for name, p in inspect.signature(config_class.__init__).parameters.items()
           if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
           and name not in PreTrainedConfig.__dataclass_fields__]  # (dataclass configs: the base's fields too)
    if config_class.model_type.startswith("hfgen"):  # families taking the shared variant keys through **kwargs
        own += [key for key in (*VARIANT_DEFAULTS, "rope_parameters") if key not in own]
    generic = sorted(set(PreTrainedConfig().to_dict()) - set(own) - _RESERVED_CONFIG_KEYS)
    return own, generic


def parse_config_overrides(text: str | None,
                           config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> dict[str, Any]:
    """Parse ``"key=value,key=value"`` into a dict of config keys.

    Values are read as JSON (so ``3``, ``0.1``, ``true``, ``"x"``, ``[1, 2]`` and ``{"a": 1}`` keep their type),
    else ``True``/``False``/``None`` in any case, else as plain text. A comma splits entries only where a new
    ``key=`` follows, so JSON lists and dicts may contain commas.

    Raises:
        ValueError: for an entry that is not ``key=value`` or a key that ``config_class`` does not have; the
            message lists the valid keys.
    """
    if not text or not text.strip():
        return {}
    own, generic = valid_config_keys(config_class)
    overrides = {}
    for entry in re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)", text):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"config_overrides entry {entry!r} is not of the form key=value (in {text!r}).")
        if key not in own and key not in generic:
            close = difflib.get_close_matches(key, own + generic, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown config key {key!r} in config_overrides.{hint} Valid keys of {config_class.__name__}: "
                f"{', '.join(own)}; generic PreTrainedConfig keys: {', '.join(generic)}.")
        overrides[key] = _parse_value(value.strip())
    return overrides



def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase,
                 config_class: type[PreTrainedConfig] = HfGenDecoderConfig) -> PreTrainedConfig:
    """The model config: the checkpoint's (with ``model_name_or_path``) or the family defaults, then the tokenizer's
    vocabulary and special ids, then the keys of ``model_args``. Validated before any weight is made.

    ``config_class`` is the family's config (the decoder's by default; the encoder's and the encoder-decoder's
    recipes pass theirs)."""
    kwargs: dict[str, Any] = {}
    if model_args.model_name_or_path is None:
        # A fresh model: its vocabulary is the tokenizer's. A checkpoint keeps its own embedding size.
        kwargs.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    kwargs.update(model_args.config_kwargs(config_class))
    if model_args.model_name_or_path is None:
        return config_class(**kwargs)
    # Through __init__ (not from_pretrained(**kwargs), which setattr's after validation) so that the changed
    # keys are checked together with the checkpoint's; a Llama config.json loads into this class unchanged.
    config_dict, _ = config_class.get_config_dict(model_args.model_name_or_path)
    for key in _RESERVED_CONFIG_KEYS:  # rewritten by this class and by save_pretrained
        config_dict.pop(key, None)
    config = config_class(**{**config_dict, **kwargs})
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocab_size is "
                         f"{config.vocab_size}: use the checkpoint's own tokenizer.")
    return config


