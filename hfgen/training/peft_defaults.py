"""PEFT defaults for the hfgen model types, and a target-module check with a useful message.

PEFT knows default target modules only for the model types it lists (``TRANSFORMERS_MODELS_TO_*_MAPPING`` in
``peft.utils``); for any other type ``LoraConfig()`` without ``target_modules`` fails. Each hfgen family keeps the
module names of the architecture it mirrors, so each takes that architecture's defaults (``PEFT_TEMPLATES``): the
decoder-based families (decoder, encoder-decoder, RetNet, ViT, VLM, Gato) build on ``HfGenAttention``
(``q_proj k_proj v_proj o_proj``) and ``HfGenMLP`` (``gate_proj up_proj down_proj``) -- Llama's names; the encoder
keeps BERT's (``query key value``, ``attention.output.dense``, ...).

Two ways to use them: :func:`default_target_modules` reads PEFT's tables and returns the names to pass as
``target_modules`` (public API only); :func:`hfgen.compat.register_peft_target_modules` adds the hfgen types to
PEFT's tables so ``LoraConfig()`` works as for Llama. Nothing here runs on ``import hfgen``.

Mixture-of-experts weights are 3D parameters (transformers' experts layout), not ``nn.Linear`` modules: no module
name and not ``"all-linear"`` reaches them; :func:`expert_target_parameters` gives PEFT's ``target_parameters``.
"""

from __future__ import annotations

import re

from torch import nn

# hfgen model type -> the PEFT model type whose module names it shares.
PEFT_TEMPLATES = {"hfgen_decoder": "llama", "hfgen_seq2seq": "llama", "hfgen_retnet": "llama", "hfgen_vit": "llama",
                  "hfgen_vlm": "llama", "hfgen_gato": "llama", "hfgen_encoder": "bert"}
HFGEN_MODEL_TYPES = tuple(PEFT_TEMPLATES)


def default_target_modules(model: nn.Module, method: str = "lora") -> list[str]:
    """The module names PEFT's ``method`` (``"lora"``, ``"ia3"``, ``"loha"``, ...) adapts by default in a model of
    ``model``'s type: its own entry in PEFT's table, else its hfgen template's (Llama's or BERT's). For
    ``LoraConfig(target_modules=default_target_modules(model))`` without registering anything."""
    from peft.utils import constants

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    table_name = f"TRANSFORMERS_MODELS_TO_{method.upper()}_TARGET_MODULES_MAPPING"
    table = getattr(constants, table_name, None)
    if not isinstance(table, dict):
        methods = sorted(name.removeprefix("TRANSFORMERS_MODELS_TO_").removesuffix("_TARGET_MODULES_MAPPING").lower()
                         for name in vars(constants) if name.endswith("_TARGET_MODULES_MAPPING"))
        raise ValueError(f"method={method!r} has no default target modules in PEFT; valid: {methods}.")
    for key in (model_type, PEFT_TEMPLATES.get(model_type)):
        if key in table:
            return list(table[key])
    raise ValueError(f"PEFT has no default {method} target modules for model_type={model_type!r}; hfgen knows "
                     f"{sorted(PEFT_TEMPLATES)}. Pass target_modules yourself (e.g. 'all-linear').")


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
    experts = expert_target_parameters(model)
    hint = (f" Its mixture-of-experts weights are 3D parameters, not modules (so neither a name nor 'all-linear' "
            f"reaches them): adapt them with target_parameters={experts}." if experts else "")
    raise ValueError(
        f"PEFT target_modules {sorted(map(str, unmatched))} match no module of {type(model).__name__}. "
        f"Linear and embedding module names it has: {leaves}. Use some of those, 'all-linear', or leave "
        f"target_modules unset for the defaults of model type {getattr(model.config, 'model_type', '?')!r}.{hint}"
    )


def expert_target_parameters(model: nn.Module) -> list[str]:
    """What to pass as PEFT's ``target_parameters`` to adapt a model's mixture-of-experts weights (empty without
    experts). hfgen keeps them as 3D tensors in transformers' experts layout (``experts.gate_up_proj``,
    ``experts.down_proj``, as Mixtral does), which LoRA reaches only through ``target_parameters``."""
    has_experts = any(name.endswith(".experts") and hasattr(module, "gate_up_proj")
                      for name, module in model.named_modules())
    return ["experts.gate_up_proj", "experts.down_proj"] if has_experts else []
