"""The transfer-learning experiment of seed 003 on the labelled task of the embedded corpus.

Claim: a model pre-trained on unlabelled text (MLM for the encoder, span corruption for the encoder-decoder) and
then fine-tuned beats the same architecture trained from scratch with the same fine-tuning budget, and reaches a
given accuracy with fewer labelled examples.

Procedure (every number from real runs, nothing assumed):
1. Pre-train each family once on the reference manual with the labelled task's test paragraphs cut out
   (``hfgen.data.labelled.drop_test_paragraphs``): the test text is never read before it is scored.
2. Choose the peak fine-tuning learning rate of each family and start (scratch, pre-trained) among
   ``finetune_learning_rates`` by accuracy on a validation split carved out of the train split
   (:func:`select_learning_rates`): one procedure for both starts, and the test split is never read for it. A
   pre-trained model may want another rate than a fresh one; choosing both the same way keeps the comparison fair.
   With ``learning_rate_per_size`` the choice is made for every number of labelled examples separately.
3. For every fine-tuning seed and every number n of labelled examples (the first n of a shuffle by that seed, so
   within a seed the sets are nested), fine-tune the pre-trained model and a fresh model of the same config with
   the same steps, batch size, schedule and seed, each at its chosen rate: the encoder with a classification head,
   the encoder-decoder text to text as T5 is fine-tuned (``seq2seq_head="text_to_text"``: paragraph + sentinel in,
   sentinel + the class's word out, the span-corruption format; or ``"classification"``:
   ``HfGenSeq2SeqForSequenceClassification``; see ``hfgen.training.classification``). Score both
   on the fixed test split (accuracy, macro-F1 through the shipped ``evaluate`` metric).
4. Write ``results.json`` (every run and the learning-rate choice), ``results.md`` (mean +- standard deviation
   over the seeds, and for each family the fewest examples with which the pre-trained model's mean accuracy
   reaches the best mean accuracy from scratch, and for every size n the examples it needs to match scratch's
   accuracy with n, :func:`examples_to_match`) and ``accuracy_vs_examples.png`` (means with +-1 standard
   deviation bars) into the output folder.

Runs made in parallel (one process per family or per seed, each with its own ``output_dir``) combine into one
table and plot with :func:`merge_results` (``recipes/transfer_learning.py --merge_from a,b,...``).

Defaults and why: 2-layer, hidden-128 models with each family's default keys; pre-training 2,000 steps of 32 blocks
of 64 tokens at learning rate 2e-3. Measured on the encoder (one fine-tuning seed): with 300 steps of 16 blocks the
masked-LM model stayed at the unigram plateau (masked-token perplexity about 964, what token frequencies alone
give) and pre-training gained nothing; with 2,000 steps of 32 it reached perplexity 544 and beat scratch at every
number of labelled examples (``recipes/configs/transfer_encoder_long.yaml``).
"""

from __future__ import annotations

import logging
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import TrainingArguments

from .classification import ClassificationDataArguments, ClassificationModelArguments, finetune_classification
from .pretrain import ModelArguments, cpu_training_defaults

logger = logging.getLogger(__name__)

FAMILY_OBJECTIVES = {"encoder": ("hfgen_encoder", "masked LM"), "seq2seq": ("hfgen_seq2seq", "span corruption")}
SEQ2SEQ_OBJECTIVE_NAMES = {"span_corruption": "span corruption", "bart_denoising": "BART denoising"}
RESULTS_JSON, RESULTS_MD, PLOT_FILE = "results.json", "results.md", "accuracy_vs_examples.png"


def _help(text: str) -> dict[str, Any]:
    return {"metadata": {"help": text}}


@dataclass
class TransferArguments:
    """Settings of the experiment. The defaults finish in a few minutes on 2 CPU cores."""

    output_dir: str = field(default="outputs/transfer", **_help("Folder for the pre-trained models and results."))
    families: str = field(default="encoder,seq2seq", **_help(
        "Comma-separated: encoder (pre-trained with MLM), seq2seq (pre-trained with span corruption)."))
    train_sizes: str = field(default="32,100,300,all", **_help(
        "Comma-separated numbers of labelled examples to fine-tune on ('all' = the whole train split)."))
    hidden_size: int = field(default=128, **_help("Width of every model."))
    num_hidden_layers: int = field(default=2, **_help("Layers (the seq2seq model has as many in its decoder)."))
    num_attention_heads: int = field(default=4, **_help("Attention heads."))
    intermediate_size: int = field(default=512, **_help("MLP width."))
    config_overrides: str | None = field(default=None, **_help(
        "Further config keys for every model, 'key=value,...' (e.g. 'softmax_variant=off_by_one')."))
    block_size: int = field(default=64, **_help("Tokens per pre-training sequence (the seq2seq encoder input)."))
    pretrain_steps: int = field(default=2000, **_help(
        "Optimizer steps of each pre-training (300 of 16 blocks left masked LM at the unigram plateau)."))
    pretrain_batch_size: int = field(default=32, **_help("Sequences per pre-training step."))
    pretrain_learning_rate: float = field(default=2e-3, **_help("Peak learning rate of pre-training."))
    pretrain_include_docstrings: bool = field(default=False, **_help(
        "Pre-train on the reference manual plus the standard library's docstrings (about 6x the text; the task's "
        "test paragraphs stay out either way)."))
    max_length: int = field(default=64, **_help("Tokens per labelled example (most paragraphs fit in 64)."))
    finetune_steps: int = field(default=120, **_help("Optimizer steps of every fine-tuning run (the same budget)."))
    finetune_batch_size: int = field(default=16, **_help("Examples per fine-tuning step."))
    finetune_learning_rate: float = field(default=1e-3, **_help(
        "Peak learning rate of every fine-tuning run when finetune_learning_rates is empty."))
    finetune_learning_rates: str | None = field(default="3e-4,1e-3,3e-3", **_help(
        "Comma-separated candidate peak learning rates of fine-tuning. Each family and start (scratch, pre-trained) "
        "gets the candidate with the best accuracy on a validation split carved out of the train split "
        "(selection_validation_fraction; all its remaining examples, the first fine-tuning seed): the same "
        "procedure for both starts, and test is never read. One rate: every run uses it, no selection. Empty or "
        "null: every run uses finetune_learning_rate."))
    learning_rate_per_size: bool = field(default=True, **_help(
        "Choose the fine-tuning learning rate separately for every number n of labelled examples (fine-tuning on n "
        "examples of the selection split, scored on its validation part); false: once, with all of them. A rate "
        "that suits 800 examples can overwrite a pre-trained model in the 60 epochs that 32 examples get (masked LM "
        "with 32 examples: 0.335 test accuracy at the rate chosen once, 0.405 at the rate chosen for 32)."))
    selection_validation_fraction: float = field(default=0.2, **_help(
        "Share of the train split held out to choose the fine-tuning learning rate (only for the choice: the runs "
        "themselves train on the whole train split)."))
    seq2seq_objective: str = field(default="span_corruption", **_help(
        "Pre-training objective of the seq2seq family: span_corruption (T5) or bart_denoising (BART: text "
        "infilling of 3 tokens in 10 and sentence permutation; the decoder writes the whole block)."))
    seq2seq_head: str = field(default="text_to_text", **_help(
        "How the seq2seq family is fine-tuned: 'text_to_text' (the LM head answers a word naming the class, in the "
        "span-corruption format, as T5 is fine-tuned) or 'classification' (HfGenSeq2SeqForSequenceClassification, "
        "as T5ForSequenceClassification). Measured: span corruption's mean gain over scratch +0.044 text to text, "
        "+0.028 with the classification head."))
    max_eval_samples: int | None = field(default=None, **_help("Score on the first N test examples (all: None)."))
    seed: int = field(default=0, **_help("Seed of pre-training (weights, masks, batches)."))
    finetune_seeds: str = field(default="0,1,2", **_help(
        "Comma-separated seeds of the fine-tuning runs: each seed draws its own labelled subsets, fresh weights "
        "and batch order; the table reports mean +- standard deviation over them."))
    inits: str = field(default="scratch,pretrained", **_help(
        "Which starts to fine-tune: scratch, pretrained or both (a run of one start can be merged with a run of the "
        "other, e.g. scratch baselines made while pre-training runs)."))
    merge_from: str | None = field(default=None, **_help(
        "Instead of running: combine the results.json of these comma-separated output folders (runs made in "
        "parallel) into one table, JSON and plot in output_dir."))
    pretrained_dirs: str | None = field(default=None, **_help(
        "Skip pre-training: 'encoder=path,seq2seq=path' of folders saved by the pre-training recipes."))
    trust_remote_code: bool = field(default=False, **_help(
        "Run code that a --pretrained_dirs folder's tokenizer_config.json names in auto_map (off: such a folder is "
        "refused; hfgen's own folders need no code run)."))

    def family_list(self) -> list[str]:
        families = [f.strip() for f in self.families.split(",") if f.strip()]
        unknown = [f for f in families if f not in FAMILY_OBJECTIVES]
        if unknown or not families:
            raise ValueError(f"families must name some of {', '.join(FAMILY_OBJECTIVES)}, got {self.families!r}.")
        return families

    def size_list(self, available: int) -> list[int]:
        sizes = []
        for entry in (e.strip() for e in self.train_sizes.split(",") if e.strip()):
            n = available if entry == "all" else int(entry) if entry.isdigit() else None
            if n is None or not 1 <= n <= available:
                raise ValueError(f"train_sizes entries must be integers in [1, {available}] or 'all', got {entry!r}.")
            sizes.append(n)
        if not sizes:
            raise ValueError("train_sizes names no size.")
        return sorted(set(sizes))

    def init_list(self) -> list[str]:
        inits = [i.strip() for i in self.inits.split(",") if i.strip()]
        if not inits or any(i not in ("scratch", "pretrained") for i in inits):
            raise ValueError(f"inits must name some of scratch, pretrained, got {self.inits!r}.")
        return list(dict.fromkeys(inits))

    def seed_list(self) -> list[int]:
        entries = [e.strip() for e in str(self.finetune_seeds).split(",") if e.strip()]
        if not entries or not all(e.isdigit() for e in entries):
            raise ValueError(f"finetune_seeds must be comma-separated integers >= 0, got {self.finetune_seeds!r}.")
        return list(dict.fromkeys(int(e) for e in entries))

    def pretrained_dir_map(self) -> dict[str, str]:
        if not self.pretrained_dirs:
            return {}
        pairs = dict(entry.split("=", 1) for entry in self.pretrained_dirs.split(",") if "=" in entry)
        unknown = sorted(set(pairs) - set(FAMILY_OBJECTIVES))
        if unknown:
            raise ValueError(f"pretrained_dirs keys must be among {', '.join(FAMILY_OBJECTIVES)}, got {unknown}.")
        return pairs

    def learning_rate_candidates(self) -> list[float]:
        """The candidate fine-tuning learning rates (empty: no selection, ``finetune_learning_rate`` for all)."""
        entries = [e.strip() for e in str(self.finetune_learning_rates or "").split(",") if e.strip()]
        try:
            rates = [float(e) for e in entries]
        except ValueError:
            rates = []
        if len(rates) != len(entries) or not all(r > 0 and math.isfinite(r) for r in rates):
            raise ValueError(f"finetune_learning_rates must be comma-separated numbers > 0 (or empty), got "
                             f"{self.finetune_learning_rates!r}.")
        return list(dict.fromkeys(rates))

    def check(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "block_size",
                    "pretrain_steps", "pretrain_batch_size", "max_length", "finetune_steps", "finetune_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}.")
        for key in ("pretrain_learning_rate", "finetune_learning_rate"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}.")
        if not 0 < self.selection_validation_fraction < 1:
            raise ValueError(f"selection_validation_fraction must be in (0, 1), got "
                             f"{self.selection_validation_fraction!r}.")
        from .classification import SEQ2SEQ_HEADS

        if self.seq2seq_objective not in SEQ2SEQ_OBJECTIVE_NAMES:
            raise ValueError(f"seq2seq_objective must be one of {', '.join(SEQ2SEQ_OBJECTIVE_NAMES)}, got "
                             f"{self.seq2seq_objective!r}.")
        if self.seq2seq_head not in SEQ2SEQ_HEADS:
            raise ValueError(f"seq2seq_head must be one of {', '.join(SEQ2SEQ_HEADS)}, got {self.seq2seq_head!r}.")
        self.learning_rate_candidates()
        self.family_list()
        self.seed_list()
        self.init_list()
        self.pretrained_dir_map()


def _model_fields(args: TransferArguments) -> dict[str, Any]:
    return dict(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size,
                config_overrides=args.config_overrides)


def _training_args(output_dir: Path, steps: int, batch_size: int, learning_rate: float, seed: int,
                   **extra: Any) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64, learning_rate=learning_rate, lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 10), weight_decay=0.01, logging_steps=max(1, steps // 20), eval_strategy="no",
        save_strategy="no", report_to="none", seed=seed, **{**cpu_training_defaults(), **extra})


def pretrain_family(family: str, args: TransferArguments, output_dir: Path, **training_extra: Any) -> str:
    """Pre-train one family with its objective (test paragraphs held out); returns the saved folder."""
    training_args = _training_args(output_dir, args.pretrain_steps, args.pretrain_batch_size,
                                   args.pretrain_learning_rate, args.seed, **training_extra)
    model_args = ModelArguments(**_model_fields(args))
    if family == "encoder":
        from .masked_lm import MaskedLMDataArguments, pretrain_masked_lm

        pretrain_masked_lm(model_args, MaskedLMDataArguments(block_size=args.block_size,
                                                             include_docstrings=args.pretrain_include_docstrings),
                           training_args)
    else:
        from .span_corruption import SpanCorruptionDataArguments, pretrain_span_corruption

        data_args = SpanCorruptionDataArguments(block_size=args.block_size, objective=args.seq2seq_objective,
                                                include_docstrings=args.pretrain_include_docstrings)
        pretrain_span_corruption(model_args, data_args, training_args)
    return str(output_dir)


def objective_name(family: str, seq2seq_objective: str = "span_corruption") -> str:
    """How ``family`` was pre-trained, in words (the seq2seq family's objective is a setting)."""
    return SEQ2SEQ_OBJECTIVE_NAMES[seq2seq_objective] if family == "seq2seq" else FAMILY_OBJECTIVES[family][1]


def fewest_examples(rows: list[dict], accuracy: float) -> int | None:
    """The smallest n whose accuracy reaches ``accuracy``, or None."""
    reached = [row["train_examples"] for row in rows if row["accuracy"] >= accuracy - 1e-12]
    return min(reached) if reached else None


def examples_to_match(rows: list[dict], accuracy: float) -> tuple[float | None, str]:
    """How many labelled examples the curve ``rows`` (mean accuracy per ``train_examples``) needs to reach
    ``accuracy``: ``(n, "interpolated")`` between the last size below it and the first size at or above it,
    linearly in log(examples) (the shape learning curves take between such points); ``(smallest size, "at_most")``
    when the smallest size already reaches it; ``(None, "not_reached")`` when no size does. Only the first crossing
    counts: a curve that dips again later does not move the answer."""
    rows = sorted(rows, key=lambda r: r["train_examples"])
    for index, row in enumerate(rows):
        if row["accuracy"] >= accuracy - 1e-12:
            if index == 0:
                return float(row["train_examples"]), "at_most"
            below = rows[index - 1]
            fraction = (accuracy - below["accuracy"]) / (row["accuracy"] - below["accuracy"])
            log_n = math.log(below["train_examples"]) + fraction * (
                math.log(row["train_examples"]) - math.log(below["train_examples"]))
            return math.exp(log_n), "interpolated"
    return None, "not_reached"


def sign_test_p_value(wins: int, runs: int) -> float:
    """One-sided sign test: the chance of ``wins`` or more wins in ``runs`` paired runs if pre-training made no
    difference (each run a fair coin), ``sum_{k >= wins} C(runs, k) / 2^runs``. A tie counts as a loss."""
    return sum(math.comb(runs, k) for k in range(wins, runs + 1)) / 2**runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (family, init, train_examples): accuracy and macro-F1 as mean and standard deviation over the
    fine-tuning seeds, with ``seeds`` the number of runs."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["family"], row["init"], row["train_examples"]), []).append(row)
    rows = []
    for (family, init, n), runs in groups.items():
        accuracy, accuracy_std = _mean_std([r["accuracy"] for r in runs])
        macro_f1, macro_f1_std = _mean_std([r["macro_f1"] for r in runs])
        rows.append({"family": family, "init": init, "train_examples": n, "accuracy": accuracy,
                     "accuracy_std": accuracy_std, "macro_f1": macro_f1, "macro_f1_std": macro_f1_std,
                     "seeds": len(runs)})
    return sorted(rows, key=lambda r: (r["family"], r["init"], r["train_examples"]))


def summarise(results: list[dict]) -> dict[str, dict[str, Any]]:
    """Per family, on the seed means: mean accuracy gain of pre-training over scratch, sizes where pre-training
    wins, runs (seed, size) where it wins, and the labelled-data comparison at the best mean accuracy from
    scratch."""
    summary = {}
    means = aggregate(results)
    for family in dict.fromkeys(r["family"] for r in results):
        scratch = [r for r in means if r["family"] == family and r["init"] == "scratch"]
        pretrained = [r for r in means if r["family"] == family and r["init"] == "pretrained"]
        if not scratch or [r["train_examples"] for r in scratch] != [r["train_examples"] for r in pretrained]:
            continue  # one start only (a partial run, to be merged): nothing to compare
        gains = [p["accuracy"] - s["accuracy"] for p, s in zip(pretrained, scratch)]
        paired = {(r.get("seed", 0), r["train_examples"]): r["accuracy"] for r in results
                  if r["family"] == family and r["init"] == "scratch"}
        run_gains = [r["accuracy"] - paired[(r.get("seed", 0), r["train_examples"])] for r in results
                     if r["family"] == family and r["init"] == "pretrained"
                     and (r.get("seed", 0), r["train_examples"]) in paired]
        target = max(s["accuracy"] for s in scratch)
        summary[family] = {
            "mean_accuracy_gain": sum(gains) / len(gains),
            "pretrained_wins": sum(g > 0 for g in gains),
            "sizes": len(gains),
            "run_wins": sum(g > 0 for g in run_gains),
            "runs": len(run_gains),
            "run_wins_p_value": sign_test_p_value(sum(g > 0 for g in run_gains), len(run_gains)),
            "target_accuracy": target,  # the best mean accuracy from scratch, at any size
            "scratch_examples_to_target": fewest_examples(scratch, target),
            "pretrained_examples_to_target": fewest_examples(pretrained, target),
            # the second half of the claim at every size: labelled examples the pre-trained model needs to match
            # the mean accuracy scratch reaches with n
            "examples_to_match_scratch": [
                dict(zip(("scratch_examples", "scratch_accuracy", "pretrained_examples", "how"),
                         (s["train_examples"], s["accuracy"], *examples_to_match(pretrained, s["accuracy"]))))
                for s in scratch],
        }
    return summary


def _pretraining_line(info: dict[str, Any] | None) -> str:
    if not info:
        return ""
    parts = [f"{key.removeprefix('eval_').replace('_', ' ')} {info[key]:.1f}"
             for key in ("eval_perplexity_before", "eval_perplexity") if info.get(key) is not None]
    if info.get("train_runtime_s") is not None:
        parts.append(f"{info['train_runtime_s'] / 60:.1f} min of training")
    return f"Pre-training (validation, masked/corrupted tokens): {', '.join(parts)}." if parts else ""


def _selection_line(chosen: dict[str, dict[str, Any]] | None) -> str:
    """One sentence per family: the learning rate each start got, with every candidate's validation accuracy."""
    if not chosen:
        return ""
    parts = []
    for init in ("scratch", "pretrained"):
        if init in chosen and "per_size" in chosen[init]:
            rates = ", ".join(f"{n}: **{v['learning_rate']:g}**" for n, v in chosen[init]["per_size"].items())
            parts.append(f"{'from scratch' if init == 'scratch' else 'pre-trained'} {rates}")
        elif init in chosen:
            scores = ", ".join(f"{row['learning_rate']:g}: {row['accuracy']:.3f}" for row in chosen[init]["validation"])
            parts.append(f"{'from scratch' if init == 'scratch' else 'pre-trained'} "
                         f"**{chosen[init]['learning_rate']:g}** (validation accuracy {scores})")
    per_size = any("per_size" in v for v in chosen.values())
    return (f"Fine-tuning learning rate chosen on the validation split{' for each size' if per_size else ''}: "
            + "; ".join(parts) + ".")


def _p_value_text(info: dict[str, Any]) -> str:
    """``; one-sided sign test p = ...`` for a summary that has it (merged runs written before it may not)."""
    p = info.get("run_wins_p_value")
    return "" if p is None else f"; one-sided sign test p = {p:.2g}"


def _matching_line(matches: list[dict]) -> str:
    """Per scratch size: the labelled examples with which the pre-trained model matches its accuracy."""
    parts = []
    for m in matches:
        n, how = m["pretrained_examples"], m["how"]
        answer = ("not reached" if n is None else f"≤ {n:.0f}" if how == "at_most" else f"≈ {n:.0f}")
        parts.append(f"{m['scratch_examples']} ({m['scratch_accuracy']:.3f}) → {answer}")
    return ("Labelled examples the pre-trained model needs to match scratch's mean accuracy with n examples "
            "(n (accuracy) → examples; ≈: interpolated linearly in log(examples) between the sizes run, ≤: "
            "already matched at the smallest size): " + "; ".join(parts) + ".")


def markdown_table(results: list[dict], summary: dict[str, dict[str, Any]], args: TransferArguments,
                   pretraining: dict[str, dict[str, Any]] | None = None,
                   selection: dict[str, dict[str, Any]] | None = None) -> str:
    """The results as markdown: per family and size, accuracy and macro-F1 from scratch and pre-trained, as mean
    +- standard deviation over the fine-tuning seeds; with ``selection`` (:func:`select_learning_rates` per
    family), the learning rate each start was fine-tuned with and why."""
    means = aggregate(results)
    seeds = sorted({r.get("seed", 0) for r in results})
    candidates = args.learning_rate_candidates()
    if selection and len(candidates) > 1:
        rate = (f"peak learning rate chosen for each family and start (scratch, pre-trained)"
                f"{' and number of labelled examples' if args.learning_rate_per_size else ''} among "
                f"{', '.join(f'{r:g}' for r in sorted(candidates))} by accuracy on a validation split "
                f"({args.selection_validation_fraction:g} of the train split, held out for this choice only; the "
                f"same procedure for both starts, the test split never read)")
    else:
        rate = f"learning rate {candidates[0] if candidates else args.finetune_learning_rate:g}"
    head = ("" if not any(r["family"] == "seq2seq" for r in results) else "; seq2seq fine-tuned text to text"
            if args.seq2seq_head == "text_to_text" else "; seq2seq fine-tuned with a classification head")
    lines = ["# Transfer learning on the reference-manual groups task", "",
             f"Fine-tuning budget per run: {args.finetune_steps} steps x {args.finetune_batch_size} examples, "
             f"{rate}{head}; pre-training: {args.pretrain_steps} steps x "
             f"{args.pretrain_batch_size} blocks of {args.block_size} tokens"
             f"{' of the manual and the docstrings' if args.pretrain_include_docstrings else ''} at learning rate "
             f"{args.pretrain_learning_rate}; models: {args.num_hidden_layers} layers, hidden {args.hidden_size}"
             f"{', ' + args.config_overrides if args.config_overrides else ''}. Test accuracy and macro-F1, mean "
             f"+- standard deviation over {len(seeds)} fine-tuning seed{'s' if len(seeds) > 1 else ''} "
             f"({', '.join(map(str, seeds))}).", ""]
    for family, (model_type, _) in FAMILY_OBJECTIVES.items():
        rows = [r for r in means if r["family"] == family]
        if not rows or family not in summary:
            continue
        lines += [f"## {family} (`{model_type}`), pre-trained with "
                  f"{objective_name(family, args.seq2seq_objective)}", ""]
        line = _pretraining_line((pretraining or {}).get(family))
        lines += [line, ""] if line else []
        line = _selection_line((selection or {}).get(family))
        lines += [line, ""] if line else []
        lines += ["| labelled examples | accuracy from scratch | accuracy pre-trained | gain | macro-F1 scratch | "
                  "macro-F1 pre-trained |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n in sorted({r["train_examples"] for r in rows}):
            s = next(r for r in rows if r["train_examples"] == n and r["init"] == "scratch")
            p = next(r for r in rows if r["train_examples"] == n and r["init"] == "pretrained")
            lines.append(f"| {n} | {s['accuracy']:.3f} ± {s['accuracy_std']:.3f} | {p['accuracy']:.3f} ± "
                         f"{p['accuracy_std']:.3f} | {p['accuracy'] - s['accuracy']:+.3f} | {s['macro_f1']:.3f} ± "
                         f"{s['macro_f1_std']:.3f} | {p['macro_f1']:.3f} ± {p['macro_f1_std']:.3f} |")
        info = summary[family]
        reach = info["pretrained_examples_to_target"]
        lines += ["", f"Pre-trained beats scratch on the mean at {info['pretrained_wins']} of {info['sizes']} sizes "
                      f"(mean gain {info['mean_accuracy_gain']:+.3f}), and in {info['run_wins']} of {info['runs']} "
                      f"paired runs (same seed and size{_p_value_text(info)}). Best mean accuracy from scratch: "
                      f"{info['target_accuracy']:.3f} with {info['scratch_examples_to_target']} examples; "
                      f"pre-trained reaches it with {reach if reach is not None else 'none of the sizes tried'}"
                      f"{' examples' if reach is not None else ''}.", ""]
        if info.get("examples_to_match_scratch"):
            lines += [_matching_line(info["examples_to_match_scratch"]), ""]
    majority = results[0].get("majority_accuracy") if results else None
    if majority is not None:
        lines += [f"Majority-class accuracy on the test split: {majority:.3f}.", ""]
    return "\n".join(lines)


def plot_results(results: list[dict], path: Path, seq2seq_objective: str = "span_corruption") -> Path:
    """Accuracy vs labelled examples (log scale): the seed mean with +-1 standard deviation bars, a solid line per
    pre-trained family, dashed from scratch; each run as a faint dot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = {"encoder": "tab:blue", "seq2seq": "tab:orange"}
    means = aggregate(results)
    for family in FAMILY_OBJECTIVES:
        objective = objective_name(family, seq2seq_objective)
        for init, style in (("pretrained", "-o"), ("scratch", "--s")):
            rows = [r for r in means if r["family"] == family and r["init"] == init]
            if not rows:
                continue
            label = f"{family}, {'pre-trained (' + objective + ')' if init == 'pretrained' else 'from scratch'}"
            axes.errorbar([r["train_examples"] for r in rows], [r["accuracy"] for r in rows],
                          yerr=[r["accuracy_std"] for r in rows], fmt=style, color=colors[family], label=label,
                          capsize=3, markersize=4)
            runs = [r for r in results if r["family"] == family and r["init"] == init]
            axes.plot([r["train_examples"] for r in runs], [r["accuracy"] for r in runs], ".", color=colors[family],
                      alpha=0.25)
    majority = results[0].get("majority_accuracy") if results else None
    if majority is not None:
        axes.axhline(majority, color="gray", linewidth=0.8, linestyle=":", label="majority class")
    axes.set_xscale("log")
    sizes = sorted({r["train_examples"] for r in results})
    axes.set_xticks(sizes, [str(n) for n in sizes])  # the sizes run, not 3x10^1-style log labels
    axes.minorticks_off()
    axes.set_xlabel("labelled training examples")
    axes.set_ylabel("test accuracy (mean ± sd over seeds)")
    axes.set_title("Pre-trained vs from scratch, same fine-tuning budget")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _pretraining_metrics(folder: str) -> dict[str, Any]:
    """What the pre-training recipe recorded in ``all_results.json`` (perplexities, time), if anything."""
    path = Path(folder) / "all_results.json"
    if not path.exists():
        return {}
    recorded = json.loads(path.read_text())
    return {key: recorded[key] for key in ("eval_perplexity_before", "eval_perplexity", "train_runtime_s",
                                           "global_step", "num_parameters") if key in recorded}


def write_outputs(args: TransferArguments, results: list[dict], pretrained_dirs: dict[str, str],
                  wall_time_s: float, selection: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plot for ``results`` into ``args.output_dir``."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    pretraining = {family: _pretraining_metrics(folder) for family, folder in pretrained_dirs.items()}
    files = {"json": str(out / RESULTS_JSON), "markdown": str(out / RESULTS_MD), "plot": str(out / PLOT_FILE)}
    majority = results[0].get("majority_accuracy") if results else None
    payload = {"arguments": asdict(args), "pretrained_dirs": pretrained_dirs, "pretraining": pretraining,
               "learning_rate_selection": selection or {}, "results": results, "means": aggregate(results),
               "summary": summary, "majority_accuracy": majority, "wall_time_s": wall_time_s}
    (out / RESULTS_JSON).write_text(json.dumps(payload, indent=2, default=lambda v: None if v is math.inf else v))
    (out / RESULTS_MD).write_text(markdown_table(results, summary, args, pretraining, selection))
    plot_results(results, out / PLOT_FILE, args.seq2seq_objective)
    return {"results": results, "summary": summary, "files": files, "wall_time_s": wall_time_s,
            "learning_rate_selection": selection or {}}


def merge_results(args: TransferArguments) -> dict[str, Any]:
    """Combine the ``results.json`` of the folders in ``args.merge_from`` (runs made in parallel, e.g. one process
    per family or per seed) into one table, JSON and plot in ``args.output_dir``. The first folder's arguments
    describe the budget; every folder must have used the same budget and model size.

    Raises:
        ValueError: for a folder without ``results.json``, for runs whose budgets differ, or for the same
            (family, init, size, seed) measured twice.
    """
    folders = [f.strip() for f in (args.merge_from or "").split(",") if f.strip()]
    payloads = _read_results(folders)
    _check_same_budget(folders, payloads)
    # The seq2seq head matters only to runs with seq2seq rows (an encoder-only run merges with any), and must be
    # one for all of them.
    heads = _merged_setting(payloads, "seq2seq_head", lambda row: row["family"] == "seq2seq",
                            "the seq2seq rows come from different seq2seq_head settings")
    # The seq2seq objective matters only to runs with pre-trained seq2seq rows (scratch rows do not depend on it,
    # so one scratch run serves several objectives), and must be one for all of them.
    objectives = _merged_setting(payloads, "seq2seq_objective",
                                 lambda row: row["family"] == "seq2seq" and row["init"] == "pretrained",
                                 "the seq2seq rows come from different objectives")
    results = [row for payload in payloads for row in payload["results"]]
    keys = [(r["family"], r["init"], r["train_examples"], r.get("seed", 0)) for r in results]
    if len(set(keys)) != len(keys):
        raise ValueError("merge_from: the folders measured the same (family, init, size, seed) more than once.")
    merged = TransferArguments(**{**payloads[0]["arguments"],
                                  "learning_rate_per_size": _setting(payloads[0], "learning_rate_per_size"),
                                  "seq2seq_head": next(iter(heads), _setting({}, "seq2seq_head")),
                                  "seq2seq_objective": next(iter(objectives), _setting({}, "seq2seq_objective")),
                                  "output_dir": args.output_dir, "merge_from": args.merge_from,
                                  "families": ",".join(dict.fromkeys(r["family"] for r in results)),
                                  "finetune_seeds": ",".join(map(str, sorted({k[3] for k in keys})))})
    pretrained_dirs = {family: folder for payload in payloads for family, folder in payload["pretrained_dirs"].items()}
    selection: dict[str, dict[str, Any]] = {}  # per family and start: one folder may hold scratch, another pre-trained
    for payload in payloads:
        for family, chosen in payload.get("learning_rate_selection", {}).items():
            selection.setdefault(family, {}).update(chosen)
    return write_outputs(merged, results, pretrained_dirs, max(p["wall_time_s"] for p in payloads), selection)


# What every merged run must share: the budget and the model size.
_MERGE_BUDGET = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "config_overrides",
                 "pretrain_steps", "pretrain_batch_size", "pretrain_learning_rate", "pretrain_include_docstrings",
                 "block_size", "max_length",
                 "finetune_steps", "finetune_batch_size", "finetune_learning_rate", "max_eval_samples",
                 "finetune_learning_rates", "learning_rate_per_size", "selection_validation_fraction")


def _read_results(folders: list[str]) -> list[dict[str, Any]]:
    payloads = []
    for folder in folders:
        path = Path(folder) / RESULTS_JSON
        if not path.exists():
            raise ValueError(f"merge_from: {folder!r} has no {RESULTS_JSON}.")
        payloads.append(json.loads(path.read_text()))
    if not payloads:
        raise ValueError("merge_from names no folder.")
    return payloads


def _setting(payload: dict[str, Any], key: str) -> Any:
    """A run's argument ``key``; for keys that runs made before they existed do not record, today's default, except
    where the behaviour then was another (runs before learning_rate_per_size chose one rate for all sizes)."""
    if key in payload.get("arguments", {}):
        return payload["arguments"][key]
    return {**asdict(TransferArguments()), "learning_rate_per_size": False, "seq2seq_head": "classification"}[key]


def _check_same_budget(folders: list[str], payloads: list[dict[str, Any]]) -> None:
    for folder, payload in zip(folders, payloads):
        differ = [k for k in _MERGE_BUDGET if _setting(payload, k) != _setting(payloads[0], k)]
        if differ:
            raise ValueError(f"merge_from: {folder!r} used other settings than {folders[0]!r}: {differ}.")


def _merged_setting(payloads: list[dict[str, Any]], key: str, concerns: Callable[[dict], bool],
                    conflict: str) -> set[Any]:
    """The values of ``key`` among the runs with a row it ``concerns``; more than one is a ``conflict``."""
    values = {_setting(payload, key) for payload in payloads if any(concerns(row) for row in payload["results"])}
    if len(values) > 1:
        raise ValueError(f"merge_from: {conflict}: {sorted(values)}.")
    return values


def _finetune(family: str, init: str, n: int | None, seed: int, learning_rate: float, args: TransferArguments,
              pretrained_dirs: dict[str, str], output_dir: Path, validation_fraction: float = 0.0,
              **training_extra: Any):
    """One fine-tuning run of ``family`` from ``init`` (scratch / pretrained) on ``n`` labelled examples (None:
    all), scored on test, or on the validation split with ``validation_fraction`` > 0."""
    model_type = FAMILY_OBJECTIVES[family][0]
    model_args = ClassificationModelArguments(
        model_name_or_path=pretrained_dirs[family] if init == "pretrained" else None, model_type=model_type,
        seq2seq_head=args.seq2seq_head, trust_remote_code=args.trust_remote_code,
        **(_model_fields(args) if init == "scratch" else {"config_overrides": None}))
    data_args = ClassificationDataArguments(max_length=args.max_length, max_train_samples=n,
                                            max_eval_samples=None if validation_fraction else args.max_eval_samples,
                                            subset_seed=seed, validation_fraction=validation_fraction)
    training_args = _training_args(output_dir, args.finetune_steps, args.finetune_batch_size, learning_rate, seed,
                                   **training_extra)
    return finetune_classification(model_args, data_args, training_args, save=False)


def select_learning_rates(family: str, args: TransferArguments, pretrained_dirs: dict[str, str], output_dir: Path,
                          seed: int, sizes: list[int] | None = None, **training_extra: Any) -> dict[str, dict[str, Any]]:
    """Choose the fine-tuning learning rate of each start of ``family`` on validation data only.

    For every start in ``args.inits`` and every rate of ``args.finetune_learning_rates``: fine-tune with the
    experiment's budget (steps, batch size, schedule) and ``seed`` on the train split minus a validation split
    (``args.selection_validation_fraction`` of it, fixed by a hash of the text: ``load_reference_manual_groups``),
    all of its examples, and score accuracy and macro-F1 on that validation split. The chosen rate has the best
    validation accuracy (ties: better macro-F1, then the smaller rate). Scratch and pre-trained go through the
    same procedure; the test split is not read.

    With ``sizes`` (``args.learning_rate_per_size``): the same for every size n, fine-tuning on the first n
    examples (by ``seed``) of that reduced train split, or all of them when it has fewer than n.

    Returns:
        ``{init: {"learning_rate": chosen, "validation": [{"learning_rate", "accuracy", "macro_f1"}, ...]}}``;
        with ``sizes``: ``{init: {"per_size": {str(n): {"learning_rate": ..., "validation": [...]}}}}``.
    """
    available = None
    if sizes:
        from ..data.labelled import load_reference_manual_groups

        available = len(load_reference_manual_groups(
            validation_fraction=args.selection_validation_fraction)["train"])
    chosen = {}
    for init in args.init_list():
        per_size = {}
        for n in sizes or [None]:
            subset = None if n is None or n >= available else n
            scores = []
            for rate in sorted(args.learning_rate_candidates()):
                name = f"{family}_{init}_lr{rate:g}" + ("" if n is None else f"_n{n}")
                result = _finetune(family, init, subset, seed, rate, args, pretrained_dirs,
                                   output_dir / "select" / name,
                                   validation_fraction=args.selection_validation_fraction, **training_extra)
                scores.append({"learning_rate": rate, "accuracy": result.eval_accuracy,
                               "macro_f1": result.eval_macro_f1})
                logger.info("[hfgen] %s %10s%s learning rate %g: validation accuracy %.3f", family, init,
                            "" if n is None else f" n={n:4d}", rate, result.eval_accuracy)
            best = max(scores, key=lambda row: (row["accuracy"], row["macro_f1"], -row["learning_rate"]))
            per_size[n] = {"learning_rate": best["learning_rate"], "validation": scores}
        chosen[init] = per_size[None] if sizes is None else {"per_size": {str(n): v for n, v in per_size.items()}}
    return chosen


def chosen_rate(chosen: dict[str, Any], n: int) -> float:
    """The learning rate one start's selection (see :func:`select_learning_rates`) gives the runs with n
    examples."""
    return chosen["per_size"][str(n)]["learning_rate"] if "per_size" in chosen else chosen["learning_rate"]


def run_transfer_experiment(args: TransferArguments, **training_extra: Any) -> dict[str, Any]:
    """Run the whole experiment (see the module docstring) and write its table, JSON and plot; with
    ``args.merge_from``, combine earlier runs instead (:func:`merge_results`).

    Args:
        training_extra: further ``TrainingArguments`` values for every run (e.g. ``disable_tqdm=True``).

    Returns:
        ``{"results": [...rows...], "summary": {...per family...}, "files": {...}}``; a row has ``family``,
        ``init`` (``scratch`` / ``pretrained``), ``train_examples``, ``seed``, ``accuracy``, ``macro_f1``,
        ``accuracy_before``, ``train_runtime_s``.
    """
    from collections import Counter

    from ..data.labelled import load_reference_manual_groups

    args.check()
    if args.merge_from:
        return merge_results(args)
    families = args.family_list()
    seeds = args.seed_list()
    splits = load_reference_manual_groups()
    sizes = args.size_list(len(splits["train"]))
    test_labels = list(splits["test"]["label"])[: args.max_eval_samples]
    majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    given = args.pretrained_dir_map()
    started = time.monotonic()
    results, pretrained_dirs, selection = [], {}, {}
    for family in families:
        objective = objective_name(family, args.seq2seq_objective)
        if family in given:
            pretrained_dirs[family] = given[family]
        elif "pretrained" not in args.init_list():
            pass
        else:
            logger.info("[hfgen] pre-training the %s with %s", family, objective)
            pretrained_dirs[family] = pretrain_family(family, args, out / f"pretrained_{family}", **training_extra)
        candidates = args.learning_rate_candidates()
        rates = {(init, n): candidates[0] if len(candidates) == 1 else args.finetune_learning_rate
                 for init in args.init_list() for n in sizes}
        if len(candidates) > 1:
            chosen = select_learning_rates(family, args, pretrained_dirs, out, seeds[0],
                                           sizes if args.learning_rate_per_size else None, **training_extra)
            selection[family] = chosen
            rates = {(init, n): chosen_rate(chosen[init], n) for init in chosen for n in sizes}
        for seed in seeds:
            for n in sizes:
                for init in args.init_list():
                    result = _finetune(family, init, n, seed, rates[init, n], args, pretrained_dirs,
                                       out / "finetune" / f"{family}_{init}_{n}_seed{seed}", **training_extra)
                    results.append({"family": family, "init": init, "train_examples": n, "seed": seed,
                                    "accuracy": result.eval_accuracy, "macro_f1": result.eval_macro_f1,
                                    "accuracy_before": result.eval_accuracy_before, "learning_rate": rates[init, n],
                                    "train_runtime_s": result.train_runtime, "majority_accuracy": majority})
                    logger.info("[hfgen] %s %10s n=%4d seed %s: accuracy %.3f", family, init, n, seed,
                                result.eval_accuracy)
    return write_outputs(args, results, pretrained_dirs, time.monotonic() - started, selection)
