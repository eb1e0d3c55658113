"""The MLM and span-corruption pre-training recipes (hfgen.training.masked_lm / span_corruption and the scripts around
them): real tiny runs on the embedded corpus, output folders reloaded through the Auto classes, bad input."""

from __future__ import annotations

import json
import runpy
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hfgen.data.denoising import DataCollatorForBartDenoising, sentinel_token_ids
from hfgen.training.masked_lm import MaskedLMDataArguments, pretrain_masked_lm
from hfgen.training.pretrain import ModelArguments
from hfgen.training.span_corruption import SpanCorruptionDataArguments, pretrain_span_corruption
from transfer_fixtures import TINY_FLAGS, TINY_MODEL, mlm_run, span_run, training_args

REPO = Path(__file__).resolve().parents[1]
RECIPES = {name: REPO / "recipes" / f"{name}.py" for name in (
    "pretrain_masked_lm", "pretrain_span_corruption", "finetune_classification", "transfer_learning")}
PNG = b"\x89PNG\r\n\x1a\n"
SAMPLE = "The with statement is used to wrap the execution of a block"


def _card(folder: str) -> ModelCard:
    return ModelCard.load(Path(folder) / "README.md")


def test_mlm_run_learns_and_reloads_with_identical_logits():
    run = mlm_run()
    # An untrained model is near uniform over the 8195 tokens; 4 steps at 5e-3 learn token frequencies.
    assert run.eval_perplexity_before > 4000 and run.eval_perplexity_after < run.eval_perplexity_before
    tokenizer = AutoTokenizer.from_pretrained(run.output_dir)
    assert tokenizer.mask_token is not None and len(tokenizer) == run.model.config.vocab_size
    inputs = tokenizer(f"The {tokenizer.mask_token} statement is used", return_tensors="pt")
    reloaded = AutoModelForMaskedLM.from_pretrained(run.output_dir).eval()
    with torch.no_grad():
        expected = run.model.eval()(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=1e-6)


def test_mlm_folder_card_and_curve():
    out = Path(mlm_run().output_dir)
    assert (out / "loss_curve.png").read_bytes()[:8] == PNG
    assert (out / "modeling_hfgen_encoder.py").is_file()  # Hub-ready: the model code travels with the weights
    card = _card(str(out))
    assert card.data.pipeline_tag == "fill-mask" and "hfgen_encoder" in card.data.tags
    [result] = card.data.eval_results
    assert result.metric_type == "perplexity"
    assert result.metric_value == pytest.approx(mlm_run().eval_perplexity_after, rel=1e-4)
    assert "AutoModelForMaskedLM" in card.text and "masked language modelling" in card.text
    results = json.loads((out / "all_results.json").read_text())
    assert results["mlm_probability"] == 0.15 and results["global_step"] == 4


def test_span_run_learns_and_reloads_with_identical_logits():
    run = span_run()
    assert run.eval_perplexity_after < run.eval_perplexity_before
    tokenizer = AutoTokenizer.from_pretrained(run.output_dir)
    assert len(sentinel_token_ids(tokenizer)) == 100 and len(tokenizer) == run.model.config.vocab_size
    inputs = tokenizer(SAMPLE, return_tensors="pt")
    decoder_input_ids = torch.tensor([[run.model.config.decoder_start_token_id, *sentinel_token_ids(tokenizer)[:3]]])
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(run.output_dir).eval()
    with torch.no_grad():
        expected = run.model.eval()(**inputs, decoder_input_ids=decoder_input_ids).logits
        torch.testing.assert_close(reloaded(**inputs, decoder_input_ids=decoder_input_ids).logits, expected,
                                   rtol=0, atol=1e-6)
    card = _card(run.output_dir)
    assert card.data.pipeline_tag == "text2text-generation" and "AutoModelForSeq2SeqLM" in card.text
    results = json.loads((Path(run.output_dir) / "all_results.json").read_text())
    # T5's random_spans_helper: 32-token corrupted inputs come from 34 raw tokens (5 noise in 2 spans + eos).
    assert (results["block_size"], results["raw_block_size"], results["target_length"]) == (32, 34, 8)


def test_bart_denoising_run_reconstructs_the_block_and_reloads(tmp_path):
    """objective="bart_denoising": the target is the whole original block then eos (BART), the corrupted input has
    <mask> tokens and is shorter, and the saved folder (tokenizer with its mask token) reloads with the same logits."""
    data = SpanCorruptionDataArguments(block_size=32, max_train_samples=32, max_eval_samples=8,
                                       objective="bart_denoising")
    run = pretrain_span_corruption(ModelArguments(**TINY_MODEL), data, training_args(tmp_path / "out"))
    assert run.eval_perplexity_after < run.eval_perplexity_before
    tokenizer = AutoTokenizer.from_pretrained(run.output_dir)
    assert tokenizer.mask_token == "<mask>" and len(tokenizer) == run.model.config.vocab_size
    block = tokenizer(SAMPLE)["input_ids"]
    batch = DataCollatorForBartDenoising(tokenizer, seed=0)([block])
    assert batch["labels"][0].tolist() == block + [tokenizer.eos_token_id]
    assert tokenizer.mask_token_id in batch["input_ids"][0].tolist()
    assert batch["input_ids"].shape[1] < batch["labels"].shape[1]
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(run.output_dir).eval()
    with torch.no_grad():
        expected = run.model.eval()(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-6)
    card = _card(run.output_dir)
    assert card.data.pipeline_tag == "text2text-generation" and "BART's denoising" in card.text
    results = json.loads((Path(run.output_dir) / "all_results.json").read_text())
    assert results["objective"] == "bart_denoising" and results["infilling_probability"] == 0.3
    assert (results["raw_block_size"], results["target_length"]) == (32, 33)


def test_unknown_seq2seq_objective_is_refused_before_anything(tmp_path):
    data = SpanCorruptionDataArguments(block_size=32, objective="prefix_lm")
    with pytest.raises(ValueError, match="Unknown objective='prefix_lm'; valid choices are: 'span_corruption', "
                                         "'bart_denoising'"):
        pretrain_span_corruption(ModelArguments(**TINY_MODEL), data, training_args(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("probability", [0, 0.0, 1, 1.0, -0.1, 1.5])
def test_mlm_probability_outside_open_interval_is_refused_before_anything(probability, tmp_path):
    data = MaskedLMDataArguments(block_size=32, mlm_probability=probability)
    with pytest.raises(ValueError, match=r"mlm_probability must be a number in the open interval \(0, 1\)"):
        pretrain_masked_lm(ModelArguments(**TINY_MODEL), data, training_args(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_mlm_block_beyond_learned_positions_is_refused(tmp_path):
    model_args = ModelArguments(**TINY_MODEL, config_overrides="max_position_embeddings=16")
    with pytest.raises(ValueError, match=r"block_size \(32\) exceeds max_position_embeddings \(16\)"):
        pretrain_masked_lm(model_args, MaskedLMDataArguments(block_size=32), training_args(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_mlm_unknown_config_key_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="Unknown config key 'type_vocab'.*HfGenEncoderConfig.*type_vocab_size"):
        pretrain_masked_lm(ModelArguments(config_overrides="type_vocab=3"), MaskedLMDataArguments(),
                           training_args(tmp_path / "out"))


def test_span_corruption_needs_enough_sentinels(tmp_path):
    # 128-token inputs come from 148 raw tokens with 7 noise spans: 5 sentinels cannot label them.
    data = SpanCorruptionDataArguments(block_size=128, num_sentinel_tokens=5)
    with pytest.raises(ValueError, match="7 noise spans, but the tokenizer has 5 sentinel tokens"):
        pretrain_span_corruption(ModelArguments(**TINY_MODEL), data, training_args(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("noise_density", 0.0, "noise_density must be a number in"),
    ("noise_density", 1.0, "noise_density must be a number in"),
    ("mean_noise_span_length", 0.5, "mean_noise_span_length must be a number >= 1"),
    ("num_sentinel_tokens", 0, "num_sentinel_tokens must be a positive int"),
])
def test_span_corruption_bad_noise_settings(key, value, message, tmp_path):
    data = SpanCorruptionDataArguments(block_size=32, **{key: value})
    with pytest.raises(ValueError, match=message):
        pretrain_span_corruption(ModelArguments(**TINY_MODEL), data, training_args(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _recipe(name: str) -> dict:
    return runpy.run_path(str(RECIPES[name]), run_name="recipe")  # scripts, not modules of the package


@pytest.mark.parametrize(("name", "flags"), [
    ("pretrain_masked_lm", ("--mlm_probability", "--position_embedding", "disentangled", "--hold_out_task_test")),
    ("pretrain_span_corruption", ("--noise_density", "--mean_noise_span_length", "--num_sentinel_tokens",
                                  "--objective", "bart_denoising", "--infilling_probability")),
    ("finetune_classification", ("--model_name_or_path", "--model_type", "hfgen_seq2seq", "--max_train_samples")),
    ("transfer_learning", ("--train_sizes", "--families", "--pretrain_steps", "--finetune_steps",
                           "--seq2seq_objective")),
])
def test_recipe_help_lists_flags(name, flags):
    text = _recipe(name)["build_parser"]().format_help()
    for flag in flags:
        assert flag in text, flag


@pytest.mark.parametrize(("name", "config", "expected"), [
    ("pretrain_masked_lm", "mlm_tiny.yaml", {"hidden_size": 128, "block_size": 128, "mlm_probability": 0.15}),
    ("pretrain_span_corruption", "span_corruption_tiny.yaml", {"hidden_size": 128, "noise_density": 0.15,
                                                                "num_sentinel_tokens": 100}),
    ("finetune_classification", "classification_tiny.yaml", {"model_type": "hfgen_encoder", "max_length": 128,
                                                              "learning_rate": 1e-3}),
])
def test_shipped_yaml_configs_parse(name, config, expected):
    parsed = _recipe(name)["parse_arguments"]([str(REPO / "recipes" / "configs" / config)])
    values = {k: v for part in parsed for k, v in vars(part).items()}
    assert {k: values[k] for k in expected} == expected
    assert values["use_cpu"] == (not torch.cuda.is_available())


def test_transfer_yaml_parses_and_unknown_key_fails(tmp_path):
    recipe = _recipe("transfer_learning")
    args = recipe["parse_arguments"]([str(REPO / "recipes/configs/transfer_tiny.yaml"), "--train_sizes", "10,all"])
    assert (args.block_size, args.finetune_steps, args.train_sizes) == (64, 120, "10,all")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain_step: 3\n")
    with pytest.raises(SystemExit):
        recipe["parse_arguments"]([str(bad)])
    with pytest.raises(ValueError, match="families must name some of encoder, seq2seq"):
        recipe["parse_arguments"](["--families", "bert"])


def test_mlm_recipe_yaml_with_flag_overrides(tmp_path):
    config = tmp_path / "mlm.yaml"
    config.write_text(textwrap.dedent(f"""\
        position_embedding: learned
        block_size: 32
        max_train_samples: 16
        max_eval_samples: 4
        output_dir: {tmp_path / "from_yaml"}
        max_steps: 5
        per_device_train_batch_size: 4
        learning_rate: 1e-3
        report_to: none
        disable_tqdm: true
        """))
    _recipe("pretrain_masked_lm")["main"]([str(config), *TINY_FLAGS, "--max_steps", "2",
                                           "--position_embedding", "disentangled", "--mlm_probability", "0.3"])
    saved = json.loads((tmp_path / "from_yaml" / "config.json").read_text())
    assert saved["position_embedding"] == "disentangled" and saved["hidden_size"] == 32
    results = json.loads((tmp_path / "from_yaml" / "all_results.json").read_text())
    assert results["global_step"] == 2 and results["mlm_probability"] == 0.3 and results["learning_rate"] == 1e-3


def test_span_recipe_with_t5_like_keys(tmp_path):
    _recipe("pretrain_span_corruption")["main"]([
        *TINY_FLAGS, "--config_overrides", "position_embedding=relative_bias,attention_scoring=dot_product",
        "--block_size", "24", "--max_train_samples", "8", "--max_eval_samples", "2", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "t5_like"), "--report_to", "none",
        "--disable_tqdm", "true", "--num_sentinel_tokens", "20"])
    saved = json.loads((tmp_path / "t5_like" / "config.json").read_text())
    assert (saved["position_embedding"], saved["attention_scoring"]) == ("relative_bias", "dot_product")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "t5_like")
    assert len(sentinel_token_ids(tokenizer)) == 20 and saved["vocab_size"] == len(tokenizer)


def test_masked_positions_loss_equals_the_models_loss():
    """The MLM trainer's loss (head only at labelled positions) is the model's own loss, value and gradients."""
    from hfgen.data import MaskedLMCollator, load_encoder_tokenizer
    from hfgen.training.masked_lm import masked_positions_loss

    model = mlm_run().model.train()
    tokenizer = load_encoder_tokenizer()
    torch.manual_seed(0)
    batch = MaskedLMCollator(tokenizer)([tokenizer(t) for t in (SAMPLE, "Identifiers are unlimited in length.")])
    torch.manual_seed(1)
    expected = model(**batch).loss
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    torch.manual_seed(1)  # the same dropout masks
    loss = masked_positions_loss(model, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    model.eval()
