"""Everything hfgen does to other libraries beyond their public API, in one place, applied only when asked.

``import hfgen`` changes nothing in transformers, peft, trl, diffusers or accelerate: it registers hfgen's own
classes with transformers' Auto classes (their public ``register`` API) and nothing else. What follows needs more
than a public API; each entry says what it touches, why no public API does the job, and the upstream versions it
was written for:

- :func:`register_peft_target_modules` -- adds entries for hfgen's model types to PEFT's default target-module
  tables (``peft.utils.TRANSFORMERS_MODELS_TO_*``, exported by ``peft.utils`` but with no registration function),
  so ``LoraConfig()`` without ``target_modules`` works on hfgen models. Entries for other model types are never
  touched. Without it, pass ``target_modules=default_target_modules(model)``
  (:mod:`hfgen.training.peft_defaults`), which only reads the tables.
- :func:`use_plain_trl_logprobs` -- swaps TRL's fused LM-head log-prob function (``trl.trainer.utils.
  _ChunkedLogProbFunction``) for :class:`hfgen.training.trl_cpu.PlainLogProbFunction` on machines without CUDA,
  where TRL's tile-by-tile fold is several times slower. TRL has no option for it. Affects every TRL trainer in the
  process; the recipes call it, a library user decides.
- :data:`PRIVATE_HOOKS` -- private methods of transformers / diffusers base classes that hfgen's *own* subclasses
  override (nothing of the base classes is replaced): the preallocated KV cache and RetNet's state cache hook into
  ``generate``'s cache set-up, and ``push_to_hub`` writes hfgen's model card through the upload hook. Nothing
  outside hfgen's classes changes; :func:`check_private_hooks` tells when upstream renamed or re-shaped one of them
  (``tests/test_compat.py`` runs it, so a new upstream release fails loudly in ``make test-latest``).

The two functions check the installed version against the range they were written for (:data:`WRITTEN_FOR`):
outside it they refuse, naming the package, the installed version and the range, rather than patch a shape they do
not know. The private hooks live in model files that travel to the Hub without hfgen, so they are checked by shape
instead, against whatever transformers / diffusers is installed.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
from collections.abc import Iterable
from importlib.metadata import version

from packaging.specifiers import SpecifierSet

logger = logging.getLogger(__name__)

# package -> the versions the code below was written for and tested with (widen only after `make test-latest`).
WRITTEN_FOR = {"peft": ">=0.22,<0.23", "trl": ">=1.16,<1.17"}

# (upstream class, private method, its parameter names, the hfgen classes that override it).
PRIVATE_HOOKS = [
    ("transformers.generation.utils.GenerationMixin", "_prepare_cache_for_generation",
     ("self", "generation_config", "model_kwargs", "generation_mode", "batch_size", "max_cache_length"),
     ("hfgen.models.kv_cache.PreallocatedCacheMixin", "hfgen.models.modeling_hfgen_retnet.HfGenRetNetForCausalLM")),
    ("transformers.generation.utils.GenerationMixin", "_supports_default_dynamic_cache", ("cls",),
     ("hfgen.models.modeling_hfgen_retnet.HfGenRetNetPreTrainedModel",)),
    ("transformers.utils.hub.PushToHubMixin", "_upload_modified_files",
     ("self", "working_dir", "repo_id", "files_timestamps", "commit_message", "token", "create_pr", "revision",
      "commit_description"),
     ("hfgen.models.model_card.HfGenHubCardMixin",)),
    ("diffusers.utils.hub_utils.PushToHubMixin", "_upload_folder",
     ("self", "working_dir", "repo_id", "token", "commit_message", "create_pr", "subfolder"),
     ("hfgen.diffusion.pipeline_hfgen_diffusion.HfGenDiffusionPipeline",)),
]


class UnsupportedUpstreamVersion(RuntimeError):
    """An hfgen compatibility shim was asked to touch a library version it was not written for."""


def require_written_for(package: str, what: str) -> str:
    """The installed version of ``package``; raises :class:`UnsupportedUpstreamVersion` when it lies outside
    ``WRITTEN_FOR[package]``."""
    installed = version(package)
    if installed not in SpecifierSet(WRITTEN_FOR[package]):
        raise UnsupportedUpstreamVersion(
            f"{what} was written for {package}{WRITTEN_FOR[package]}; installed: {package} {installed}. "
            f"Install a version in that range (the project's lock: requirements/lock.txt) or an hfgen release "
            f"that supports {package} {installed}.")
    return installed


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_private_hooks() -> list[str]:
    """Every way :data:`PRIVATE_HOOKS` no longer matches upstream (an empty list when all match): a method that
    is gone, whose parameter names changed, or that an hfgen class no longer overrides."""
    problems = []
    for upstream, method, parameters, overriders in PRIVATE_HOOKS:
        function = getattr(_resolve(upstream), method, None)
        if function is None:
            problems.append(f"{upstream}.{method} no longer exists")
            continue
        found = tuple(inspect.signature(inspect.unwrap(getattr(function, "__func__", function))).parameters)
        if found != parameters:
            problems.append(f"{upstream}.{method} now takes {found}, hfgen was written for {parameters}")
        for overrider in overriders:
            if method not in vars(_resolve(overrider)):
                problems.append(f"{overrider} no longer overrides {method}")
    return problems


# ----------------------------------------------------------------------------------------------------------- PEFT

def register_peft_target_modules(model_types: Iterable[str] | None = None) -> list[str]:
    """Give hfgen's model types PEFT's default target modules, so ``LoraConfig()``, ``IA3Config()`` & co. without
    ``target_modules`` work on them. Each type gets its template's entries (``PEFT_TEMPLATES`` in
    :mod:`hfgen.training.peft_defaults`: Llama's names for the decoder-based families, BERT's for the encoder) in
    every PEFT table that has the template. Entries already there are kept (a user's own registration wins); no
    other model type's entry changes. Returns the names of the tables that gained entries.
    """
    from peft.utils import constants

    from .training.peft_defaults import PEFT_TEMPLATES

    require_written_for("peft", "hfgen.compat.register_peft_target_modules")
    filled = []
    for name, table in peft_target_tables(constants).items():
        added = False
        for model_type in model_types or PEFT_TEMPLATES:
            template = PEFT_TEMPLATES[model_type]
            if template in table and model_type not in table:
                table[model_type] = copy.deepcopy(table[template])
                added = True
        if added:
            filled.append(name)
    return filled


def peft_target_tables(constants) -> dict[str, dict]:
    """PEFT's tables of default target modules by model type (``TRANSFORMERS_MODELS_TO_*_MAPPING``)."""
    tables = {name: table for name, table in vars(constants).items()
              if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict)}
    if "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING" not in tables:
        raise UnsupportedUpstreamVersion("peft.utils.constants has no TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_"
                                         "MAPPING any more: PEFT changed how default target modules are found.")
    return tables


# ------------------------------------------------------------------------------------------------------------ TRL

def use_plain_trl_logprobs(force: bool = False) -> bool:
    """On a machine without CUDA (or with ``force``), make TRL's fused LM head use
    :class:`hfgen.training.trl_cpu.PlainLogProbFunction` (the same outputs from the full logits; see that module).
    Idempotent; returns whether the plain function is in use. Call it before ``trainer.train()``."""
    import torch
    import trl.trainer.utils as trl_utils

    from .training.trl_cpu import PlainLogProbFunction

    require_written_for("trl", "hfgen.compat.use_plain_trl_logprobs")
    if not hasattr(trl_utils, "_ChunkedLogProbFunction"):
        raise UnsupportedUpstreamVersion("trl.trainer.utils._ChunkedLogProbFunction is gone: TRL changed how its "
                                         "fused LM head is computed.")
    if force or not torch.cuda.is_available():
        trl_utils._ChunkedLogProbFunction = PlainLogProbFunction
        logger.info("TRL's fused LM head now uses hfgen's PlainLogProbFunction (no CUDA).")
    return trl_utils._ChunkedLogProbFunction is PlainLogProbFunction
