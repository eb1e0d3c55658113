"""Pushing saved hfgen folders to the Hugging Face Hub: checks that a folder loads there without hfgen (before
anything is sent), ``push_folder`` / ``push_to_hub`` / ``push_training_output``, and the model cards (built in
``hfgen.models.model_card``, which travels with the model code; re-exported here)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from .models.model_card import (  # noqa: F401  (the card API, re-exported)
    CARD_TASKS,
    DEFAULT_DATASET_NAME,
    DEFAULT_LICENSE,
    RESULT_LABELS,
    VARIANT_DETAILS,
    VARIANT_TAGS,
    CardTask,
    attention_kind,
    build_adapter_card,
    build_model_card,
    build_pipeline_card,
    task_for,
    variant_tags,
    write_model_card,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Pushing to the Hub
# ---------------------------------------------------------------------------------------------------------------

# What a push leaves out of a saved folder: Trainer checkpoints and logs, hidden and private files.
PUSH_IGNORE = ("checkpoint-*", "runs", "_*", ".*", "__pycache__", "*.pyc")
# What a push uploads at all: weights as safetensors, JSON, code, cards, plots and tokenizer files. Never a pickle
# (Trainer's training_args.bin, optimizer.pt, ...): loading one runs whatever code it names.
PUSH_SUFFIXES = (".safetensors", ".json", ".py", ".md", ".txt", ".png", ".jinja", ".model", ".yaml")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "tokenizer.model")


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


def check_push_arguments(training_args: Any) -> None:
    """Before a recipe trains with ``--push_to_hub``: a bad repo id fails now, not after training; and Trainer's
    own uploads, which include its pickled ``training_args.bin`` (and, for ``checkpoint`` / ``all_checkpoints``,
    optimizer states), are turned off: hfgen pushes the finished folder itself (``push_training_output``).
    ``hub_strategy`` ``every_save`` (transformers' default) becomes ``end``; the checkpoint strategies are refused.
    """
    from transformers.trainer_utils import HubStrategy

    if not training_args.push_to_hub:
        return
    check_repo_id(training_args.hub_model_id or Path(training_args.output_dir).absolute().name)
    if training_args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        raise ValueError(f"--hub_strategy {training_args.hub_strategy.value} uploads Trainer checkpoints, whose "
                         "optimizer and training-argument files are pickles (loading one runs code). hfgen pushes "
                         "the finished folder (safetensors, JSON, code, card): use --hub_strategy end.")
    if training_args.hub_strategy != HubStrategy.END:
        logger.info("hub_strategy %s -> end: hfgen pushes the finished folder, without Trainer's pickles",
                    training_args.hub_strategy.value)
        training_args.hub_strategy = HubStrategy.END


def _ignored(relative: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(part, pattern) for part in Path(relative).parts for pattern in PUSH_IGNORE)


def folder_files(folder: str | os.PathLike) -> list[str]:
    """The files of a saved folder that a push uploads (relative POSIX paths, sorted): those ending in one of
    ``PUSH_SUFFIXES``, without ``PUSH_IGNORE``."""
    return [relative for relative in _all_files(folder) if relative.endswith(PUSH_SUFFIXES)]


def _all_files(folder: str | os.PathLike) -> list[str]:
    folder = Path(folder)
    return [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*"))
            if path.is_file() and not _ignored(path.relative_to(folder).as_posix())]


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
    # Not transformers.dynamic_module_utils: get_relative_imports is a regex without line numbers that reads
    # 'from ..x' and 'from .sub.x' as siblings, and check_imports asks whether a package imports in *this*
    # environment, where hfgen is installed, so it cannot flag the 'import hfgen' a user without it fails on.
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
    kind, config, problems = _inspect_kind(folder, files)
    for relative in sorted(f for f in files if f.endswith(".py")):
        problems += _module_problems(folder, relative)
    problems += _tokenizer_problems(folder, files)
    problems += _card_problems(folder, files, kind, config)
    if problems:
        raise ValueError(f"{folder} cannot be pushed as code on the Hub:\n- " + "\n- ".join(problems))
    return {"kind": kind, "config": config}


def _inspect_kind(folder: Path, files: set[str]) -> tuple[str, dict, list[str]]:
    """The folder's kind (by the first of its config files found: adapter, pipeline, model), that config, and the
    problems of that kind; a ``ValueError`` for a folder that is no hfgen save at all."""
    for config_file, kind, kind_problems in _KINDS:
        if config_file in files:
            config = _read_json(folder / config_file)
            return kind, config, kind_problems(folder, files, config)
    raise ValueError(f"{folder} is not a saved hfgen model: it has no config.json, adapter_config.json or "
                     f"model_index.json (files: {', '.join(sorted(files)[:12]) or 'none'}).")


def _adapter_problems(folder: Path, files: set[str], config: Mapping[str, Any]) -> list[str]:
    problems = []
    if "adapter_model.safetensors" not in files:
        problems.append("adapter_config.json is there but adapter_model.safetensors is not")
    if not config.get("base_model_name_or_path"):
        problems.append("adapter_config.json names no base_model_name_or_path, so nobody can load the adapter")
    return problems


def _pipeline_problems(folder: Path, files: set[str], config: Mapping[str, Any]) -> list[str]:
    """The pipeline's own file, and each custom component's subfolder and file (library components load from
    their library)."""
    name = config.get("_class_name")
    module, class_name = name if isinstance(name, list) else (None, name)
    if not str(class_name).startswith("HfGen"):
        raise ValueError(f"{folder} holds a {class_name} pipeline, not an hfgen one: push hfgen models only.")
    if module is None:
        problems = ["model_index.json names the pipeline class without its file, so it cannot load without hfgen "
                    "(save it with HfGenDiffusionPipeline.save_pretrained)"]
    else:
        problems = _check_auto_map(folder, {"pipeline": f"{module}.{class_name}"}, "model_index.json")
    for component, entry in config.items():
        if component.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library, class_name = entry
        if library in ("diffusers", "transformers"):
            continue
        if not (folder / component).is_dir():
            problems.append(f"model_index.json lists the component {component}, but {component}/ is missing")
        else:
            problems += _check_auto_map(folder / component, {component: f"{library}.{class_name}"},
                                        f"model_index.json ({component})")
    return problems


def _model_problems(folder: Path, files: set[str], config: Mapping[str, Any]) -> list[str]:
    """An hfgen model (transformers family or diffusers model): its safetensors weights and shards, and the
    ``auto_map`` that lets it load without hfgen."""
    model_type = str(config.get("model_type", ""))
    class_name = str(config.get("_class_name", ""))
    if not (model_type.startswith("hfgen") or class_name.startswith("HfGen")):
        raise ValueError(f"{folder} is not a saved hfgen model: its config.json has model_type "
                         f"{model_type or None!r}{f' and _class_name {class_name!r}' if class_name else ''}. "
                         "Push a folder written by an hfgen model's save_pretrained.")
    problems = []
    if not any(f.endswith(".safetensors") and "/" not in f for f in files):
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
    return problems


# A folder's kind is that of the first of these config files it has.
_KINDS = (("adapter_config.json", "adapter", _adapter_problems),
          ("model_index.json", "pipeline", _pipeline_problems),
          ("config.json", "model", _model_problems))


def _tokenizer_problems(folder: Path, files: set[str]) -> list[str]:
    """A tokenizer that is code on the Hub must have that code in the folder."""
    if "tokenizer_config.json" not in files:
        return []
    auto_map = _read_json(folder / "tokenizer_config.json").get("auto_map")
    if not auto_map:
        return []
    return _check_auto_map(folder, auto_map if isinstance(auto_map, dict) else {"AutoTokenizer": auto_map},
                           "tokenizer_config.json")


def _card_problems(folder: Path, files: set[str], kind: str, config: Mapping[str, Any]) -> list[str]:
    """A model card whose usage snippet loads a tokenizer or a processor needs its files in the folder."""
    if "README.md" not in files:
        return []
    readme = (folder / "README.md").read_text()
    problems = []
    promises = "AutoTokenizer.from_pretrained(" in readme or "AutoProcessor.from_pretrained(" in readme
    has_tokenizer = "tokenizer_config.json" in files and any(
        f in files for f in TOKENIZER_FILES) or (kind == "pipeline" and "tokenizer" in config)
    if promises and not has_tokenizer:
        problems.append("README.md loads a tokenizer (AutoTokenizer.from_pretrained) but the folder has none "
                        "(tokenizer_config.json with tokenizer.json or a vocabulary): save the tokenizer into "
                        "the folder, or rewrite the card with write_model_card(..., has_tokenizer=False)")
    if "AutoProcessor.from_pretrained(" in readme and "processor_config.json" not in files:
        problems.append("README.md loads a processor (AutoProcessor.from_pretrained) but the folder has no "
                        "processor_config.json: save the processor into the folder (processor.save_pretrained), "
                        "or rewrite the card with write_model_card(..., has_tokenizer=False)")
    return problems


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
    task = task_for(model_config.model_type, architecture)
    if CARD_TASKS[task].preprocessor == "AutoProcessor":
        has_tokenizer = (folder / "processor_config.json").is_file()
    return build_model_card(model_config, results, repo_id, task=task, has_tokenizer=has_tokenizer,
                            loss_curve=(folder / "loss_curve.png").is_file())


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
    extra_files: Mapping[str, bytes] | None = None,
) -> Any:
    """Upload a saved hfgen folder to the Hub as one commit, after checking it loads there without hfgen.

    Checks first (``inspect_saved_folder`` and ``check_repo_id``; a ``ValueError`` naming the problem before
    anything is sent), then creates the repository if needed (``private`` applies to a new one), creates the
    branch ``revision`` from ``main`` if it does not exist, and commits the files ``folder_files`` lists
    (safetensors, JSON, code, cards, plots, tokenizer files; never a pickle: anything else is named in a warning). A folder
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
        extra_files: ``{path in the repository: content}`` added to the commit (the folder is not changed).

    Returns:
        huggingface_hub's ``CommitInfo`` (``.oid`` is the commit id, a revision to load).
    """
    from huggingface_hub import HfApi

    _check_commit_arguments(repo_id, revision, commit_message, create_pr)
    folder = Path(folder)
    found = inspect_saved_folder(folder)
    operations = _commit_operations(folder, found, repo_id, extra_files)
    # create_commit rather than upload_folder: the commit also carries files that are not in the folder (the
    # generated card, Trainer's arguments as JSON) and the folder must stay unchanged; upload_folder only sends
    # files on disk, so it would need a staged copy, and it creates neither the repository nor the branch.
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main") and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id, operations, commit_message=commit_message or f"Upload {found['kind']} with hfgen",
            commit_description=commit_description, revision=revision, create_pr=create_pr)
    except Exception as error:
        failure = push_failure(error, api.endpoint, repo_id)
        if failure is None:
            raise
        raise failure from error


def _check_commit_arguments(repo_id: str, revision: str | None, commit_message: str | None,
                            create_pr: bool) -> None:
    check_repo_id(repo_id)
    if revision is not None and (not isinstance(revision, str) or not revision.strip() or revision.startswith(
            "refs/pr/") and not create_pr):
        raise ValueError(f"Invalid revision {revision!r}: give a branch name such as 'main' or 'v2'.")
    if commit_message is not None and not commit_message.strip():
        raise ValueError("The commit message is empty: give a one-line summary or leave it out for the default.")


def _commit_operations(folder: Path, found: Mapping[str, Any], repo_id: str,
                       extra_files: Mapping[str, bytes] | None) -> list:
    """The files ``folder_files`` lists (what else is there is named in a warning), ``extra_files``, and a card
    built from the config when the folder has none."""
    from huggingface_hub import CommitOperationAdd

    uploaded = folder_files(folder)
    operations = [CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(folder / relative))
                  for relative in uploaded]
    left_out = sorted(set(_all_files(folder)) - set(uploaded))
    if left_out:
        logger.warning("not uploaded (only %s files are): %s", ", ".join(PUSH_SUFFIXES), ", ".join(left_out))
    for path_in_repo, content in (extra_files or {}).items():
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=content))
    if not (folder / "README.md").is_file():
        card = _card_for_folder(folder, found["kind"], found["config"], repo_id)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    return operations


class PushError(ValueError):
    """A push the Hub refused or could not receive; the message says what failed and what to do. Nothing was
    committed (a push is one commit)."""


def push_failure(error: BaseException, endpoint: str, repo_id: str) -> PushError | None:
    """``error`` from huggingface_hub as a one-line :class:`PushError`, or ``None`` for anything not about
    reaching or logging in to the Hub."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return PushError("Cannot push: offline mode is on (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to push.")
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            return PushError(f"The Hub at {endpoint} refused the push to {repo_id!r} (HTTP {status}: not logged in, "
                             "or the token cannot write there). Log in with `hf auth login`, or set HF_TOKEN / "
                             "pass --token with a write token for that namespace.")
        message = (getattr(error, "server_message", None) or str(error)).splitlines()[0]
        return PushError(f"The Hub at {endpoint} refused the push to {repo_id!r} (HTTP {status}): {message}")
    # httpx (huggingface_hub's client) reports network failures as TransportError subclasses; requests as OSError.
    if isinstance(error, OSError) or any(cls.__name__ == "TransportError" for cls in type(error).__mro__):
        return PushError(f"Cannot reach the Hub at {endpoint} ({type(error).__name__}: {error}). Check the network, "
                         "or HF_ENDPOINT if you use another Hub.")
    return None


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

    transformers' own ``model.push_to_hub(repo_id)`` also works on hfgen models (same files, same code) and
    uploads hfgen's card too (``hfgen.models.model_card.HfGenHubCardMixin``), without training numbers; this one
    adds ``results`` (the model-index), ``base_model`` and ``datasets`` to the card, pushes the tokenizer (for
    hfgen_vlm: the processor) in the same commit, and checks the folder before uploading.

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
            task = task or task_for(config.model_type, architecture)
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
    # The training arguments as JSON, in place of Trainer's pickled training_args.bin (which push_folder leaves out).
    commit = push_folder(folder or args.output_dir, repo_id, private=args.hub_private_repo,
                         revision=args.hub_revision, token=args.hub_token, commit_message=commit_message,
                         extra_files={"training_args.json": args.to_json_string().encode()})
    logger.info("pushed %s to %s: commit %s", folder or args.output_dir, repo_id, commit.oid)
    return commit.oid
