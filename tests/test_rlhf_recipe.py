"""The RLHF ladder end to end (recipes/sft.py -> recipes/reward_model.py -> recipes/rlhf/run.py) with tiny step
counts: every stage saves a folder that reloads, the report has the before/after numbers and a PNG, the reference
has KL exactly 0 to itself; plus the evaluation helpers and bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_ppo_stage_under_torchrun_with_two_processes(ppo_run, tmp_path):
    """The recipe's PPO stage as a real 2-process DDP run (gloo), reusing the SFT and reward-model folders."""
    out, _ = ppo_run
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RUN),
         "--output_dir", str(tmp_path), "--sft_model", str(out / "sft"), "--reward_model", str(out / "reward_model"),
         *TINY], capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    # 2 steps x 4 prompts x 2 processes.
    assert "'episodes': 16" in log or "'episodes': '16'" in log, log[-3000:]
    assert len(saved["curve"]) == 2 and (tmp_path / "rlhf_ppo.png").is_file()
