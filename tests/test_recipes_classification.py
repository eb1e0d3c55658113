"""Fine-tuning for classification (hfgen.training.classification, recipes/finetune_classification.py): every family,
from scratch and from pre-trained folders; saved folders reload with identical logits, and the reported accuracy
equals a plain recomputation from the reloaded model."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from hfgen.data.labelled import LABELS, load_reference_manual_groups
from hfgen.training.classification import (
    ClassificationDataArguments,
    ClassificationModelArguments,
    finetune_classification,
    label_token_ids,
)
from transfer_fixtures import TINY_FLAGS, TINY_MODEL, mlm_run, span_run, training_args

REPO = Path(__file__).resolve().parents[1]
DATA = ClassificationDataArguments(max_length=32, max_train_samples=16, max_eval_samples=24)


def _test_texts_and_labels(n: int = DATA.max_eval_samples) -> tuple[list[str], torch.Tensor]:
    test = load_reference_manual_groups()["test"].select(range(n))
    return list(test["text"]), torch.tensor(list(test["label"]))


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """An MLM-pre-trained encoder fine-tuned for 4 steps on 16 labelled paragraphs."""
    model_args = ClassificationModelArguments(model_name_or_path=mlm_run().output_dir)
    return finetune_classification(model_args, DATA, training_args(tmp_path_factory.mktemp("cls") / "encoder"))


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory):
    """A span-corruption-pre-trained encoder-decoder fine-tuned text-to-text for 4 steps."""
    model_args = ClassificationModelArguments(model_name_or_path=span_run().output_dir, seq2seq_head="text_to_text")
    return finetune_classification(model_args, DATA, training_args(tmp_path_factory.mktemp("cls") / "seq2seq"))


@pytest.fixture(scope="module")
def seq2seq_head_run(tmp_path_factory):
    """The same checkpoint fine-tuned with the classification head (the default) on a validation split."""
    model_args = ClassificationModelArguments(model_name_or_path=span_run().output_dir)
    data = ClassificationDataArguments(max_length=32, max_train_samples=16, max_eval_samples=24,
                                       validation_fraction=0.2)
    return finetune_classification(model_args, data, training_args(tmp_path_factory.mktemp("cls") / "head"))


def test_encoder_folder_reloads_with_identical_logits_and_labels(encoder_run):
    out = encoder_run.output_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts, _ = _test_texts_and_labels(4)
    inputs = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    with torch.no_grad():
        expected = encoder_run.model.eval()(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=1e-6)
    card = ModelCard.load(Path(out) / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    [result] = card.data.eval_results
    assert (result.metric_type, result.dataset_split) == ("accuracy", "test")
    assert f"continued from `{mlm_run().output_dir}`" in card.text
    assert (Path(out) / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoder_reported_accuracy_equals_plain_recomputation(encoder_run):
    """The number that went through Trainer, preprocess_logits_for_metrics and the evaluate module equals the share
    of argmax hits computed here from the reloaded folder, one example at a time (no padding involved)."""
    tokenizer = AutoTokenizer.from_pretrained(encoder_run.output_dir)
    model = AutoModelForSequenceClassification.from_pretrained(encoder_run.output_dir).eval()
    texts, labels = _test_texts_and_labels()
    with torch.no_grad():
        predictions = torch.stack([model(**tokenizer(t, truncation=True, max_length=32, return_tensors="pt"))
                                   .logits[0].argmax() for t in texts])
    assert encoder_run.eval_accuracy == pytest.approx((predictions == labels).double().mean().item(), abs=1e-9)
    results = json.loads((Path(encoder_run.output_dir) / "all_results.json").read_text())
    assert results["train_examples"] == 16 and results["eval_examples"] == 24


def test_seq2seq_text_to_text_reloads_and_accuracy_recomputes(seq2seq_run):
    out = seq2seq_run.output_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    answers = label_token_ids(tokenizer, LABELS)
    assert tokenizer.convert_ids_to_tokens(answers)[:3] == ["Ġlexical", "Ġdata", "Ġexecution"]
    texts, labels = _test_texts_and_labels()
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    start = torch.tensor([[model.config.decoder_start_token_id, sentinel]])
    predictions = []
    with torch.no_grad():
        for text in texts:  # the input as the fine-tuning saw it (span-corruption format): tokens, sentinel, eos
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=30)["input_ids"]
            ids = torch.tensor([ids + [sentinel, tokenizer.eos_token_id]])
            logits = model(input_ids=ids, decoder_input_ids=start).logits
            expected = seq2seq_run.model.eval()(input_ids=ids, decoder_input_ids=start).logits
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
            predictions.append(logits[0, 1, answers].argmax())  # the class word follows <extra_id_0>
    assert seq2seq_run.eval_accuracy == pytest.approx(
        (torch.stack(predictions) == labels).double().mean().item(), abs=1e-9)
    assert ModelCard.load(Path(out) / "README.md").data.pipeline_tag == "text2text-generation"


def test_seq2seq_head_reloads_and_validation_accuracy_recomputes(seq2seq_head_run):
    """The default seq2seq fine-tuning: AutoModelForSequenceClassification reloads it with identical logits, and
    the reported accuracy -- on the validation split carved out of train, not on test -- equals the share of argmax
    hits recomputed here one example at a time from the input as documented (tokens, then eos)."""
    out = seq2seq_head_run.output_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.model_type == "hfgen_seq2seq" and model.config.id2label == dict(enumerate(LABELS))
    splits = load_reference_manual_groups(validation_fraction=0.2)
    validation = splits["validation"].select(range(24))
    assert not set(validation["text"]) & (set(splits["test"]["text"]) | set(splits["train"]["text"]))
    predictions = []
    with torch.no_grad():
        for text in validation["text"]:
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=31)["input_ids"]
            ids = torch.tensor([ids + [tokenizer.eos_token_id]])
            logits = model(input_ids=ids).logits
            torch.testing.assert_close(logits, seq2seq_head_run.model.eval()(input_ids=ids).logits, rtol=0, atol=1e-6)
            predictions.append(logits[0].argmax())
    assert seq2seq_head_run.eval_accuracy == pytest.approx(
        (torch.stack(predictions) == torch.tensor(validation["label"])).double().mean().item(), abs=1e-9)
    card = ModelCard.load(Path(out) / "README.md")  # no test accuracy claimed for a validation score
    assert card.data.pipeline_tag == "text-classification" and not card.data.eval_results
    results = json.loads((Path(out) / "all_results.json").read_text())
    assert results["validation_accuracy"] == seq2seq_head_run.eval_accuracy and "eval_accuracy" not in results


def test_pretrained_encoder_weights_are_the_starting_point(tmp_path):
    """With learning rate 0 the fine-tuned encoder keeps exactly the MLM checkpoint's encoder weights."""
    model_args = ClassificationModelArguments(model_name_or_path=mlm_run().output_dir)
    data = ClassificationDataArguments(max_length=16, max_train_samples=8, max_eval_samples=8)
    result = finetune_classification(model_args, data, training_args(tmp_path / "frozen", learning_rate=0.0,
                                                                       max_steps=1))
    pretrained = load_file(Path(mlm_run().output_dir) / "model.safetensors")
    encoder = {k: v for k, v in result.model.state_dict().items() if k.startswith("bert.") and "pooler" not in k}
    assert encoder and all(torch.equal(v, pretrained[k]) for k, v in encoder.items())


def test_decoder_from_scratch_reloads(tmp_path):
    model_args = ClassificationModelArguments(model_type="hfgen_decoder", num_key_value_heads=1, **TINY_MODEL)
    data = ClassificationDataArguments(max_length=16, max_train_samples=8, max_eval_samples=8)
    result = finetune_classification(model_args, data, training_args(tmp_path / "decoder", max_steps=2))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "decoder")
    inputs = tokenizer(["The pass statement", "Identifiers are unlimited in length"], padding=True,
                       return_tensors="pt")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "decoder").eval()
    assert reloaded.config.num_key_value_heads == 1 and reloaded.config.num_labels == len(LABELS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, result.model.eval()(**inputs).logits, rtol=0, atol=1e-6)


def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="Cannot fine-tune model_type 'bert'.*hfgen_encoder, hfgen_decoder"):
        finetune_classification(ClassificationModelArguments(model_type="bert"), DATA, training_args(tmp_path / "a"))
    with pytest.raises(ValueError, match="max_train_samples=5000 exceeds the 826 labelled training examples"):
        finetune_classification(ClassificationModelArguments(**TINY_MODEL),
                                 ClassificationDataArguments(max_train_samples=5000), training_args(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"max_length \(32\) exceeds max_position_embeddings \(16\)"):
        short = ClassificationModelArguments(**TINY_MODEL, config_overrides="max_position_embeddings=16")
        finetune_classification(short, DATA, training_args(tmp_path / "c"))
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        finetune_classification(ClassificationModelArguments(**TINY_MODEL), ClassificationDataArguments(max_length=0),
                                training_args(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"validation_fraction must be a number in \[0, 1\)"):
        finetune_classification(ClassificationModelArguments(**TINY_MODEL),
                                ClassificationDataArguments(validation_fraction=1.0), training_args(tmp_path / "e"))
    with pytest.raises(ValueError, match="seq2seq_head must be one of classification, text_to_text"):
        finetune_classification(ClassificationModelArguments(model_type="hfgen_seq2seq", seq2seq_head="lm"), DATA,
                                training_args(tmp_path / "f"))
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_recipe_main_from_scratch(tmp_path):
    recipe = runpy.run_path(str(REPO / "recipes/finetune_classification.py"), run_name="recipe")
    recipe["main"]([str(REPO / "recipes/configs/classification_tiny.yaml"), *TINY_FLAGS, "--max_length", "16",
                    "--max_train_samples", "8", "--max_eval_samples", "8", "--max_steps", "2",
                    "--output_dir", str(tmp_path / "scratch"), "--disable_tqdm", "true"])
    results = json.loads((tmp_path / "scratch" / "all_results.json").read_text())
    assert results["global_step"] == 2 and results["train_examples"] == 8 and 0 <= results["eval_accuracy"] <= 1
    assert json.loads((tmp_path / "scratch" / "config.json").read_text())["model_type"] == "hfgen_encoder"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pretrain_masked_lm", "pretrain_span_corruption", "finetune_classification"])
def test_recipe_under_torchrun_with_two_processes(recipe, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    data = (["--max_length", "16", "--max_train_samples", "32", "--max_eval_samples", "8"]
            if recipe == "finetune_classification" else
            ["--block_size", "32", "--max_train_samples", "32", "--max_eval_samples", "8"])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "recipes" / f"{recipe}.py"), *TINY_FLAGS, *data, "--per_device_train_batch_size", "4",
         "--max_steps", "3", "--logging_steps", "1", "--output_dir", str(out), "--report_to", "none",
         "--save_strategy", "no", "--disable_tqdm", "true"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "process 0 of 2" in log and "process 1 of 2" in log
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["total_train_batch_size"] == 8 and results["global_step"] == 3


def test_text_to_text_examples_take_the_span_corruption_format():
    """Input: the tokens, <extra_id_0>, eos; target: <extra_id_0>, the class word. A tokenizer without sentinels
    is refused, naming the tokenizer to use."""
    from hfgen.data import load_tokenizer
    from hfgen.training.classification import text_to_text_example
    from hfgen.training.span_corruption import load_span_corruption_tokenizer

    tokenizer = load_span_corruption_tokenizer(num_sentinel_tokens=4)
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    text = "The pass statement is a null operation"
    words = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer = label_token_ids(tokenizer, LABELS)[4]
    example = text_to_text_example(tokenizer, text, max_length=64, answer_id=answer)
    assert example["input_ids"] == words + [sentinel, tokenizer.eos_token_id]
    assert example["attention_mask"] == [1] * (len(words) + 2) and example["labels"] == [sentinel, answer]
    assert text_to_text_example(tokenizer, text, max_length=5)["input_ids"] == words[:3] + [sentinel,
                                                                                            tokenizer.eos_token_id]
    with pytest.raises(ValueError, match=r"needs the sentinel <extra_id_0>.*load_span_corruption_tokenizer"):
        text_to_text_example(load_tokenizer(), text, max_length=64)
