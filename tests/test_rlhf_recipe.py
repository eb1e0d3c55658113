"""The RLHF ladder end to end (recipes/sft.py -> recipes/reward_model.py -> recipes/rlhf/run.py) with tiny step
counts: every stage saves a folder that reloads, the report has the before/after numbers and a PNG, the reference
has KL exactly 0 to itself; plus the evaluation helpers and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
import torch

from hfgen.data import load_tokenizer
from hfgen.data.instructions import prompt_dataset
from hfgen.models import HfGenDecoderForCausalLM
from hfgen.training.rlhf import chat_decoder_config, evaluate_policy, win_rate

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "recipes" / "rlhf" / "run.py"
PNG = b"\x89PNG\r\n\x1a\n"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--sft_steps", "3", "--reward_steps", "3",
        "--rl_steps", "2", "--rl_batch_size", "4", "--eval_prompts", "3", "--eval_samples", "1",
        "--samples_per_prompt", "2", "--max_new_tokens", "6"]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rlhf") / "ppo"
    results = _module(RUN, "rlhf_run").main(["--output_dir", str(out), *TINY])
    return out, results


def test_ppo_ladder_reports_before_and_after(ppo_run):
    out, results = ppo_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == "ppo" and set(saved["stages"]) == {"sft", "pairs", "reward_model"}
    assert saved["rule"] == "one_sentence"
    pairs = saved["stages"]["pairs"]
    assert pairs["train"] + pairs["heldout"] == pairs["corpus"] + pairs["sampled"] and pairs["heldout"] > 0
    before, after = saved["before"], saved["after"]
    assert before["kl_to_reference"] == 0.0  # the SFT model measured against itself
    for report in (before, after):
        assert 0.0 <= report["rule_success"] <= 1.0 and 0.0 <= report["win_rate_vs_sft"] <= 1.0
        assert 0.0 <= report["rule_success_heldout"] <= 1.0
        assert isinstance(report["mean_reward"], float)
    assert len(saved["curve"]) == 2
    assert (out / "rlhf_ppo.png").read_bytes()[:8] == PNG
    for folder in ("sft", "reward_model", "ppo"):
        assert (out / folder / "config.json").is_file(), folder
    stage = json.loads((out / "reward_model" / "reward_results.json").read_text())
    assert 0.0 <= stage["heldout_accuracy_after"] <= 1.0 and stage["heldout_pairs"] > 5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_dpo_and_grpo_variants_reuse_the_sft_and_reward_stages(ppo_run, method, tmp_path):
    out, _ = ppo_run
    results = _module(RUN, "rlhf_run").main([
        "--output_dir", str(tmp_path), "--method", method, "--sft_model", str(out / "sft"),
        "--reward_model", str(out / "reward_model"), *TINY])
    assert set(results["stages"]) == {"pairs"} and len(results["curve"]) == 2
    assert (tmp_path / f"rlhf_{method}.png").read_bytes()[:8] == PNG
    assert 0.0 <= results["after"]["win_rate_vs_sft"] <= 1.0


def _seeded(results: dict) -> dict:
    """What a seed determines: everything in results.json but the run's timing and environment."""
    return {key: value for key, value in results.items() if key not in ("timing", "environment")}


def _weights(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.glob("*.safetensors")))


def test_same_seed_same_results_in_a_fresh_process(ppo_run, tmp_path):
    """The whole ladder again in a fresh process (with this process's thread count, on which the last bits of a
    float reduction depend): the same pairs, reward model, PPO curve, responses and weights as the run in this
    process, which ran after other tests."""
    out, results = ppo_run
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(RUN), "--output_dir", str(again), *TINY], check=True, capture_output=True,
                   timeout=300, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert _seeded(json.loads((again / "results.json").read_text())) == _seeded(json.loads(
        (out / "results.json").read_text()))
    assert (again / "responses.json").read_text() == (out / "responses.json").read_text()
    for folder in ("sft", "reward_model", "ppo"):
        assert _weights(again / folder) == _weights(out / folder), folder


def test_reused_stages_give_the_same_policy_and_another_seed_another(ppo_run, tmp_path):
    """--sft_model / --reward_model reuse gives the full run's PPO result (the stage seeds itself instead of
    inheriting the generator's state from the stages before it); --seed 1 on the same folders gives other
    policy, so the comparisons above can tell seeds apart."""
    out, results = ppo_run
    run = _module(RUN, "rlhf_run")
    reused = {"--sft_model": str(out / "sft"), "--reward_model": str(out / "reward_model")}
    flags = [item for pair in reused.items() for item in pair]
    same = run.main(["--output_dir", str(tmp_path / "reused"), *flags, *TINY])
    assert same["curve"] == results["curve"] and same["after"] == results["after"]
    assert _weights(tmp_path / "reused" / "ppo") == _weights(out / "ppo")
    run.main(["--output_dir", str(tmp_path / "seed1"), *flags, *TINY, "--seed", "1"])
    assert _weights(tmp_path / "seed1" / "ppo") != _weights(out / "ppo")


def test_evaluation_is_seeded_and_batch_free():
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = HfGenDecoderForCausalLM(chat_decoder_config(tokenizer, hidden_size=32, num_hidden_layers=1))
    prompts = prompt_dataset().select(range(3))
    first = evaluate_policy(model, tokenizer, prompts, reference=model, max_new_tokens=5, seed=3)
    again = evaluate_policy(model, tokenizer, prompts, reference=model, max_new_tokens=5, seed=3)
    assert first.responses == again.responses and first.kl_to_reference == 0.0
    with pytest.raises(ValueError, match=r"'prompt' and 'keyword' columns"):
        evaluate_policy(model, tokenizer, prompts.remove_columns("keyword"))


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [])


def test_bad_arguments(tmp_path):
    run = _module(RUN, "rlhf_run")
    with pytest.raises(ValueError, match="valid choices: ppo, dpo, grpo"):
        run.main(["--output_dir", str(tmp_path), "--method", "kto"])
    with pytest.raises(ValueError, match="valid choices: model, rule"):
        run.main(["--output_dir", str(tmp_path), "--reward", "human"])
    with pytest.raises(ValueError, match="rl_steps must be >= 1"):
        run.main(["--output_dir", str(tmp_path), "--rl_steps", "0"])
    assert not tmp_path.joinpath("sft").exists()


@pytest.mark.slow
def test_help():
    for script in (RUN, REPO / "recipes" / "sft.py", REPO / "recipes" / "reward_model.py"):
        result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--output_dir" in result.stdout, result.stderr[-2000:]


def _two_processes(out: Path, folder: Path, flags: list[str]) -> str:
    """The ladder under torchrun x2 (gloo) into ``folder``, reusing ``out``'s SFT and reward-model folders; returns
    the log."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RUN),
         "--output_dir", str(folder), "--sft_model", str(out / "sft"), "--reward_model", str(out / "reward_model"),
         *flags], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_ppo_stage_under_torchrun_with_two_processes(ppo_run, tmp_path):
    """The recipe's PPO stage as a real 2-process DDP run, with 2 prompts per process: the policy of the one-process
    ladder with 4 (the same rollouts -- their sampling noise is keyed by prompt and step -- and mini-batches), up to
    the order of float sums."""
    from test_ddp_equivalence import assert_same_weights

    out, _ = ppo_run
    log = _two_processes(out, tmp_path, [*TINY, "--rl_batch_size", "2"])
    saved = json.loads((tmp_path / "results.json").read_text())
    # 2 steps x 2 prompts x 2 processes.
    assert "'episodes': 8" in log or "'episodes': '8'" in log, log[-3000:]
    assert len(saved["curve"]) == 2 and (tmp_path / "rlhf_ppo.png").is_file()
    assert_same_weights(load_file(out / "ppo" / "model.safetensors"), load_file(tmp_path / "ppo" / "model.safetensors"),
                        "RLHF ladder's PPO stage, 2 processes")


@pytest.mark.slow
def test_dpo_stage_under_torchrun_with_two_processes(ppo_run, tmp_path):
    """DPO (the sigmoid loss alone) with 2 pairs per process under torchrun x2 trains the policy of one process with
    4 (measured: 8.3e-7 of a tensor's scale at most). The ladder's default adds TRL's 'sft' term, a token mean per
    process: N processes then average N token means instead of taking one over the global batch (measured: 9e-3 of
    a tensor's scale after 2 steps), so it is left out here."""
    from test_ddp_equivalence import assert_same_weights

    out, _ = ppo_run
    flags = [*TINY, "--method", "dpo", "--dpo_sft_weight", "0"]
    _module(RUN, "rlhf_run").main(["--output_dir", str(tmp_path / "one"), "--sft_model", str(out / "sft"),
                                   "--reward_model", str(out / "reward_model"), *flags])
    _two_processes(out, tmp_path / "two", [*flags, "--rl_batch_size", "2"])
    assert_same_weights(load_file(tmp_path / "one" / "dpo" / "model.safetensors"),
                        load_file(tmp_path / "two" / "dpo" / "model.safetensors"), "RLHF ladder's DPO stage, 2 processes")


def test_summary_over_seeds():
    summarize = _module(REPO / "recipes" / "rlhf" / "summarize.py", "rlhf_summarize").summarize
    runs = [{"method": "ppo", "reward": "model", "rl": {"kl_coef": 0.2}, "seed": seed,
             "before": {"rule_success": 0.5}, "after": {"rule_success": after, "win_rate_vs_sft": 0.75}}
            for seed, after in ((0, 0.6), (1, 0.8), (2, 1.0))]
    summary = summarize(runs)
    assert summary["seeds"] == [0, 1, 2] and summary["per_seed"]["rule_success_after"] == [0.6, 0.8, 1.0]
    stats = summary["stats"]["rule_success_after"]
    # Sample standard deviation of 0.6, 0.8, 1.0: sqrt((0.04 + 0 + 0.04) / 2) = 0.2.
    assert stats["mean"] == pytest.approx(0.8) and stats["std"] == pytest.approx(0.2)
    assert (stats["min"], stats["max"]) == (0.6, 1.0)
    assert summary["stats"]["rule_success_before"]["std"] == 0.0 and "kl_to_sft" not in summary["stats"]
    with pytest.raises(ValueError, match="differ in method, reward or RL settings"):
        summarize([runs[0], {**runs[1], "rl": {"kl_coef": 0.5}}])


def test_sft_recipe_alone_makes_the_ladders_sft_model_with_card_and_curve(ppo_run, tmp_path):
    """recipes/sft.py with the ladder's sizes and steps makes the same weights as the ladder's first stage (the
    two share their defaults), and writes the loss curve and the hfgen model card beside them."""
    out, results = ppo_run
    sft = _module(REPO / "recipes" / "sft.py", "sft_recipe")
    metrics = sft.main(["--output_dir", str(tmp_path), "--hidden_size", "32", "--num_hidden_layers", "1",
                        "--max_steps", "3", "--logging_steps", "1", "--eval_max_new_tokens", "6"])
    assert _weights(tmp_path) == _weights(out / "sft")
    assert metrics["rule"] == "one_sentence" and metrics["rule_success"] == results["stages"]["sft"]["rule_success"]
    # The training answers of the "lengths" source are one sentence for a third to a half of the rows.
    assert 0.3 < metrics["rule_success_of_training_answers"] < 0.6
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == PNG
    card = (tmp_path / "README.md").read_text()
    assert "hfgen_decoder" in card and "rule_success" in card and "loss_curve.png" in card
