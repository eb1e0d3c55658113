#!/usr/bin/env python
"""Train a reward model -- HfGenDecoderForSequenceClassification with one score -- with TRL's RewardTrainer on
preference pairs built from the embedded corpus, and report its pairwise accuracy on held-out pairs.

    python recipes/reward_model.py --model_name_or_path out/sft --output_dir out/rm

Seed 001, "Feedback Tuning": "Different outputs from a prompt are ranked and the rankings (rewards) are used";
seed 003: "Generation of preference data from existing prompt/response LLM pairs". Started from an SFT folder the
trunk carries over and only the score head is new (InstructGPT's recipe); without one a fresh decoder is used.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RewardScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Causal-LM or classifier folder to start from (e.g. the SFT output); unset: a fresh decoder."})
    hidden_size: int = field(default=64, metadata={"help": "Width of a fresh model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    max_response_chars: int = field(default=300, metadata={"help": "Clip responses to this many characters."})
    eval_fraction: float = field(default=0.25, metadata={"help": "Share of queries held out for accuracy."})
    rejected_per_prompt: int = field(default=8, metadata={"help": "Preference pairs per query."})



def pairwise_accuracy(model, tokenizer, pairs) -> float:
    """Share of pairs whose chosen conversation scores above the rejected one."""
    import torch

    model.eval()
    wins = 0
    with torch.no_grad():
        for row in pairs:
            scores = []
            for answer in (row["chosen"], row["rejected"]):
                text = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False)
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
                scores.append(float(model(input_ids=ids).logits[0, 0]))
            wins += scores[0] > scores[1]
    return wins / len(pairs)


def run(script_args: RewardScriptArguments, reward_config) -> dict[str, Any]:
    import torch
    from trl import RewardTrainer

    import hfgen  # noqa: F401
    from hfgen.data import load_tokenizer
    from hfgen.data.instructions import preference_dataset
    from hfgen.models import HfGenDecoderForSequenceClassification
    from hfgen.training.rlhf import chat_decoder_config, reward_model_from

    if not 0.0 < script_args.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {script_args.eval_fraction}.")
    tokenizer = load_tokenizer()
    pairs = preference_dataset(script_args.max_response_chars, reward_config.seed, script_args.rejected_per_prompt)
    # Held out by query, and no held-out answer may appear in training at all: a rejected answer is another
    # query's chosen one, so a pair-level split would show the model held-out answers labelled "worse" (and it
    # would score below chance for having memorised that).
    topics = sorted(set(pairs["topic"]))
    held_out = set(random.Random(reward_config.seed).sample(topics, max(2, round(script_args.eval_fraction *
                                                                                   len(topics)))))
    held_out_answers = {row["chosen"][0]["content"] for row in pairs if row["topic"] in held_out}
    split = {"train": pairs.filter(lambda row: row["topic"] not in held_out and
                                   row["rejected"][0]["content"] not in held_out_answers),
             "test": pairs.filter(lambda row: row["topic"] in held_out and
                                  row["rejected"][0]["content"] in held_out_answers)}
    if len(split["test"]) == 0:
        raise ValueError("No held-out pair: raise eval_fraction or rejected_per_prompt.")
    if script_args.model_name_or_path:
        model = reward_model_from(script_args.model_name_or_path, tokenizer)
    else:
        torch.manual_seed(reward_config.seed)
        model = HfGenDecoderForSequenceClassification(chat_decoder_config(
            tokenizer, hidden_size=script_args.hidden_size, intermediate_size=2 * script_args.hidden_size,
            num_hidden_layers=script_args.num_hidden_layers, num_labels=1))
    before = pairwise_accuracy(model, tokenizer, split["test"])
    trainer = RewardTrainer(model=model, args=reward_config, train_dataset=split["train"], processing_class=tokenizer)
    trainer.train()
    trainer.save_model(reward_config.output_dir)
    metrics = {"heldout_accuracy_before": before,
               "heldout_accuracy_after": pairwise_accuracy(trainer.model, tokenizer, split["test"]),
               "train_pairs": len(split["train"]), "heldout_pairs": len(split["test"])}
    if reward_config.process_index == 0:
        Path(reward_config.output_dir, "reward_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import HfArgumentParser
    from trl import RewardConfig

    from hfgen.training.rlhf import trl_cpu_defaults

    parser = HfArgumentParser((RewardScriptArguments, RewardConfig), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**trl_cpu_defaults(), max_length=192, learning_rate=1e-3, max_steps=60,
                        per_device_train_batch_size=8, logging_steps=10)
    script_args, reward_config = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    metrics = run(script_args, reward_config)
    if reward_config.process_index == 0:
        print(f"reward model: held-out pairwise accuracy {metrics['heldout_accuracy_before']:.2%} -> "
              f"{metrics['heldout_accuracy_after']:.2%} on {metrics['heldout_pairs']} pairs; saved to "
              f"{reward_config.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
