"""The VLM and Gato recipes on Trainer: two steps on the shipped data and on a user's image folder each save a model
that loads; Gato resumed from a checkpoint ends with the weights of the uninterrupted run."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file

from image_folders import digit_image_folder
from test_vlm_recipe import recipe

TINY_VLM = ["--hidden_size", "32", "--vision_hidden_size", "32", "--num_hidden_layers", "1", "--vision_layers", "1",
            "--eval_images", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
TINY_GATO = ["--hidden_size", "32", "--num_hidden_layers", "1", "--expert_episodes", "8", "--eval_episodes", "1",
             "--eval_images", "2", "--eval_text_blocks", "2", "--per_device_train_batch_size", "2",
             "--logging_steps", "1"]


def test_vlm_two_steps_on_the_digits_and_on_a_user_folder(tmp_path):
    from transformers import AutoModelForImageTextToText

    train_vlm = recipe("train_vlm")
    default = train_vlm.main(["--output_dir", str(tmp_path / "digits"), "--fusions", "early", "--lm_steps", "1",
                              "--bridge_steps", "1", *TINY_VLM])
    assert default["early"]["train_steps"] == 2 and default["early"]["identical_logits_after_reload"]
    folder = digit_image_folder(tmp_path / "images", count=12)
    user = train_vlm.main(["--output_dir", str(tmp_path / "user"), "--fusions", "projection", "--lm_steps", "2",
                           "--bridge_steps", "2", "--train_data_dir", str(folder), *TINY_VLM])
    assert user["projection"]["identical_logits_after_reload"]
    assert set(user["chance"]) == {"caption_chance"}  # the user's data: captions only
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "user" / "projection")
    assert model.config.fusion == "projection"


def test_gato_two_steps_on_a_user_folder(tmp_path):
    folder = digit_image_folder(tmp_path / "images", count=12)
    results = recipe("train_gato").main(["--output_dir", str(tmp_path / "out"), "--max_steps", "2",
                                         "--train_data_dir", str(folder), *TINY_GATO])
    assert results["identical_logits_after_reload"]


def test_gato_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    """Run 4 steps with a checkpoint every 2 (on the shipped data); then a fresh folder holding only that run's step-2
    checkpoint, resumed with --resume_from_checkpoint latest: the final weights are identical."""
    train_gato = recipe("train_gato")
    flags = ["--max_steps", "4", "--save_steps", "2", "--save_total_limit", "2", *TINY_GATO]
    train_gato.main(["--output_dir", str(tmp_path / "whole"), *flags])
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-2", tmp_path / "resumed" / "checkpoints" /
                    "checkpoint-2")
    train_gato.main(["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest", *flags])
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    step_two = load_file(tmp_path / "whole" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not all(torch.equal(whole[k], step_two[k]) for k in whole)  # steps 3 and 4 did train
