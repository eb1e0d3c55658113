"""The transfer-learning experiment (hfgen.training.transfer, recipes/transfer_learning.py) end to end at a tiny
size: pre-trained folders from the real pre-training cores, fine-tuning from them and from scratch, the table, JSON
and plot it writes, and the summary against a plain recomputation from the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfgen.training.transfer import TransferArguments, fewest_examples, run_transfer_experiment
from transfer_fixtures import TINY_MODEL, mlm_run, span_run


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    args = TransferArguments(
        output_dir=str(tmp_path_factory.mktemp("transfer")), train_sizes="8,16", **TINY_MODEL, max_length=32,
        finetune_steps=2, finetune_batch_size=8, max_eval_samples=16,
        pretrained_dirs=f"encoder={mlm_run().output_dir},seq2seq={span_run().output_dir}")
    return args, run_transfer_experiment(args, disable_tqdm=True)


def test_every_family_size_and_start_is_run(experiment):
    _, outcome = experiment
    rows = outcome["results"]
    assert sorted((r["family"], r["init"], r["train_examples"]) for r in rows) == sorted(
        (f, i, n) for f in ("encoder", "seq2seq") for i in ("scratch", "pretrained") for n in (8, 16))
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        # Accuracy is a share of 16 test examples.
        assert row["accuracy"] * 16 == pytest.approx(round(row["accuracy"] * 16))


def test_files_and_summary(experiment):
    args, outcome = experiment
    out = Path(args.output_dir)
    payload = json.loads((out / "results.json").read_text())
    assert payload["results"] == outcome["results"] and payload["arguments"]["train_sizes"] == "8,16"
    assert (out / "accuracy_vs_examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    for family in ("encoder", "seq2seq"):
        rows = [r for r in outcome["results"] if r["family"] == family]
        scratch = {r["train_examples"]: r["accuracy"] for r in rows if r["init"] == "scratch"}
        pretrained = {r["train_examples"]: r["accuracy"] for r in rows if r["init"] == "pretrained"}
        summary = payload["summary"][family]
        gains = [pretrained[n] - scratch[n] for n in (8, 16)]
        assert summary["mean_accuracy_gain"] == pytest.approx(sum(gains) / 2)
        assert summary["pretrained_wins"] == sum(g > 0 for g in gains)
        assert summary["target_accuracy"] == max(scratch.values())
        reach = [n for n in (8, 16) if pretrained[n] >= max(scratch.values())]
        assert summary["pretrained_examples_to_target"] == (min(reach) if reach else None)
        for n in (8, 16):
            assert f"| {n} | {scratch[n]:.3f} (" in table
    assert "pre-trained with masked LM" in table and "pre-trained with span corruption" in table


def test_fewest_examples_rule():
    rows = [{"train_examples": 10, "accuracy": 0.3}, {"train_examples": 50, "accuracy": 0.5},
            {"train_examples": 100, "accuracy": 0.45}]
    assert fewest_examples(rows, 0.45) == 50 and fewest_examples(rows, 0.3) == 10
    assert fewest_examples(rows, 0.6) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_sizes": "0,10"}, "train_sizes entries must be integers in"),
    ({"train_sizes": "10,5000"}, "train_sizes entries must be integers in"),
    ({"families": "bert"}, "families must name some of encoder, seq2seq"),
    ({"pretrained_dirs": "bert=/x"}, "pretrained_dirs keys must be among"),
    ({"finetune_steps": 0}, "finetune_steps must be a positive int"),
])
def test_bad_arguments_fail_before_any_training(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "out"), **kwargs))
    assert not (tmp_path / "out").exists()
