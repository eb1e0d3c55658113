"""The gist-token experiment of Mu et al. 2023 ("Learning to Compress Prompts with Gist Tokens"; seed 004: "Can
enable 26x compression and 40% FLOP reduction") at settings that finish on a 2-core CPU, for both families: the
decoder (``hfgen_decoder``) and the encoder-decoder (``hfgen_seq2seq``, their FLAN-T5 setting). For each family the
gist model and its two controls -- positive (sees the whole instruction) and negative (instruction masked) -- are
trained alike from the same initial weights on the same instruction examples, then scored on held-out examples by
the validation loss on the output tokens and the exact-match rate of the greedy output. Also reported: the
compression ratio (instruction tokens per gist token) and the FLOPs of one example with a cached gist against the
full sequence.

The task (``hfgen.data.gist``): an instruction (repeat / reverse / first and last / every word twice) then three
words; the answer depends on the instruction, which only the gist tokens can carry. The words come from a small
pool of frequent one-token words of the embedded corpus, so that a small model learns the copying part within a few
minutes and the instruction decides the rest. With the corpus's full 2,000-word vocabulary and such budgets the
models barely learn to copy: the encoder-decoder's validation losses stayed near 5 (positive / gist / negative
4.93 / 5.14 / 5.08 after 600 steps of 16 examples), a gap between the controls smaller than the run-to-run noise,
so the gist model could not be told from its negative control.

    python -m hfgen.training.gist_experiment                     # the committed run: notebooks/gist_results/
    python -m hfgen.training.gist_experiment --families seq2seq  # one family (other rows in the folder stay)
    python -m hfgen.training.gist_experiment --steps 2 --output_dir /tmp/gist   # a smoke run
    python -m hfgen.training.gist_experiment --train_file alpaca.jsonl --validation_file held_out.jsonl \
        --output_dir outputs/gist --save_models                   # your own instruction data
    torchrun --nproc_per_node 2 -m hfgen.training.gist_experiment --output_dir outputs/gist   # several processes

Your own instruction data (``--dataset_name`` / ``--train_file``, ``hfgen.data.user_data``): rows with the columns
``instruction``, ``output`` and optionally ``input`` (Alpaca's layout, the data of Mu et al.), laid out as
``instruction <gist> Input: input\nOutput: output`` (:func:`hfgen.data.gist.gist_examples`); the first ``--steps`` x
``--batch_size`` train rows train (each once, in order), the first ``--validation_examples`` validation rows score.
``--batch_size`` is the batch of a step over all processes: under ``torchrun`` each of N processes takes
``batch_size / N`` examples, so N processes train the models of one. ``--save_models`` writes each trained model
with its tokenizer (gist tokens added) to OUTPUT_DIR/<family>_<mask>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import HfArgumentParser

from ..data.gist import add_gist_tokens, gist_examples, gist_instruction_examples, gist_seq2seq_examples
from ..data.user_data import UserDataArguments
from .gist import compare_with_controls, recovered_gap

GIST_FAMILIES = ("decoder", "seq2seq")  # the model families the experiment compresses prompts with
DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "notebooks" / "gist_results"
# The user's rows: Alpaca's layout, the input optional.
ROW_LAYOUTS = (("instruction", "input", "output"), ("instruction", "output"))
logger = logging.getLogger(__name__)


@dataclass
class GistExperimentSettings:
    """Everything a run depends on (written into the results)."""

    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 3e-3
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_gist_tokens: int = 2
    words_per_input: int = 3
    word_pool: int | None = 24
    validation_examples: int = 256
    seed: int = 0


def decoder_flops(examples: list[dict], num_gist: int, hidden: int, intermediate: int) -> tuple[float, float]:
    """Multiply-adds per layer for one average example, ``(with a cached gist, full sequence)``: per token the
    projections and MLP (``8 d^2 + 6 d d_ff``, gated MLP) plus attention over the positions before it (``4 d n``);
    with a cached gist the instruction is not run and attention reads ``k`` gist positions in its place."""
    prompt = sum(e["prompt_length"] - num_gist for e in examples) / len(examples)
    total = sum(len(e["input_ids"]) for e in examples) / len(examples)

    def per_token(context: float) -> float:
        return 8 * hidden * hidden + 6 * hidden * intermediate + 4 * hidden * context

    full = sum(per_token(n) for n in range(int(total)))
    gisted = sum(per_token(n - prompt) for n in range(int(prompt) + num_gist, int(total)))
    return gisted, full


def seq2seq_flops(examples: list[dict], num_gist: int, hidden: int, intermediate: int) -> tuple[float, float]:
    """Multiply-adds per layer for one average example, ``(with a cached gist, full sequence)``: without a cache the
    encoder runs instruction + gist + input and the decoder's cross-attention reads all of it; with a cached gist the
    encoder runs the input alone (attending to ``k`` gist positions besides it) and the decoder reads
    ``k + len(input)`` encoder positions. Standard MLP (``4 d d_ff``)."""
    d = hidden

    def encoder(tokens: float, keys: float) -> float:
        return tokens * (8 * d * d + 4 * d * intermediate + 4 * d * keys)

    def decoder(targets: int, sources: float) -> float:
        per_token = sum(8 * d * d + 4 * d * (t + 1) + 4 * d * d + 4 * d * sources + 4 * d * intermediate
                        for t in range(targets))
        return per_token + 4 * d * d * sources  # cross-attention keys and values, once

    prompt = sum(e["prompt_length"] - num_gist for e in examples) / len(examples)
    source = sum(len(e["input_ids"]) for e in examples) / len(examples)
    target = round(sum(len(e["labels"]) for e in examples) / len(examples))
    rest = source - prompt - num_gist
    return encoder(rest, num_gist + rest) + decoder(target, num_gist + rest), \
        encoder(source, source) + decoder(target, source)


def initial_model(family: str, tokenizer, settings: GistExperimentSettings) -> torch.nn.Module:
    """The family's model at the settings' size (untied head for the encoder-decoder: with tied T5-style weights it
    learned more slowly in these short runs), seeded."""
    from ..models import (HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenSeq2SeqConfig,
                          HfGenSeq2SeqForConditionalGeneration)

    torch.manual_seed(settings.seed)
    size = dict(vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
                intermediate_size=2 * settings.hidden_size, num_hidden_layers=settings.num_hidden_layers,
                num_attention_heads=4, pad_token_id=tokenizer.pad_token_id)
    if family == "decoder":
        return HfGenDecoderForCausalLM(HfGenDecoderConfig(**size))
    return HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(**size, tie_word_embeddings=False))


def family_examples(family: str, tokenizer, settings: GistExperimentSettings,
                    rows: tuple[list[dict], list[dict]] | None = None) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` examples of ``family``: the embedded task's, or of ``rows`` (the user's train and
    validation rows: the first ``steps x batch_size`` and ``validation_examples`` of them)."""
    if rows is not None:
        train, valid = rows[0][:settings.steps * settings.batch_size], rows[1][:settings.validation_examples]
        seq2seq = family == "seq2seq"
        return (gist_examples(train, tokenizer, settings.num_gist_tokens, seq2seq),
                gist_examples(valid, tokenizer, settings.num_gist_tokens, seq2seq))
    make = gist_instruction_examples if family == "decoder" else gist_seq2seq_examples
    data = dict(words_per_input=settings.words_per_input, word_pool=settings.word_pool)
    return (make(tokenizer, settings.num_gist_tokens, settings.batch_size * settings.steps, split="train",
                 seed=settings.seed, **data),
            make(tokenizer, settings.num_gist_tokens, settings.validation_examples, split="validation",
                 seed=settings.seed + 1, **data))


def run_family(family: str, tokenizer, settings: GistExperimentSettings, progress: bool = True,
               rows: tuple[list[dict], list[dict]] | None = None, save_to: Path | None = None) -> dict:
    """Train the gist model and both controls of ``family`` (on the embedded task, or on ``rows``: the user's train
    and validation rows); the summary row (losses, exact match, gap recovered, compression, FLOPs, training curves,
    minutes). ``save_to``: each trained model and the tokenizer go to ``save_to/<family>_<mask>/``."""
    if family not in GIST_FAMILIES:
        raise ValueError(f"Unknown family={family!r}; valid choices are: {', '.join(map(repr, GIST_FAMILIES))}.")
    gist_ids = add_gist_tokens(tokenizer, settings.num_gist_tokens)
    train, valid = family_examples(family, tokenizer, settings, rows)
    model = initial_model(family, tokenizer, settings)
    start, cpu_start = time.time(), time.process_time()
    runs = compare_with_controls(model, train, valid, gist_ids, tokenizer.pad_token_id,
                                 batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                 seed=settings.seed, progress=progress)
    if save_to is not None:
        for mode, run in runs.items():
            run.model.save_pretrained(save_to / f"{family}_{mode}")
            tokenizer.save_pretrained(save_to / f"{family}_{mode}")
    flops = decoder_flops if family == "decoder" else seq2seq_flops
    gisted, full = flops(valid, settings.num_gist_tokens, model.config.hidden_size, model.config.intermediate_size)
    prompt = sum(e["prompt_length"] - settings.num_gist_tokens for e in valid) / len(valid)
    return {
        "family": family,
        "num_gist_tokens": settings.num_gist_tokens,
        "compression": prompt / settings.num_gist_tokens,
        "instruction_tokens": prompt,
        "flops_ratio": gisted / full,
        "validation_loss": {m: r.validation_loss for m, r in runs.items()},
        "exact_match": {m: r.validation_exact_match for m, r in runs.items()},
        "recovered_gap": recovered_gap(runs),
        "train_losses": {m: r.train_losses for m, r in runs.items()},
        "minutes": (time.time() - start) / 60,  # wall clock: on a shared machine mostly waiting for a core
        "cpu_minutes": (time.process_time() - cpu_start) / 60,  # what the training itself cost
    }


def results_table(rows: list[dict]) -> str:
    """The markdown table of the summary rows."""
    lines = ["| family | compression | FLOPs with a cached gist | loss: positive / gist / negative | "
             "exact match: positive / gist / negative | loss gap recovered by the gist |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        loss, match = row["validation_loss"], row["exact_match"]
        lines.append(
            f"| {row['family']} | {row['compression']:.1f}x ({row['instruction_tokens']:.1f} tokens -> "
            f"{row['num_gist_tokens']} gist) | {row['flops_ratio']:.2f} "
            f"({1 - row['flops_ratio']:.0%} saved) | {loss['positive']:.3f} / {loss['gist']:.3f} / "
            f"{loss['negative']:.3f} | {match['positive']:.0%} / {match['gist']:.0%} / {match['negative']:.0%} | "
            f"{row['recovered_gap']:.0%} |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Training loss per step (smoothed over 50 steps) of every mask, one panel per family: a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for mode, losses in row["train_losses"].items():
            window = max(1, min(50, len(losses) // 10))
            smooth = torch.tensor(losses).unfold(0, window, 1).mean(-1) if len(losses) >= window else torch.tensor(
                losses)
            ax.plot(smooth.tolist(), label=f"{mode} (valid {row['validation_loss'][mode]:.2f})")
        ax.set_title(row["family"])
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (output tokens)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> HfArgumentParser:
    """The user-data flags (``UserDataArguments``), then the experiment's settings and options."""
    defaults = GistExperimentSettings()
    parser = HfArgumentParser((UserDataArguments,), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(defaults).items():
        kind = int if name == "word_pool" else type(value)
        parser.add_argument(f"--{name}", type=kind, default=value, help=f"(default {value})")
    parser.add_argument("--families", nargs="+", default=list(GIST_FAMILIES), choices=GIST_FAMILIES)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--save_models", action="store_true",
                        help="write each trained model and its tokenizer to OUTPUT_DIR/<family>_<mask>/")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    return parser


def user_rows(data: UserDataArguments) -> tuple[list[dict], list[dict]] | None:
    """The user's ``(train, validation)`` rows (instruction, output, optional input), or None for the embedded
    task. Raises ``ValueError`` for flags that cannot work (``--streaming``: the rows are read into memory)."""
    data.check()
    if data.streaming:
        raise ValueError("--streaming is not supported by the gist experiment: its rows are read into memory.")
    if not data.uses_user_data:
        return None
    splits = data.load_one_of(ROW_LAYOUTS)
    return tuple([{"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
                  for row in splits[split]] for split in ("train", "validation"))


def write_results(rows: list[dict], families: list[str], output_dir: Path, minutes: float) -> dict:
    """Merge ``rows`` with the other families' rows already in ``output_dir`` (one family per process can run side by
    side), then write results.json, results.md and the training plot."""
    path = output_dir / "results.json"
    kept = [row for row in (json.loads(path.read_text())["rows"] if path.exists() else [])
            if row["family"] not in families]
    rows = sorted(kept + rows, key=lambda row: GIST_FAMILIES.index(row["family"]))
    results = {"rows": rows, "minutes_of_this_process": minutes}
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    (output_dir / "results.md").write_text(results_table(rows) + "\n")
    plot_curves(rows, output_dir / "gist_training.png")
    logger.info("%s", results_table(rows))
    return results


def main(argv: list[str] | None = None) -> dict:
    data, args = build_parser().parse_args_into_dataclasses(argv)
    rows = user_rows(data)
    if args.threads:  # only when asked: main() also runs inside other processes (tests), whose setting it would change
        torch.set_num_threads(args.threads)
    settings = GistExperimentSettings(**{k: getattr(args, k) for k in asdict(GistExperimentSettings())})
    if settings.word_pool is not None and settings.word_pool <= 0:
        settings.word_pool = None
    from ..data import load_tokenizer

    main_process = int(os.environ.get("RANK", "0")) == 0  # every process trains the same models; one writes
    load_before, start = os.getloadavg(), time.time()
    save_to = args.output_dir if args.save_models and main_process else None
    results = [run_family(family, load_tokenizer(), settings, rows=rows, save_to=save_to) for family in args.families]
    for row in results:
        row.update(settings=asdict(settings), load_average_before=load_before, load_average_after=os.getloadavg(),
                   torch_threads=torch.get_num_threads(), data=asdict(data))
    if not main_process:
        return {"rows": results}
    return write_results(results, args.families, args.output_dir, (time.time() - start) / 60)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
