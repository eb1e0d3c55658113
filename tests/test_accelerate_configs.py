"""The Accelerate configs shipped in recipes/configs/accelerate/ are read by accelerate itself as the README uses
them (``accelerate launch --config_file <file> recipes/<recipe>.py``), without running anything.

- each YAML loads with accelerate's own ``load_config_from_file`` (a ``ClusterConfig``, which refuses unknown
  top-level keys) with the distributed type its name says;
- every key of the nested ``fsdp_config`` / ``deepspeed_config`` is an ``accelerate launch`` argument (the launcher
  copies nested keys onto its arguments and ignores a misspelt one silently);
- the FSDP config builds accelerate's ``FullyShardedDataParallelPlugin`` (FSDP2, sharded state dict) whose
  auto-wrap policy, given a model, wraps exactly its ``_no_split_modules`` layers;
- the DeepSpeed configs build accelerate's ``DeepSpeedPlugin`` from their JSON file with the launcher's list of
  fields taken from the YAML (accelerate refuses YAML fields that a JSON file would silently override), at the
  ZeRO stage of the file's name.

Running them: tests/test_ddp_equivalence.py (ddp.yaml, 2 CPU processes, slow), tests/test_fsdp.py (fsdp2.yaml
through Trainer: ``gpu``; accelerate enables FSDP on accelerator devices only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs" / "accelerate"
EXPECTED = {"ddp.yaml": DistributedType.MULTI_GPU, "fsdp2.yaml": DistributedType.FSDP,
            "deepspeed_zero2.yaml": DistributedType.DEEPSPEED, "deepspeed_zero3.yaml": DistributedType.DEEPSPEED}
# fsdp_config keys whose FullyShardedDataParallelPlugin argument is not the key without its fsdp_ prefix.
PLUGIN_NAMES = {"fsdp_version": "fsdp_version", "fsdp_offload_params": "cpu_offload",
                "fsdp_transformer_layer_cls_to_wrap": "transformer_cls_names_to_wrap"}


def test_every_shipped_file_is_checked():
    assert {path.name for path in CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_classes(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == EXPECTED[name]
    assert config.num_processes >= 2 and config.num_machines == 1 and config.use_cpu is False
    launch_arguments = {action.dest for action in launch_command_parser()._actions}
    nested = {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}
    unknown = sorted(key for key in nested if key not in launch_arguments)
    assert not unknown, f"{name}: accelerate launch has no argument {unknown}"


def test_fsdp2_plugin_wraps_each_models_no_split_modules():
    from hfgen.models import (HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenEncoderConfig,
                              HfGenEncoderForMaskedLM, HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration)

    fsdp = load_config_from_file(str(CONFIGS / "fsdp2.yaml")).fsdp_config
    sizes = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    for model in (HfGenDecoderForCausalLM(HfGenDecoderConfig(**sizes)),
                  HfGenEncoderForMaskedLM(HfGenEncoderConfig(**sizes)),
                  HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(**sizes))):
        plugin = FullyShardedDataParallelPlugin(**{PLUGIN_NAMES.get(key, key.removeprefix("fsdp_")): value
                                                   for key, value in fsdp.items()})
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")
        plugin.set_auto_wrap_policy(model)
        wrapped = {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}
        assert wrapped == set(model._no_split_modules), type(model).__name__


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_plugin_builds_from_the_shipped_json(name, monkeypatch):
    config = load_config_from_file(str(CONFIGS / name))
    fields = list(config.deepspeed_config)
    if config.mixed_precision is not None:  # what accelerate launch reports as set in the YAML
        fields.append("mixed_precision")
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(fields).lower())
    json_file = REPO / config.deepspeed_config["deepspeed_config_file"]  # relative to the repository root
    plugin = DeepSpeedPlugin(hf_ds_config=str(json_file),
                             zero3_init_flag=config.deepspeed_config.get("zero3_init_flag", False))
    stage = int(name.removesuffix(".yaml")[-1])
    assert plugin.zero_stage == stage
    assert plugin.hf_ds_config.is_zero3() == (stage == 3)
