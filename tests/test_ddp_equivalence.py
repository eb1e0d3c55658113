"""Data-parallel training gives the weights of one process: real recipes under ``torchrun --nproc_per_node 2``
against the same recipe in one process with the doubled per-device batch, every saved parameter compared.

Sequential sampling and ``--dataloader_drop_last`` make both runs see the same global batches (rank r takes the
r-th half of each global batch), and the tiny models have no dropout, so the only difference left is the order of
floating-point sums: anything else means the ranks did not train as one model (issue 20: an evaluation before
training left the model marked as prepared, and the Trainer then trained it without DDP)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_peft_recipe import base  # noqa: F401  (the fixture: a saved tiny decoder for LoRA)

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

# A few optimizer steps of a global batch of 8, in the order of the data (rank r takes the r-th half of each global
# batch), at a learning rate that moves every weight, with an evaluation before and after training as every core does.
COMMON_FLAGS = ["--max_steps", "4", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant",
                "--train_sampling_strategy", "sequential", "--dataloader_drop_last", "true",
                "--per_device_eval_batch_size", "4", "--save_strategy", "no", "--eval_strategy", "no",
                "--logging_steps", "1", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"]
GLOBAL_BATCH = 8
RECIPES = [
    pytest.param("pretrain_causal_lm", [
        "--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--num_key_value_heads",
        "2", "--intermediate_size", "128", "--block_size", "32", "--max_train_samples", "64",
        "--max_eval_samples", "8"], id="pretrain_causal_lm"),
    # The encoder's dropout is off: each process would draw its own masks.
    pytest.param("finetune_classification", [
        "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size",
        "64", "--max_length", "16", "--max_train_samples", "64", "--max_eval_samples", "8",
        "--config_overrides", "hidden_dropout_prob=0.0,attention_dropout=0.0"],
        id="finetune_classification", marks=pytest.mark.slow),
    # LoRA on a saved tiny decoder ({base}: test_peft_recipe's base fixture); the adapter holds every trained weight.
    pytest.param("finetune_lora", [
        "--model_name_or_path", "{base}", "--block_size", "32", "--max_train_samples", "64", "--max_eval_samples",
        "8", "--target_modules", "all-linear", "--lora_dropout", "0.0"], id="finetune_lora", marks=pytest.mark.slow),
]
SAVED = {"finetune_lora": "adapter_model.safetensors"}  # the others save model.safetensors


def _run(command: list[str], output_dir: Path, saved: str) -> dict[str, torch.Tensor]:
    # One thread per process: two ranks on two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *COMMON_FLAGS, "--output_dir", str(output_dir)], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return load_file(output_dir / saved)


@pytest.mark.parametrize(("recipe", "flags"), RECIPES)
def test_two_processes_train_the_weights_of_one(recipe, flags, tmp_path, request):
    if "{base}" in flags:
        flags = [flag.replace("{base}", request.getfixturevalue("base")) for flag in flags]
    script, saved = str(REPO / "recipes" / f"{recipe}.py"), SAVED.get(recipe, "model.safetensors")
    one = _run([sys.executable, script, *flags, "--per_device_train_batch_size", str(GLOBAL_BATCH)], tmp_path / "one",
               saved)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
                *flags, "--per_device_train_batch_size", str(GLOBAL_BATCH // 2)], tmp_path / "two", saved)

    assert one.keys() == two.keys()
    # Differences relative to each tensor's largest entry, at least 0.01 (weights start at std 0.02): a tensor that
    # stays near zero, such as an attention key bias (its gradient is zero in exact arithmetic, since softmax
    # ignores a shift shared by every key), holds only float noise. The all-reduce sums the two halves' gradients
    # in another order than one process does; AdamW divides by sqrt(v) + eps, which turns that noise into up to
    # ~1e-4 in the few elements whose gradients are near zero (measured, causal LM: 14 of 1.1M elements beyond
    # 1e-6, the largest 1.5e-4, in the embedding). Ranks that train apart differ by ~1e-1 almost everywhere.
    relative = {name: (two[name] - one[name]).abs() / max(one[name].abs().max().item(), 0.01) for name in one}
    worst_name = max(relative, key=lambda name: relative[name].max().item())
    beyond = sum(int((diff > 1e-6).sum()) for diff in relative.values())
    total = sum(diff.numel() for diff in relative.values())
    logger.info("%s, 2 processes vs 1: largest difference %.3g of the tensor's scale (%s); %d of %d elements "
                "beyond 1e-6", recipe, relative[worst_name].max().item(), worst_name, beyond, total)
    assert relative[worst_name].max().item() < 1e-3, f"{worst_name} differs by {relative[worst_name].max():.3g}"
    assert beyond < 1e-3 * total, f"{beyond} of {total} elements differ by more than 1e-6 of their tensor's scale"
