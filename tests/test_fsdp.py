"""FSDP2 (torch's ``fully_shard``) trains an hfgen decoder exactly as one process does, on 2 CPU processes (gloo).

This file is also the worker that ``torchrun`` starts (``python tests/test_fsdp.py --help``). Each decoder layer
(the model's ``_no_split_modules``) is one shard unit, then the root, as the shipped
``recipes/configs/accelerate/fsdp2.yaml`` asks accelerate to wrap. Checkpoints are written as accelerate writes
SHARDED_STATE_DICT (``torch.distributed.checkpoint``: ``pytorch_model_fsdp_0/`` holding ``{"model": ...}``,
``optimizer_0/`` holding ``{"optimizer": ...}``, every process its own shards), and consolidated with accelerate's
own ``accelerate merge-weights``.

Why not through Trainer: accelerate 1.16 enables FSDP only on accelerator devices (``AcceleratorState`` reaches
its FSDP branch for MULTI_GPU/XPU/...; a CPU run is MULTI_CPU), so ``accelerate launch --config_file fsdp2.yaml``
or ``--fsdp "full_shard auto_wrap"`` on a CPU-only machine trains with DDP instead, without a warning. The Trainer
path is the ``gpu`` test below, skipped without two CUDA devices.

The invariants: the sharded run's weights are those of one process with the same global batch (the gradients
are averaged over the two halves by the reduce-scatter instead of summed in one pass: float noise only, bounded as
in tests/test_ddp_equivalence.py); the consolidated ``model.safetensors`` loads with ``from_pretrained`` and gives
the sharded model's logits; a run resumed from the sharded checkpoint (model and optimizer) ends bit for bit where
the uninterrupted run ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

STEPS, CHECKPOINT_STEP, GLOBAL_BATCH, SEQUENCE = 4, 2, 8, 16


def _model():
    from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM

    torch.manual_seed(0)
    config = HfGenDecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return HfGenDecoderForCausalLM(config)


def _batches() -> torch.Tensor:
    """``[STEPS, GLOBAL_BATCH, SEQUENCE]`` token ids, the same in every process; the probe input is the last row."""
    return torch.randint(0, 128, (STEPS + 1, GLOBAL_BATCH, SEQUENCE), generator=torch.Generator().manual_seed(1))


def _train(model, optimizer, batches: torch.Tensor, steps: range, rows: slice, save=None) -> None:
    for step in steps:
        ids = batches[step, rows]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if save is not None and step + 1 == CHECKPOINT_STEP:
            save()


def worker(argv: list[str] | None = None) -> None:
    """One process of the test: ``--mode one`` trains the whole batch alone; ``--mode fsdp`` (under ``torchrun
    --nproc_per_node 2``) trains its half of each batch, sharded."""
    parser = argparse.ArgumentParser(description=worker.__doc__)
    parser.add_argument("--mode", choices=("one", "fsdp"), required=True)
    parser.add_argument("--output_dir", required=True, help="Where the weights, checkpoints and logits go.")
    parser.add_argument("--resume", action="store_true", help="fsdp: start from the step-2 sharded checkpoint.")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    output = Path(args.output_dir)
    model, batches = _model(), _batches()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    if args.mode == "one":
        _train(model, optimizer, batches, range(STEPS), slice(None))
        model.save_pretrained(output)
        return

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    layer_classes = tuple(type(m) for m in model.modules() if type(m).__name__ in model._no_split_modules)
    for module in model.modules():
        if isinstance(module, layer_classes):
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)  # over the sharded (DTensor) parameters
    half = GLOBAL_BATCH // world
    rows = slice(rank * half, (rank + 1) * half)
    checkpoint = output / "checkpoint-2"

    def save_sharded():
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=checkpoint / "pytorch_model_fsdp_0")
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=checkpoint / "optimizer_0")

    if args.resume:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=checkpoint / "pytorch_model_fsdp_0")
        set_model_state_dict(model, state["model"])
        state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=checkpoint / "optimizer_0")
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        _train(model, optimizer, batches, range(CHECKPOINT_STEP, STEPS), rows)
    else:
        _train(model, optimizer, batches, range(STEPS), rows, save=save_sharded)
    final = output / ("resumed" if args.resume else "final")
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=final / "pytorch_model_fsdp_0")
    with torch.no_grad():  # every process takes part: the layers are gathered for the forward
        logits = model(input_ids=batches[STEPS]).logits
    if rank == 0:
        model.config.save_pretrained(final)
        save_file({"logits": logits.contiguous()}, str(final / "sharded_logits.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_trains_saves_and_resumes_as_one_process(tmp_path):
    from safetensors.torch import load_file

    from hfgen.models import HfGenDecoderForCausalLM
    from test_ddp_equivalence import assert_same_weights

    script, torchrun = str(Path(__file__).resolve()), [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc_per_node", "2"]
    _run([sys.executable, script, "--mode", "one", "--output_dir", str(tmp_path / "one")])
    _run([*torchrun, script, "--mode", "fsdp", "--output_dir", str(tmp_path / "fsdp")])
    _run([*torchrun, script, "--mode", "fsdp", "--resume", "--output_dir", str(tmp_path / "fsdp")])
    for run in ("final", "resumed"):  # accelerate's consolidation, as a user runs it
        _run([str(Path(sys.executable).parent / "accelerate"), "merge-weights",
              str(tmp_path / "fsdp" / run / "pytorch_model_fsdp_0"), str(tmp_path / "fsdp" / run)])

    one = load_file(tmp_path / "one" / "model.safetensors")
    sharded = load_file(tmp_path / "fsdp" / "final" / "model.safetensors")
    assert_same_weights(one, sharded, "fsdp2")

    resumed = load_file(tmp_path / "fsdp" / "resumed" / "model.safetensors")
    assert resumed.keys() == sharded.keys()
    assert all(torch.equal(resumed[name], sharded[name]) for name in sharded), "resume is not bit for bit"

    loaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")
    with torch.no_grad():
        logits = loaded(input_ids=_batches()[STEPS]).logits
    expected = load_file(tmp_path / "fsdp" / "final" / "sharded_logits.safetensors")["logits"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, accelerate runs FSDP")
def test_recipes_refuse_fsdp_where_accelerate_would_run_ddp(monkeypatch):
    """``accelerate launch --config_file fsdp2.yaml`` sets ACCELERATE_USE_FSDP for the recipe; without CUDA the
    recipes' defaults refuse it (accelerate would train with DDP and say nothing), and keep DeepSpeed off use_cpu
    (use_cpu would switch DeepSpeed off the same way; tests/test_ddp_equivalence.py runs it on CPUs)."""
    from hfgen.training.pretrain import cpu_training_defaults

    assert cpu_training_defaults()["use_cpu"] is True
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert cpu_training_defaults()["use_cpu"] is False
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="ACCELERATE_USE_FSDP=true.*ddp.yaml"):
        cpu_training_defaults()


@pytest.mark.gpu
@pytest.mark.slow
def test_trainer_fsdp2_config_on_two_gpus(tmp_path):
    """The shipped fsdp2.yaml through Trainer (accelerate's FSDP plugin, fsdp_version 2) == DDP's weights."""
    if torch.cuda.device_count() < 2:
        pytest.skip("accelerate runs FSDP on accelerator devices only; needs 2 CUDA devices")
    from test_ddp_equivalence import assert_same_weights, recipe_run

    one = recipe_run("pretrain_causal_lm", tmp_path / "one", processes=1)
    sharded = recipe_run("pretrain_causal_lm", tmp_path / "fsdp", processes=2,
                         launcher=[sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                   str(REPO / "recipes/configs/accelerate/fsdp2.yaml")])
    assert_same_weights(one, sharded, "fsdp2 via Trainer")


if __name__ == "__main__":
    worker()
