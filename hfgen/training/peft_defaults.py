"""PEFT defaults for the hfgen model types, and a target-module check with a useful message.

PEFT 0.21 knows default target modules only for model types it lists (``TRANSFORMERS_MODELS_TO_*_MAPPING`` in
``peft.utils.constants``); for any other type ``LoraConfig()`` without ``target_modules`` fails. Each hfgen family
keeps the module names of the architecture it mirrors, so each gets that architecture's defaults, for every PEFT
method that has an entry for it: the decoder, the encoder-decoder and RetNet build on ``HfGenAttention``
(``q_proj k_proj v_proj o_proj``) and ``HfGenMLP`` (``gate_proj up_proj down_proj``) -- Llama's names; the encoder
keeps BERT's (``query key value``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``).
Registration is by model-type string, so a family needs no import here (and ``hfgen/models`` never imports PEFT).

``register_peft_defaults()`` runs on ``import hfgen``; it also repairs PEFT 0.21's prompt-learning generation under
transformers >= 5.24 (see :func:`patch_peft_generation_cache`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

from torch import nn

# hfgen model type -> the PEFT model type whose module names it shares. Registered whether or not the family's
# code is present: a mapping entry for a type that is never loaded costs nothing.
PEFT_TEMPLATES = {"hfgen_decoder": "llama", "hfgen_seq2seq": "llama", "hfgen_retnet": "llama",
                  "hfgen_encoder": "bert"}
HFGEN_MODEL_TYPES = tuple(PEFT_TEMPLATES)

_registered = False


def register_peft_defaults(model_types: Iterable[str] = HFGEN_MODEL_TYPES) -> list[str]:
    """Give each of ``model_types`` the default modules of its template type (``PEFT_TEMPLATES``) in every PEFT
    target-module mapping that has an entry for that template (for Llama: LoRA ``q_proj, v_proj``; IA3 ``k_proj,
    v_proj, down_proj`` with ``down_proj`` feed-forward; for BERT: LoRA ``query, value``; ...).

    Entries already present are left alone (a user's own registration wins). Also applies
    :func:`patch_peft_generation_cache` (prompt-learning generation under transformers >= 5.24). Returns the names
    of the mappings that were filled; an empty list when PEFT is not installed.
    """
    global _registered
    try:
        from peft.utils import constants
    except ImportError:  # PEFT is a dependency, but hfgen's models work without it
        return []
    filled = []
    for name in dir(constants):
        mapping = getattr(constants, name)
        if not (name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(mapping, dict)):
            continue
        touched = False
        for model_type in model_types:
            template = PEFT_TEMPLATES.get(model_type, "llama")
            if template in mapping and model_type not in mapping:
                mapping[model_type] = copy.deepcopy(mapping[template])
                touched = True
        if touched:
            filled.append(name)
    patch_peft_generation_cache()
    _registered = True
    return filled


def _target_names(target_modules) -> list[str]:
    if target_modules is None:
        return []
    if isinstance(target_modules, str):
        return [target_modules]
    return list(target_modules)


def check_peft_targets(model: nn.Module, peft_config) -> None:
    """Raise a ``ValueError`` when ``peft_config.target_modules`` match no module of ``model``, naming the leaf
    module names that could be targeted -- PEFT's own error names only what was asked for.

    ``"all-linear"`` and configs without ``target_modules`` (defaults, prompt-learning methods) pass unchecked.
    A string target is a regular expression matched against full module names (PEFT's rule); a list holds
    module names matched as a suffix on a ``.`` boundary.
    """
    targets = getattr(peft_config, "target_modules", None)
    if targets is None or targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        if any(re.fullmatch(targets, name) for name in names):
            return
        unmatched = [targets]
    else:
        unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
        if len(unmatched) < len(set(targets)):
            return  # PEFT needs at least one to match; the others may be absent on purpose (e.g. "gate_proj")
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if name and isinstance(module, (nn.Linear, nn.Embedding)) and not name.rsplit(".", 1)[-1].isdigit()})
    raise ValueError(
        f"PEFT target_modules {sorted(map(str, unmatched))} match no module of {type(model).__name__}. "
        f"Linear and embedding module names it has: {leaves}. Use some of those, 'all-linear', or leave "
        f"target_modules unset for the defaults of model type {getattr(model.config, 'model_type', '?')!r}."
    )


def _rename_cache_for_peft(prepare):
    """Wrap a base model's ``prepare_inputs_for_generation`` so that the cache it returns is under the name PEFT
    0.21 reads (``past_key_values``) rather than transformers >= 5.24's ``cache``."""

    def prepare_inputs(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    prepare_inputs._hfgen_renames_cache = True
    return prepare_inputs


def patch_peft_generation_cache() -> bool:
    """Make PEFT 0.21's prompt-learning generation see the KV cache under transformers >= 5.24.

    transformers 5.24 renamed the cache argument of ``forward`` and ``prepare_inputs_for_generation`` from
    ``past_key_values`` to ``cache``; PEFT 0.21's ``PeftModelForCausalLM.prepare_inputs_for_generation`` still
    looks for ``past_key_values``. It then never sees the cache, injects the virtual-token prefix under the old
    name at every step, and the model -- given both names -- keeps ``cache`` and drops the prefix: prefix tuning
    generates as if untrained (transformers' own Llama included). Renaming the base model's answer back lets
    PEFT's logic run as written; the result goes to the model under ``cache`` again. Only prompt-learning adapters
    (prefix / prompt tuning, ...) are touched; a no-op when the names already agree. Returns whether the patch is
    in place.
    """
    try:
        from peft.peft_model import PeftModelForCausalLM
    except ImportError:
        return False
    original = PeftModelForCausalLM.prepare_inputs_for_generation
    if getattr(original, "_hfgen_patched", False):
        return True

    def prepare_inputs_for_generation(self, *args, **kwargs):
        if not self.active_peft_config.is_prompt_learning:
            return original(self, *args, **kwargs)  # LoRA & co. never look at the cache: nothing to repair
        base = self.base_model_prepare_inputs_for_generation
        if not getattr(base, "_hfgen_renames_cache", False):
            self.base_model_prepare_inputs_for_generation = _rename_cache_for_peft(base)
        inputs = original(self, *args, **kwargs)
        # Hand the model the name generate() itself uses, so models whose forward knows only ``cache`` work too.
        if "past_key_values" in inputs and "cache" not in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    prepare_inputs_for_generation._hfgen_patched = True
    prepare_inputs_for_generation.__doc__ = original.__doc__
    PeftModelForCausalLM.prepare_inputs_for_generation = prepare_inputs_for_generation
    return True
