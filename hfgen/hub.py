"""Model cards for saved hfgen folders: Hub metadata (library, pipeline, variant tags, model-index) and a body that
says how to load the folder with or without hfgen installed, which variant it runs and how it was trained."""

from __future__ import annotations

import json
import os
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


_CAUSAL_USAGE = """inputs = tokenizer("The with statement", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40, do_sample=True)[0]))"""

# Objectives a saved hfgen folder can come from (``write_model_card(..., task=...)``).
CARD_TASKS = {
    "causal-lm": CardTask(
        pipeline_tag="text-generation", auto_class="AutoModelForCausalLM",
        objective="causal language modelling (next-token prediction)", usage=_CAUSAL_USAGE,
        metric_note="Perplexity is `exp` of the mean next-token cross-entropy over the validation split, whose "
                    "documents are never\ntrained on."),
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
    "text-classification": CardTask(
        pipeline_tag="text-classification", auto_class="AutoModelForSequenceClassification",
        objective="supervised fine-tuning for sequence classification",
        usage='inputs = tokenizer("The with statement is used to wrap a block", return_tensors="pt")\n'
              'print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])',
        metric_note="Accuracy is the share of test examples whose highest-scoring class is the true one; the "
                    "test split is fixed\nand never trained on.",
        metric_key="eval_accuracy", metric_type="accuracy", metric_name="Test accuracy", dataset_split="test"),
    "text2text-classification": CardTask(
        pipeline_tag="text2text-generation", auto_class="AutoModelForSeq2SeqLM",
        objective="supervised fine-tuning for classification as text-to-text (the target is one word naming "
                  "the class)",
        usage='inputs = tokenizer("The with statement is used to wrap a block", return_tensors="pt")\n'
              'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=1)[0], skip_special_tokens=True))',
        metric_note="Accuracy is the share of test examples whose highest-scoring class word (first decoder "
                    "step, class words only)\nis the true one; the test split is fixed and never trained on.",
        metric_key="eval_accuracy", metric_type="accuracy", metric_name="Test accuracy", dataset_split="test"),
}


def _load_lines(auto_class: str, name: str, has_tokenizer: bool, remote: bool) -> str:
    option = ", trust_remote_code=True" if remote else ""
    lines = [f'model = {auto_class}.from_pretrained("{name}"{option})']
    if has_tokenizer:
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{name}"{option})')
    return "\n".join(lines)


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
    tokenizer_import = ", AutoTokenizer" if has_tokenizer else ""
    usage = task.usage if has_tokenizer else (
        "# no tokenizer ships with this checkpoint: feed token ids (`input_ids`) directly")
    return f"""
# {name}

{intro}

## Load it

With hfgen installed (importing hfgen registers its classes with transformers' Auto classes):

```python
import hfgen  # noqa: F401
from transformers import {task.auto_class}{tokenizer_import}

{_load_lines(task.auto_class, name, has_tokenizer, remote=False)}
```

Without hfgen (only torch and transformers): the model code is saved beside the weights.

```python
from transformers import {task.auto_class}{tokenizer_import}

{_load_lines(task.auto_class, name, has_tokenizer, remote=True)}
{usage}
```

Replace `"{name}"` with the folder's path or its Hub repository id.

## Variant

Values that differ from the family's defaults are in bold (attention: `{attention_kind(config)}`).

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
            model-index): ``causal-lm`` (default), ``masked-lm``, ``span-corruption``, ``text-classification``,
            ``text2text-classification``.
        license: the Hub license id of the weights (hfgen itself is Apache-2.0).
        model_name: the title and the id shown in the loading snippets, e.g. the Hub repository id it is pushed
            to (default: the folder's name).
        has_tokenizer: whether a tokenizer ships with the folder (default: whether ``tokenizer_config.json`` is
            there). The snippets load one only when it does, and ``push_folder`` refuses a card that promises a
            tokenizer the folder lacks.

    Returns:
        The path of the written card.
    """
    output_dir = Path(output_dir)
    name = model_name or output_dir.resolve().name
    if has_tokenizer is None:
        has_tokenizer = (output_dir / "tokenizer_config.json").is_file()
    card = build_model_card(config, results, name, base_model=base_model, datasets=datasets,
                            dataset_name=dataset_name, task=task, license=license, has_tokenizer=has_tokenizer,
                            loss_curve=(output_dir / "loss_curve.png").is_file())
    path = output_dir / "README.md"
    card.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Pushing to the Hub
# ---------------------------------------------------------------------------------------------------------------

# What a push leaves out of a saved folder: Trainer checkpoints and logs, hidden and private files.
PUSH_IGNORE = ("checkpoint-*", "runs", "_*", ".*", "__pycache__", "*.pyc")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "tokenizer.model")
# Pipeline tags for the architectures a card can be written for without a task named (a folder pushed as it is).
_ARCHITECTURE_TASKS = {
    "ForCausalLM": "causal-lm",
    "ForMaskedLM": "masked-lm",
    "ForPreTraining": "masked-lm",
    "ForConditionalGeneration": "span-corruption",
    "ForSequenceClassification": "text-classification",
}


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it is a valid Hub model id (``name`` or ``namespace/name``), else a ``ValueError`` saying why.

    The rules are the Hub's (huggingface_hub's ``validate_repo_id``): 1-96 characters of letters, digits, ``-``,
    ``_`` and ``.``; not starting or ending with ``-`` or ``.``; no ``--`` or ``..``; not ending in ``.git``; at
    most one ``/``; and not a local path.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"The repo id must be a non-empty string like 'user/model-name', not {repo_id!r}.")
    if os.path.exists(repo_id) or repo_id.startswith(("/", ".", "~")):
        raise ValueError(f"The repo id {repo_id!r} is a local path; give a Hub id like 'user/model-name'.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid repo id {repo_id!r}: {error} Valid ids look like 'user/model-name' (letters, "
                         "digits, '-', '_', '.'; at most one '/'; 1-96 characters).") from None
    if repo_id.endswith(".git"):
        raise ValueError(f"Invalid repo id {repo_id!r}: it must not end with '.git'.")
    return repo_id


def _ignored(relative: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(part, pattern) for part in Path(relative).parts for pattern in PUSH_IGNORE)


def folder_files(folder: str | os.PathLike) -> list[str]:
    """The files of a saved folder that a push uploads (relative POSIX paths, sorted), without ``PUSH_IGNORE``."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not _ignored(relative):
            files.append(relative)
    return files


def _read_json(path: Path) -> dict:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object.")
    return data


def _module_problems(folder: Path, relative: str) -> list[str]:
    """Why the Python file ``relative`` would not load from the folder alone (empty if it would)."""
    import ast

    path = folder / relative
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as error:
        return [f"{relative}: does not parse ({error.msg}, line {error.lineno})"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            line = f"{relative}:{node.lineno}"
            if node.level > 1 or not node.module or "." in node.module:
                problems.append(f"{line}: 'from {'.' * node.level}{node.module or ''} import ...' reaches outside "
                                "the folder (only 'from .module import name' of a file beside it loads remotely)")
            elif not (path.parent / f"{node.module}.py").is_file():
                problems.append(f"{line}: imports .{node.module}, but {node.module}.py is not in the folder")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] == "hfgen":
                    problems.append(f"{relative}:{node.lineno}: imports {name}, which a user without hfgen "
                                    "installed does not have")
    return problems


def _defines(folder: Path, module_file: str, class_name: str) -> bool:
    import ast

    tree = ast.parse((folder / module_file).read_text())
    return any(isinstance(node, ast.ClassDef) and node.name == class_name for node in tree.body)


def _check_auto_map(folder: Path, auto_map: Mapping[str, Any], source: str) -> list[str]:
    problems = []
    for auto_class, references in auto_map.items():
        for reference in references if isinstance(references, list) else [references]:
            if reference is None:
                continue
            if "--" in reference:  # code kept in another repository: not this folder's to check
                continue
            module, _, class_name = reference.rpartition(".")
            if not (folder / f"{module}.py").is_file():
                problems.append(f"{source} maps {auto_class} to {reference}, but {module}.py is not in the folder")
            elif not _defines(folder, f"{module}.py", class_name):
                problems.append(f"{source} maps {auto_class} to {reference}, but {module}.py does not define "
                                f"{class_name}")
    return problems


def inspect_saved_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check that ``folder`` is a saved hfgen model that loads from the Hub without hfgen installed.

    Accepted: a transformers model (``config.json`` whose ``model_type`` is an hfgen family, with ``auto_map``, its
    model code and safetensors weights), a PEFT adapter (``adapter_config.json`` and ``adapter_model.safetensors``)
    and a diffusers pipeline or model of hfgen's (``model_index.json`` / ``config.json`` naming hfgen classes).
    Every Python file must import only files beside it (``from .x import y``) and never ``hfgen``; a model card that
    loads a tokenizer needs the tokenizer's files.

    Returns:
        ``{"kind": "model" | "adapter" | "pipeline", "config": dict}`` (the folder's ``config.json``,
        ``adapter_config.json`` or ``model_index.json``).

    Raises:
        ValueError: naming every problem found, before anything is uploaded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder: give the folder written by save_pretrained (or "
                         "pretrain's output_dir).")
    files = set(folder_files(folder))
    problems: list[str] = []
    if "adapter_config.json" in files:
        kind, config = "adapter", _read_json(folder / "adapter_config.json")
        if "adapter_model.safetensors" not in files:
            problems.append("adapter_config.json is there but adapter_model.safetensors is not")
        base = config.get("base_model_name_or_path")
        if not base:
            problems.append("adapter_config.json names no base_model_name_or_path, so nobody can load the adapter")
    elif "model_index.json" in files:
        kind, config = "pipeline", _read_json(folder / "model_index.json")
        name = config.get("_class_name")
        module, class_name = name if isinstance(name, list) else (None, name)
        if not str(class_name).startswith("HfGen"):
            raise ValueError(f"{folder} holds a {class_name} pipeline, not an hfgen one: push hfgen models only.")
        if module is None:
            problems.append("model_index.json names the pipeline class without its file, so it cannot load without "
                            "hfgen (save it with HfGenDiffusionPipeline.save_pretrained)")
        else:
            problems += _check_auto_map(folder, {"pipeline": f"{module}.{class_name}"}, "model_index.json")
        for component, entry in config.items():
            if component.startswith("_") or not isinstance(entry, list) or entry[0] is None:
                continue
            library, class_name = entry
            if library not in ("diffusers", "transformers") and not (folder / component).is_dir():
                problems.append(f"model_index.json lists the component {component}, but {component}/ is missing")
            elif library not in ("diffusers", "transformers"):
                problems += _check_auto_map(folder / component, {component: f"{library}.{class_name}"},
                                            f"model_index.json ({component})")
    elif "config.json" in files:
        kind, config = "model", _read_json(folder / "config.json")
        model_type = str(config.get("model_type", ""))
        class_name = str(config.get("_class_name", ""))
        if not (model_type.startswith("hfgen") or class_name.startswith("HfGen")):
            raise ValueError(f"{folder} is not a saved hfgen model: its config.json has model_type "
                             f"{model_type or None!r}{f' and _class_name {class_name!r}' if class_name else ''}. "
                             "Push a folder written by an hfgen model's save_pretrained.")
        weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
        if not weights:
            problems.append("no safetensors weights (model.safetensors or its shards) in the folder")
        if "model.safetensors.index.json" in files:
            shards = set(_read_json(folder / "model.safetensors.index.json").get("weight_map", {}).values())
            problems += [f"model.safetensors.index.json lists {shard}, which is missing"
                         for shard in sorted(shards - files)]
        auto_map = config.get("auto_map")
        if not auto_map:
            problems.append("config.json has no auto_map, so the model cannot load without hfgen installed (save it "
                            "with an hfgen class: they register for the Auto classes and copy their code)")
        else:
            problems += _check_auto_map(folder, auto_map, "config.json")
    else:
        raise ValueError(f"{folder} is not a saved hfgen model: it has no config.json, adapter_config.json or "
                         f"model_index.json (files: {', '.join(sorted(files)[:12]) or 'none'}).")
    for relative in sorted(f for f in files if f.endswith(".py")):
        problems += _module_problems(folder, relative)
    if "tokenizer_config.json" in files:
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        auto_map = tokenizer_config.get("auto_map")
        if auto_map:
            problems += _check_auto_map(folder, auto_map if isinstance(auto_map, dict) else
                                        {"AutoTokenizer": auto_map}, "tokenizer_config.json")
    if "README.md" in files:
        readme = (folder / "README.md").read_text()
        promises = "AutoTokenizer.from_pretrained(" in readme or "AutoProcessor.from_pretrained(" in readme
        has_tokenizer = "tokenizer_config.json" in files and any(
            f in files for f in TOKENIZER_FILES) or (kind == "pipeline" and "tokenizer" in config)
        if promises and not has_tokenizer:
            problems.append("README.md loads a tokenizer (AutoTokenizer.from_pretrained) but the folder has none "
                            "(tokenizer_config.json with tokenizer.json or a vocabulary): save the tokenizer into "
                            "the folder, or rewrite the card with write_model_card(..., has_tokenizer=False)")
    if problems:
        raise ValueError(f"{folder} cannot be pushed as code on the Hub:\n- " + "\n- ".join(problems))
    return {"kind": kind, "config": config}


def _card_for_folder(folder: Path, kind: str, config: Mapping[str, Any], repo_id: str) -> ModelCard:
    """A card for a folder pushed without one: built from its config (and ``all_results.json`` if there)."""
    results_path = folder / "all_results.json"
    results = _read_json(results_path) if results_path.is_file() else {}
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    if kind == "adapter":
        return build_adapter_card(config, repo_id, results=results, has_tokenizer=has_tokenizer)
    if kind == "pipeline":
        return build_pipeline_card(config, repo_id)
    from transformers import AutoConfig

    from . import models  # noqa: F401  (registers the hfgen configs with AutoConfig)

    model_config = AutoConfig.from_pretrained(folder)
    architecture = (config.get("architectures") or [""])[0]
    task = next((t for suffix, t in _ARCHITECTURE_TASKS.items() if architecture.endswith(suffix)), "causal-lm")
    return build_model_card(model_config, results, repo_id, task=task, has_tokenizer=has_tokenizer,
                            loss_curve=(folder / "loss_curve.png").is_file())


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


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload a saved hfgen folder to the Hub as one commit, after checking it loads there without hfgen.

    Checks first (``inspect_saved_folder`` and ``check_repo_id``; a ``ValueError`` naming the problem before
    anything is sent), then creates the repository if needed (``private`` applies to a new one), creates the
    branch ``revision`` from ``main`` if it does not exist, and commits every file but ``PUSH_IGNORE``. A folder
    without ``README.md`` gets a model card built from its config (and ``all_results.json``), added to the commit
    only: the folder is not changed.

    Args:
        folder: the folder written by ``save_pretrained`` (a model, a PEFT adapter or a diffusers pipeline).
        repo_id: ``namespace/name`` (or ``name``, in the token's namespace).
        private: make a new repository private.
        revision: the branch to commit to (default ``main``); created if missing.
        commit_message: the commit's title (default ``"Upload <kind> with hfgen"``).
        token: the Hub token (default: huggingface_hub's, e.g. ``HF_TOKEN``).
        endpoint: the Hub URL (default: ``HF_ENDPOINT``, else huggingface.co).

    Returns:
        huggingface_hub's ``CommitInfo`` (``.oid`` is the commit id, a revision to load).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    check_repo_id(repo_id)
    if revision is not None and (not isinstance(revision, str) or not revision.strip() or revision.startswith(
            "refs/pr/") and not create_pr):
        raise ValueError(f"Invalid revision {revision!r}: give a branch name such as 'main' or 'v2'.")
    if commit_message is not None and not commit_message.strip():
        raise ValueError("The commit message is empty: give a one-line summary or leave it out for the default.")
    folder = Path(folder)
    found = inspect_saved_folder(folder)
    operations = [CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(folder / relative))
                  for relative in folder_files(folder)]
    if not (folder / "README.md").is_file():
        card = _card_for_folder(folder, found["kind"], found["config"], repo_id)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision not in (None, "main") and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.create_commit(
        repo_id, operations, commit_message=commit_message or f"Upload {found['kind']} with hfgen",
        commit_description=commit_description, revision=revision, create_pr=create_pr)


def push_to_hub(
    model: Any,
    repo_id: str,
    tokenizer: Any = None,
    *,
    results: Mapping[str, Any] | None = None,
    task: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    dataset_name: str = DEFAULT_DATASET_NAME,
    license: str | None = DEFAULT_LICENSE,
    **push_kwargs: Any,
) -> Any:
    """Save ``model`` (an hfgen model, a PEFT model on one, or an hfgen diffusers pipeline) with ``tokenizer`` and
    an hfgen model card into a temporary folder and push it with ``push_folder`` (whose keyword arguments
    ``private``, ``revision``, ``commit_message``, ``token``, ``endpoint`` pass through).

    transformers' own ``model.push_to_hub(repo_id)`` also works on hfgen models (same files, same code); this
    one writes hfgen's card (variant tags, loading with and without hfgen, training numbers) instead of the
    generic one, and checks the folder before uploading.

    Returns:
        huggingface_hub's ``CommitInfo``.
    """
    import tempfile

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="hfgen-push-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        results = dict(results or {})
        if (folder / "adapter_config.json").is_file():
            base_config = getattr(getattr(model, "base_model", None), "model", None)
            card = build_adapter_card(_read_json(folder / "adapter_config.json"), repo_id, results=results,
                                      base_config=getattr(base_config, "config", None),
                                      has_tokenizer=tokenizer is not None, license=license)
        elif (folder / "model_index.json").is_file():
            card = build_pipeline_card(_read_json(folder / "model_index.json"), repo_id, license=license)
        else:
            config = model.config
            architecture = type(model).__name__
            task = task or next((t for suffix, t in _ARCHITECTURE_TASKS.items() if architecture.endswith(suffix)),
                                "causal-lm")
            card = build_model_card(config, results, repo_id, base_model=base_model, datasets=datasets,
                                    dataset_name=dataset_name, task=task, license=license,
                                    has_tokenizer=tokenizer is not None)
        card.save(folder / "README.md")
        return push_folder(folder, repo_id, **push_kwargs)


def push_training_output(trainer: Any, folder: str | os.PathLike | None = None,
                         commit_message: str = "End of training (hfgen)") -> str:
    """Push a finished recipe's output folder (card and loss curve included) the way ``TrainingArguments`` asks:
    to ``trainer.hub_model_id`` with ``hub_private_repo``, ``hub_revision`` and ``hub_token``. Call it on the main
    process after the folder is complete, having saved with ``trainer.save_model(_internal_call=True)`` (a plain
    ``save_model()`` with ``push_to_hub`` set uploads at once, with Trainer's generic card). Returns the commit id.
    """
    args = trainer.args
    if getattr(trainer, "push_in_progress", None) is not None:  # checkpoints Trainer is still uploading
        trainer.push_in_progress.wait_until_done()
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    commit = push_folder(folder or args.output_dir, repo_id, private=args.hub_private_repo,
                         revision=args.hub_revision, token=args.hub_token, commit_message=commit_message)
    print(f"[hfgen] pushed {folder or args.output_dir} to {repo_id}: commit {commit.oid}", flush=True)
    return commit.oid
