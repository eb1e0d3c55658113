"""``import hfgen`` changes nothing outside hfgen, and what hfgen.compat does beyond public APIs is explicit,
version-guarded, and fails loudly when upstream moves.

The processes here are fresh interpreters (``subprocess``): the test process itself has imported hfgen and other
test modules may have applied hfgen.compat, so only a new process shows what an import alone does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from hfgen import compat

# transformers' own Llama with three PEFT methods: greedy tokens (cached generate) and logits, as lists.
LLAMA_WITH_PEFT = """
import json, sys, torch
if sys.argv[1] == "with_hfgen":
    import hfgen  # noqa: F401
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

methods = {
    "lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False),
    "ia3": lambda: IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
}
results = {}
prompt = torch.tensor([[5, 9, 2, 7, 11, 3]])
for name, make in methods.items():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    model = get_peft_model(LlamaForCausalLM(config), make()).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # adapters away from their identity start, so they change the tokens
                param.normal_(0, 0.5)
        tokens = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
        logits = model(input_ids=tokens).logits
    results[name] = {"tokens": tokens.tolist(), "logits": logits.flatten().tolist()}
print(json.dumps(results))
"""

# Every callable reachable as an attribute of a module or class of the five libraries, by identity, and PEFT's
# default-target tables; then `import hfgen` and every hfgen module; then the same again: the names whose object
# changed.
SNAPSHOT = """
import inspect, json, sys
import accelerate, diffusers, peft, peft.peft_model, peft.utils.constants, transformers, trl
import transformers.generation.utils, transformers.modeling_utils, trl.trainer.utils

PACKAGES = ("transformers", "peft", "trl", "diffusers", "accelerate")

def snapshot():
    seen = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] not in PACKAGES:
            continue
        try:
            attributes = dict(vars(module))
        except TypeError:
            continue
        for name, value in attributes.items():
            if callable(value) and not isinstance(value, type(sys)):
                seen[f"{module_name}.{name}"] = id(value)
            if inspect.isclass(value) and value.__module__ == module_name:
                for member, member_value in vars(value).items():
                    if callable(member_value) or isinstance(member_value, (classmethod, staticmethod, property)):
                        seen[f"{module_name}.{name}.{member}"] = id(member_value)
    for name, table in vars(peft.utils.constants).items():
        if isinstance(table, dict):
            seen[f"peft.utils.constants.{name}"] = sorted(table)
    return seen

before = snapshot()
import importlib, pkgutil
import hfgen
for module in pkgutil.walk_packages(hfgen.__path__, "hfgen."):  # every module of hfgen, not only the package
    importlib.import_module(module.name)
after = snapshot()
print(json.dumps(sorted(key for key in before if after.get(key) != before[key])))
"""


def _run(source: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(source), *args], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                              "TRANSFORMERS_VERBOSITY": "error"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_llama_with_peft_is_identical_with_and_without_hfgen():
    """Prefix tuning, prompt tuning, LoRA and IA3 on transformers' Llama: the same greedy tokens and bitwise the
    same logits in a process that never imports hfgen and in one that does."""
    without = json.loads(_run(LLAMA_WITH_PEFT, "without_hfgen"))
    with_hfgen = json.loads(_run(LLAMA_WITH_PEFT, "with_hfgen"))
    assert set(without) == {"lora", "ia3", "prefix_tuning", "prompt_tuning"}
    for method in without:
        assert with_hfgen[method]["tokens"] == without[method]["tokens"], method
        assert with_hfgen[method]["logits"] == without[method]["logits"], method
    # the adapters do something: otherwise equal tokens would prove nothing about the PEFT path
    assert len({json.dumps(without[method]["tokens"]) for method in without}) > 1


def test_import_hfgen_replaces_no_function_of_other_libraries():
    """No function, method or class of transformers, peft, trl, diffusers or accelerate is a different object after
    ``import hfgen`` and the import of every hfgen module, and PEFT's default-target tables gain no entry (hfgen registers Auto classes through
    transformers' public ``register`` only, which adds to its mappings and replaces nothing)."""
    assert json.loads(_run(SNAPSHOT)) == []


def test_register_peft_target_modules_is_explicit_and_touches_only_hfgen_types():
    """In a fresh process: LoraConfig() without targets is refused on an hfgen model until
    ``register_peft_target_modules()`` is called; afterwards it works and only hfgen model types were added."""
    source = """
    import json
    import hfgen
    from peft import LoraConfig, get_peft_model
    from peft.utils import constants
    from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM
    from hfgen.compat import register_peft_target_modules

    model = HfGenDecoderForCausalLM(HfGenDecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=1, num_attention_heads=4))
    try:
        get_peft_model(model, LoraConfig())
        refused = False
    except ValueError as error:
        refused = "target_modules" in str(error)
    before = {name: dict(table) for name, table in vars(constants).items() if isinstance(table, dict)}
    filled = register_peft_target_modules()
    added = sorted({key for name, table in vars(constants).items() if isinstance(table, dict)
                    for key in set(table) - set(before[name])})
    changed = sorted(name for name, table in before.items() if any(vars(constants)[name][k] is not v
                                                                   for k, v in table.items()))
    peft_model = get_peft_model(model, LoraConfig())
    print(json.dumps({"refused": refused, "added": added, "changed": changed, "filled": len(filled),
                      "targets": sorted(peft_model.peft_config["default"].target_modules)}))
    """
    result = json.loads(_run(source))
    assert result["refused"]
    assert result["added"] == sorted(compat_types()) and result["changed"] == []
    assert result["filled"] >= 2 and result["targets"] == ["q_proj", "v_proj"]


def compat_types() -> list[str]:
    from hfgen.training.peft_defaults import PEFT_TEMPLATES

    return list(PEFT_TEMPLATES)


def test_private_hooks_match_upstream():
    """Every private transformers / diffusers method hfgen's classes override still exists with the parameters
    they were written for, and is still overridden: when upstream renames one, this fails (``make test-latest``)."""
    assert compat.check_private_hooks() == []
    # ...and the check can fail: a hook whose parameters differ is reported
    hooks = [(upstream, method, (*parameters, "extra"), overriders)
             for upstream, method, parameters, overriders in compat.PRIVATE_HOOKS]
    original = compat.PRIVATE_HOOKS
    compat.PRIVATE_HOOKS = hooks
    try:
        assert len(compat.check_private_hooks()) == len(hooks)
    finally:
        compat.PRIVATE_HOOKS = original


def test_installed_versions_are_those_the_shims_were_written_for():
    """The lock installs versions inside ``WRITTEN_FOR``; a newer peft or trl (``make test-latest``) fails here
    first, by name, before a shim runs on a shape it does not know."""
    for package in compat.WRITTEN_FOR:
        compat.require_written_for(package, "test")


def test_shims_refuse_versions_they_were_not_written_for(monkeypatch):
    monkeypatch.setitem(compat.WRITTEN_FOR, "trl", "<1.0")
    with pytest.raises(compat.UnsupportedUpstreamVersion, match=r"use_plain_trl_logprobs was written for trl<1\.0; "
                                                                 r"installed: trl \d"):
        compat.use_plain_trl_logprobs()
    monkeypatch.setitem(compat.WRITTEN_FOR, "peft", "<0.1")
    with pytest.raises(compat.UnsupportedUpstreamVersion, match=r"written for peft<0\.1"):
        compat.register_peft_target_modules()
