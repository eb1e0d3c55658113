"""The `hfgen` console script: help texts, and a tiny `hfgen demo` run end to end in a fresh process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HFGEN = Path(sys.executable).with_name("hfgen")  # the console script installed beside this interpreter


def _hfgen(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(HFGEN), *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    result = _hfgen("--help")
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_demo_help_lists_variant_flags():
    result = _hfgen("demo", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--softmax-variant", "--attention-scoring", "--position-embedding", "--num-key-value-heads",
                 "--norm-type", "--norm-position", "--mlp-type", "--attention-gate", "--max-steps", "--output-dir",
                 "outputs/demo"):
        assert flag in result.stdout, flag
    # The help names the valid values without importing the stack; this keeps those names in step with the
    # registries the config checks against.
    from hfgen.models import variants

    help_words = set(re.findall(r"\w+", result.stdout))
    for names in (variants.ATTENTION_SCORINGS, variants.SOFTMAX_VARIANTS, variants.POSITION_EMBEDDINGS,
                  variants.NORM_TYPES, variants.NORM_POSITIONS, variants.MLP_TYPES):
        assert set(names) <= help_words, set(names) - help_words


def test_demo_rejects_unknown_variant_with_valid_choices():
    result = _hfgen("demo", "--softmax-variant", "nope")
    assert result.returncode == 2
    assert "softmax_variant='nope'" in result.stderr and "off_by_one" in result.stderr


def test_tiny_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = _hfgen("demo", "--max-steps", "2", "--hidden-size", "32", "--num-hidden-layers", "1",
                    "--num-attention-heads", "4", "--num-key-value-heads", "1", "--intermediate-size", "64",
                    "--block-size", "32", "--batch-size", "4", "--max-eval-samples", "4", "--max-new-tokens", "5",
                    "--softmax-variant", "off_by_one", "--attention-gate", "--norm-position", "post",
                    "--output-dir", str(out), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"validation perplexity: ([\d.]+) before training, ([\d.]+) after 2 steps", result.stdout)
    assert match, result.stdout[-3000:]
    assert float(match[1]) > 1000  # an untrained model over an 8192-token vocabulary
    assert "sample from the reloaded HfGenDecoderForCausalLM" in result.stdout

    config = json.loads((out / "config.json").read_text())
    assert (config["softmax_variant"], config["num_key_value_heads"], config["attention_gate"],
            config["norm_position"]) == ("off_by_one", 1, True, "post")
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hfgen_decoder.HfGenDecoderForCausalLM"
    for name in ("model.safetensors", "modeling_hfgen_decoder.py", "tokenizer.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "softmax:off_by_one" in card and "attention:mqa" in card and "attention_gate" in card


def test_demo_model_flags_are_fields_of_the_recipes_model_arguments():
    """The demo keeps its own argparse copy of the model flags (so `hfgen --help` imports nothing heavy); every flag
    of its variant and size groups names a field of the pre-training recipe's ModelArguments, with the same type
    where the field has a plain one."""
    import dataclasses

    import hfgen_cli
    from hfgen.training.pretrain import ModelArguments

    fields = {field.name: field for field in dataclasses.fields(ModelArguments)}
    demo = hfgen_cli.build_parser()._subparsers._group_actions[0].choices["demo"]
    groups = [group for group in demo._action_groups if group.title.startswith(("variant", "size"))]
    flags = [action for group in groups for action in group._group_actions if action.dest != "block_size"]
    assert len(flags) > 10
    for action in flags:
        assert action.dest in fields, action.dest
        annotation = str(fields[action.dest].type)
        if action.type in (int, float):
            assert action.type.__name__ in annotation, (action.dest, annotation)
