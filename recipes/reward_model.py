#!/usr/bin/env python
"""Train a reward model -- HfGenDecoderForSequenceClassification with one score -- with TRL's RewardTrainer on
preference pairs built from the embedded corpus, and report its pairwise accuracy on held-out pairs.

    python recipes/reward_model.py --model_name_or_path outputs/sft --output_dir outputs/reward_model

Seed 001, "Feedback Tuning": "Different outputs from a prompt are ranked and the rankings (rewards) are used";
seed 003: "Generation of preference data from existing prompt/response LLM pairs". Started from an SFT folder the
trunk carries over and only the score head is new (InstructGPT's recipe); without one a fresh decoder is used.
The user's pairs (``--train_file pairs.jsonl`` or ``--dataset_name``: columns ``chosen``, ``rejected``, optionally
``prompt``, as TRL's RewardTrainer reads them) replace the embedded ones.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfgen.data.user_data import UserDataArguments

logger = logging.getLogger(__name__)


@dataclass
class RewardScriptArguments:
    """The model to start from and the preference pairs."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Causal-LM or classifier folder to start from (e.g. the SFT output); unset: a fresh decoder."})
    hidden_size: int = field(default=64, metadata={"help": "Width of a fresh model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    max_response_chars: int = field(default=300, metadata={"help": "Clip responses to this many characters."})
    eval_fraction: float = field(default=0.25, metadata={"help": "Share of queries held out for accuracy."})
    rejected_per_prompt: int = field(default=8, metadata={"help": "Preference pairs per query."})



def pairwise_accuracy(model, tokenizer, pairs) -> float:
    """Share of pairs whose chosen conversation scores above the rejected one (each rendered by the chat template,
    as RewardTrainer renders them): the accuracy of "chosen wins" (prediction 1) against the label 1 of every pair,
    by the shipped evaluate module (``hfgen.metrics``' classification_report)."""
    from hfgen.metrics import load_metric
    from hfgen.training.rlhf_feedback import score_conversations

    chosen = score_conversations(model, tokenizer, pairs["prompt"], pairs["chosen"])
    rejected = score_conversations(model, tokenizer, pairs["prompt"], pairs["rejected"])
    return load_metric("classification_report").compute(predictions=[int(c > r) for c, r in zip(chosen, rejected)],
                                                        references=[1] * len(pairs))["accuracy"]


def split_by_topic(pairs, eval_fraction: float, seed: int, exclusive_answers: bool = True) -> dict[str, Any]:
    """Train / held-out split of preference pairs by query topic. With ``exclusive_answers`` (the corpus pairs, whose
    rejected answer is another query's chosen one) no held-out answer may appear in training at all: a pair-level
    split would show the model held-out answers labelled "worse" (and it would score below chance for having
    memorised that). Sampled pairs (``exclusive_answers=False``) are split by topic only."""
    topics = sorted(set(pairs["topic"]))
    held_out = set(random.Random(seed).sample(topics, max(2, round(eval_fraction * len(topics)))))
    if not exclusive_answers:
        return {"train": pairs.filter(lambda row: row["topic"] not in held_out),
                "test": pairs.filter(lambda row: row["topic"] in held_out)}
    held_out_answers = {row["chosen"][0]["content"] for row in pairs if row["topic"] in held_out}
    return {"train": pairs.filter(lambda row: row["topic"] not in held_out and
                                  row["rejected"][0]["content"] not in held_out_answers),
            "test": pairs.filter(lambda row: row["topic"] in held_out and
                                 row["rejected"][0]["content"] in held_out_answers)}


def run(script_args: RewardScriptArguments, reward_config, split: dict[str, Any] | None = None,
        data_args: "UserDataArguments | None" = None) -> dict[str, Any]:
    """Train and save the reward model; ``split`` ({"train": pairs, "test": pairs}) replaces the corpus pairs (the
    RLHF recipe passes pairs sampled from the SFT model), and so does ``data_args`` with ``--dataset_name`` /
    ``--train_file``: the user's pairs (TRL's preference layout: ``chosen``, ``rejected``, optionally ``prompt``;
    conversational or plain text), scored on their validation split by RewardTrainer's own accuracy."""
    from transformers import set_seed
    from trl import RewardTrainer

    import hfgen  # noqa: F401
    from hfgen.data import load_tokenizer
    from hfgen.data.instructions import preference_dataset
    from hfgen.data.user_data import UserDataArguments, row_count
    from hfgen.models import HfGenDecoderForSequenceClassification
    from hfgen.training.recipe_common import check_model_folder
    from hfgen.training.rlhf import chat_decoder_config, reward_model_from

    data_args = data_args or UserDataArguments()
    data_args.check(reward_config.max_steps)
    if not 0.0 < script_args.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {script_args.eval_fraction}.")
    check_model_folder(script_args.model_name_or_path, "--model_name_or_path",
                       "a causal-LM or classifier folder written by an earlier run, e.g. the --output_dir of "
                       "recipes/sft.py")
    tokenizer = load_tokenizer()
    user_pairs = split is None and data_args.uses_user_data
    if user_pairs:
        data = data_args.load_one_of((("chosen", "rejected"),))
        split = {"train": data["train"], "test": data["validation"]}
    if split is None:
        pairs = preference_dataset(script_args.max_response_chars, reward_config.seed,
                                   script_args.rejected_per_prompt)
        split = split_by_topic(pairs, script_args.eval_fraction, reward_config.seed)
    if row_count(split["train"]) == 0:
        raise ValueError("No training pair for the reward model.")
    if row_count(split["test"]) == 0:
        raise ValueError("No held-out pair: raise eval_fraction or rejected_per_prompt.")
    # Seeded before the model exists (the Trainer seeds only later): the fresh score head, or the whole fresh
    # model, is drawn from the global generator, which would otherwise carry whatever ran before in the process.
    set_seed(reward_config.seed)
    if script_args.model_name_or_path:
        model = reward_model_from(script_args.model_name_or_path, tokenizer)
    else:
        model = HfGenDecoderForSequenceClassification(chat_decoder_config(
            tokenizer, hidden_size=script_args.hidden_size, intermediate_size=2 * script_args.hidden_size,
            num_hidden_layers=script_args.num_hidden_layers, num_labels=1))
    if user_pairs:
        return _run_on_user_pairs(model, tokenizer, reward_config, split)
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


def _run_on_user_pairs(model, tokenizer, reward_config, split: dict[str, Any]) -> dict[str, Any]:
    """Train on the user's pairs; held-out accuracy is RewardTrainer's (chosen scored above rejected, per eval
    batch, averaged), which renders plain-text and conversational pairs as it trains on them."""
    from trl import RewardTrainer

    from hfgen.data.user_data import row_count
    from hfgen.training.start_evaluation import evaluate_then_train

    trainer = RewardTrainer(model=model, args=reward_config, train_dataset=split["train"],
                            eval_dataset=split["test"], processing_class=tokenizer)
    # "before" is measured once train() has wrapped the model: trainer.evaluate() first would leave DDP off.
    before, _ = evaluate_then_train(trainer)
    after = trainer.evaluate()
    trainer.save_model(reward_config.output_dir)
    metrics = {"heldout_accuracy_before": before["eval_accuracy"], "heldout_accuracy_after": after["eval_accuracy"],
               "train_pairs": row_count(split["train"]), "heldout_pairs": row_count(split["test"])}
    metrics = {key: value for key, value in metrics.items() if value is not None}
    if reward_config.process_index == 0:
        Path(reward_config.output_dir, "reward_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def build_parser():
    """The recipe's ``HfArgumentParser``: the script fields, the user's data, then TRL's RewardConfig with CPU-safe
    defaults."""
    from transformers import HfArgumentParser
    from trl import RewardConfig

    from hfgen.data.user_data import UserDataArguments
    from hfgen.training.rlhf import trl_cpu_defaults

    parser = HfArgumentParser((RewardScriptArguments, UserDataArguments, RewardConfig),
                              description=__doc__.split("\n\n")[0])
    parser.set_defaults(**trl_cpu_defaults(), max_length=192, learning_rate=1e-3, max_steps=60,
                        per_device_train_batch_size=8, logging_steps=10, output_dir="outputs/reward_model")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    script_args, data_args, reward_config = build_parser().parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv)
    metrics = run(script_args, reward_config, data_args=data_args)
    if reward_config.process_index == 0:
        logger.info(f"reward model: held-out pairwise accuracy {metrics['heldout_accuracy_before']:.2%} -> "
                    f"{metrics['heldout_accuracy_after']:.2%} on {metrics.get('heldout_pairs', 'streamed')} pairs; "
                    f"saved to {reward_config.output_dir}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
