"""Model cards of hfgen models: Hub metadata (library, pipeline, variant tags, model-index) and a body that says how
to load the model with or without hfgen installed, which variant it runs and how it was trained.

This file lives in ``hfgen/models/`` and imports only the standard library, ``huggingface_hub`` (a dependency of
transformers) and, inside a function, transformers, so it travels with the model code into every saved folder (and
is inlined into the exported diffusion pipeline file): a model loaded with
``trust_remote_code=True`` where hfgen is not installed still writes hfgen's card on ``push_to_hub``
(:class:`HfGenHubCardMixin`). ``hfgen.hub`` re-exports the builders and adds the checks and the push itself.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
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
    "fusion": "fusion",  # hfgen_vlm: how image features enter the language model
    "retention_mode": "retention",  # hfgen_retnet: parallel | chunkwise | recurrent
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
    "num_experts",
    "num_experts_per_tok",
    "value_factor",
    "retention_chunk_size",
    "cross_attention_interval",
    "image_size",
    "patch_size",
)
# Configs made of sub-configs (hfgen_vlm): the variant keys are read from these, shown with the prefix.
SUB_CONFIGS = ("text_config", "vision_config")

DEFAULT_DATASET_NAME = "Python reference manual (pydoc_data.topics)"
DEFAULT_LICENSE = "apache-2.0"

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
    "eval_accuracy": "test accuracy",
    "eval_macro_f1": "test macro-F1",
    "eval_accuracy_before": "test accuracy before fine-tuning",
    "train_examples": "labelled training examples",
    "eval_examples": "test examples",
}


def attention_kind(config: Any) -> str:
    """``mha``, ``gqa`` or ``mqa`` from the number of key/value heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"


def _key_tags(config: Any) -> list[str]:
    tags = [f"attention:{attention_kind(config)}"] if hasattr(config, "num_key_value_heads") else []
    for key, prefix in VARIANT_TAGS.items():
        value = getattr(config, key, None)
        if key == "attention_gate":
            if value:  # a flag: tag only when it is on
                tags.append(prefix)
        elif value is not None:
            tags.append(f"{prefix}:{value}")
    return tags


def variant_tags(config: Any) -> list[str]:
    """Hub tags naming the variant the config runs: ``hfgen``, the model type, then ``prefix:value`` per key
    (``attention:mha|gqa|mqa`` where the family has key/value heads). A config made of sub-configs (hfgen_vlm) adds
    its language model's tags after its own."""
    tags = ["hfgen", config.model_type, *_key_tags(config)]
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        tags += [tag for tag in _key_tags(text_config) if tag not in tags]
    return tags


def is_hfgen_tag(tag: str) -> bool:
    """Whether ``tag`` is one ``variant_tags`` writes (for some config): kept out when a card is rebuilt."""
    prefixes = {"attention", *VARIANT_TAGS.values()}
    return tag == "hfgen" or tag.startswith("hfgen_") or tag == "attention_gate" or tag.split(":")[0] in prefixes


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _variant_rows(config: Any, defaults: Any, prefix: str = "") -> list[str]:
    rows = []
    for key in (*VARIANT_TAGS, *VARIANT_DETAILS):
        if not hasattr(config, key):
            continue
        value, default = getattr(config, key), getattr(defaults, key, None)
        shown = _format(value) if value == default else f"**{_format(value)}**"
        rows.append(f"| `{prefix}{key}` | {shown} | {_format(default)} |")
    for name in SUB_CONFIGS:
        sub = getattr(config, name, None)
        if sub is not None and not isinstance(sub, Mapping):
            rows += _variant_rows(sub, type(sub)(), f"{prefix}{name}.")
    return rows


def _variant_table(config: Any) -> str:
    defaults = type(config)()  # the family's defaults, to mark what this checkpoint changed
    return "\n".join(["| key | value | default |", "| --- | --- | --- |", *_variant_rows(config, defaults)])


def _results_table(results: Mapping[str, Any]) -> str:
    rows = ["| quantity | value |", "| --- | --- |"]
    rows += [f"| {RESULT_LABELS.get(key, key)} | {_format(value)} |" for key, value in results.items()]
    return "\n".join(rows)


def _is_hub_id(name: str | None) -> bool:
    # The Hub rejects a local path in `base_model`; such a start is told in the body instead.
    return bool(name) and not os.path.exists(name) and not name.startswith((".", "/", "~"))


@dataclass(frozen=True)
class CardTask:
    """What a card says about one training objective: Hub pipeline tag, Auto class, objective, a usage line, how
    the headline metric is defined, and which result key goes into the model-index."""

    pipeline_tag: str
    auto_class: str
    objective: str
    usage: str  # lines after the model and tokenizer are loaded, without hfgen
    metric_note: str
    metric_key: str = "eval_perplexity"
    metric_type: str = "perplexity"
    metric_name: str = "Validation perplexity"
    dataset_split: str = "validation"
    preprocessor: str = "AutoTokenizer"  # the Auto class of what turns raw input into model inputs
    preprocessor_name: str = "tokenizer"  # its variable in the usage lines


_CAUSAL_USAGE = """inputs = tokenizer("The with statement", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40, do_sample=True)[0]))"""

_EXAMPLE_INPUTS = 'inputs = tokenizer("The with statement is used to wrap a block", return_tensors="pt")\n'
_NEXT_TOKEN_NOTE = ("Perplexity is `exp` of the mean next-token cross-entropy over the validation split, whose "
                    "documents are never\ntrained on.")
# The headline metric of the supervised objectives, measured on a fixed test split.
_TEST_ACCURACY = {"metric_key": "eval_accuracy", "metric_type": "accuracy", "metric_name": "Test accuracy",
                  "dataset_split": "test"}


# Speech: one second of 16 kHz mono audio through the saved feature extractor.
_AUDIO_INPUTS = ('import numpy as np\n\n'
                 'inputs = feature_extractor(np.zeros(16000, dtype=np.float32), sampling_rate=16000, '
                 'return_tensors="pt")\n')
_FEATURE_EXTRACTOR = {"preprocessor": "AutoFeatureExtractor", "preprocessor_name": "feature_extractor"}
# hfgen_speech's tasks by head (its heads read audio, not text).
SPEECH_TASKS = {"ForSequenceClassification": "audio-classification", "ForPreTraining": "hidden-unit-prediction"}


def _accuracy_note(unit: str) -> str:
    return (f"Accuracy is the share of test {unit} whose highest-scoring class is the true one; the test split is "
            "fixed\nand never trained on.")


# Objectives a saved hfgen folder can come from (``write_model_card(..., task=...)``).
CARD_TASKS = {
    "causal-lm": CardTask(
        pipeline_tag="text-generation", auto_class="AutoModelForCausalLM",
        objective="causal language modelling (next-token prediction)", usage=_CAUSAL_USAGE,
        metric_note=_NEXT_TOKEN_NOTE),
    "masked-lm": CardTask(
        pipeline_tag="fill-mask", auto_class="AutoModelForMaskedLM",
        objective="masked language modelling (BERT's 15% of tokens, 80/10/10 mask/random/keep)",
        usage='from transformers import pipeline\n'
              'print(pipeline("fill-mask", model=model, tokenizer=tokenizer)(f"The {tokenizer.mask_token} statement"))',
        metric_note="Perplexity is `exp` of the mean cross-entropy on the masked tokens of the validation split, "
                    "whose documents are\nnever trained on."),
    "span-corruption": CardTask(
        pipeline_tag="text2text-generation", auto_class="AutoModelForSeq2SeqLM",
        objective="T5's span corruption (15% of tokens in spans of mean length 3, each replaced by a sentinel)",
        usage='inputs = tokenizer("The with <extra_id_0> is used to wrap a block", return_tensors="pt")\n'
              'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))',
        metric_note="Perplexity is `exp` of the mean cross-entropy on the target tokens (sentinels and the spans "
                    "they hide) of the\nvalidation split, whose documents are never trained on."),
    "denoising": CardTask(
        pipeline_tag="text2text-generation", auto_class="AutoModelForSeq2SeqLM",
        objective="BART's denoising (text infilling: 30% of tokens in Poisson(3) spans, each replaced by one "
                  "<mask>; sentences shuffled; the target is the original text)",
        usage='inputs = tokenizer("The with <mask> used to wrap a block", return_tensors="pt")\n'
              'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))',
        metric_note="Perplexity is `exp` of the mean cross-entropy on the target tokens (the whole original "
                    "text) of the\nvalidation split, whose documents are never trained on."),
    "text-classification": CardTask(
        pipeline_tag="text-classification", auto_class="AutoModelForSequenceClassification",
        objective="supervised fine-tuning for sequence classification",
        usage=_EXAMPLE_INPUTS + 'print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])',
        metric_note=_accuracy_note("examples"), **_TEST_ACCURACY),
    "text2text-classification": CardTask(
        pipeline_tag="text2text-generation", auto_class="AutoModelForSeq2SeqLM",
        objective="supervised fine-tuning for classification as text-to-text (the target is one word naming "
                  "the class)",
        usage=_EXAMPLE_INPUTS + 'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=1)[0], '
                                'skip_special_tokens=True))',
        metric_note="Accuracy is the share of test examples whose highest-scoring class word (first decoder "
                    "step, class words only)\nis the true one; the test split is fixed and never trained on.",
        **_TEST_ACCURACY),
    "token-classification": CardTask(
        pipeline_tag="token-classification", auto_class="AutoModelForTokenClassification",
        objective="supervised fine-tuning for token classification",
        usage=_EXAMPLE_INPUTS + 'print([model.config.id2label[i] for i in '
                                'model(**inputs).logits.argmax(-1)[0].tolist()])',
        metric_note=_accuracy_note("tokens"), **_TEST_ACCURACY),
    "feature-extraction": CardTask(
        pipeline_tag="feature-extraction", auto_class="AutoModel",
        objective="no head: the model returns hidden states",
        usage='inputs = tokenizer("The with statement", return_tensors="pt")\n'
              'print(model(**inputs).last_hidden_state.shape)',
        metric_note=_NEXT_TOKEN_NOTE),
    "image-text-to-text": CardTask(
        pipeline_tag="image-text-to-text", auto_class="AutoModelForImageTextToText",
        objective="captioning and question answering on images (next-token prediction on the text after the "
                  "image)",
        usage='from PIL import Image\n\n'
              'inputs = processor(images=[Image.open("digit.png")], text=["<image> caption:"])\n'
              'print(processor.decode(model.generate(**inputs, max_new_tokens=10)[0], skip_special_tokens=True))',
        metric_note="Perplexity is `exp` of the mean next-token cross-entropy on the answer text of the validation "
                    "split, whose\nimages are never trained on.",
        preprocessor="AutoProcessor", preprocessor_name="processor"),
    "zero-shot-image-classification": CardTask(
        pipeline_tag="zero-shot-image-classification", auto_class="AutoModelForZeroShotImageClassification",
        objective="contrastive image-text training (CLIP's symmetric cross-entropy over a batch's image-caption "
                  "pairs)",
        usage='from PIL import Image\n\n'
              'inputs = processor(text=["a handwritten seven", "a handwritten one"], images=[Image.open("digit.png")])\n'
              'print(model(**inputs).logits_per_image.softmax(-1))',
        metric_note="Zero-shot accuracy is the share of test images whose closest caption names their digit; the "
                    "test images are\nnever trained on.",
        metric_key="zero_shot_accuracy", metric_type="accuracy", metric_name="Zero-shot accuracy",
        dataset_split="test", preprocessor="AutoProcessor", preprocessor_name="processor"),
    "audio-classification": CardTask(
        pipeline_tag="audio-classification", auto_class="AutoModelForAudioClassification",
        objective="keyword classification, fine-tuned after HuBERT-style pre-training (masked prediction of "
                  "k-means cluster ids)", usage=_AUDIO_INPUTS + 'print(model.config.id2label[model(**inputs).logits'
                                                                '.argmax(-1).item()])',
        metric_note=_accuracy_note("clips"), **_TEST_ACCURACY, **_FEATURE_EXTRACTOR),
    "hidden-unit-prediction": CardTask(
        pipeline_tag="feature-extraction", auto_class="AutoModelForPreTraining",
        objective="HuBERT's masked prediction of hidden units (k-means cluster ids of MFCCs or of the model's own "
                  "features, at masked frames)", usage=_AUDIO_INPUTS + 'print(model(**inputs).logits.shape)',
        metric_note="The loss is the cross-entropy of the cluster ids at the masked frames.", **_FEATURE_EXTRACTOR),
}


def _load_lines(task: CardTask, name: str, has_tokenizer: bool, remote: bool) -> str:
    option = ", trust_remote_code=True" if remote else ""
    lines = [f'model = {task.auto_class}.from_pretrained("{name}"{option})']
    if has_tokenizer:
        lines.append(f'{task.preprocessor_name} = {task.preprocessor}.from_pretrained("{name}"{option})')
    return "\n".join(lines)


def _attention_note(config: Any) -> str:
    source = getattr(config, "text_config", None) or config
    return f" (attention: `{attention_kind(source)}`)" if hasattr(source, "num_key_value_heads") else ""


def _body(name: str, config: Any, results: Mapping[str, Any], base_model: str | None, dataset_name: str,
          task: CardTask = CARD_TASKS["causal-lm"], has_tokenizer: bool = True, loss_curve: bool = False) -> str:
    kind = "language model" if task.metric_type == "perplexity" else "model"
    if results:
        start = f"continued from `{base_model}`" if base_model else "trained from random initialisation"
        intro = (f"A `{config.model_type}` {kind} built with hfgen, {start} on the\n{dataset_name} with "
                 f"{task.objective}.")
        curve = " The curve of the training loss is in `loss_curve.png`." if loss_curve else ""
        training = f"{_results_table(results)}\n\n{task.metric_note}{curve}"
    else:
        start = f", derived from `{base_model}`" if base_model else ""
        intro = f"A `{config.model_type}` {kind} built with hfgen{start}."
        training = ("No training record was given when this card was written: the weights may be untrained. "
                    "Cards written by\nhfgen's recipes list the objective, the data and the measured numbers here.")
    tokenizer_import = f", {task.preprocessor}" if has_tokenizer else ""
    # Worded to stay true when a tokenizer is pushed to the repository after this card.
    usage = task.usage if has_tokenizer else (
        f"# this card was written without a {task.preprocessor_name} in the repository: feed the model's inputs "
        f"({'`input_ids` and `pixel_values`' if task.preprocessor == 'AutoProcessor' else '`input_ids`'}) directly")
    return f"""
# {name}

{intro}

## Load it

With hfgen installed (importing hfgen registers its classes with transformers' Auto classes):

```python
import hfgen  # noqa: F401
from transformers import {task.auto_class}{tokenizer_import}

{_load_lines(task, name, has_tokenizer, remote=False)}
```

Without hfgen (only torch and transformers): the model code is saved beside the weights.

```python
from transformers import {task.auto_class}{tokenizer_import}

{_load_lines(task, name, has_tokenizer, remote=True)}
{usage}
```

Replace `"{name}"` with the folder's path or its Hub repository id.

## Variant

Values that differ from the family's defaults are in bold{_attention_note(config)}.

{_variant_table(config)}

## Training

{training}
"""


def build_model_card(
    config: Any,
    results: Mapping[str, Any],
    name: str,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str = DEFAULT_DATASET_NAME,
    task: str = "causal-lm",
    license: str | None = DEFAULT_LICENSE,
    has_tokenizer: bool = True,
    loss_curve: bool = False,
) -> ModelCard:
    """The card of an hfgen model as a ``huggingface_hub.ModelCard`` (see ``write_model_card`` for the arguments;
    ``name`` is the title, the model-index name and the id in the loading snippets)."""
    if task not in CARD_TASKS:
        raise ValueError(f"Unknown card task {task!r}; valid choices: {', '.join(CARD_TASKS)}.")
    card_task = CARD_TASKS[task]
    eval_results = None
    if results.get(card_task.metric_key) is not None:
        eval_results = [EvalResult(
            task_type=card_task.pipeline_tag, dataset_type="pydoc_data", dataset_name=dataset_name,
            dataset_split=card_task.dataset_split, metric_type=card_task.metric_type,
            metric_name=card_task.metric_name, metric_value=round(float(results[card_task.metric_key]), 4),
        )]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=card_task.pipeline_tag,
        license=license,
        tags=variant_tags(config),
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=list(datasets) if datasets else None,
        model_name=name,
        eval_results=eval_results,
    )
    body = _body(name, config, results, base_model, dataset_name, card_task, has_tokenizer=has_tokenizer,
                 loss_curve=loss_curve)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(
    output_dir: str | os.PathLike,
    config: Any,
    results: Mapping[str, Any],
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str = DEFAULT_DATASET_NAME,
    task: str = "causal-lm",
    license: str | None = DEFAULT_LICENSE,
    model_name: str | None = None,
    has_tokenizer: bool | None = None,
) -> Path:
    """Write ``README.md`` with Hub metadata and a usage/variant/training body into ``output_dir``.

    Args:
        output_dir: the saved model folder; its name is the card's title and the model-index name unless
            ``model_name`` is given.
        config: the model's config (an hfgen config: the variant keys are read from it).
        results: numbers to report, by key (see ``RESULT_LABELS``); the task's metric (``eval_perplexity`` for
            the language-modelling tasks) also goes into the model-index, so the Hub shows it as an evaluation
            result. Empty: the card says that no training record was given.
        base_model: the checkpoint training started from; written to the metadata when it is a Hub id.
        datasets: Hub dataset ids trained on, for the metadata (the embedded corpus has none).
        dataset_name: how the card names the training/validation corpus.
        task: the training objective, a key of ``CARD_TASKS`` (pipeline tag, Auto class, metric in the
            model-index): ``causal-lm`` (default), ``masked-lm``, ``span-corruption``, ``denoising``, ``text-classification``,
            ``text2text-classification``, ``token-classification``, ``feature-extraction`` (a model without a
            head), ``image-text-to-text`` (hfgen_vlm: the card loads a processor instead of a tokenizer).
        license: the Hub license id of the weights (hfgen itself is Apache-2.0).
        model_name: the title and the id shown in the loading snippets, e.g. the Hub repository id it is pushed
            to (default: the folder's name).
        has_tokenizer: whether a tokenizer (for ``image-text-to-text``: a processor) ships with the folder
            (default: whether ``tokenizer_config.json``, or ``processor_config.json``, is there). The snippets
            load one only when it does, and ``push_folder`` refuses a card that promises one the folder lacks.

    Returns:
        The path of the written card.
    """
    output_dir = Path(output_dir)
    name = model_name or output_dir.resolve().name
    if task not in CARD_TASKS:
        raise ValueError(f"Unknown card task {task!r}; valid choices: {', '.join(CARD_TASKS)}.")
    if has_tokenizer is None:
        has_tokenizer = any((output_dir / f).is_file() for f in _preprocessor_files(CARD_TASKS[task]))
    card = build_model_card(config, results, name, base_model=base_model, datasets=datasets,
                            dataset_name=dataset_name, task=task, license=license, has_tokenizer=has_tokenizer,
                            loss_curve=(output_dir / "loss_curve.png").is_file())
    path = output_dir / "README.md"
    card.save(path)
    return path


def build_adapter_card(adapter_config: Mapping[str, Any], name: str, results: Mapping[str, Any] | None = None,
                       base_config: Any = None, has_tokenizer: bool = False,
                       license: str | None = DEFAULT_LICENSE) -> ModelCard:
    """The card of a PEFT adapter on an hfgen model: ``library_name: peft``, ``base_model`` (the base's Hub id),
    the adapter's tags, and a body that loads it with and without hfgen installed."""
    base = adapter_config.get("base_model_name_or_path")
    peft_type = str(adapter_config.get("peft_type", "LORA")).lower()
    task_type = adapter_config.get("task_type") or "CAUSAL_LM"
    auto_class = {"CAUSAL_LM": "AutoPeftModelForCausalLM", "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
                  "SEQ_CLS": "AutoPeftModelForSequenceClassification"}.get(task_type, "AutoPeftModel")
    pipeline_tag = {"CAUSAL_LM": "text-generation", "SEQ_2_SEQ_LM": "text2text-generation",
                    "SEQ_CLS": "text-classification"}.get(task_type)
    tags = ["hfgen", "peft", peft_type, *(variant_tags(base_config)[1:] if base_config is not None else [])]
    data = ModelCardData(library_name="peft", pipeline_tag=pipeline_tag, license=license, tags=tags,
                         base_model=base if _is_hub_id(base) else None, model_name=name)
    settings = {key: adapter_config.get(key) for key in ("r", "lora_alpha", "lora_dropout", "target_modules",
                                                         "modules_to_save") if key in adapter_config}
    rows = "\n".join(f"| `{key}` | {_format(value)} |" for key, value in settings.items())
    tokenizer = (f'\ntokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)' if has_tokenizer
                 else "")
    training = _results_table(results) if results else "No training record was given when this card was written."
    tokenizer_import = "\nfrom transformers import AutoTokenizer" if has_tokenizer else ""
    body = f"""
# {name}

A {peft_type.upper()} adapter (PEFT) for the hfgen model `{base}`.

## Load it

With hfgen installed:

```python
import hfgen  # noqa: F401
from peft import {auto_class}

model = {auto_class}.from_pretrained("{name}")
```

Without hfgen (torch, transformers and peft): the base model's code is saved beside its weights.

```python
from peft import {auto_class}{tokenizer_import}

model = {auto_class}.from_pretrained("{name}", trust_remote_code=True){tokenizer}
merged = model.merge_and_unload()  # a plain hfgen model with the adapter folded in
```

## Adapter

| setting | value |
| --- | --- |
{rows}

## Training

{training}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def build_pipeline_card(model_index: Mapping[str, Any], name: str,
                        license: str | None = DEFAULT_LICENSE) -> ModelCard:
    """The card of an hfgen diffusers pipeline: ``library_name: diffusers`` and a body that loads it."""
    class_name = model_index.get("_class_name")
    class_name = class_name[1] if isinstance(class_name, list) else class_name
    components = {k: v[1] for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list) and v[1]}
    data = ModelCardData(library_name="diffusers", pipeline_tag="unconditional-image-generation", license=license,
                         tags=["hfgen", "diffusers", class_name, *sorted(set(components.values()))], model_name=name)
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in components.items())
    body = f"""
# {name}

A diffusers `{class_name}` built with hfgen.

## Load it

With or without hfgen installed (the pipeline's and its components' code is saved beside the weights). diffusers
fetches only each component's main file from the Hub, so download the whole snapshot first:

```python
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import snapshot_download

pipe = DiffusionPipeline.from_pretrained(snapshot_download("{name}"), trust_remote_code=True)
images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images
```

## Components

| component | class |
| --- | --- |
{rows}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")



# ---------------------------------------------------------------------------------------------------------------
# hfgen's card on a plain `push_to_hub` (transformers' and diffusers' own upload path)
# ---------------------------------------------------------------------------------------------------------------

# The card task of a model class, by the end of its name (a folder pushed as it is, or a plain push_to_hub).
ARCHITECTURE_TASKS = {
    "ForCausalLM": "causal-lm",
    "ForCausalLMWithValueHead": "causal-lm",
    "ForMaskedLM": "masked-lm",
    "ForPreTraining": "masked-lm",
    "ForConditionalGeneration": "span-corruption",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
}
# Families whose task is fixed by the model type rather than the head.
MODEL_TYPE_TASKS = {"hfgen_vlm": "image-text-to-text", "hfgen_clip": "zero-shot-image-classification"}

# The sentence of transformers' (🤗) and diffusers' (🧨) generic card, written when a repository has no card yet.
GENERIC_CARD = re.compile(r"This is the model card of a .{1,40} that has been pushed on the Hub\. "
                          r"This model card has been automatically generated\.")
# hfgen's own words for a card without training numbers: nothing in it is lost by writing it again.
UNRECORDED = "No training record was given when this card was written"


def task_for(model_type: str, architecture: str) -> str:
    """The ``CARD_TASKS`` key of a model: by family (``MODEL_TYPE_TASKS``), else by the head's class name."""
    if model_type in MODEL_TYPE_TASKS:
        return MODEL_TYPE_TASKS[model_type]
    if model_type == "hfgen_speech":
        return next((task for head, task in SPEECH_TASKS.items() if architecture.endswith(head)),
                    "hidden-unit-prediction")
    matches = [suffix for suffix in ARCHITECTURE_TASKS if architecture.endswith(suffix)]
    if matches:
        return ARCHITECTURE_TASKS[max(matches, key=len)]
    return "feature-extraction" if architecture.endswith("Model") else "causal-lm"


def card_is_replaceable(path: str | os.PathLike) -> bool:
    """Whether the ``README.md`` at ``path`` may be (re)written by hfgen: missing, transformers'/diffusers' generic
    card, or hfgen's own card without a training record. A card someone wrote, or one with numbers, is kept (as
    transformers keeps an existing card)."""
    path = Path(path)
    if not path.is_file():
        return True
    text = path.read_text(encoding="utf-8")
    return bool(GENERIC_CARD.search(text)) or UNRECORDED in text


def _extra_tags(path: Path, card: ModelCard) -> list[str]:
    """Tags of the card being replaced that are not hfgen's variant tags (``tags=`` of push_to_hub,
    ``model.add_model_tags``), to carry over."""
    if not path.is_file():
        return []
    tags = ModelCard.load(path).data.tags or []
    return [tag for tag in tags if not is_hfgen_tag(tag) and tag not in (card.data.tags or [])]


def _repo_has(repo_id: str, filename: str, revision: str | None, token: Any) -> bool:
    """Whether the Hub repository holds ``filename`` at ``revision`` (a branch not created yet: its base, main)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token if token is not True else None)
    try:
        if api.file_exists(repo_id, filename, revision=revision):
            return True
        if revision not in (None, "main") and not api.revision_exists(repo_id, revision):
            return api.file_exists(repo_id, filename)
    except (HfHubHTTPError, OSError, ValueError):
        pass  # the upload itself will report a Hub that cannot be reached; the card then promises nothing
    return False


def _config_from_repo(repo_id: str, revision: str | None, token: Any) -> Any:
    """The repository's ``config.json`` as a plain ``PreTrainedConfig`` (sub-configs too), read as JSON: a push
    never imports code that the target repository's ``auto_map`` names."""
    from huggingface_hub import hf_hub_download
    from transformers import PreTrainedConfig

    path = hf_hub_download(repo_id, "config.json", revision=revision, token=token if token is not True else None)
    with open(path) as handle:
        data = json.load(handle)
    for key in ("text_config", "vision_config"):
        if isinstance(data.get(key), dict):
            data[key] = PreTrainedConfig.from_dict(data[key])
    return PreTrainedConfig.from_dict(data)


def _preprocessor_files(task: CardTask) -> tuple[str, ...]:
    if task.preprocessor == "AutoFeatureExtractor":
        return ("preprocessor_config.json",)
    return ("processor_config.json",) if task.preprocessor == "AutoProcessor" else ("tokenizer_config.json",)


def write_hub_card(obj: Any, working_dir: str | os.PathLike, repo_id: str, revision: str | None = None,
                   token: Any = None) -> bool:
    """Write hfgen's card into ``working_dir`` (the folder transformers' ``push_to_hub`` is about to upload) when
    the card there is replaceable (``card_is_replaceable``). Returns whether it wrote one.

    ``obj`` is an hfgen model (its config gives the card) or what is pushed beside one, such as the VLM processor
    (the card then comes from the repository's ``config.json``, if it is an hfgen model's). The card loads a
    tokenizer/processor when ``working_dir`` or the repository already holds one; tags given to ``push_to_hub``
    are kept.
    """
    working_dir = Path(working_dir)
    path = working_dir / "README.md"
    if not card_is_replaceable(path):
        return False
    config = getattr(obj, "config", None)
    is_model = str(getattr(config, "model_type", "")).startswith("hfgen")
    if not is_model:
        if not _repo_has(repo_id, "config.json", revision, token):
            return False  # nothing to describe yet: the model's own push writes the card
        config = _config_from_repo(repo_id, revision, token)
        if not str(getattr(config, "model_type", "")).startswith("hfgen"):
            return False
        architecture = (getattr(config, "architectures", None) or [""])[0]
    else:
        architecture = type(obj).__name__
    task = task_for(config.model_type, architecture)
    files = _preprocessor_files(CARD_TASKS[task])
    # pushing a processor: it is what the card loads; pushing a model: whatever the folder or repository holds
    has_preprocessor = not is_model or any(
        (working_dir / f).is_file() or _repo_has(repo_id, f, revision, token) for f in files)
    card = build_model_card(config, {}, repo_id, task=task, has_tokenizer=has_preprocessor)
    card.data.tags = [*(card.data.tags or []), *_extra_tags(path, card)]
    card.save(path)
    return True


def write_pipeline_hub_card(working_dir: str | os.PathLike, repo_id: str) -> bool:
    """Write hfgen's pipeline card into ``working_dir`` (the folder diffusers' ``push_to_hub`` uploads) when the
    card there is replaceable; the components come from its ``model_index.json``. Returns whether it wrote one."""
    working_dir = Path(working_dir)
    path = working_dir / "README.md"
    if not card_is_replaceable(path) or not (working_dir / "model_index.json").is_file():
        return False
    with open(working_dir / "model_index.json") as handle:
        card = build_pipeline_card(json.load(handle), repo_id)
    card.data.tags = [*(card.data.tags or []), *_extra_tags(path, card)]
    card.save(path)
    return True


class HfGenHubCardMixin:
    """First in the bases of hfgen's models and processors: transformers' ``push_to_hub`` (and
    ``save_pretrained(push_to_hub=True)``) upload hfgen's card (``write_hub_card``) instead of the generic one.

    The hook is ``_upload_modified_files``, which both paths call with the folder about to be uploaded, after
    transformers wrote its card there and before anything is sent.
    """

    def _upload_modified_files(self, working_dir, repo_id, files_timestamps, commit_message=None, token=None,
                               create_pr=False, revision=None, commit_description=None):
        write_hub_card(self, working_dir, repo_id, revision=revision, token=token)
        return super()._upload_modified_files(
            working_dir, repo_id, files_timestamps, commit_message=commit_message, token=token,
            create_pr=create_pr, revision=revision, commit_description=commit_description)
