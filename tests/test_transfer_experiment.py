"""The transfer-learning experiment (hfgen.training.transfer, recipes/transfer_learning.py) end to end at a tiny
size: pre-trained folders from the real pre-training cores, fine-tuning from them and from scratch, the table, JSON
and plot it writes, and the summary against a plain recomputation from the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfgen.training.transfer import (TransferArguments, examples_to_match, fewest_examples, pretrain_family,
                                     run_transfer_experiment, sign_test_p_value)
from transfer_fixtures import TINY_MODEL, mlm_run, span_run


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    args = TransferArguments(
        output_dir=str(tmp_path_factory.mktemp("transfer")), train_sizes="8,16", **TINY_MODEL, max_length=32,
        finetune_steps=2, finetune_batch_size=8, max_eval_samples=16, finetune_seeds="0,1",
        finetune_learning_rates="1e-3,5e-3", learning_rate_per_size=False,  # (per size: its own test below)
        pretrained_dirs=f"encoder={mlm_run().output_dir},seq2seq={span_run().output_dir}")
    return args, run_transfer_experiment(args, disable_tqdm=True)


def test_every_family_size_and_start_is_run(experiment):
    _, outcome = experiment
    rows = outcome["results"]
    assert sorted((r["family"], r["init"], r["train_examples"], r["seed"]) for r in rows) == sorted(
        (f, i, n, s) for f in ("encoder", "seq2seq") for i in ("scratch", "pretrained") for n in (8, 16)
        for s in (0, 1))
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        # Accuracy is a share of 16 test examples.
        assert row["accuracy"] * 16 == pytest.approx(round(row["accuracy"] * 16))


def _mean(values):
    return sum(values) / len(values)


def test_files_and_summary(experiment):
    """Means over the seeds, the sample standard deviation, the gains and the labelled-data comparison, recomputed
    here from the rows."""
    args, outcome = experiment
    out = Path(args.output_dir)
    payload = json.loads((out / "results.json").read_text())
    assert payload["results"] == outcome["results"] and payload["arguments"]["train_sizes"] == "8,16"
    assert (out / "accuracy_vs_examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(payload["pretraining"]) == {"encoder", "seq2seq"}
    assert payload["pretraining"]["encoder"]["eval_perplexity"] == pytest.approx(mlm_run().eval_perplexity_after)
    table = (out / "results.md").read_text()
    for family in ("encoder", "seq2seq"):
        rows = [r for r in outcome["results"] if r["family"] == family]
        runs = {(r["init"], r["train_examples"], r["seed"]): r["accuracy"] for r in rows}
        mean = {(i, n): _mean([runs[(i, n, s)] for s in (0, 1)]) for i in ("scratch", "pretrained") for n in (8, 16)}
        std = {(i, n): abs(runs[(i, n, 0)] - runs[(i, n, 1)]) / 2 ** 0.5 for i in ("scratch", "pretrained")
               for n in (8, 16)}  # the sample standard deviation of two values
        summary = payload["summary"][family]
        gains = [mean[("pretrained", n)] - mean[("scratch", n)] for n in (8, 16)]
        assert summary["mean_accuracy_gain"] == pytest.approx(_mean(gains))
        assert summary["pretrained_wins"] == sum(g > 0 for g in gains)
        assert summary["runs"] == 4 and summary["run_wins"] == sum(
            runs[("pretrained", n, s)] > runs[("scratch", n, s)] for n in (8, 16) for s in (0, 1))
        # sign test, written out for 4 runs: P(at least w heads in 4 fair tosses)
        assert summary["run_wins_p_value"] == pytest.approx(
            {0: 16, 1: 15, 2: 11, 3: 5, 4: 1}[summary["run_wins"]] / 16)
        target = max(mean[("scratch", n)] for n in (8, 16))
        assert summary["target_accuracy"] == pytest.approx(target)
        reach = [n for n in (8, 16) if mean[("pretrained", n)] >= target - 1e-12]
        assert summary["pretrained_examples_to_target"] == (min(reach) if reach else None)
        matches = summary["examples_to_match_scratch"]
        assert [(m["scratch_examples"], m["scratch_accuracy"]) for m in matches] == [
            (n, pytest.approx(mean[("scratch", n)])) for n in (8, 16)]
        assert all(m["how"] in ("at_most", "interpolated", "not_reached") for m in matches)
        for n in (8, 16):
            aggregated = next(r for r in payload["means"] if (r["family"], r["init"], r["train_examples"]) ==
                              (family, "scratch", n))
            assert aggregated["accuracy_std"] == pytest.approx(std[("scratch", n)]) and aggregated["seeds"] == 2
            assert f"| {n} | {mean[('scratch', n)]:.3f} ± {std[('scratch', n)]:.3f} | " in table
    assert "pre-trained with masked LM" in table and "pre-trained with span corruption" in table


def test_runs_made_in_parallel_merge_into_the_same_summary(experiment, tmp_path):
    """Split the run's rows by seed into two folders (as two processes would write them), merge: the same
    summary, table and plot as the single run (also when one folder predates learning_rate_per_size); mismatched
    budgets and duplicated runs are refused."""
    args, outcome = experiment
    payload = json.loads((Path(args.output_dir) / "results.json").read_text())
    folders = []
    for seed in (0, 1):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        part = {**payload, "results": [r for r in payload["results"] if r["seed"] == seed]}
        part["arguments"] = {**payload["arguments"], "finetune_seeds": str(seed)}
        if seed == 1:  # as a run made before the key existed, when one rate served every size
            del part["arguments"]["learning_rate_per_size"]
        (folder / "results.json").write_text(json.dumps(part))
        folders.append(str(folder))
    merged = run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "merged"),
                                                       merge_from=",".join(folders)))
    assert merged["summary"] == outcome["summary"]
    assert (tmp_path / "merged" / "results.md").read_text() == (Path(args.output_dir) / "results.md").read_text()
    with pytest.raises(ValueError, match="measured the same"):
        run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "twice"),
                                                  merge_from=f"{folders[0]},{folders[0]}"))
    other = json.loads((Path(folders[1]) / "results.json").read_text())
    other["arguments"]["finetune_steps"] = 3
    (Path(folders[1]) / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="used other settings.*finetune_steps"):
        run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "mixed"), merge_from=",".join(folders)))
    with pytest.raises(ValueError, match="has no results.json"):
        run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "none"), merge_from=str(tmp_path)))


def test_merge_checks_the_seq2seq_head_only_where_seq2seq_rows_are(experiment, tmp_path):
    """An encoder-only folder merges whatever its seq2seq_head; two folders of seq2seq rows with different heads
    are refused."""
    args, outcome = experiment
    payload = json.loads((Path(args.output_dir) / "results.json").read_text())

    def folder(name: str, keep, head: str) -> str:
        path = tmp_path / name
        path.mkdir()
        part = {**payload, "results": [r for r in payload["results"] if keep(r)],
                "arguments": {**payload["arguments"], "seq2seq_head": head}}
        (path / "results.json").write_text(json.dumps(part))
        return str(path)

    encoder = folder("encoder", lambda r: r["family"] == "encoder", "classification")
    seq2seq = folder("seq2seq", lambda r: r["family"] == "seq2seq", "text_to_text")
    merged = run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "merged"),
                                                       merge_from=f"{encoder},{seq2seq}"))
    assert merged["summary"] == outcome["summary"]
    assert "seq2seq fine-tuned text to text" in (tmp_path / "merged" / "results.md").read_text()
    other = folder("other", lambda r: r["family"] == "seq2seq" and r["seed"] == 0, "classification")
    rest = folder("rest", lambda r: r["family"] == "seq2seq" and r["seed"] == 1, "text_to_text")
    with pytest.raises(ValueError, match="different seq2seq_head settings"):
        run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "mixed"), merge_from=f"{other},{rest}"))


def test_learning_rate_is_chosen_on_validation_for_each_start(experiment):
    """Every (family, start) tried both candidates on the validation split; the rate its runs used is the one with
    the best validation accuracy (ties: macro-F1, then the smaller rate), recomputed here."""
    args, outcome = experiment
    payload = json.loads((Path(args.output_dir) / "results.json").read_text())
    assert payload["learning_rate_selection"] == outcome["learning_rate_selection"]
    for family in ("encoder", "seq2seq"):
        for init in ("scratch", "pretrained"):
            chosen = payload["learning_rate_selection"][family][init]
            scores = chosen["validation"]
            assert [row["learning_rate"] for row in scores] == [1e-3, 5e-3]
            best = max(scores, key=lambda r: (r["accuracy"], r["macro_f1"], -r["learning_rate"]))
            assert chosen["learning_rate"] == best["learning_rate"]
            assert {r["learning_rate"] for r in payload["results"]
                    if (r["family"], r["init"]) == (family, init)} == {best["learning_rate"]}
    assert "chosen on the validation split" in (Path(args.output_dir) / "results.md").read_text()


def test_learning_rate_per_size_is_chosen_on_that_many_validation_examples(tmp_path):
    """learning_rate_per_size: every (start, size) tried every candidate on the validation split, and each run
    used the best candidate of its own size (recomputed here); the table says so."""
    args = TransferArguments(
        output_dir=str(tmp_path), families="encoder", train_sizes="8,16", **TINY_MODEL, max_length=32,
        finetune_steps=2, finetune_batch_size=8, max_eval_samples=16, finetune_seeds="0",
        finetune_learning_rates="1e-3,5e-3", learning_rate_per_size=True,
        pretrained_dirs=f"encoder={mlm_run().output_dir}")
    outcome = run_transfer_experiment(args, disable_tqdm=True)
    for init in ("scratch", "pretrained"):
        per_size = outcome["learning_rate_selection"]["encoder"][init]["per_size"]
        assert sorted(per_size) == ["16", "8"]
        for n in (8, 16):
            scores = per_size[str(n)]["validation"]
            assert [row["learning_rate"] for row in scores] == [1e-3, 5e-3]
            best = max(scores, key=lambda r: (r["accuracy"], r["macro_f1"], -r["learning_rate"]))
            assert [r["learning_rate"] for r in outcome["results"]
                    if (r["init"], r["train_examples"]) == (init, n)] == [best["learning_rate"]]
    assert "chosen on the validation split for each size" in (tmp_path / "results.md").read_text()


def test_sign_test_p_value():
    assert sign_test_p_value(12, 12) == pytest.approx(1 / 4096)
    assert sign_test_p_value(10, 12) == pytest.approx((1 + 12 + 66) / 4096)  # C(12,12) + C(12,11) + C(12,10)
    assert sign_test_p_value(0, 5) == pytest.approx(1.0)


def test_fewest_examples_rule():
    rows = [{"train_examples": 10, "accuracy": 0.3}, {"train_examples": 50, "accuracy": 0.5},
            {"train_examples": 100, "accuracy": 0.45}]
    assert fewest_examples(rows, 0.45) == 50 and fewest_examples(rows, 0.3) == 10
    assert fewest_examples(rows, 0.6) is None


def test_examples_to_match_interpolates_in_log_examples():
    """Written out: between (10, 0.3) and (50, 0.5), accuracy 0.4 is halfway in log(n), so n = sqrt(10 * 50)."""
    rows = [{"train_examples": 50, "accuracy": 0.5}, {"train_examples": 10, "accuracy": 0.3},
            {"train_examples": 100, "accuracy": 0.45}]
    n, how = examples_to_match(rows, 0.4)
    assert how == "interpolated" and n == pytest.approx((10 * 50) ** 0.5)
    n, how = examples_to_match(rows, 0.5)  # reached exactly at a measured size
    assert how == "interpolated" and n == pytest.approx(50)
    assert examples_to_match(rows, 0.25) == (10.0, "at_most")  # the smallest size already does better
    assert examples_to_match(rows, 0.55) == (None, "not_reached")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_sizes": "0,10"}, "train_sizes entries must be integers in"),
    ({"train_sizes": "10,5000"}, "train_sizes entries must be integers in"),
    ({"families": "bert"}, "families must name some of encoder, seq2seq"),
    ({"pretrained_dirs": "bert=/x"}, "pretrained_dirs keys must be among"),
    ({"finetune_steps": 0}, "finetune_steps must be a positive int"),
    ({"finetune_seeds": "0,x"}, "finetune_seeds must be comma-separated integers"),
    ({"finetune_learning_rates": "1e-3,fast"}, "finetune_learning_rates must be comma-separated numbers > 0"),
    ({"finetune_learning_rates": "0"}, "finetune_learning_rates must be comma-separated numbers > 0"),
    ({"selection_validation_fraction": 1.0}, "selection_validation_fraction must be in"),
    ({"seq2seq_head": "lm"}, "seq2seq_head must be one of classification, text_to_text"),
    ({"seq2seq_objective": "mlm"}, "seq2seq_objective must be one of span_corruption, bart_denoising"),
])
def test_bad_arguments_fail_before_any_training(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_transfer_experiment(TransferArguments(output_dir=str(tmp_path / "out"), **kwargs))
    assert not (tmp_path / "out").exists()


def test_pretraining_text_can_include_the_docstrings(tmp_path):
    """``pretrain_include_docstrings`` reaches the pre-training recipe: more blocks of text, test paragraphs still
    held out (the recipe's default)."""
    blocks = {}
    for docstrings in (False, True):
        args = TransferArguments(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 pretrain_steps=1, pretrain_batch_size=2, block_size=32,
                                 pretrain_include_docstrings=docstrings)
        folder = pretrain_family("seq2seq", args, tmp_path / str(docstrings), disable_tqdm=True)
        blocks[docstrings] = json.loads((Path(folder) / "all_results.json").read_text())["train_blocks"]
    assert blocks[True] > 3 * blocks[False], blocks
