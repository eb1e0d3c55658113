"""The multimodal recipes: the shortcut losses equal the models' own losses; tiny end-to-end runs (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import hfgen  # noqa: F401
from hfgen.data.captions import VlmCollator, vlm_examples, vlm_processor, vlm_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_labelled_token_loss_is_the_models_loss(fusion):
    """The Trainer's loss (head applied only at positions where some row has a label) equals the model's own loss
    over every position, on a batch whose rows put their targets at different positions."""
    from hfgen.training.multimodal import labelled_token_loss

    train_vlm = recipe("train_vlm")
    args = train_vlm.build_parser().parse_args(["--hidden_size", "32", "--vision_hidden_size", "32",
                                               "--num_hidden_layers", "1", "--vision_layers", "1"])
    tokenizer = vlm_tokenizer()
    model = train_vlm.build_vlm(args, tokenizer, fusion).eval()
    if fusion == "cross_attention":
        for layer in model.model.cross_attention_layers:
            layer.attn_gate.data.fill_(0.5)
    examples = vlm_examples(torch.rand(3, 1, 8, 8) * 2 - 1, torch.tensor([1, 4, 9]))
    batch = VlmCollator(vlm_processor(model.config, tokenizer))(examples)
    assert len({int(row.ne(-100).nonzero()[0]) for row in batch["labels"]}) > 1  # targets start at several places
    with torch.no_grad():
        torch.testing.assert_close(labelled_token_loss(model, batch), model(**batch).loss)


def test_gato_grouped_loss_is_the_sum_of_each_groups_own_loss():
    """Gato's batch: rows of several domains right-padded to one width, one forward; the loss is the sum over the
    groups of each group's mean -- what the model's own loss gives for each group run alone, unpadded."""
    from hfgen.training.multimodal import labelled_token_loss
    from test_gato import tiny_gato

    model = tiny_gato()
    long_ids, short_ids = torch.randint(2, 40, (2, 9)), torch.randint(2, 40, (3, 5))
    long_labels, short_labels = long_ids.clone(), short_ids.clone()
    long_labels[:, :4] = -100
    short_labels[:, :2] = -100
    pad = torch.zeros(3, 4, dtype=torch.long)
    batch = {"input_ids": torch.cat([long_ids, torch.cat([short_ids, pad], 1)]),
             "attention_mask": torch.cat([torch.ones(2, 9), torch.cat([torch.ones(3, 5), pad], 1)]).long(),
             "labels": torch.cat([long_labels, torch.cat([short_labels, pad - 100], 1)])}
    with torch.no_grad():
        grouped = labelled_token_loss(model, batch, [slice(0, 2), slice(2, 5)])
        alone = model(input_ids=long_ids, labels=long_labels).loss + model(input_ids=short_ids, labels=short_labels).loss
    torch.testing.assert_close(grouped, alone)


@pytest.mark.slow
def test_train_vlm_recipe_runs(tmp_path):
    results = recipe("train_vlm").main(["--output_dir", str(tmp_path), "--lm_steps", "3", "--bridge_steps", "3",
                                        "--eval_images", "4", "--per_device_train_batch_size", "4"])
    assert set(results) == {"chance", "early", "projection", "cross_attention"}
    assert 0 <= results["chance"]["caption_chance"] <= 1 and 0 <= results["chance"]["question_chance"] <= 1
    assert all(results[f]["identical_logits_after_reload"] for f in ("early", "projection", "cross_attention"))
    assert (tmp_path / "losses.png").exists()


@pytest.mark.slow
def test_train_gato_recipe_runs(tmp_path):
    results = recipe("train_gato").main(["--output_dir", str(tmp_path), "--max_steps", "3",
                                         "--expert_episodes", "20", "--eval_episodes", "2", "--eval_images", "4",
                                         "--eval_text_blocks", "4"])
    assert results["identical_logits_after_reload"]
    assert results["expert_return"] > results["random_return"]


@pytest.mark.slow
def test_fusellm_recipe_quick(tmp_path):
    summary = recipe("fusellm").main(["--quick", "--output_dir", str(tmp_path)])
    assert summary["identical_logits_after_reload"]
    assert {"clm", "min_ce", "avg_ce"} <= set(summary)


def test_majority_baseline_is_the_most_frequent_answer_per_prompt():
    """Chance level: always answer each prompt with its most frequent training target, ignoring the image."""
    from hfgen.data.captions import majority_baseline

    train = vlm_examples(torch.zeros(5, 1, 8, 8), torch.tensor([3, 3, 4, 6, 8]))  # captions: "three" wins
    held_out = vlm_examples(torch.zeros(4, 1, 8, 8), torch.tensor([3, 1, 2, 5]))
    chance = majority_baseline(train, held_out)
    assert chance["caption_chance"] == 1 / 4  # only the held-out three
    # even? train (3, 3, 4, 6, 8): 3 yes / 2 no -> "yes": right for held-out 2 only, 1 of 4; greater than four?
    # 2 yes / 3 no -> "no": right for 3, 1, 2, 3 of 4; what digit? "three": 1 of 4. Over the 12 questions:
    assert chance["question_chance"] == (1 + 3 + 1) / 12
