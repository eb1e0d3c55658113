"""Model cards (hfgen.hub): Hub metadata written through huggingface_hub's ModelCardData and read back by its
parser, and a body that says how to load the model with and without hfgen, its variant and its training."""

from __future__ import annotations

import math

import pytest
from huggingface_hub import ModelCard

from conftest import tiny_config
from hfgen import HfGenSeq2SeqConfig
from hfgen.hub import (
    CARD_TASKS,
    build_adapter_card,
    build_model_card,
    build_pipeline_card,
    task_for,
    variant_tags,
    write_model_card,
)
from hfgen.models.model_card import card_is_replaceable, write_hub_card

RESULTS = {"eval_perplexity_before": 130.5, "eval_perplexity": math.exp(3.25), "eval_loss": 3.25, "global_step": 40,
           "learning_rate": 2e-3}


def reparsed(card: ModelCard) -> ModelCard:
    """The card as the Hub would read it: its text parsed again."""
    return ModelCard(str(card))


def test_decoder_card_metadata():
    config = tiny_config(softmax_variant="off_by_one", attention_gate=True, num_key_value_heads=1)
    card = reparsed(build_model_card(config, RESULTS, "user/tiny", base_model="user/base", datasets=["user/data"]))
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0" and data.base_model == "user/base" and data.datasets == ["user/data"]
    assert data.tags == variant_tags(config)
    assert {"hfgen", "hfgen_decoder", "softmax:off_by_one", "attention_gate", "attention:mqa"} <= set(data.tags)
    [result] = data.eval_results
    assert (result.task_type, result.metric_type, result.dataset_split) == ("text-generation", "perplexity",
                                                                          "validation")
    assert result.metric_value == round(RESULTS["eval_perplexity"], 4)
    assert data.model_name == "user/tiny"


def test_decoder_card_body_loads_with_and_without_hfgen():
    config = tiny_config(softmax_variant="off_by_one")
    text = build_model_card(config, RESULTS, "user/tiny", base_model="user/base").text
    assert "import hfgen" in text and 'AutoModelForCausalLM.from_pretrained("user/tiny")' in text
    assert 'AutoModelForCausalLM.from_pretrained("user/tiny", trust_remote_code=True)' in text
    assert 'AutoTokenizer.from_pretrained("user/tiny", trust_remote_code=True)' in text
    assert "continued from `user/base`" in text
    assert "| `softmax_variant` | **`off_by_one`** | `standard` |" in text  # the changed key in bold
    assert "| `num_hidden_layers` | **2** |" in text
    assert "| optimizer steps | 40 |" in text and "| validation perplexity after training | 25.79 |" in text


def test_card_without_results_or_tokenizer_promises_neither():
    text = build_model_card(tiny_config(), {}, "user/untrained", has_tokenizer=False).text
    card = reparsed(build_model_card(tiny_config(), {}, "user/untrained", has_tokenizer=False))
    assert card.data.eval_results is None
    assert "No training record" in text and "trained from random initialisation" not in text
    assert "AutoTokenizer" not in text


def test_local_base_model_stays_out_of_the_metadata(tmp_path):
    card = reparsed(build_model_card(tiny_config(), RESULTS, "m", base_model=str(tmp_path)))
    assert card.data.base_model is None
    assert f"continued from `{tmp_path}`" in card.text


@pytest.mark.parametrize("task, pipeline_tag, auto_class", [
    ("span-corruption", "text2text-generation", "AutoModelForSeq2SeqLM"),
    ("masked-lm", "fill-mask", "AutoModelForMaskedLM"),
    ("text-classification", "text-classification", "AutoModelForSequenceClassification"),
])
def test_other_tasks(task, pipeline_tag, auto_class):
    config = HfGenSeq2SeqConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_decoder_layers=1, num_attention_heads=4, position_embedding="relative_bias")
    results = {"eval_perplexity": 9.0, "eval_accuracy": 0.75}
    card = reparsed(build_model_card(config, results, "user/m", task=task))
    assert card.data.pipeline_tag == pipeline_tag and "hfgen_seq2seq" in card.data.tags
    assert f'{auto_class}.from_pretrained("user/m", trust_remote_code=True)' in card.text
    [result] = card.data.eval_results
    assert result.metric_type == CARD_TASKS[task].metric_type
    assert result.metric_value == results[CARD_TASKS[task].metric_key]


def test_unknown_task_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown card task 'poetry'; valid choices: causal-lm, masked-lm"):
        build_model_card(tiny_config(), {}, "m", task="poetry")


def test_write_model_card_keeps_its_old_call_and_detects_the_tokenizer(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    path = write_model_card(folder, tiny_config(), RESULTS, None, None)  # the positional call of pretrain()
    card = ModelCard.load(path)
    assert card.data.model_name == "run" and "AutoTokenizer" not in card.text  # no tokenizer in the folder
    assert "loss_curve.png" not in card.text  # nor a curve
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "loss_curve.png").write_bytes(b"")
    card = ModelCard.load(write_model_card(folder, tiny_config(), RESULTS, model_name="user/run"))
    assert card.data.model_name == "user/run"
    assert 'AutoTokenizer.from_pretrained("user/run", trust_remote_code=True)' in card.text
    assert "The curve of the training loss is in `loss_curve.png`." in card.text


def test_adapter_card():
    adapter = {"base_model_name_or_path": "user/base", "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4,
               "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    card = reparsed(build_adapter_card(adapter, "user/adapter", base_config=tiny_config(position_embedding="alibi")))
    assert card.data.library_name == "peft" and card.data.base_model == "user/base"
    assert card.data.pipeline_tag == "text-generation"
    assert {"hfgen", "peft", "lora", "position:alibi"} <= set(card.data.tags)
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/adapter", trust_remote_code=True)' in card.text
    assert "| `r` | 4 |" in card.text


def test_pipeline_card():
    index = {"_class_name": ["pipeline_hfgen_diffusion", "HfGenDiffusionPipeline"],
             "unet": ["unet_hfgen", "HfGenUNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
             "vae": [None, None]}
    card = reparsed(build_pipeline_card(index, "user/pipe"))
    assert card.data.library_name == "diffusers"
    assert {"hfgen", "HfGenDiffusionPipeline", "HfGenUNet2DModel"} <= set(card.data.tags)
    assert 'DiffusionPipeline.from_pretrained(snapshot_download("user/pipe"), trust_remote_code=True)' in card.text


# --- the card of a plain push_to_hub (hfgen.models.model_card.write_hub_card and its rules) ----------------------

@pytest.mark.parametrize("model_type, architecture, task", [
    ("hfgen_decoder", "HfGenDecoderForCausalLM", "causal-lm"),
    ("hfgen_decoder", "HfGenDecoderForCausalLMWithValueHead", "causal-lm"),
    ("hfgen_decoder", "HfGenDecoderModel", "feature-extraction"),
    ("hfgen_encoder", "HfGenEncoderForTokenClassification", "token-classification"),
    ("hfgen_seq2seq", "HfGenSeq2SeqForConditionalGeneration", "span-corruption"),
    ("hfgen_vlm", "HfGenVlmForConditionalGeneration", "image-text-to-text"),
    ("hfgen_retnet", "HfGenRetNetForCausalLM", "causal-lm"),
])
def test_task_of_each_family(model_type, architecture, task):
    assert task_for(model_type, architecture) == task
    assert task in CARD_TASKS


def test_vlm_card_loads_a_processor_and_names_both_sub_configs(tmp_path):
    from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
    from hfgen.models.configuration_hfgen_vlm import HfGenVlmConfig

    config = HfGenVlmConfig(text_config=tiny_config(softmax_variant="off_by_one"),
                            vision_config=HfGenViTConfig(image_size=8, patch_size=4), fusion="early")
    (tmp_path / "tokenizer_config.json").write_text("{}")  # a tokenizer alone is not a processor
    card = ModelCard.load(write_model_card(tmp_path, config, {}, task="image-text-to-text", model_name="u/vlm"))
    assert card.data.pipeline_tag == "image-text-to-text"
    assert {"hfgen", "hfgen_vlm", "fusion:early", "softmax:off_by_one", "attention:gqa"} <= set(card.data.tags)
    assert "AutoProcessor" not in card.text
    assert "| `fusion` | **`early`** | `projection` |" in card.text
    assert "| `vision_config.image_size` | **8** |" in card.text
    (tmp_path / "processor_config.json").write_text("{}")
    card = ModelCard.load(write_model_card(tmp_path, config, {}, task="image-text-to-text", model_name="u/vlm"))
    assert 'processor = AutoProcessor.from_pretrained("u/vlm", trust_remote_code=True)' in card.text
    assert 'AutoModelForImageTextToText.from_pretrained("u/vlm", trust_remote_code=True)' in card.text


def test_which_cards_a_plain_push_may_replace(tmp_path):
    """Missing, or hfgen's own card without numbers: (re)written. With numbers, or written by someone: kept."""
    path = tmp_path / "README.md"
    assert card_is_replaceable(path)
    build_model_card(tiny_config(), {}, "u/m").save(path)
    assert card_is_replaceable(path)
    build_model_card(tiny_config(), RESULTS, "u/m").save(path)
    assert not card_is_replaceable(path)
    path.write_text("# My model\n\nWritten by hand.\n")
    assert not card_is_replaceable(path)


def test_write_hub_card_keeps_a_written_card_and_replaces_an_unrecorded_one(tmp_path):
    """Without any Hub request: the folder's card decides, and the model's config gives the new card (the folder
    holds a tokenizer, so the card loads it; tags of the old card that are not hfgen's are carried over)."""
    from conftest import build
    from hfgen import HfGenDecoderForCausalLM

    model = build(HfGenDecoderForCausalLM, tiny_config(position_embedding="alibi"))
    path = tmp_path / "README.md"
    path.write_text("# Mine\n")
    assert not write_hub_card(model, tmp_path, "u/m") and path.read_text() == "# Mine\n"
    old = build_model_card(tiny_config(softmax_variant="off_by_one"), {}, "u/m")
    old.data.tags = [*old.data.tags, "my-tag"]
    old.save(path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert write_hub_card(model, tmp_path, "u/m")
    card = ModelCard.load(path)
    assert "position:alibi" in card.data.tags and "softmax:off_by_one" not in card.data.tags
    assert card.data.tags[-1] == "my-tag"
    assert 'AutoTokenizer.from_pretrained("u/m", trust_remote_code=True)' in card.text
