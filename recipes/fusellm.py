#!/usr/bin/env python
"""FuseLLM on the embedded corpus: train source LMs with their own tokenizers on different slices, fuse their
next-token distributions into a target LM by continued training (MinCE and AvgCE), and compare with CLM-only
continued training on the same tokens, over several seeds, by validation perplexity.

    python recipes/fusellm.py --output_dir outputs/fusellm
    python recipes/fusellm.py --quick
    python recipes/fusellm.py --train_file my_texts.jsonl --validation_file my_held_out.jsonl   # your own text
    torchrun --nproc_per_node 2 recipes/fusellm.py --quick       # several processes: the weights of one

The corpus' training documents (reference manual + standard-library docstrings, about 457k target tokens) are
cut into disjoint slices: one per source, one for the target's pre-training, one for the continued training.
Sources get byte-level BPE tokenizers of different sizes trained on their own slice; the target uses hfgen's
shipped tokenizer. Loss of the fused runs: lambda * CLM + (1 - lambda) * fusion (Wan et al.).

The comparison is kept honest: every method sees the same continued-training blocks in the same order, each block
once (one epoch: no repeated tokens to memorise); early stopping picks the checkpoint by perplexity on one half of
the validation documents' blocks ("dev"), and the other half ("test") is what is reported. Sources and the target are
also compared in bits per character, which does not depend on the tokenizer.

Every stage trains with ``Trainer`` (``hfgen.training.fusellm.FuseLLMTrainer``: the fusion loss in
``compute_loss``, as TRL's distillation trainers), checkpoints and logs under OUTPUT_DIR/checkpoints. ``--batch_size``
is the global batch: under ``torchrun`` / ``accelerate launch`` each of N processes takes ``batch_size / N`` blocks of
each step, so a run trains the weights of one process. The user's own text (``--dataset_name`` / ``--train_file``,
``hfgen.data.user_data``) replaces the embedded corpus: its documents are cut into the slices, its validation
split gives dev and test (it is read into memory: the slices need every document, so ``--streaming`` is refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser, TrainingArguments

from hfgen.data.corpus import load_corpus
from hfgen.data.tokenizer import load_tokenizer, train_tokenizer
from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.training.fusellm import (
    FuseLLMCollator,
    FuseLLMTrainer,
    SourceModel,
    VocabularyMap,
    aligned_distributions,
)
from hfgen.data.user_data import TextDataArguments
from hfgen.training.pretrain import cpu_training_defaults

METHODS = ("clm", "min_ce", "avg_ce")


logger = logging.getLogger(__name__)


def build_parser() -> HfArgumentParser:
    """The user-data flags (``TextDataArguments``), then the recipe's own."""
    parser = HfArgumentParser((TextDataArguments,), description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fusellm", help="where the models, plot and results go")
    parser.add_argument("--source_vocab_sizes", type=int, nargs="+", default=[1024, 2048],
                        help="one source model per size, each with its own tokenizer of that vocabulary")
    parser.add_argument("--hidden_size", type=int, default=64, help="width of every model")
    parser.add_argument("--source_steps", type=int, default=300, help="pre-training steps of each source model")
    parser.add_argument("--target_pretrain_steps", type=int, default=300,
                        help="pre-training steps of the target before continued training")
    parser.add_argument("--continue_steps", type=int, default=None,
                        help="default: one epoch over the continued-training slice (each block once)")
    parser.add_argument("--block_size", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="sequences per step, over all processes (each of N processes takes batch_size / N)")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="pre-training learning rate")
    parser.add_argument("--lam", type=float, default=0.9, help="lambda: weight of the CLM loss (FuseLLM: 0.9)")
    parser.add_argument("--top_k", type=int, default=10,
                        help="source distributions kept to their top-k tokens before alignment")
    parser.add_argument("--continue_learning_rate", type=float, default=1e-3, help="continued-training learning rate")
    parser.add_argument("--eval_every", type=int, default=20, help="steps between dev evaluations (early stopping)")
    parser.add_argument("--eval_blocks", type=int, default=128, help="dev blocks and test blocks (each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="continued-training seeds (results as mean and spread over them)")
    parser.add_argument("--topics_only", action="store_true",
                        help="only the reference manual (no standard-library docstrings): a quarter of the tokens")
    parser.add_argument("--report_to", default="none",
                        help="Trainer's logging integrations for every stage (tensorboard, wandb, ...; none: off)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: proves the pipeline runs")
    return parser


def blocks_of(texts: list[str], tokenizer, block_size: int) -> torch.Tensor:
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // block_size
    return torch.tensor(ids[:n * block_size]).view(n, block_size)


def lm(vocab_size: int, hidden: int, tokenizer, seed: int) -> HfGenDecoderForCausalLM:
    torch.manual_seed(seed)
    return HfGenDecoderForCausalLM(HfGenDecoderConfig(vocab_size=vocab_size, hidden_size=hidden,
                                                      intermediate_size=2 * hidden, num_hidden_layers=2,
                                                      num_attention_heads=4, max_position_embeddings=256,
                                                      pad_token_id=tokenizer.pad_token_id,
                                                      eos_token_id=tokenizer.eos_token_id))


def process_count() -> int:
    """Processes of the launch (``torchrun`` / ``accelerate launch`` set WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(args, output_dir: str, steps: int, learning_rate: float, seed: int,
                       **changes) -> TrainingArguments:
    """Trainer settings of every stage: the former loops' AdamW (constant learning rate, weight decay 0.01, no
    clipping), ``steps`` optimizer steps of ``--batch_size`` blocks over all processes, nothing saved unless
    ``changes`` ask."""
    per_process = args.batch_size // process_count()
    return TrainingArguments(**{**cpu_training_defaults(), "output_dir": output_dir, "max_steps": steps,
                                "per_device_train_batch_size": per_process, "learning_rate": learning_rate,
                                "lr_scheduler_type": "constant", "weight_decay": 0.01, "max_grad_norm": 0.0,
                                "seed": seed, "report_to": args.report_to, "save_strategy": "no",
                                "logging_steps": 10, "remove_unused_columns": False, "disable_tqdm": False,
                                **changes})


def block_rows(blocks: torch.Tensor) -> list[dict]:
    return [{"input_ids": block, "index": i} for i, block in enumerate(blocks)]


def train_clm(model, blocks: torch.Tensor, steps: int, args, seed: int, desc: str) -> None:
    """Pre-train ``model`` on ``blocks`` with Trainer (the model's own causal-LM loss, shuffled epochs)."""
    logger.info("%s: %d steps", desc, steps)
    run = training_arguments(args, os.path.join(args.output_dir, "checkpoints", desc.split(" (")[0].replace(" ", "_")),
                             steps, args.learning_rate, seed)
    FuseLLMTrainer(model=model, args=run, train_dataset=block_rows(blocks), data_collator=FuseLLMCollator()).train()


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor) -> float:
    model.eval()
    losses = [model(input_ids=blocks[i:i + 16], labels=blocks[i:i + 16]).loss.item() for i in range(0, len(blocks), 16)]
    return math.exp(sum(losses) / len(losses))


@torch.no_grad()
def bits_per_character(model, tokenizer, blocks: torch.Tensor) -> float:
    """Total next-token loss (bits) over the predicted tokens' characters: comparable across tokenizers."""
    model.eval()
    bits, characters = 0.0, 0
    for i in range(0, len(blocks), 16):
        batch = blocks[i:i + 16]
        bits += model(input_ids=batch, labels=batch).loss.item() * batch[:, 1:].numel() / math.log(2)
        characters += sum(len(tokenizer.decode(row[1:])) for row in batch)
    return bits / characters


@torch.no_grad()
def source_distributions(sources: list[SourceModel], target_tokenizer, blocks: torch.Tensor, top_k: int) -> list:
    """Per source, per block: the aligned distributions on the target's tokens, as dense [T-1, V] in float16."""
    out = []
    for source in sources:
        vocab_map = VocabularyMap(source.tokenizer, target_tokenizer)
        source.model.eval()
        rows = []
        for block in tqdm(blocks, desc="align"):
            text = target_tokenizer.decode(block)
            source_ids = source.tokenizer(text, add_special_tokens=False)["input_ids"]
            logits = source.model(input_ids=torch.tensor([source_ids])).logits[0, :-1]
            rows.append(aligned_distributions(logits, source_ids, block.tolist(), source.tokenizer, target_tokenizer,
                                              vocab_map, len(target_tokenizer), top_k).to_sparse())
        out.append(rows)
    return out


def continue_training(model, blocks, distributions, method: str, args, seed: int, dev: torch.Tensor,
                      steps: int) -> dict:
    """One pass over ``blocks`` in a seeded order (the same for every method: Trainer's sampler seeded by ``seed``),
    ``args.batch_size`` blocks a step, with :class:`FuseLLMTrainer`. Early stopping: dev perplexity every
    ``eval_every`` steps, the best checkpoint restored at the end (``load_best_model_at_end``), or the starting
    weights when no step beat them. Returns the dev curve and the step kept."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    curve = [(0, perplexity(model, dev))]
    run = training_arguments(args, os.path.join(args.output_dir, "checkpoints", f"{method}_seed{seed}"), steps,
                             args.continue_learning_rate, seed, eval_strategy="steps", eval_steps=args.eval_every,
                             save_strategy="steps", save_steps=args.eval_every, save_total_limit=1,
                             load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False,
                             per_device_eval_batch_size=16, prediction_loss_only=True)
    trainer = FuseLLMTrainer(model=model, args=run, train_dataset=block_rows(blocks),
                             eval_dataset=[{"input_ids": block} for block in dev],  # no source distributions
                             data_collator=FuseLLMCollator(distributions),
                             method=method, lam=args.lam)
    trainer.train()
    curve += [(entry["step"], math.exp(entry["eval_loss"])) for entry in trainer.state.log_history
              if "eval_loss" in entry]
    best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]) if trainer.state.best_model_checkpoint \
        else steps
    if perplexity(model, dev) >= curve[0][1]:  # no step beat the starting point: keep it
        model.load_state_dict(start)
        best_step = 0
    return {"dev_curve": curve, "best_step": best_step}


def plot_dev_curves(summary: dict, path: str) -> str:
    """Dev perplexity during continued training, one line per method and seed (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    styles = {"clm": ("tab:blue", "-"), "min_ce": ("tab:orange", "--"), "avg_ce": ("tab:green", ":")}
    for method in METHODS:
        colour, style = styles[method]
        for seed, curve in enumerate(summary[method]["dev_curves"]):
            steps, values = zip(*curve)
            ax.plot(steps, values, color=colour, linestyle=style, alpha=0.8, label=method if seed == 0 else None)
    ax.set_xlabel("continued-training step")
    ax.set_ylabel("dev perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_arguments(argv: list[str] | None) -> tuple[TextDataArguments, argparse.Namespace]:
    """The data flags and the recipe's, with ``--quick`` applied; every check that needs no data done."""
    data, args = build_parser().parse_args_into_dataclasses(argv)
    if args.quick:
        args.source_steps, args.target_pretrain_steps, args.continue_steps = 20, 10, 6
        args.eval_every, args.eval_blocks, args.seeds, args.source_vocab_sizes = 3, 8, [0], [512, 1024]
        args.topics_only, args.batch_size = True, 4
    data.check()
    if data.streaming:
        raise ValueError("--streaming is not supported by FuseLLM: the documents are dealt into the sources' and "
                         "the target's slices, which needs all of them; the data is read into memory.")
    processes = process_count()
    if args.batch_size < processes or args.batch_size % processes:
        raise ValueError(f"--batch_size {args.batch_size} (sequences per step over all processes) must be a "
                         f"multiple of the {processes} processes of this launch.")
    return data, args


def load_documents(data: TextDataArguments, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(training documents, validation documents)``: the user's (``--dataset_name`` / ``--train_file``, one
    document per row), else the embedded corpus."""
    corpus = data.texts(lambda: load_corpus(include_docstrings=not args.topics_only))
    return corpus["train"]["text"], corpus["validation"]["text"]


def train_sources(args, slices: list[list[str]], test_text: list[str], report: dict) -> list[SourceModel]:
    """One source per ``--source_vocab_sizes`` entry: its own tokenizer and LM trained on its own slice; its test
    bits per character go into ``report``."""
    sources = []
    for k, vocab_size in enumerate(args.source_vocab_sizes):
        tokenizer = train_tokenizer(slices[k], vocab_size=vocab_size)
        model = lm(len(tokenizer), args.hidden_size, tokenizer, seed=100 + k)
        train_clm(model, blocks_of(slices[k], tokenizer, args.block_size), args.source_steps, args, 100 + k,
                  f"source {k} (vocab {vocab_size})")
        sources.append(SourceModel(model, tokenizer))
        report[f"source_{k}_test_bits_per_character"] = bits_per_character(
            model, tokenizer, blocks_of(test_text, tokenizer, args.block_size))
    return sources


def compare_methods(args, target_tokenizer, pretrain_blocks, continue_blocks, distributions, dev, test, steps,
                    report: dict):
    """Per seed: pre-train a target, then continue it with each method from the same weights; test perplexity
    per method and seed, the continued-training details, and the last target (AvgCE, last seed)."""
    results = {method: [] for method in ("before_continued_training", *METHODS)}
    details = {method: [] for method in METHODS}
    for seed in args.seeds:
        base = lm(len(target_tokenizer), args.hidden_size, target_tokenizer, seed)
        train_clm(base, pretrain_blocks, args.target_pretrain_steps, args, seed, f"target pre-training (seed {seed})")
        state = {k: v.clone() for k, v in base.state_dict().items()}
        results["before_continued_training"].append(perplexity(base, test))
        if seed == args.seeds[0]:
            report["target_test_bits_per_character_before"] = bits_per_character(base, target_tokenizer, test)
        for method in METHODS:
            base.load_state_dict(state)
            details[method].append(continue_training(base, continue_blocks, distributions, method, args, seed, dev,
                                                     steps))
            results[method].append(perplexity(base, test))
    return results, details, base


def summarize(results: dict, details: dict, report: dict) -> dict:
    """Mean, spread and per-seed values of each method's test perplexity, and the fused methods' paired
    differences to CLM-only continued training."""
    summary = {name: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                      "min": min(v), "max": max(v), "per_seed": v} for name, v in results.items()}
    for method in METHODS:
        summary[method]["best_step"] = [d["best_step"] for d in details[method]]
        summary[method]["dev_curves"] = [d["dev_curve"] for d in details[method]]
    for method in ("min_ce", "avg_ce"):  # paired by seed: same target, same blocks, same order
        differences = [a - b for a, b in zip(results[method], results["clm"])]
        summary[f"{method}_minus_clm"] = {"mean": statistics.mean(differences), "per_seed": differences,
                                         "std": statistics.stdev(differences) if len(differences) > 1 else 0.0}
    summary.update(report)
    return summary


def save_target(model, tokenizer, path: str, blocks: torch.Tensor) -> bool:
    """Save ``model`` Hub-loadable with its tokenizer, reload it; whether the logits on ``blocks`` are identical."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    reloaded = HfGenDecoderForCausalLM.from_pretrained(path).eval()
    model.eval()
    with torch.no_grad():
        identical = torch.equal(model(input_ids=blocks).logits, reloaded(input_ids=blocks).logits)
    logger.info(f"saved {path}; identical logits: {identical}")
    return identical


def main(argv: list[str] | None = None) -> dict:
    data, args = parse_arguments(argv)
    documents, validation_documents = load_documents(data, args)
    parts = len(args.source_vocab_sizes) + 2  # sources, target pre-training, continued training
    slices = [documents[i::parts] for i in range(parts)]
    target_tokenizer = load_tokenizer()
    validation = blocks_of(validation_documents, target_tokenizer, args.block_size)
    dev, test = validation[0::2][:args.eval_blocks], validation[1::2][:args.eval_blocks]
    pretrain_blocks = blocks_of(slices[-2], target_tokenizer, args.block_size)
    continue_blocks = blocks_of(slices[-1], target_tokenizer, args.block_size)
    steps = args.continue_steps or len(continue_blocks) // args.batch_size
    if not 0 < steps * args.batch_size <= len(continue_blocks) or not len(pretrain_blocks) or not len(test):
        raise ValueError(f"Too little text: the continued-training slice has {len(continue_blocks)} blocks of "
                         f"--block_size {args.block_size} tokens (--continue_steps {args.continue_steps} x "
                         f"--batch_size {args.batch_size} need {max(steps, 1) * args.batch_size}: one epoch, no "
                         f"repeats), the target's pre-training slice {len(pretrain_blocks)}, the test half of "
                         f"validation {len(test)}. Give more text, or a smaller --batch_size or --block_size.")
    continue_blocks = continue_blocks[:steps * args.batch_size]
    os.makedirs(args.output_dir, exist_ok=True)
    report = {}
    sources = train_sources(args, slices, [target_tokenizer.decode(block) for block in test], report)
    report.update(continued_training_steps=steps, continued_training_tokens=continue_blocks.numel(),
                  tokens_per_step=args.batch_size * args.block_size)
    distributions = source_distributions(sources, target_tokenizer, continue_blocks, args.top_k)
    results, details, base = compare_methods(args, target_tokenizer, pretrain_blocks, continue_blocks, distributions,
                                             dev, test, steps, report)
    summary = summarize(results, details, report)
    if int(os.environ.get("RANK", "0")) != 0:  # every process trained the same weights; one writes them
        return summary
    # The last fused target (AvgCE, last seed), saved Hub-loadable with its tokenizer and reloaded.
    identical = save_target(base, target_tokenizer, os.path.join(args.output_dir, "target_avg_ce"), validation[:2])
    plot_dev_curves(summary, os.path.join(args.output_dir, "dev_perplexity.png"))
    summary["identical_logits_after_reload"] = identical
    for name, value in summary.items():
        logger.info("%s %s", name, value)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump({"args": vars(args), "data": vars(data), "results": summary}, handle, indent=2)
    logger.info("saved to %s (target_avg_ce/, dev_perplexity.png, results.json)", args.output_dir)
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
