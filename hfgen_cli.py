"""The ``hfgen`` command (console script; also ``python -m hfgen.cli``).

A top-level module rather than ``hfgen/cli.py`` because importing anything inside the ``hfgen`` package runs its
``__init__`` (every model, torch included). Subcommands import the Hugging Face stack inside their handlers, so
that parsing and ``--help`` stay cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEMO_PROMPT = "The with statement"


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every flag's default: its value, "off" for a switch, "unset" for None (for a variant flag: the model
    config's default, as its group's title says), unless the help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is argparse.SUPPRESS or "default" in help_text:
            return help_text
        if action.default is None:
            return help_text + " (default: unset)"
        if action.default is False:
            return help_text + " (default: off)"
        return help_text + " (default: %(default)s)"


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    # Plain argparse, not HfArgumentParser over hfgen.training.pretrain.ModelArguments: importing that dataclass runs
    # the hfgen package (torch and every model) and HfArgumentParser imports transformers, while `hfgen --help` must
    # stay at a plain interpreter start. tests/test_cli.py checks that every flag here names a field of it.
    demo = subparsers.add_parser(
        "demo",
        help="pre-train a small decoder on the embedded corpus in a few minutes on a CPU",
        description="Pre-train a small hfgen decoder (any attention/softmax/position variant) on the Python "
                    "reference manual that ships with CPython; print the validation perplexity before and after, "
                    "save a Hub-ready folder (weights, model code, tokenizer, loss curve, model card), reload it "
                    "with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) and generate a sample. "
                    "Variant values are checked by the model config, which lists the valid ones.",
        formatter_class=_HelpFormatter,
    )
    variant = demo.add_argument_group("variant (unset: the config default, which is Llama)")
    variant.add_argument("--attention-scoring", help="scaled_dot_product | dot_product | general | additive")
    variant.add_argument("--softmax-variant",
                         help="standard | temperature | adaptive_temperature | off_by_one | clipped")
    variant.add_argument("--softmax-temperature", type=float, help="theta of --softmax-variant temperature")
    variant.add_argument("--attention-gate", action="store_true", default=None,
                         help="per-head sigmoid gate on the attention output")
    variant.add_argument("--position-embedding",
                         help="rotary | sinusoidal | learned | relative_bias | alibi | none")
    variant.add_argument("--num-key-value-heads", type=int,
                         help="1 = multi-query, --num-attention-heads = multi-head, in between = grouped-query")
    variant.add_argument("--norm-type", help="rmsnorm | layernorm")
    variant.add_argument("--norm-position", help="pre | post")
    variant.add_argument("--mlp-type", help="gated | standard")
    variant.add_argument("--config-overrides", help="any other config keys, 'key=value,key=value'")

    size = demo.add_argument_group("size")
    size.add_argument("--hidden-size", type=int, default=192, help="width of the residual stream")
    size.add_argument("--num-hidden-layers", type=int, default=4, help="decoder layers")
    size.add_argument("--num-attention-heads", type=int, default=6, help="query heads per layer")
    size.add_argument("--intermediate-size", type=int, default=512, help="hidden width of the MLP")
    size.add_argument("--block-size", type=int, default=128, help="tokens per training sequence")

    training = demo.add_argument_group("training")
    # 500 steps of 8 x 128 tokens (about 5 epochs of the corpus): measured at 2 min 40 s in all on 2 cores
    # (0.3 s a step), leaving room for a busier machine within 6.
    training.add_argument("--max-steps", type=int, default=500, help="optimizer steps")
    # No time limit by default: a limit makes the result depend on the machine's speed and load (the same command
    # must give the same numbers next month). The slowest variants (additive scoring: about 4.7x the default's step
    # time) can set one and stop early, with the learning rate not fully decayed.
    training.add_argument("--max-train-minutes", type=float, default=None,
                          help="stop training after this long even if --max-steps is not reached (the result then "
                               "depends on the machine's speed; default: no limit)")
    training.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    training.add_argument("--learning-rate", type=float, default=2e-3, help="peak of the cosine schedule")
    training.add_argument("--max-eval-samples", type=int, help="validation blocks to score (default: all)")
    training.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and sample")
    training.add_argument("--output-dir", default="outputs/demo", help="where the Hub-ready folder goes")

    sample = demo.add_argument_group("sample")
    sample.add_argument("--prompt", default=DEMO_PROMPT, help="start of the generated sample")
    sample.add_argument("--max-new-tokens", type=int, default=60, help="length of the generated sample")
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from hfgen.data import load_tokenizer
    from hfgen.training.callbacks import TimeLimitCallback
    from hfgen.training.pretrain import DataArguments, ModelArguments, build_config, cpu_training_defaults, pretrain

    model_args = ModelArguments(
        hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads, num_key_value_heads=args.num_key_value_heads,
        intermediate_size=args.intermediate_size, attention_scoring=args.attention_scoring,
        softmax_variant=args.softmax_variant, softmax_temperature=args.softmax_temperature,
        attention_gate=args.attention_gate, position_embedding=args.position_embedding, norm_type=args.norm_type,
        norm_position=args.norm_position, mlp_type=args.mlp_type,
        tie_word_embeddings=True,  # fewer parameters to learn from a small corpus
        config_overrides=args.config_overrides,
    )
    try:  # a bad variant value fails here, with the valid choices, before any data is loaded
        build_config(model_args, load_tokenizer())
    except ValueError as error:
        print(f"hfgen demo: error: {error}", file=sys.stderr)
        return 2
    data_args = DataArguments(block_size=args.block_size, max_eval_samples=args.max_eval_samples)
    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=args.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=max(1, args.max_steps // 10), weight_decay=0.1,
        logging_steps=max(1, args.max_steps // 30), eval_strategy="no", save_strategy="no", seed=args.seed,
        report_to="none", **cpu_training_defaults(),
    )
    time_limit = TimeLimitCallback(60 * args.max_train_minutes) if args.max_train_minutes else None
    result = pretrain(model_args, data_args, training_args, callbacks=[time_limit] if time_limit else [])
    if time_limit is not None and time_limit.stopped_at_step is not None:
        print(f"\nstopped by --max-train-minutes {args.max_train_minutes} after {time_limit.stopped_at_step} of "
              f"{args.max_steps} steps")
    print(f"\nvalidation perplexity: {result.eval_perplexity_before:.1f} before training, "
          f"{result.eval_perplexity_after:.1f} after {result.metrics['global_step']} steps "
          f"({result.train_runtime:.0f} s)")

    # Reload the way a Hub user would, through the model code saved in the folder.
    model = AutoModelForCausalLM.from_pretrained(result.output_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir, trust_remote_code=True)
    torch.manual_seed(args.seed)
    inputs = tokenizer(args.prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=0.8,
                            top_k=50, pad_token_id=tokenizer.pad_token_id)
    print(f"\nsample from the reloaded {type(model).__name__}:\n{tokenizer.decode(output[0])}")
    # Last, so that a run's final line says where its result is, as every recipe's does.
    print(f"\nsaved to {result.output_dir}/ (model card README.md, loss curve loss_curve.png)")
    return 0


def _add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    push = subparsers.add_parser(
        "push",
        help="push a saved hfgen folder to the Hugging Face Hub",
        description="Upload a folder written by an hfgen model's save_pretrained (or by a recipe, or a PEFT adapter "
                    "or diffusers pipeline of hfgen's) to the Hub as one commit. The folder is checked first: it "
                    "must be an hfgen model whose code loads without hfgen installed (trust_remote_code), with "
                    "its weights, and with a tokenizer if its model card loads one; the repo id must be valid. A "
                    "folder without README.md gets an hfgen model card. The Hub is HF_ENDPOINT (default "
                    "huggingface.co); the token is HF_TOKEN or the one saved by `hf auth login`.",
        formatter_class=_HelpFormatter,
    )
    push.add_argument("path", metavar="PATH", help="the saved folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, 'namespace/name' or 'name'")
    push.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    push.add_argument("--revision", help="branch to commit to, created from main if missing (default: main)")
    push.add_argument("--commit-message", help="title of the commit (default: 'Upload <kind> with hfgen')")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    push.set_defaults(handler=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from hfgen.hub import push_folder

    try:
        commit = push_folder(args.path, args.repo_id, private=args.private or None, revision=args.revision,
                             commit_message=args.commit_message, token=args.token)
    except ValueError as error:
        print(f"hfgen push: error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.path} to {args.repo_id}@{args.revision or 'main'}: commit {commit.oid}")
    print(commit.commit_url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hfgen`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hfgen",
        description="Generative-AI architectures and attention/softmax variants as native Hugging Face models.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_demo_parser(subparsers)
    _add_push_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hfgen`` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
