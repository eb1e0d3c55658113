"""The transfer-learning experiment of seed 003 on the labelled task of the embedded corpus.

Claim: a model pre-trained on unlabelled text (MLM for the encoder, span corruption for the encoder-decoder) and
then fine-tuned beats the same architecture trained from scratch with the same fine-tuning budget, and reaches a
given accuracy with fewer labelled examples.

Procedure (every number from real runs, nothing assumed):
1. Pre-train each family once on the reference manual with the labelled task's test paragraphs cut out
   (``hfgen.data.labelled.drop_test_paragraphs``): the test text is never read before it is scored.
2. For every number n of labelled examples (the first n of one fixed shuffle, so the sets are nested), fine-tune
   the pre-trained model and a fresh model of the same config with identical settings: the same steps, batch
   size, learning-rate schedule and seed. Score both on the fixed test split (accuracy, macro-F1 through the
   shipped ``evaluate`` metric).
3. Write ``results.json``, ``results.md`` (a table, and for each family the fewest examples with which the
   pre-trained model reaches the accuracy the scratch model reaches with all of them) and
   ``accuracy_vs_examples.png`` into the output folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from .classification import ClassificationDataArguments, ClassificationModelArguments, finetune_classification
from .pretrain import ModelArguments, cpu_training_defaults

FAMILY_OBJECTIVES = {"encoder": ("hfgen_encoder", "masked LM"), "seq2seq": ("hfgen_seq2seq", "span corruption")}
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
    pretrain_steps: int = field(default=300, **_help("Optimizer steps of each pre-training."))
    pretrain_batch_size: int = field(default=16, **_help("Sequences per pre-training step."))
    pretrain_learning_rate: float = field(default=2e-3, **_help("Peak learning rate of pre-training."))
    max_length: int = field(default=64, **_help("Tokens per labelled example (most paragraphs fit in 64)."))
    finetune_steps: int = field(default=120, **_help("Optimizer steps of every fine-tuning run (the same budget)."))
    finetune_batch_size: int = field(default=16, **_help("Examples per fine-tuning step."))
    finetune_learning_rate: float = field(default=1e-3, **_help("Peak learning rate of every fine-tuning run."))
    max_eval_samples: int | None = field(default=None, **_help("Score on the first N test examples (all: None)."))
    seed: int = field(default=0, **_help("Seed of weights, masks and batches."))
    pretrained_dirs: str | None = field(default=None, **_help(
        "Skip pre-training: 'encoder=path,seq2seq=path' of folders saved by the pre-training recipes."))

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

    def pretrained_dir_map(self) -> dict[str, str]:
        if not self.pretrained_dirs:
            return {}
        pairs = dict(entry.split("=", 1) for entry in self.pretrained_dirs.split(",") if "=" in entry)
        unknown = sorted(set(pairs) - set(FAMILY_OBJECTIVES))
        if unknown:
            raise ValueError(f"pretrained_dirs keys must be among {', '.join(FAMILY_OBJECTIVES)}, got {unknown}.")
        return pairs

    def check(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "block_size",
                    "pretrain_steps", "pretrain_batch_size", "max_length", "finetune_steps", "finetune_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}.")
        for key in ("pretrain_learning_rate", "finetune_learning_rate"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}.")
        self.family_list()
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

        pretrain_masked_lm(model_args, MaskedLMDataArguments(block_size=args.block_size), training_args)
    else:
        from .span_corruption import SpanCorruptionDataArguments, pretrain_span_corruption

        pretrain_span_corruption(model_args, SpanCorruptionDataArguments(block_size=args.block_size), training_args)
    return str(output_dir)


def fewest_examples(rows: list[dict], accuracy: float) -> int | None:
    """The smallest n whose accuracy reaches ``accuracy``, or None."""
    reached = [row["train_examples"] for row in rows if row["accuracy"] >= accuracy - 1e-12]
    return min(reached) if reached else None


def summarise(results: list[dict]) -> dict[str, dict[str, Any]]:
    """Per family: mean accuracy gain of pre-training over scratch, sizes where pre-training wins, and the
    labelled-data comparison at the scratch model's best accuracy."""
    summary = {}
    for family in dict.fromkeys(r["family"] for r in results):
        scratch = sorted((r for r in results if r["family"] == family and r["init"] == "scratch"),
                         key=lambda r: r["train_examples"])
        pretrained = sorted((r for r in results if r["family"] == family and r["init"] == "pretrained"),
                            key=lambda r: r["train_examples"])
        gains = [p["accuracy"] - s["accuracy"] for p, s in zip(pretrained, scratch)]
        target = max(s["accuracy"] for s in scratch)
        summary[family] = {
            "mean_accuracy_gain": sum(gains) / len(gains),
            "pretrained_wins": sum(g > 0 for g in gains),
            "sizes": len(gains),
            "target_accuracy": target,  # the best accuracy from scratch, at any size
            "scratch_examples_to_target": fewest_examples(scratch, target),
            "pretrained_examples_to_target": fewest_examples(pretrained, target),
        }
    return summary


def markdown_table(results: list[dict], summary: dict[str, dict[str, Any]], args: TransferArguments) -> str:
    """The results as markdown: accuracy (macro-F1) per size, from scratch and pre-trained, per family."""
    lines = [f"# Transfer learning on the reference-manual groups task", "",
             f"Fine-tuning budget per run: {args.finetune_steps} steps x {args.finetune_batch_size} examples, "
             f"learning rate {args.finetune_learning_rate}; pre-training: {args.pretrain_steps} steps x "
             f"{args.pretrain_batch_size} blocks of {args.block_size} tokens. Test accuracy (macro-F1).", ""]
    for family, (model_type, objective) in FAMILY_OBJECTIVES.items():
        rows = [r for r in results if r["family"] == family]
        if not rows:
            continue
        lines += [f"## {family} (`{model_type}`), pre-trained with {objective}", "",
                  "| labelled examples | from scratch | pre-trained | gain |", "| ---: | ---: | ---: | ---: |"]
        for n in sorted({r["train_examples"] for r in rows}):
            s = next(r for r in rows if r["train_examples"] == n and r["init"] == "scratch")
            p = next(r for r in rows if r["train_examples"] == n and r["init"] == "pretrained")
            lines.append(f"| {n} | {s['accuracy']:.3f} ({s['macro_f1']:.3f}) | {p['accuracy']:.3f} "
                         f"({p['macro_f1']:.3f}) | {p['accuracy'] - s['accuracy']:+.3f} |")
        info = summary[family]
        reach = info["pretrained_examples_to_target"]
        lines += ["", f"Pre-trained beats scratch at {info['pretrained_wins']} of {info['sizes']} sizes (mean gain "
                      f"{info['mean_accuracy_gain']:+.3f}). Best accuracy from scratch: {info['target_accuracy']:.3f} "
                      f"with {info['scratch_examples_to_target']} examples; pre-trained reaches it with "
                      f"{reach if reach is not None else 'none of the sizes tried'}"
                      f"{' examples' if reach is not None else ''}.", ""]
    majority = results[0].get("majority_accuracy")
    if majority is not None:
        lines += [f"Majority-class accuracy on the test split: {majority:.3f}.", ""]
    return "\n".join(lines)


def plot_results(results: list[dict], path: Path) -> Path:
    """Accuracy vs labelled examples (log scale), a solid line per pre-trained family, dashed from scratch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = {"encoder": "tab:blue", "seq2seq": "tab:orange"}
    for family, (_, objective) in FAMILY_OBJECTIVES.items():
        for init, style in (("pretrained", "-o"), ("scratch", "--s")):
            rows = sorted((r for r in results if r["family"] == family and r["init"] == init),
                          key=lambda r: r["train_examples"])
            if rows:
                label = f"{family}, {'pre-trained (' + objective + ')' if init == 'pretrained' else 'from scratch'}"
                axes.plot([r["train_examples"] for r in rows], [r["accuracy"] for r in rows], style,
                          color=colors[family], label=label)
    majority = results[0].get("majority_accuracy") if results else None
    if majority is not None:
        axes.axhline(majority, color="gray", linewidth=0.8, linestyle=":", label="majority class")
    axes.set_xscale("log")
    axes.set_xlabel("labelled training examples")
    axes.set_ylabel("test accuracy")
    axes.set_title("Pre-trained vs from scratch, same fine-tuning budget")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def run_transfer_experiment(args: TransferArguments, **training_extra: Any) -> dict[str, Any]:
    """Run the whole experiment (see the module docstring) and write its table, JSON and plot.

    Args:
        training_extra: further ``TrainingArguments`` values for every run (e.g. ``disable_tqdm=True``).

    Returns:
        ``{"results": [...rows...], "summary": {...per family...}, "files": {...}}``; a row has ``family``,
        ``init`` (``scratch`` / ``pretrained``), ``train_examples``, ``accuracy``, ``macro_f1``,
        ``accuracy_before``, ``train_runtime_s``.
    """
    from collections import Counter

    from ..data.labelled import load_reference_manual_groups

    args.check()
    families = args.family_list()
    splits = load_reference_manual_groups()
    sizes = args.size_list(len(splits["train"]))
    test_labels = list(splits["test"]["label"])[: args.max_eval_samples]
    majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    given = args.pretrained_dir_map()
    started = time.monotonic()
    results, pretrained_dirs = [], {}
    for family in families:
        model_type, objective = FAMILY_OBJECTIVES[family]
        if family in given:
            pretrained_dirs[family] = given[family]
        else:
            print(f"[hfgen] pre-training the {family} with {objective}", flush=True)
            pretrained_dirs[family] = pretrain_family(family, args, out / f"pretrained_{family}", **training_extra)
        for n in sizes:
            for init in ("scratch", "pretrained"):
                model_args = ClassificationModelArguments(
                    model_name_or_path=pretrained_dirs[family] if init == "pretrained" else None,
                    model_type=model_type, **(_model_fields(args) if init == "scratch" else
                                              {"config_overrides": None}))
                data_args = ClassificationDataArguments(max_length=args.max_length, max_train_samples=n,
                                                        max_eval_samples=args.max_eval_samples)
                training_args = _training_args(out / "finetune" / f"{family}_{init}_{n}", args.finetune_steps,
                                               args.finetune_batch_size, args.finetune_learning_rate, args.seed,
                                               **training_extra)
                result = finetune_classification(model_args, data_args, training_args, save=False)
                results.append({"family": family, "init": init, "train_examples": n,
                                "accuracy": result.eval_accuracy, "macro_f1": result.eval_macro_f1,
                                "accuracy_before": result.eval_accuracy_before,
                                "train_runtime_s": result.train_runtime, "majority_accuracy": majority})
                print(f"[hfgen] {family} {init:>10} n={n:4d}: accuracy {result.eval_accuracy:.3f}", flush=True)
    summary = summarise(results)
    files = {"json": str(out / RESULTS_JSON), "markdown": str(out / RESULTS_MD), "plot": str(out / PLOT_FILE)}
    payload = {"arguments": asdict(args), "pretrained_dirs": pretrained_dirs, "results": results, "summary": summary,
               "majority_accuracy": majority, "wall_time_s": time.monotonic() - started}
    (out / RESULTS_JSON).write_text(json.dumps(payload, indent=2, default=lambda v: None if v is math.inf else v))
    (out / RESULTS_MD).write_text(markdown_table(results, summary, args))
    plot_results(results, out / PLOT_FILE)
    return {"results": results, "summary": summary, "files": files, "wall_time_s": payload["wall_time_s"]}
