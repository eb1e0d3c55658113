"""The image recipes on Accelerate as diffusers' training scripts: the user's own image folder (datasets'
imagefolder), a run resumed from a training-state checkpoint ends with the uninterrupted run's weights, a
--text_encoder folder's code runs only with --trust_remote_code, and (slow) two processes under torchrun give the
weights of one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from image_folders import digit_image_folder
from test_diffusion_recipes import load_recipe

TINY_UNET = ["--block_out_channels", "8", "16", "--save_images_steps", "0", "--num_eval_samples", "0",
             "--train_batch_size", "8", "--num_inference_steps", "2"]


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def test_diffusion_two_steps_on_a_user_folder(tmp_path):
    """Class-conditional training on a folder of the user's images: as many classes as the labels name."""
    folder = digit_image_folder(tmp_path / "images", count=24)
    load_recipe("train_diffusion").main(["--output_dir", str(tmp_path / "out"), "--max_train_steps", "2",
                                         "--train_data_dir", str(folder), *TINY_UNET])
    config = json.loads((tmp_path / "out" / "pipeline" / "unet" / "config.json").read_text())
    labels = {json.loads(line)["label"] for line in (folder / "train" / "metadata.jsonl").read_text().splitlines()}
    assert config["num_class_embeds"] == max(labels) + 1
    from diffusers import DiffusionPipeline

    # the folder this run wrote: its own pipeline code
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "out" / "pipeline", trust_remote_code=True)
    out = pipe(class_labels=[0, 1], num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 8, 8)


def test_diffusion_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    """4 steps with a training-state checkpoint every 2 (weights, optimizer, schedule, EMA, random draws); a fresh
    folder holding only the step-2 checkpoint, resumed with --resume_from_checkpoint latest: identical EMA weights
    (the saved pipeline) and raw weights (the step-4 checkpoint). The data wrap around an epoch boundary (6 batches
    per epoch with a batch of 256), so the resumed sampler must also continue the epoch as the uninterrupted one."""
    recipe = load_recipe("train_diffusion")
    flags = ["--max_train_steps", "8", "--checkpointing_steps", "4", "--train_batch_size", "256",
             "--block_out_channels", "8", "16", "--save_images_steps", "0", "--num_eval_samples", "0",
             "--gradient_accumulation_steps", "1"]
    recipe.main(["--output_dir", str(tmp_path / "whole"), *flags])
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    recipe.main(["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest", *flags])
    whole, resumed = unet_weights(tmp_path / "whole"), unet_weights(tmp_path / "resumed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    raw_whole = load_file(tmp_path / "whole" / "checkpoint-8" / "model.safetensors")
    raw_resumed = load_file(tmp_path / "resumed" / "checkpoint-8" / "model.safetensors")
    assert all(torch.equal(raw_whole[k], raw_resumed[k]) for k in raw_whole)
    raw_four = load_file(tmp_path / "whole" / "checkpoint-4" / "model.safetensors")
    assert not all(torch.equal(raw_whole[k], raw_four[k]) for k in raw_whole)  # steps 5..8 did train


def trapped_encoder_folder(folder: Path, marker: Path) -> Path:
    """A saved hfgen encoder with the shipped encoder tokenizer, whose config and tokenizer name, in auto_map, a
    module that writes ``marker`` when imported."""
    from test_trust import trapped_tokenizer_folder

    from hfgen import HfGenEncoderConfig, HfGenEncoderModel
    from hfgen.data.encoder_tokenizer import load_encoder_tokenizer

    trapped_tokenizer_folder(folder, marker)
    tokenizer = load_encoder_tokenizer()
    HfGenEncoderModel(HfGenEncoderConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "trap.TrapTokenizer"}  # any import of trap.py leaves the marker
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_diffusion_text_encoder_runs_no_folder_code_without_consent(tmp_path):
    marker = tmp_path / "marker"
    folder = trapped_encoder_folder(tmp_path / "encoder", marker)
    flags = ["--conditioning", "text", "--text_encoder", str(folder), "--max_train_steps", "1", *TINY_UNET]
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_recipe("train_diffusion").main(["--output_dir", str(tmp_path / "out"), *flags])
    assert not marker.exists(), "train_diffusion ran the --text_encoder folder's code without --trust_remote_code"
    load_recipe("train_diffusion").main(["--output_dir", str(tmp_path / "out"), "--trust_remote_code", *flags])
    assert marker.exists()  # with consent the folder's code runs: the trap is real


def zero_gradient_parameters(recipe, flags: list[str]) -> set[str]:
    """The denoiser's parameters whose gradient is zero in exact arithmetic (a bias just before a GroupNorm of one
    channel per group, the key bias under softmax): found in float64 on a random batch. In float32 their gradient is
    rounding noise, which Adam scales up to steps of the learning rate's size, in any order of summation."""
    args = recipe.build_parser().parse_args(flags)
    model = recipe.build_denoiser(args, 10, 8, 1).double()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 8, 8, generator=generator, dtype=torch.float64)
    timesteps = torch.randint(0, 1000, (8,), generator=generator)
    model(images, timesteps, class_labels=torch.arange(8)).sample.square().mean().backward()
    return {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() < 1e-12}


@pytest.mark.slow
def test_diffusion_two_processes_give_the_weights_of_one(tmp_path):
    """torchrun --nproc_per_node 2 with a per-process batch of 16 against one process with a batch of 32: the
    same global batches, noise and timesteps (TrainingLoop.draw), so the same EMA and raw weights, up to float
    summation order (each step moves a weight by about the learning rate, 1e-3; the tolerance is 0.1% of that), except
    where the exact gradient is zero (zero_gradient_parameters: Adam turns rounding noise into full steps there)."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "train_diffusion.py"
    flags = ["--max_train_steps", "3", "--checkpointing_steps", "3", "--block_out_channels", "8", "16",
             "--save_images_steps", "0", "--num_eval_samples", "0", "--lr_warmup_steps", "0", "--learning_rate", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher, batch in (("one", [sys.executable], "32"),
                                  ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                           "--master_port", "29531"], "16")):
        result = subprocess.run([*launcher, str(recipe), "--output_dir", str(tmp_path / name), "--train_batch_size",
                                 batch, *flags], env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = load_file(tmp_path / "one" / "checkpoint-3" / "model.safetensors"), \
        load_file(tmp_path / "two" / "checkpoint-3" / "model.safetensors")
    noise = zero_gradient_parameters(load_recipe("train_diffusion"), flags)
    assert noise and len(noise) < len(one) / 3
    for key in one.keys() - noise:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=key)
    ema_one, ema_two = unet_weights(tmp_path / "one"), unet_weights(tmp_path / "two")
    for key in ema_one.keys() - noise:
        torch.testing.assert_close(ema_two[key], ema_one[key], rtol=0, atol=1e-6, msg=key)


OTHERS = {"train_vae": ("vae", ["--block_out_channels", "8", "16", "--latent_channels", "2"]),
          "train_gan": ("generator", ["--base_channels", "8", "--latent_dim", "8"]),
          "train_flow": ("flow", ["--num_steps", "2", "--hidden_channels", "8"])}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_generators_two_steps_on_a_user_folder(tmp_path, name):
    from diffusers import AutoModel

    folder_name, extra = OTHERS[name]
    images = digit_image_folder(tmp_path / "images", count=24)
    load_recipe(name).main(["--output_dir", str(tmp_path / "out"), "--max_train_steps", "2", "--train_data_dir",
                            str(images), "--train_batch_size", "8", "--save_images_steps", "0",
                            "--num_eval_samples", "0", *extra])
    # the folder this run wrote: its own model code
    assert AutoModel.from_pretrained(str(tmp_path / "out" / folder_name), trust_remote_code=True) is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_generators_resume_to_the_uninterrupted_weights(tmp_path, name):
    """As the diffusion test: 6 steps with a checkpoint every 3 (2 batches per epoch: the checkpoint is mid-epoch),
    against a fresh folder resumed from the step-3 checkpoint; every model's raw weights are identical."""
    folder_name, extra = OTHERS[name]
    flags = ["--max_train_steps", "6", "--checkpointing_steps", "3", "--train_batch_size", "512",
             "--save_images_steps", "0", "--num_eval_samples", "0", *extra]
    recipe = load_recipe(name)
    recipe.main(["--output_dir", str(tmp_path / "whole"), *flags])
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    recipe.main(["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest", *flags])
    saved = sorted((tmp_path / "whole" / "checkpoint-6").glob("model*.safetensors"))
    assert len(saved) == (2 if name == "train_gan" else 1)
    for path in saved:
        whole, resumed = load_file(path), load_file(tmp_path / "resumed" / "checkpoint-6" / path.name)
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), path.name


def test_gan_global_batch_norm_is_batch_norm_in_one_process(tmp_path):
    """The GAN's batch norm under DDP (recipes/train_gan.py) with a real one-process gloo group, so its
    all-reduce path runs: the outputs, gradients (input, weight, bias) and running statistics of nn.BatchNorm2d over
    two training steps, the same state-dict names, and eval mode on the running statistics."""
    import copy

    import torch.distributed as dist

    recipe = load_recipe("train_gan")
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3, momentum=0.3))
    with torch.no_grad():
        plain[1].weight.uniform_(0.5, 1.5), plain[1].bias.uniform_(-1, 1)
    converted = recipe.global_batch_norm(copy.deepcopy(plain))
    assert isinstance(converted[1], recipe.GlobalBatchNorm2d)
    assert converted.state_dict().keys() == plain.state_dict().keys()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for step in range(2):
            x = (torch.randn(5, 2, 4, 4) * 3 + step).requires_grad_(True)
            outputs = [model(x) for model in (plain, converted)]
            weights = torch.randn_like(outputs[0])
            grads = [torch.autograd.grad((out * weights).sum(), [x, *model[1].parameters()])
                     for out, model in zip(outputs, (plain, converted))]
            torch.testing.assert_close(outputs[1], outputs[0])
            for ours, theirs in zip(*reversed(grads)):
                torch.testing.assert_close(ours, theirs)
    finally:
        dist.destroy_process_group()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[name], value, msg=name)
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(converted.eval()(x), plain.eval()(x))
