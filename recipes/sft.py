#!/usr/bin/env python
"""Instruction-tune a causal LM (a fresh hfgen decoder, an hfgen checkpoint or a Llama-architecture one) with TRL's
SFTTrainer on instruction pairs built from the embedded corpus, in the shipped tokenizer's ChatML template.

    python recipes/sft.py --output_dir outputs/sft            # stage 1 of recipes/rlhf/run.py, same numbers
    python recipes/sft.py --model_name_or_path outputs/pretrain_tiny --instruction_source responses \\
        --output_dir outputs/sft_responses

The user's rows (``--train_file data.jsonl`` or ``--dataset_name``, in one of SFTTrainer's layouts: ``messages``,
``prompt`` + ``completion``, or a ``--dataset_text_field`` column) replace the embedded pairs; the run then reports
validation loss before and after instead of the embedded task's rule.

Seed 001, "Instruction Tuning": "provide examples of how the prompt should be answered". The loss covers the
assistant's tokens only (``assistant_only_loss``, through the template's generation markers). The defaults are
those of the RLHF ladder's first stage (``--instruction_source lengths``: each query answered by the manual's
opening prose cut after one, two or three sentences; 400 steps), so this command and ``recipes/rlhf/run.py`` make
the same model for the same ``--seed``.

At the end the rule of the embedded task is measured on one sampled answer per query (78 queries, temperature 1,
seeded): with ``--instruction_source lengths`` "is the answer one sentence" (``one_sentence``), otherwise "does the
answer name what it was asked about" (``mentions_keyword``). Two references make the number readable: the same
rule on the model before training, and on the training answers themselves (what imitating them perfectly would
give). The output folder holds the model, ``sft_results.json``, ``all_results.json``, ``loss_curve.png`` and the
hfgen model card ``README.md``.

Measured with the defaults for seeds 0 to 4, as the first stage of ``recipes/rlhf/run.py --seed N`` (which runs
this recipe with these settings; ``tests/test_rlhf_recipe.py`` checks that both make identical weights), on the
shared 2-core machine with ``OMP_NUM_THREADS=1``: rule success 47.7 +- 11.6% (52.6, 35.9, 65.4, 43.6, 41.0; mean
+- sample standard deviation, 78 answers per seed), from 1.0% (3.8, 0.0, 1.3, 0.0, 0.0) before training; the
training answers themselves are one sentence in 41.4% of the rows; final mean training loss 2.22 (2.269, 2.272,
2.148, 2.209, 2.183). The seed moves the result by tens of points: quote a spread, not one run. 2 min 15 s to 2
min 30 s of CPU per run, 3 to 4 min 20 s wall at load average 3 to 6.5. Copies in
``recipes/rlhf/results/sft_results_seed<N>.json``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfgen.data.user_data import UserDataArguments

logger = logging.getLogger("hfgen.recipes.sft")

# The SFT stage of the RLHF ladder; recipes/rlhf/run.py builds its SFTConfig from the same values, so the two
# commands give the same model for a seed (a smaller max_length or another step count would change it).
LADDER_SFT_DEFAULTS = dict(assistant_only_loss=True, max_length=128, learning_rate=3e-3, max_steps=400,
                           per_device_train_batch_size=16, logging_steps=20)


@dataclass
class SFTScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Causal-LM folder or Hub id to start from; unset: a fresh hfgen decoder of the sizes below."})
    hidden_size: int = field(default=64, metadata={"help": "Width of a fresh model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    softmax_variant: str = field(default="standard", metadata={"help": "Attention softmax of a fresh model."})
    instruction_source: str = field(default="lengths", metadata={
        "help": "lengths (each query answered in 1, 2 and 3 sentences; rule one_sentence), responses (answers to "
                "help() queries), backtranslation, or all (both; the last three are measured by mentions_keyword)."})
    max_response_chars: int = field(default=300, metadata={"help": "Clip responses to this many characters."})
    eval_max_new_tokens: int = field(default=40, metadata={
        "help": "Tokens per answer in the final evaluation (an answer cut off there is not one sentence)."})


# The dataset layouts SFTTrainer reads (conversational, prompt-completion; a plain text column is the third).
SFT_LAYOUTS = (("messages",), ("prompt", "completion"))


def load_user_sft_data(data_args: "UserDataArguments", sft_config):
    """The user's (train, validation) in one of SFTTrainer's layouts: ``messages``, ``prompt`` + ``completion``,
    or the ``--dataset_text_field`` column. Outside ``messages`` no chat template marks the assistant's tokens, so
    ``assistant_only_loss`` (on by default here) is turned off, with a log line; prompt-completion rows get TRL's
    ``completion_only_loss`` instead."""
    data = data_args.load_one_of((*SFT_LAYOUTS, (sft_config.dataset_text_field,)))
    columns = data["train"].column_names or []
    if "messages" not in columns and sft_config.assistant_only_loss:
        logger.info("assistant_only_loss off: the data has no 'messages' column (columns: %s)", ", ".join(columns))
        sft_config.assistant_only_loss = False
    return data["train"], data["validation"]


def run(script_args: SFTScriptArguments, sft_config, data_args: "UserDataArguments | None" = None) -> dict[str, Any]:
    """Instruction-tune and save the model; return the metrics. ``data_args`` with ``--dataset_name`` /
    ``--train_file``: the user's rows instead of the embedded pairs, measured by validation loss before and after
    (the embedded task's rule does not apply to them)."""
    import hfgen  # noqa: F401
    from hfgen.compat import use_plain_trl_logprobs
    from hfgen.data import load_tokenizer
    from hfgen.data.instructions import instruction_dataset
    from hfgen.data.user_data import UserDataArguments

    data_args = data_args or UserDataArguments()
    data_args.check(sft_config.max_steps)
    use_plain_trl_logprobs()  # on a CPU: TRL's fused LM head with plain torch ops (same numbers, faster)

    tokenizer = load_tokenizer()
    if data_args.uses_user_data:
        dataset, validation = load_user_sft_data(data_args, sft_config)
    else:
        dataset = instruction_dataset(script_args.instruction_source, script_args.max_response_chars,
                                      sft_config.seed)
    model = _load_or_build_model(script_args, sft_config, tokenizer)
    if data_args.uses_user_data:
        return _run_on_user_data(script_args, sft_config, model, tokenizer, dataset, validation)
    return _run_on_embedded_pairs(script_args, sft_config, model, tokenizer, dataset)


def _load_or_build_model(script_args: SFTScriptArguments, sft_config, tokenizer):
    """The model to instruction-tune: a saved folder or Hub id, or a fresh chat decoder of the script's size."""
    from transformers import AutoModelForCausalLM, set_seed

    from hfgen.models import HfGenDecoderForCausalLM
    from hfgen.training.rlhf import chat_decoder_config

    # Seeded here, not only by the Trainer: a fresh model's weights are drawn before the Trainer exists.
    set_seed(sft_config.seed)
    if script_args.model_name_or_path:
        from hfgen.training.recipe_common import check_model_folder

        check_model_folder(script_args.model_name_or_path, "--model_name_or_path",
                           "a causal-LM folder written by an earlier run (e.g. outputs/pretrain_tiny) or a Hub id")
        return AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path,
                                                    trust_remote_code=sft_config.trust_remote_code)
    return HfGenDecoderForCausalLM(chat_decoder_config(
        tokenizer, hidden_size=script_args.hidden_size, intermediate_size=2 * script_args.hidden_size,
        num_hidden_layers=script_args.num_hidden_layers, softmax_variant=script_args.softmax_variant))


def _run_on_embedded_pairs(script_args: SFTScriptArguments, sft_config, model, tokenizer, dataset) -> dict[str, Any]:
    """Train on the embedded instruction pairs, measured by the share of answers that keep the task's rule before
    and after (sampled from the recipe's prompts); save the model and ``sft_results.json``."""
    from trl import SFTTrainer

    from hfgen.data.instructions import mentions_keyword, one_sentence, prompt_dataset
    from hfgen.training.core import save_run
    from hfgen.training.rlhf import evaluate_policy

    rule = one_sentence if script_args.instruction_source == "lengths" else mentions_keyword
    prompts = prompt_dataset()
    is_main = sft_config.process_index == 0

    def rule_success(policy) -> tuple[float, list[str]]:
        # evaluate_policy seeds its own sampling and restores the global random state, so measuring the model
        # before training changes nothing of the training run.
        evaluation = evaluate_policy(policy, tokenizer, prompts, max_new_tokens=script_args.eval_max_new_tokens,
                                     seed=sft_config.seed, rule=rule)
        return evaluation.rule_success, evaluation.responses

    metrics: dict[str, Any] = {"rows": len(dataset), "rule": rule.__name__}
    if is_main:
        answers = [messages[-1]["content"] for messages in dataset["messages"]]
        metrics["rule_success_of_training_answers"] = sum(rule(completions=answers, keyword=dataset["keyword"])) \
            / len(answers)
        metrics["rule_success_before"] = rule_success(model)[0]
    trainer = SFTTrainer(model=model, args=sft_config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    metrics.update(train_loss=result.training_loss, global_step=trainer.state.global_step,
                   learning_rate=sft_config.learning_rate, num_parameters=trainer.model.num_parameters())
    if is_main:
        metrics["rule_success"], responses = rule_success(trainer.model)
        metrics["examples"] = responses[:3]
    # The run time goes to the card only: sft_results.json holds what a seed determines.
    card_metrics = {**{key: value for key, value in metrics.items() if key != "examples"},
                    "train_runtime_s": result.metrics.get("train_runtime")}
    save_run(trainer, trainer.model.config, card_metrics, task="causal-lm",
             title=f"SFT on {script_args.instruction_source} instruction pairs (assistant tokens)",
             base_model=script_args.model_name_or_path)
    if is_main:
        Path(sft_config.output_dir, "sft_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _run_on_user_data(script_args, sft_config, model, tokenizer, train, validation) -> dict[str, Any]:
    from trl import SFTTrainer

    from hfgen.data.user_data import row_count
    from hfgen.training.core import save_run
    from hfgen.training.start_evaluation import evaluate_then_train

    trainer = SFTTrainer(model=model, args=sft_config, train_dataset=train, eval_dataset=validation,
                         processing_class=tokenizer)
    # "before" is measured once train() has wrapped the model: trainer.evaluate() first would leave DDP off.
    before, result = evaluate_then_train(trainer)
    after = trainer.evaluate()
    metrics = {"rows": row_count(train), "eval_loss_before": before["eval_loss"], "eval_loss": after["eval_loss"],
               "train_loss": result.training_loss, "global_step": trainer.state.global_step,
               "learning_rate": sft_config.learning_rate, "num_parameters": trainer.model.num_parameters()}
    metrics = {key: value for key, value in metrics.items() if value is not None}
    save_run(trainer, trainer.model.config, {**metrics, "train_runtime_s": result.metrics.get("train_runtime")},
             task="causal-lm", title="SFT on the user's data", base_model=script_args.model_name_or_path)
    if sft_config.process_index == 0:
        Path(sft_config.output_dir, "sft_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def build_parser():
    """The recipe's ``HfArgumentParser``: the script fields, the user's data, then TRL's SFTConfig with the
    ladder's defaults."""
    from transformers import HfArgumentParser
    from trl import SFTConfig

    from hfgen.data.user_data import UserDataArguments
    from hfgen.training.rlhf import trl_cpu_defaults

    parser = HfArgumentParser((SFTScriptArguments, UserDataArguments, SFTConfig),
                              description=__doc__.split("\n\n")[0])
    # seed 0 (not TrainingArguments' 42): the ladder's default, so both commands make the same model unchanged.
    parser.set_defaults(**trl_cpu_defaults(), **LADDER_SFT_DEFAULTS, seed=0)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    script_args, data_args, sft_config = build_parser().parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv)
    metrics = run(script_args, sft_config, data_args)
    if sft_config.process_index == 0 and data_args.uses_user_data:
        logger.info("SFT on the user's data: final loss %.3f; validation loss %.3f before -> %.3f after; saved to %s",
                    metrics["train_loss"], metrics["eval_loss_before"], metrics["eval_loss"], sft_config.output_dir)
    elif sft_config.process_index == 0:
        logger.info("SFT on %d instruction pairs: final loss %.3f; rule %s on one answer per query: %.2f%% before "
                    "training -> %.2f%% after (training answers themselves: %.2f%%); saved to %s", metrics["rows"],
                    metrics["train_loss"], metrics["rule"], 100 * metrics["rule_success_before"],
                    100 * metrics["rule_success"], 100 * metrics["rule_success_of_training_answers"],
                    sft_config.output_dir)
    return metrics


if __name__ == "__main__":
    main()
