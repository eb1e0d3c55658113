#!/usr/bin/env python
"""Instruction-tune a causal LM (a fresh hfgen decoder, an hfgen checkpoint or a Llama-architecture one) with TRL's
SFTTrainer on instruction pairs built from the embedded corpus, in the shipped tokenizer's ChatML template.

    python recipes/sft.py --output_dir out/sft
    python recipes/sft.py --model_name_or_path out/pretrain --instruction_source responses --max_steps 200

Seed 001, "Instruction Tuning": "provide examples of how the prompt should be answered". The loss covers the
assistant's tokens only (``assistant_only_loss``, through the template's generation markers). At the end the rule
of the embedded task is measured on every query: does the answer name what it was asked about
(``mentions_keyword``), or, with ``--instruction_source lengths``, is it one sentence (``one_sentence``)?
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SFTScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Causal-LM folder or Hub id to start from; unset: a fresh hfgen decoder of the sizes below."})
    hidden_size: int = field(default=64, metadata={"help": "Width of a fresh model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of a fresh model."})
    softmax_variant: str = field(default="standard", metadata={"help": "Attention softmax of a fresh model."})
    instruction_source: str = field(default="all", metadata={
        "help": "responses (answers to help() queries), backtranslation, all, or lengths (each query answered in "
                "1, 2 and 3 sentences; the rule measured is then one_sentence instead of mentions_keyword)."})
    max_response_chars: int = field(default=300, metadata={"help": "Clip responses to this many characters."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Tokens per answer in the final evaluation."})


def run(script_args: SFTScriptArguments, sft_config) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    import hfgen  # noqa: F401
    from hfgen.data import load_tokenizer
    from hfgen.data.instructions import (
        instruction_dataset,
        mentions_keyword,
        one_sentence,
        prompt_dataset,
    )
    from hfgen.models import HfGenDecoderForCausalLM
    from hfgen.training.rlhf import chat_decoder_config, evaluate_policy
    from hfgen.compat import use_plain_trl_logprobs

    use_plain_trl_logprobs()  # on a CPU: TRL's fused LM head with plain torch ops (same numbers, faster)

    tokenizer = load_tokenizer()
    dataset = instruction_dataset(script_args.instruction_source, script_args.max_response_chars, sft_config.seed)
    if script_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path, trust_remote_code=True)
    else:
        torch.manual_seed(sft_config.seed)
        model = HfGenDecoderForCausalLM(chat_decoder_config(
            tokenizer, hidden_size=script_args.hidden_size, intermediate_size=2 * script_args.hidden_size,
            num_hidden_layers=script_args.num_hidden_layers, softmax_variant=script_args.softmax_variant))
    trainer = SFTTrainer(model=model, args=sft_config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(sft_config.output_dir)
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "rows": len(dataset)}
    if sft_config.process_index == 0:
        rule = one_sentence if script_args.instruction_source == "lengths" else mentions_keyword
        evaluation = evaluate_policy(trainer.model, tokenizer, prompt_dataset(),
                                     max_new_tokens=script_args.eval_max_new_tokens, seed=sft_config.seed, rule=rule)
        metrics["rule"] = rule.__name__
        metrics["rule_success"] = evaluation.rule_success
        metrics["examples"] = evaluation.responses[:3]
        Path(sft_config.output_dir, "sft_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import HfArgumentParser
    from trl import SFTConfig

    from hfgen.training.rlhf import trl_cpu_defaults

    parser = HfArgumentParser((SFTScriptArguments, SFTConfig), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**trl_cpu_defaults(), assistant_only_loss=True, max_length=192, learning_rate=3e-3,
                        max_steps=100, per_device_train_batch_size=16, logging_steps=10)
    script_args, sft_config = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    metrics = run(script_args, sft_config)
    if sft_config.process_index == 0:
        print(f"SFT on {metrics['rows']} instruction pairs: final loss {metrics['train_loss']:.3f}; rule success "
              f"{metrics['rule_success']:.2%} ({metrics['rule']}); saved to {sft_config.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
