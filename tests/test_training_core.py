"""The training core (hfgen.training.core) under every Trainer objective, checked against plain Trainer runs and
hand-written references on a tiny decoder: its "evaluate -> train -> evaluate" loop trains the same weights as a
plain ``Trainer.train()`` and scores the weights it starts from and ends with; its metrics agree with Trainer's own
log; the folder it saves reloads to the same model. The objectives' own runs are in test_pretrain.py,
test_recipes_pretraining.py and test_recipes_classification.py."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hfgen import HfGenDecoderForCausalLM
from hfgen.data import MaskedLMCollator, load_encoder_tokenizer, load_tokenizer
from hfgen.training import core
from hfgen.training.core import (
    check_sequence_length,
    cpu_training_defaults,
    fixed_noise_evaluation,
    perplexity,
    save_run,
    train_and_evaluate,
)

from conftest import tiny_config

BLOCK = 16


def _args(output_dir, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                  learning_rate=1e-2, max_steps=6, logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=True, seed=0, **cpu_training_defaults())
    return TrainingArguments(**{**values, **overrides})


def _blocks(count: int, seed: int, vocab_size: int = 128) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (count, BLOCK), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer()
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = HfGenDecoderForCausalLM(config)
    train = _blocks(24, seed=1, vocab_size=len(tokenizer))
    return tokenizer, model, train, train.select(range(8))  # scored on rows it trains on: the loss must fall


def _trainer(model, args, tokenizer, train, validation) -> Trainer:
    return Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer,
                   data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))


def _mean_loss(model, tokenizer, rows: Dataset, batch_size: int = 4) -> float:
    """The validation loss written out: the mean over batches of the model's own next-token loss."""
    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            losses.append(float(model(**collate([rows[i] for i in range(start, start + batch_size)])).loss))
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def core_and_plain(setup, tmp_path_factory):
    """The core's run and a plain ``Trainer.train()`` from the same weights, seed and data."""
    tokenizer, model, train, validation = setup
    start = copy.deepcopy(model)
    trained = copy.deepcopy(model)
    run = train_and_evaluate(_trainer(trained, _args(tmp_path_factory.mktemp("core")), tokenizer, train,
                                      validation))
    plain = copy.deepcopy(model)
    plain_trainer = _trainer(plain, _args(tmp_path_factory.mktemp("plain")), tokenizer, train, validation)
    plain_trainer.train()
    return run, plain_trainer, start


def test_core_trains_the_weights_of_a_plain_trainer_run(core_and_plain):
    run, plain_trainer, _ = core_and_plain
    for (name, ours), (_, theirs) in zip(run.trainer.model.named_parameters(),
                                         plain_trainer.model.named_parameters()):
        assert torch.equal(ours, theirs), name
    assert run.trainer.state.global_step == plain_trainer.state.global_step == 6


def test_core_scores_the_start_and_the_end(core_and_plain, setup):
    run, plain_trainer, start = core_and_plain
    tokenizer, _, _, validation = setup
    assert run.before["eval_loss"] == pytest.approx(_mean_loss(start, tokenizer, validation), rel=1e-5)
    assert run.after["eval_loss"] == pytest.approx(_mean_loss(plain_trainer.model, tokenizer, validation), rel=1e-5)
    assert run.after["eval_loss"] < run.before["eval_loss"]


def test_run_metrics_agree_with_trainers_log(core_and_plain, setup):
    run, plain_trainer, _ = core_and_plain
    _, model, train, validation = setup
    metrics = run.metrics({"eval_loss": run.after["eval_loss"]}, {"block_size": BLOCK})
    logged = [entry["loss"] for entry in plain_trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6
    # Trainer logs each step's loss rounded to 4 digits; train_loss is their mean.
    assert metrics["train_loss"] == pytest.approx(sum(logged) / len(logged), abs=1e-3)
    assert metrics["global_step"] == 6 and metrics["total_train_batch_size"] == 4
    assert metrics["train_blocks"] == len(train) and metrics["eval_blocks"] == len(validation)
    assert metrics["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert "resumed_from_step" not in metrics  # None entries are left out
    assert run.eval_points() == [(0, run.before["eval_loss"]), (6, run.after["eval_loss"])]


def test_save_run_writes_a_folder_that_reloads(core_and_plain, setup):
    run, _, _ = core_and_plain
    tokenizer = setup[0]
    metrics = {"eval_perplexity": perplexity(run.after["eval_loss"]), "eval_loss": run.after["eval_loss"]}
    assert save_run(run.trainer, run.trainer.model.config, metrics, task="causal-lm", title="t",
                    eval_points=run.eval_points()) is None  # no --push_to_hub: nothing pushed
    out = run.trainer.args.output_dir
    assert json.loads(open(f"{out}/all_results.json").read()) == pytest.approx(metrics)
    assert open(f"{out}/{core.LOSS_CURVE_FILE}", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "`loss_curve.png`" in open(f"{out}/README.md").read()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tokenizer("def f(x): return x")["input_ids"]])
    run.trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, run.trainer.model(ids).logits, rtol=0, atol=0)


def test_fixed_noise_evaluation_scores_the_same_masks_each_time(tmp_path):
    """MLM masks are random: the core's evaluation fixes them, so two evaluations of the same weights agree
    exactly (while a plain evaluation in another epoch draws other masks)."""
    from hfgen import HfGenEncoderConfig, HfGenEncoderForMaskedLM

    tokenizer = load_encoder_tokenizer()
    torch.manual_seed(0)
    model = HfGenEncoderForMaskedLM(HfGenEncoderConfig(vocab_size=len(tokenizer), hidden_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64))
    rows = _blocks(8, seed=3, vocab_size=len(tokenizer))
    collator = MaskedLMCollator(tokenizer, mlm_probability=0.3, seed=0)
    trainer = Trainer(model=model, args=_args(tmp_path), eval_dataset=rows, data_collator=collator)
    evaluate = fixed_noise_evaluation(trainer, collator, seed=7)
    first = evaluate()["eval_loss"]
    collator.epoch = 5  # as DenoisingEpochCallback moves it during training
    assert evaluate()["eval_loss"] == first
    with collator.fixed_noise(8):
        assert trainer.evaluate()["eval_loss"] != first  # other masks, other loss: the seed matters


def test_check_sequence_length_names_the_argument():
    learned = tiny_config(position_embedding="learned", max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"block_size \(32\) exceeds max_position_embeddings \(16\) of learned"):
        check_sequence_length(learned, 32, "block_size")
    check_sequence_length(learned, 16, "block_size")  # at the limit: fine
    rotary = tiny_config(max_position_embeddings=16)
    check_sequence_length(rotary, 32, "block_size")  # rotary positions extrapolate
    with pytest.raises(ValueError, match=r"max_length \(32\) exceeds max_position_embeddings \(16\);"):
        check_sequence_length(rotary, 32, "max_length", learned_only=False)


def test_perplexity_is_exp_of_the_loss():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e6) == math.inf  # overflow: an untrained or diverged model


def test_names_from_before_the_core_stay_importable():
    from hfgen.training import arguments, masked_lm, pretrain, recipe_common

    assert pretrain.ModelArguments is arguments.ModelArguments
    assert pretrain.cpu_training_defaults is core.cpu_training_defaults
    assert pretrain.write_loss_curve is core.write_loss_curve
    assert masked_lm.EncoderModelArguments is arguments.EncoderModelArguments
    assert recipe_common.PretrainingDataArguments is arguments.PretrainingDataArguments
    assert recipe_common.save_run is core.save_run
