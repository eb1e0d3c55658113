"""Model cards for saved hfgen folders: Hub metadata (library, pipeline, variant tags, model-index) and a body that
says how to load the folder with or without hfgen installed, which variant it runs and how it was trained."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# The config keys that choose a variant, with the short prefix of their Hub tag (e.g. ``softmax:off_by_one``):
# a tag per key lets the Hub's tag filter find every checkpoint of one variant.
VARIANT_TAGS = {
    "attention_scoring": "scoring",
    "softmax_variant": "softmax",
    "position_embedding": "position",
    "norm_type": "norm",
    "norm_position": "norm_position",
    "mlp_type": "mlp",
    "attention_gate": "attention_gate",
}
# Shown in the card's variant table beside the tagged keys.
VARIANT_DETAILS = (
    "softmax_temperature",
    "clipped_softmax_gamma",
    "clipped_softmax_zeta",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "vocab_size",
    "tie_word_embeddings",
)

DEFAULT_DATASET_NAME = "Python reference manual (pydoc_data.topics)"

# Human names for the numbers pretrain() reports; any other key is shown as it is.
RESULT_LABELS = {
    "eval_perplexity_before": "validation perplexity before training",
    "eval_perplexity": "validation perplexity after training",
    "eval_loss": "validation loss after training (nats/token)",
    "train_loss": "mean training loss (nats/token)",
    "train_runtime_s": "training time (s)",
    "global_step": "optimizer steps",
    "total_train_batch_size": "sequences per step (all processes)",
    "block_size": "tokens per sequence",
    "train_blocks": "training sequences",
    "eval_blocks": "validation sequences",
    "learning_rate": "peak learning rate",
    "world_size": "processes",
    "num_parameters": "parameters",
}


def attention_kind(config: Any) -> str:
    """``mha``, ``gqa`` or ``mqa`` from the number of key/value heads."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    return "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"


def variant_tags(config: Any) -> list[str]:
    """Hub tags naming the variant the config runs: ``hfgen``, the model type, then ``prefix:value`` per key."""
    tags = ["hfgen", config.model_type, f"attention:{attention_kind(config)}"]
    for key, prefix in VARIANT_TAGS.items():
        value = getattr(config, key, None)
        if key == "attention_gate":
            if value:  # a flag: tag only when it is on
                tags.append(prefix)
        elif value is not None:
            tags.append(f"{prefix}:{value}")
    return tags


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _variant_table(config: Any) -> str:
    defaults = type(config)()  # the family's defaults, to mark what this checkpoint changed
    rows = ["| key | value | default |", "| --- | --- | --- |"]
    for key in (*VARIANT_TAGS, *VARIANT_DETAILS):
        if not hasattr(config, key):
            continue
        value, default = getattr(config, key), getattr(defaults, key, None)
        shown = _format(value) if value == default else f"**{_format(value)}**"
        rows.append(f"| `{key}` | {shown} | {_format(default)} |")
    return "\n".join(rows)


def _results_table(results: Mapping[str, Any]) -> str:
    rows = ["| quantity | value |", "| --- | --- |"]
    rows += [f"| {RESULT_LABELS.get(key, key)} | {_format(value)} |" for key, value in results.items()]
    return "\n".join(rows)


def _is_hub_id(name: str | None) -> bool:
    # The Hub rejects a local path in `base_model`; such a start is told in the body instead.
    return bool(name) and not os.path.exists(name) and not name.startswith((".", "/", "~"))


def _body(name: str, config: Any, results: Mapping[str, Any], base_model: str | None, dataset_name: str) -> str:
    start = f"continued from `{base_model}`" if base_model else "trained from random initialisation"
    return f"""
# {name}

A `{config.model_type}` language model built with hfgen, {start} on the
{dataset_name} with causal language modelling (next-token prediction).

## Load it

With hfgen installed (importing hfgen registers its classes with transformers' Auto classes):

```python
import hfgen  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
```

Without hfgen (only torch and transformers): the model code is saved beside the weights.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)
inputs = tokenizer("The with statement", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40, do_sample=True)[0]))
```

Replace `"{name}"` with the folder's path or its Hub repository id.

## Variant

Values that differ from the family's defaults are in bold (attention: `{attention_kind(config)}`).

{_variant_table(config)}

## Training

{_results_table(results)}

Perplexity is `exp` of the mean next-token cross-entropy over the validation split, whose documents are never
trained on. The curve of the training loss is in `loss_curve.png`.
"""


def write_model_card(
    output_dir: str | os.PathLike,
    config: Any,
    results: Mapping[str, Any],
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str = DEFAULT_DATASET_NAME,
) -> Path:
    """Write ``README.md`` with Hub metadata and a usage/variant/training body into ``output_dir``.

    Args:
        output_dir: the saved model folder; its name is the card's title and the model-index name.
        config: the model's config (an hfgen config: the variant keys are read from it).
        results: numbers to report, by key (see ``RESULT_LABELS``); ``eval_perplexity`` also goes into the
            model-index, so the Hub shows it as an evaluation result.
        base_model: the checkpoint training started from; written to the metadata when it is a Hub id.
        datasets: Hub dataset ids trained on, for the metadata (the embedded corpus has none).
        dataset_name: how the card names the training/validation corpus.

    Returns:
        The path of the written card.
    """
    output_dir = Path(output_dir)
    name = output_dir.resolve().name
    eval_results = None
    if results.get("eval_perplexity") is not None:
        eval_results = [EvalResult(
            task_type="text-generation", dataset_type="pydoc_data", dataset_name=dataset_name,
            dataset_split="validation", metric_type="perplexity", metric_name="Validation perplexity",
            metric_value=round(float(results["eval_perplexity"]), 4),
        )]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=variant_tags(config),
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=list(datasets) if datasets else None,
        model_name=name,
        eval_results=eval_results,
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(name, config, results, base_model, dataset_name)}")
    path = output_dir / "README.md"
    card.save(path)
    return path
