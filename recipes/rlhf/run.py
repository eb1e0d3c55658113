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
seeded and cheap).

Measured with the defaults (seed 0, fresh 2-layer 64-wide decoder; ``nice -n 5``, ``OMP_NUM_THREADS=1`` on the
shared 2-core machine at load average 5.5-12; 156 evaluated responses per model = 78 queries x 2; copies of the
outputs in ``recipes/rlhf/results/``):

- SFT, 400 steps: rule success 52.6% (78 responses). Pairs: 624 sampled + 106 corpus, 546 for training, 184 on
  the 20 held-out topics. Reward model: held-out pairwise accuracy 51.1% -> 90.2%.
- PPO (reward model; the full run: 15 min 26 s wall, 5 min 7 s CPU): rule success 47.4% -> 75.0% (held-out topics
  40.0% -> 70.0%), reward-model score -0.47 -> 2.73, win rate vs SFT 80.8%, KL 9.1 nats per response. The answers
  get shorter (21.6 -> 6.4 words on average) and 26 of the 156 are one sentence of fewer than four words (e.g.
  "This."), which the rule rejects but the reward model scores high: the proxy gap of RLHF, visible because the
  rule is there.
- PPO with ``--reward rule``: 47.4% -> 79.5% (held-out 40.0% -> 72.5%), reward-model score 2.42, win rate 76.3%,
  KL 7.3.
- GRPO (reward model; SFT and reward model reused, 18 min wall, 2 min 30 s CPU): 47.4% -> 84.6% (held-out 40.0% ->
  80.0%), reward-model score 2.38, win rate 77.9%, KL 6.3; 11.9 words on average, 6 answers under four words.
- DPO (SFT and reward model reused; 80 steps, lr 2e-4, beta 0.1) with the default ``--dpo_sft_weight 1.0``
  (DPO loss + NLL of the chosen answer, TRL's ``loss_type=["sigmoid", "sft"]``; 11 min 25 s wall, 2 min 20 s
  CPU): 47.4% -> 77.6% (held-out 40.0% -> 80.0%), reward-model score 1.17, win rate 66.0%, KL 3.4; 16.4 words on
  average, 1 answer under four words. Plain DPO (``--dpo_sft_weight 0``) gained less and drifted further: 47.4% -> 52.6%,
  KL 17.2 (beta 0.1); 47.4% -> 68.6%, KL 5.5 (beta 0.3).

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
# Defaults of the RL stage per method, chosen on an earlier SFT run of the same recipe (see the measurements above).
METHOD_DEFAULTS = {"ppo": {"rl_steps": 40, "rl_learning_rate": 5e-4, "kl_coef": 0.2},
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
