#!/usr/bin/env python
"""The whole RLHF ladder on the embedded task: SFT -> preference pairs -> reward model -> PPO (or DPO, or GRPO),
measured before and after by the reward model and by a rule.

    python recipes/rlhf/run.py --output_dir out/rlhf                  # PPO (hfgen.training.ppo) on the reward model
    python recipes/rlhf/run.py --method dpo --output_dir out/rlhf_dpo  # TRL DPOTrainer on the sampled pairs
    python recipes/rlhf/run.py --method grpo --output_dir out/rlhf_grpo  # TRL GRPOTrainer on the reward model
    python recipes/rlhf/run.py --method grpo --reward rule ...        # GRPO (or PPO) rewarded by the rule itself
    accelerate launch --multi_gpu --num_processes 2 recipes/rlhf/run.py ...   # or torchrun --nproc_per_node 2

The task: asked "Explain the "with" statement in Python.", answer in one sentence
(:func:`hfgen.data.instructions.one_sentence`: at least four words, ending with a period, no other sentence end).
The stages:

1. SFT (``recipes/sft.py``, ``--instruction_source lengths``): a fresh decoder learns each query's answer from the
   reference manual, cut after one, two or three sentences -- so it answers in one sentence only part of the time
   (41% of the SFT answers do).
2. Preference pairs (seed 003, "preference pairs from response comparisons"): ``samples_per_prompt`` responses of
   the SFT model per query, labelled by the rule; each one-sentence response is paired with a response of the same
   query that is not (:func:`hfgen.training.rlhf_feedback.sampled_preference_dataset`); plus the corpus answers of
   different lengths compared the same way (:func:`hfgen.data.instructions.length_preference_dataset`). A quarter
   of the topics is held out.
3. Reward model (``recipes/reward_model.py``): the SFT trunk with a score head, trained with TRL's RewardTrainer on
   the pairs of the other topics; its pairwise accuracy on the held-out topics' pairs is reported.
4. Feedback tuning on the training topics' queries: PPO against the reward model (or the rule), DPO on the pairs,
   or GRPO against the reward model (or the rule).
5. Evaluation on every query (``eval_samples`` responses each) for the SFT model and the tuned one: the rule's
   success rate (also on the held-out topics alone), the reward model's mean score, the win rate against the SFT
   model (per response, by reward-model score), and the KL to the SFT model (sampled estimate per response), in
   ``results.json`` and the plot ``rlhf_<method>.png``; every evaluated response is in ``responses.json``.

Steps already done can be reused with ``--sft_model`` / ``--reward_model`` (the pairs are sampled again: they are
seeded and cheap); every stage seeds itself, so a reused stage gives the same result as the full ladder.

Deterministic for a seed: the same command with the same ``--seed`` gives the same ``results.json`` (but for its
``timing`` and ``environment``), the same responses and the same weights, in a fresh process
(``tests/test_rlhf_recipe.py`` checks it on a tiny ladder; two full default runs of seed 0 in fresh processes gave
identical results and weights). One and two torch threads gave bit-identical results on the tiny ladder. Another
CPU, another torch / transformers / TRL release can change the last bits of a float and, through 400 SFT steps and
sampling, every number below: they vary far more between seeds than that, so they are quoted as mean +- sample
standard deviation over seeds, with each seed's value.

Why one run said 75.0% and a later one 48.1% (issue 18): not chance between runs -- the code of commit 42a69ef
(before this fix), run again here with ``OMP_NUM_THREADS=1``, gives exactly 47.4% -> 48.1% (66 of the 156 answers
under four words, 19 of them empty; ``results/results_ppo_code_42a69ef_seed0.json``). Its reward model matches the
75.0% run's (held-out accuracy 51.1% -> 90.2% in both), but its SFT loss differs from that run's in the sixth digit:
the libraries were upgraded in between (transformers 5.25, peft 0.22), and PPO at the former learning rate 5e-4
turned a last-bit difference into 75.0% vs 48.1%: its first steps jump so far from the SFT model that where it lands
depends on the last bits. With 2e-4 the five seeds below end between 77.6% and 82.7%. SFT alone varies by tens of
points between seeds (52.6% for seed 0, 35.9% for seed 1), and an earlier note's 30.8% vs 52.6% fits that:
``recipes/sft.py`` then ran with other defaults than the ladder's stage (seed 42 instead of 0, ``max_length`` 192
instead of 128, 32 evaluation tokens instead of 40); its defaults are now the stage's, and both make the same model
for a seed.

Measured on the shared 2-core machine (``OMP_NUM_THREADS=1 nice -n 5``, load average 3 to 10 from other users;
torch 2.13.0+cpu, transformers 5.25.0, TRL 1.16.0, accelerate 1.16.0, datasets 5.2.0), as mean +- sample standard
deviation over seeds 0, 1 and 2 with each seed's value in brackets; 156 evaluated responses per model and seed (78
queries x 2), 40 of them on the 20 held-out topics::

    for seed in 0 1 2; do python recipes/rlhf/run.py --seed $seed --output_dir outputs/rlhf_ppo_s$seed; done
    python recipes/rlhf/summarize.py outputs/rlhf_ppo_s0 outputs/rlhf_ppo_s1 outputs/rlhf_ppo_s2

- SFT, 400 steps: rule success 51.3 +- 14.8% (52.6, 35.9, 65.4) on one answer per query. Pairs: 614 to 624
  sampled + 106 corpus; 534 to 546 for training, 181 to 186 on the held-out topics. Reward model: held-out pairwise
  accuracy 45.9 +- 11.8% -> 91.9 +- 4.1% (88.0, 91.4, 96.1).
- PPO with the defaults (lr 2e-4, kl_coef 0.2, 40 steps of 8 prompts): rule success 43.4 +- 9.3% (47.4, 32.7,
  50.0) -> 81.4 +- 1.3% (81.4, 80.1, 82.7); held-out topics 40.0 +- 15.0% -> 81.7 +- 3.8% (77.5, 82.5, 85.0);
  reward-model score -0.23 +- 0.42 -> 2.35 +- 0.10; win rate vs SFT 77.0 +- 3.7%; KL to SFT 4.9 +- 0.5 nats per
  response (4.8, 5.4, 4.4). Words per answer 20.8 -> 10.9 +- 0.5; answers under four words 3, 0, 3 -> 16, 12, 8
  (e.g. "The following methods."): the reward model scores these fragments high and the rule rejects them -- the
  proxy gap of RLHF, visible because the rule is there.
- Seeds 3 and 4, not used in choosing the learning rate (same command): 32.7% -> 77.6% and 41.0% -> 81.4%; over
  seeds 0 to 4: 40.8 +- 8.1% -> 80.6 +- 1.9%, held-out topics 42.0 +- 12.2% -> 81.0 +- 4.5%, KL 5.0 +- 0.5, answers
  under four words 12.2 +- 2.9 of 156; SFT 47.7 +- 11.6% (``summary_ppo_seeds0-4.json``).
- The former default, lr 5e-4 (``--rl_learning_rate 5e-4``, same seeds, same SFT and reward models): 75.2 +- 7.3%
  (69.2, 73.1, 83.3); held-out topics 83.3 +- 3.8% (80.0, 82.5, 87.5); reward-model score 2.44 +- 0.29; win rate
  79.8 +- 7.2%; KL 10.1 +- 0.6; 7.9 +- 1.8 words; under four words 31, 32, 12. Its first three steps took the
  policy 5.6 nats from SFT (seed 0), before the KL penalty could act. ``--kl_coef 0.5`` at lr 5e-4 (seeds 0 and
  1 only): 71.8% and 76.9%, KL 8.6 and 8.8, 28 and 16 answers under four words. On the held-out topics the two
  learning rates do not differ beyond the spread.
- Time per full run: 2 min 50 s to 3 min 50 s of CPU (user + system), 3 min 15 s wall at load average 1 to 2.6,
  15 min 40 s at 9 to 10; SFT is two thirds of it, PPO 10 to 13 s of CPU.

Which commands made them: the rows with the defaults are five full runs of the command above (seeds 0 to 4; 4 min
15 s to 5 min 30 s wall at load average 3.4 to 6.5); the PPO stage run on the seeds' saved SFT and reward models
with ``--sft_model`` / ``--reward_model`` had given identical results for seeds 0 and 1, as had a second full run
of seed 0 in a fresh process. The lr 5e-4 rows are full runs for seeds 0 and 1 (made before the default changed)
and, for seed 2, ``--rl_learning_rate 5e-4`` with ``--sft_model`` / ``--reward_model`` of its full default run.
Copies of the outputs are in ``recipes/rlhf/results/`` (``summary_ppo.json``, ``summary_ppo_seeds0-4.json``,
``summary_ppo_lr5e-4.json``, ``results_ppo_seed<N>.json``, seed 0's plot and responses, ``sft_results_seed<N>.json``,
``reward_results_seed<N>.json``). DPO, GRPO and ``--reward rule`` were measured once in November 2026 under earlier
library versions and have not been re-measured since; no number is quoted for them. The PPO numbers above were
measured while each process sampled rollouts from its own random stream; PPO now samples by Gumbel-max with noise
keyed by (seed, prompt, step) (``hfgen.training.ppo_sampling``: the same distribution, other draws, and the same
rollouts under N processes), so a run today reproduces them in distribution, not digit for digit.

The text itself stays poor: a 64-wide model trained for minutes on 186 answers half-memorises them, and sampling at
temperature 1 drifts into fragments; what the feedback changes is where the answers stop.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("hfgen.recipes.rlhf")
RECIPES = Path(__file__).resolve().parents[1]
METHODS = ("ppo", "dpo", "grpo")
REWARDS = ("model", "rule")
# Defaults of the RL stage per method. PPO's learning rate was 5e-4 until 2026-12-07: its first three steps moved
# the policy 5.6 nats (per response) from the SFT model, before the KL penalty could act, and PPO ended in short
# fragments ("This.") that the reward model scores high and the rule rejects (31 and 32 of 156 answers, seeds 0 and
# 1); kl_coef 0.5 did not stop that first jump (8.6 nats at the end). 2e-4 gained more rule success on both seeds
# with half the KL (see the docstring). DPO's and GRPO's were chosen on one earlier SFT run and not re-measured.
METHOD_DEFAULTS = {"ppo": {"rl_steps": 40, "rl_learning_rate": 2e-4, "kl_coef": 0.2},
                   "dpo": {"rl_steps": 80, "rl_learning_rate": 2e-4, "kl_coef": 0.1},
                   "grpo": {"rl_steps": 40, "rl_learning_rate": 5e-4, "kl_coef": 0.05}}


@dataclass
class RLHFArguments:
    output_dir: str = field(metadata={"help": "Folder for every stage's output, results.json and the plot."})
    method: str = field(default="ppo", metadata={"help": f"Feedback-tuning method: {', '.join(METHODS)}."})
    reward: str = field(default="model", metadata={
        "help": "ppo / grpo reward: the trained reward model ('model') or the rule ('rule')."})
    sft_model: str | None = field(default=None, metadata={"help": "Reuse this SFT folder (skips SFT)."})
    reward_model: str | None = field(default=None, metadata={"help": "Reuse this reward-model folder."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the fresh decoder."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the fresh decoder."})
    sft_steps: int = field(default=400, metadata={"help": "SFT optimizer steps."})
    samples_per_prompt: int = field(default=16, metadata={"help": "SFT responses sampled per query for the pairs."})
    pairs_per_prompt: int = field(default=8, metadata={"help": "At most this many preference pairs per query."})
    heldout_fraction: float = field(default=0.25, metadata={"help": "Share of topics held out of RM / RL training."})
    reward_steps: int = field(default=100, metadata={"help": "Reward-model optimizer steps."})
    rl_steps: int | None = field(default=None, metadata={"help": "PPO / DPO / GRPO steps (default per method)."})
    rl_batch_size: int = field(default=8, metadata={"help": "Prompts (or pairs) per RL step and process."})
    rl_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the RL stage (default per method)."})
    kl_coef: float | None = field(default=None, metadata={
        "help": "KL penalty: PPO's beta, DPO's beta, GRPO's beta (default per method)."})
    dpo_sft_weight: float = field(default=1.0, metadata={
        "help": "DPO only: add this weight times the NLL of the chosen response (TRL loss_type ['sigmoid', 'sft'], "
                "the RPO recipe) to keep the policy on its chosen answers."})
    max_new_tokens: int = field(default=40, metadata={"help": "Response length in sampling, RL and evaluation."})
    eval_samples: int = field(default=2, metadata={"help": "Responses per query in the before/after evaluation."})
    eval_prompts: int = field(default=78, metadata={"help": "Queries in the evaluation (at most 78)."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage."})


def _check(args: RLHFArguments) -> None:
    if args.method not in METHODS:
        raise ValueError(f"Unknown method {args.method!r}; valid choices: {', '.join(METHODS)}.")
    if args.reward not in REWARDS:
        raise ValueError(f"Unknown reward {args.reward!r}; valid choices: {', '.join(REWARDS)}.")
    for name, value in METHOD_DEFAULTS[args.method].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.rl_learning_rate > 0 or not args.kl_coef >= 0:
        raise ValueError(f"rl_learning_rate must be > 0 and kl_coef >= 0, got {args.rl_learning_rate} and "
                         f"{args.kl_coef}.")
    for name in ("sft_steps", "samples_per_prompt", "pairs_per_prompt", "reward_steps", "rl_steps", "rl_batch_size",
                 "max_new_tokens", "eval_samples", "eval_prompts"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}.")
    if not 0.0 < args.heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {args.heldout_fraction}.")


def _stage(module_name: str):
    sys.path.insert(0, str(RECIPES))
    try:
        return __import__(module_name)
    finally:
        sys.path.remove(str(RECIPES))


def _train_rl(args: RLHFArguments, out: Path, tokenizer, sft_dir: str, reward_model, prompts, pairs
              ) -> tuple[Any, list, str]:
    """Run the RL stage; returns (policy, [(step, value)], name of the plotted quantity)."""
    import copy

    from hfgen.data.instructions import one_sentence
    from hfgen.models import (
        HfGenDecoderForCausalLM,
        HfGenDecoderForCausalLMWithValueHead,
    )
    from hfgen.training.rlhf import IM_END, trl_cpu_defaults
    from hfgen.training.rlhf_feedback import RewardModelFunction
    from transformers import set_seed

    # Every method's fresh parameters (PPO's value head) and its first samples come from the global generator:
    # seeded here, so the stage does not depend on what ran before it in the process (a run that reuses
    # --sft_model / --reward_model gives the same policy as the full ladder).
    set_seed(args.seed)
    reward_function = RewardModelFunction(reward_model, tokenizer) if args.reward == "model" else one_sentence
    common = dict(output_dir=str(out / args.method), max_steps=args.rl_steps, learning_rate=args.rl_learning_rate,
                  per_device_train_batch_size=args.rl_batch_size, logging_steps=1, seed=args.seed,
                  disable_tqdm=True, **trl_cpu_defaults())
    if args.method == "ppo":
        from hfgen.training.ppo import PPOConfig, PPOTrainer

        policy = HfGenDecoderForCausalLMWithValueHead.from_pretrained(sft_dir)
        config = PPOConfig(**{k: v for k, v in common.items() if k != "gradient_checkpointing"},
                           num_mini_batches=2 if args.rl_batch_size % 2 == 0 else 1, num_ppo_epochs=2,
                           response_length=args.max_new_tokens, kl_coef=args.kl_coef,
                           stop_token_id=tokenizer.convert_tokens_to_ids(IM_END))
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, train_dataset=prompts,
                             reward_funcs=reward_function)
        key = "score"
    elif args.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        policy = HfGenDecoderForCausalLM.from_pretrained(sft_dir)
        losses = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, args.dpo_sft_weight]) \
            if args.dpo_sft_weight > 0 else {}
        config = DPOConfig(**common, beta=args.kl_coef, max_length=192, **losses)
        trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=config, train_dataset=pairs,
                             processing_class=tokenizer)
        key = "rewards/margins"
    else:
        from trl import GRPOConfig, GRPOTrainer

        policy = HfGenDecoderForCausalLM.from_pretrained(sft_dir)
        generations = 4
        config = GRPOConfig(**{**common, "per_device_train_batch_size": args.rl_batch_size * generations},
                            num_generations=generations, max_completion_length=args.max_new_tokens,
                            beta=args.kl_coef)
        trainer = GRPOTrainer(model=policy, args=config, train_dataset=prompts, processing_class=tokenizer,
                              reward_funcs=reward_function)
        key = "reward"
    trainer.train()
    trainer.save_model(str(out / args.method))
    curve = [(entry["step"], entry[key]) for entry in trainer.state.log_history if key in entry]
    return trainer.model, curve, key


def _plot(path: Path, method: str, curve: list, key: str, before: dict, after: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    if curve:
        left.plot([s for s, _ in curve], [v for _, v in curve], marker=".")
    left.set(title=f"{method.upper()} training (per batch)", xlabel="step", ylabel=key)
    labels = ["SFT", method.upper()]
    width = 0.38
    for offset, name, label in ((-width / 2, "rule_success", "all queries"),
                                (width / 2, "rule_success_heldout", "held-out topics (not in RM / RL training)")):
        values = [before[name], after[name]]
        bars = middle.bar([x + offset for x in range(2)], values, width, label=label)
        middle.bar_label(bars, fmt="%.2f")
    middle.set(xticks=range(2), xticklabels=labels, ylim=(0, 1.3), title="rule success (one-sentence answers)")
    middle.legend(loc="upper left", fontsize="small")
    values = [before["mean_reward"], after["mean_reward"]]
    right.bar(labels, values, color=["tab:blue", "tab:orange"])
    for x, value in enumerate(values):
        right.annotate(f"{value:.3g}", (x, value), ha="center", va="bottom")
    right.set_title("mean reward-model score")
    figure.suptitle(f"{method.upper()} vs SFT: win rate {after['win_rate_vs_sft']:.0%} (reward model), "
                    f"KL to SFT {after['kl_to_reference']:.2f} nats per response")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _environment() -> dict[str, Any]:
    """What the numbers of a run may depend on beyond its arguments: torch's thread count (the order of float
    reductions, hence the last bits of every result, depends on it) and the library versions."""
    import os
    from importlib.metadata import version

    import torch

    return {"torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            **{name: version(name) for name in ("torch", "transformers", "trl", "accelerate", "datasets")}}


def _evaluate(model, reference, tokenizer, prompts, reward_model, args: RLHFArguments, heldout: set) -> Any:
    from hfgen.data.instructions import ONE_SENTENCE_MIN_WORDS, one_sentence
    from hfgen.training.rlhf import evaluate_policy

    evaluation = evaluate_policy(model, tokenizer, prompts, reward_model, reference, args.max_new_tokens, args.seed,
                                 rule=one_sentence)
    held = [score for score, topic in zip(evaluation.rule_scores, prompts["topic"]) if topic in heldout]
    words = [len(response.split()) for response in evaluation.responses]
    # Answers of fewer words than the rule's minimum are what reward hacking of this reward model looks like
    # ("This.", "."): counted, so a gain in reward-model score that the rule does not share is visible.
    return evaluation, {**evaluation.as_dict(), "rule_success_heldout": sum(held) / max(1, len(held)),
                        "mean_words": sum(words) / len(words),
                        "short_answers": sum(n < ONE_SENTENCE_MIN_WORDS for n in words)}


def run(args: RLHFArguments) -> dict[str, Any]:
    _check(args)
    import os
    import random

    import torch
    from datasets import concatenate_datasets
    from trl import RewardConfig, SFTConfig

    import hfgen  # noqa: F401
    from hfgen.data import load_tokenizer
    from hfgen.data.instructions import (
        length_preference_dataset,
        one_sentence,
        prompt_dataset,
    )
    from hfgen.models import (
        HfGenDecoderForCausalLM,
        HfGenDecoderForSequenceClassification,
    )
    from hfgen.training.rlhf import trl_cpu_defaults, win_rate
    from hfgen.training.rlhf_feedback import sampled_preference_dataset
    from hfgen.compat import use_plain_trl_logprobs

    use_plain_trl_logprobs()  # on a CPU: TRL's fused LM head with plain torch ops (same numbers, faster)
    out = Path(args.output_dir)
    tokenizer = load_tokenizer()
    stages: dict[str, Any] = {}
    # Wall and CPU seconds per stage: kept apart from the results, which a seed determines and these do not.
    timing: dict[str, float] = {}
    clock = [time.perf_counter(), time.process_time()]

    def lap(name: str) -> None:
        now = [time.perf_counter(), time.process_time()]
        timing[f"{name}_wall_s"], timing[f"{name}_cpu_s"] = now[0] - clock[0], now[1] - clock[1]
        clock[:] = now

    sft_dir = args.sft_model
    if sft_dir is None:
        sft = _stage("sft")
        sft_dir = str(out / "sft")
        sft_config = SFTConfig(output_dir=sft_dir, **{**sft.LADDER_SFT_DEFAULTS, "max_steps": args.sft_steps},
                               seed=args.seed, disable_tqdm=True, **trl_cpu_defaults())
        stages["sft"] = sft.run(sft.SFTScriptArguments(hidden_size=args.hidden_size,
                                                       num_hidden_layers=args.num_hidden_layers,
                                                       instruction_source="lengths",
                                                       eval_max_new_tokens=args.max_new_tokens), sft_config)
        lap("sft")
    # Preference pairs from the SFT model's own responses, labelled by the rule; topics held out of RM and RL.
    all_prompts = prompt_dataset(seed=args.seed)
    topics = sorted(set(all_prompts["topic"]))
    heldout = set(random.Random(args.seed).sample(topics, max(2, round(args.heldout_fraction * len(topics)))))
    sft_model = HfGenDecoderForCausalLM.from_pretrained(sft_dir).eval()
    sampled = sampled_preference_dataset(sft_model, tokenizer, all_prompts, one_sentence, args.samples_per_prompt,
                                         args.pairs_per_prompt, args.max_new_tokens, args.seed)
    corpus = length_preference_dataset(seed=args.seed)
    pairs = concatenate_datasets([corpus, sampled.cast(corpus.features)]) if len(sampled) else corpus
    split = {"train": pairs.filter(lambda row: row["topic"] not in heldout),
             "test": pairs.filter(lambda row: row["topic"] in heldout)}
    stages["pairs"] = {"sampled": len(sampled), "corpus": len(corpus), "train": len(split["train"]),
                       "heldout": len(split["test"]), "queries_with_sampled_pairs": len(set(sampled["topic"])),
                       "heldout_topics": len(heldout)}
    lap("pairs")
    reward_dir = args.reward_model
    if reward_dir is None:
        reward = _stage("reward_model")
        reward_dir = str(out / "reward_model")
        stages["reward_model"] = reward.run(
            reward.RewardScriptArguments(model_name_or_path=sft_dir),
            RewardConfig(output_dir=reward_dir, max_steps=args.reward_steps, learning_rate=1e-3,
                         per_device_train_batch_size=8, max_length=192, logging_steps=10, seed=args.seed,
                         disable_tqdm=True, **trl_cpu_defaults()), split=split)
        lap("reward_model")
    reward_model = HfGenDecoderForSequenceClassification.from_pretrained(reward_dir).eval()

    train_prompts = all_prompts.filter(lambda row: row["topic"] not in heldout)
    policy, curve, key = _train_rl(args, out, tokenizer, sft_dir, reward_model, train_prompts, split["train"])
    lap(args.method)
    results: dict[str, Any] = {"method": args.method, "reward": args.reward, "rule": "one_sentence",
                               "rl": {"steps": args.rl_steps, "learning_rate": args.rl_learning_rate,
                                      "kl_coef": args.kl_coef, "batch_size": args.rl_batch_size,
                                      **({"dpo_sft_weight": args.dpo_sft_weight} if args.method == "dpo" else {})},
                               "seed": args.seed, "stages": stages, "curve": curve,
                               "heldout_topics": sorted(heldout)}
    if int(os.environ.get("RANK", "0")) == 0:
        prompts = all_prompts.select(range(min(args.eval_prompts, len(all_prompts))))
        prompts = concatenate_datasets([prompts] * args.eval_samples)
        policy = policy.to("cpu") if not torch.cuda.is_available() else policy
        before, results["before"] = _evaluate(sft_model, sft_model, tokenizer, prompts, reward_model, args, heldout)
        after, results["after"] = _evaluate(policy, sft_model, tokenizer, prompts, reward_model, args, heldout)
        results["before"]["win_rate_vs_sft"] = 0.5
        results["after"]["win_rate_vs_sft"] = win_rate(after.reward_scores, before.reward_scores)
        lap("evaluation")
        results["timing"], results["environment"] = timing, _environment()
        results["examples"] = [{"prompt": p[0]["content"], "sft": b, args.method: a} for p, b, a in
                               zip(prompts["prompt"][:4], before.responses[:4], after.responses[:4])]
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "responses.json").write_text(json.dumps(
            [{"prompt": p[0]["content"], "sft": b, args.method: a, "sft_rule": rb, f"{args.method}_rule": ra}
             for p, b, a, rb, ra in zip(prompts["prompt"], before.responses, after.responses, before.rule_scores,
                                        after.rule_scores)], indent=1))
        _plot(out / f"rlhf_{args.method}.png", args.method, curve, key, results["before"], results["after"])
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import HfArgumentParser

    from hfgen.data.instructions import ONE_SENTENCE_MIN_WORDS

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = HfArgumentParser(RLHFArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    results = run(args)
    if "after" in results:
        b, a = results["before"], results["after"]
        logger.info(f"[{args.method}, seed {args.seed}] rule success {b['rule_success']:.2%} -> "
                    f"{a['rule_success']:.2%} (held-out topics {b['rule_success_heldout']:.2%} -> "
                    f"{a['rule_success_heldout']:.2%}); reward-model score {b['mean_reward']:.3f} -> "
                    f"{a['mean_reward']:.3f}; win rate vs SFT {a['win_rate_vs_sft']:.2%}; KL to SFT "
                    f"{a['kl_to_reference']:.3f}; words per answer {b['mean_words']:.1f} -> {a['mean_words']:.1f}, "
                    f"under {ONE_SENTENCE_MIN_WORDS} words {b['short_answers']} -> {a['short_answers']}; saved to "
                    f"{args.output_dir} "
                    f"(results.json, responses.json, rlhf_{args.method}.png)")
    return results


if __name__ == "__main__":
    main()
