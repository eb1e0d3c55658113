#!/usr/bin/env python
"""Issue 8, section 2: off-by-one / clipped softmax and gated attention vs outliers and 8-bit quantization
(seed 000, "Is softmax off by 1?"; Bondarenko et al. 2023, "Quantizable Transformers", arXiv:2306.12929).

Tiny decoders (hfgen's HfGenDecoderForCausalLM) with the standard softmax, off-by-one softmax, clipped softmax and
gated attention are trained on the embedded corpus with the same budget and seeds. For each: validation perplexity
in fp32; the maximum infinity norm and average kurtosis of the attention-layer outputs; validation perplexity after
W8A8 post-training quantization (per-tensor symmetric int8 weights, asymmetric uint8 activations, min-max ranges
calibrated on a few training batches; hfgen.experiments.quantization).

    OMP_NUM_THREADS=1 python recipes/experiments/quantization_outliers.py                  # default: decoders
    OMP_NUM_THREADS=1 python recipes/experiments/quantization_outliers.py --model encoder  # BERT-layout encoders
    python recipes/experiments/quantization_outliers.py --steps 2000 --hidden_size 128 --num_hidden_layers 4

Writes results.md / results.json / config.json / quantization_outliers.png into --output_dir.

A one-process measurement of small models: run it with python, not torchrun (each process would run the whole
experiment); run seeds or settings as separate processes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from hfgen.experiments.lm import (
    TOKENIZATIONS,
    attention_output_stats,
    causal_lm_perplexity,
    corpus_token_streams,
    eval_blocks,
    mask_tokens,
    masked_lm_perplexity,
    new_decoder,
    new_encoder,
    random_blocks,
    train_language_model,
)
from hfgen.experiments import papers
from hfgen.experiments.quantization import W8A8FakeQuantizer
from hfgen.experiments.report import aggregate, new_figure, write_results

VARIANTS = {
    "standard": {},
    "off_by_one": {"softmax_variant": "off_by_one"},
    "clipped": {"softmax_variant": "clipped"},
    "gated": {"attention_gate": True},
}
METRICS = ["fp32_perplexity", "w8a8_perplexity", "w8a8_increase_pct", "max_inf_norm", "avg_kurtosis"]
PAPER = papers.QUANTIZATION


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default after its help."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="decoder", choices=["decoder", "encoder"],
                   help="decoder: causal LM (pre-norm RMSNorm, Llama layout); encoder: masked LM (post-norm "
                        "LayerNorm, BERT layout, as in Bondarenko et al.'s BERT experiments)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="attention/softmax variants compared")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one trained model per seed")
    p.add_argument("--tokenization", default="bytes", choices=TOKENIZATIONS, help="how the corpus is cut into tokens")
    p.add_argument("--hidden_size", type=int, default=64, help="width of each trained model")
    p.add_argument("--num_hidden_layers", type=int, default=2, help="layers of each trained model")
    p.add_argument("--num_attention_heads", type=int, default=4, help="attention heads of each trained model")
    p.add_argument("--block_size", type=int, default=64,
                   help="tokens per training/validation block (64 keeps the default run under ~15 min on a busy "
                        "2-core machine)")
    p.add_argument("--batch_size", type=int, default=16, help="examples per training step")
    p.add_argument("--steps", type=int, default=150, help="training steps per model")
    p.add_argument("--learning_rate", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--eval_blocks", type=int, default=96, help="validation blocks for perplexity and outliers")
    p.add_argument("--calibration_batches", type=int, default=4, help="training batches for min-max ranges")
    p.add_argument("--clipped_softmax_gamma", type=float, default=-0.03,
                   help="clipped softmax's lower stretch gamma (<= 0; Bondarenko et al.)")
    p.add_argument("--clipped_softmax_zeta", type=float, default=1.0,
                   help="clipped softmax's upper stretch zeta (>= 1)")
    p.add_argument("--output_dir", default=None,
                   help="default: results/quantization_outliers (decoder) or results/quantization_outliers_encoder")
    p.add_argument("--rerender", action="store_true",
                   help="only rewrite results.md, the plot and the discussion from the results.json in --output_dir")
    args = p.parse_args(argv)
    if args.output_dir is None:
        name = "quantization_outliers" + ("_encoder" if args.model == "encoder" else "")
        args.output_dir = str(Path(__file__).resolve().parent / "results" / name)
    return args


def run_cell(variant: str, seed: int, args, train, validation, vocab_size: int) -> dict[str, float]:
    keys = dict(VARIANTS[variant])
    if variant == "clipped":
        keys.update(clipped_softmax_gamma=args.clipped_softmax_gamma, clipped_softmax_zeta=args.clipped_softmax_zeta)
    sizes = dict(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                 num_attention_heads=args.num_attention_heads, max_position_embeddings=args.block_size)
    if args.model == "encoder":  # one extra token id for [MASK]
        model = new_encoder(seed, vocab_size + 1, **sizes, **keys)
        make_batch = lambda blocks, g: mask_tokens(blocks, vocab_size, vocab_size, g)  # noqa: E731
        evaluate = lambda m, b: masked_lm_perplexity(m, b, vocab_size, vocab_size, 99, args.batch_size)  # noqa: E731
        # BERT's "attention output": self-attention, dense, residual and LayerNorm (Bondarenko et al.'s point)
        attention_suffix = "EncoderAttention"
    else:
        model = new_decoder(seed, vocab_size, **sizes, **keys)
        make_batch = None
        evaluate = lambda m, b: causal_lm_perplexity(m, b, args.batch_size)  # noqa: E731
        attention_suffix = "Attention"
    train_language_model(model, train, args.block_size, args.steps, args.batch_size, args.learning_rate, seed,
                         make_batch=make_batch, progress=True, desc=f"{variant} seed {seed}")
    blocks = eval_blocks(validation, args.block_size, args.eval_blocks)
    fp32 = evaluate(model, blocks)
    stats = attention_output_stats(model, [{"input_ids": blocks[i : i + args.batch_size]}
                                           for i in range(0, len(blocks), args.batch_size)], attention_suffix)
    generator = torch.Generator().manual_seed(1_000 + seed)
    calibration = [{"input_ids": random_blocks(train, args.block_size, args.batch_size, generator)}
                   for _ in range(args.calibration_batches)]
    quantizer = W8A8FakeQuantizer(model)
    quantizer.calibrate(calibration)
    quantizer.quantize()
    w8a8 = evaluate(model, blocks)
    quantizer.restore()
    return {"fp32_perplexity": fp32, "w8a8_perplexity": w8a8, "w8a8_increase_pct": 100 * (w8a8 / fp32 - 1),
            **stats}


def discussion(rows: list[dict], config_steps: int) -> str:
    m = {r["cell"]["attention"]: r["summary"] for r in rows}
    lines = ["**Measured** (means over seeds):"]
    for name, v in m.items():
        lines.append(f"- {name}: fp32 perplexity {v['fp32_perplexity']['mean']:.3f}, W8A8 "
                     f"{v['w8a8_perplexity']['mean']:.3f} ({v['w8a8_increase_pct']['mean']:+.2f}%), max inf-norm "
                     f"{v['max_inf_norm']['mean']:.2f}, average kurtosis {v['avg_kurtosis']['mean']:.2f}.")
    base = m.get("standard")
    verdict = ""
    if base is not None:
        others = {k: v for k, v in m.items() if k != "standard"}

        def differs(metric: str, name: str) -> int:
            """-1 / +1 where the variant's mean is below / above standard's by more than the combined spread."""
            a, b = others[name][metric], base[metric]
            gap = a["mean"] - b["mean"]
            return 0 if abs(gap) <= math.hypot(a["std"], b["std"]) else (1 if gap > 0 else -1)

        worse = [k for k in others if base["fp32_perplexity"]["mean"] * 1.05 < others[k]["fp32_perplexity"]["mean"]]
        better = [k for k in others if differs("fp32_perplexity", k) < 0]
        lower_norm = [k for k in others if differs("max_inf_norm", k) < 0]
        lower_deg = [k for k in others if differs("w8a8_increase_pct", k) < 0]
        big_outliers = base["avg_kurtosis"]["mean"] > 20 or base["max_inf_norm"]["mean"] > 20
        ratios = ", ".join(f"{k} {v['max_inf_norm']['mean'] / base['max_inf_norm']['mean']:.2f}"
                           for k, v in others.items())
        paper_ratios = "; ".join(
            f"{model}: " + ", ".join(f"{k} {row[1] / table['vanilla'][1]:.3f}" for k, row in table.items()
                                     if k != "vanilla")
            for model, table in papers.BONDARENKO_TABLE2.items())
        bert, opt = papers.BONDARENKO_TABLE2["BERT"]["vanilla"], papers.BONDARENKO_TABLE2["OPT"]["vanilla"]
        verdict = (
            f"\n**Agreement, part by part.** (1) fp32 unaffected (seed 000): "
            f"{'no variant is' if not worse else ', '.join(worse) + ' is/are'} more than 5% worse than the standard "
            f"softmax — {'agrees' if not worse else 'partly disagrees'}; clearly better (by more than the seeds' "
            f"spread): {', '.join(better) or 'none'}. At {config_steps} steps that measures how fast each variant "
            f"learns more than where it would end (Bondarenko et al. also report equal-or-better FP perplexity for at "
            f"least one method per model). (2) Fewer outliers: max inf-norm relative to standard here: {ratios} "
            f"(clearly below standard: {', '.join(lower_norm) or 'none'}); the paper's ratios (Table 2): "
            f"{paper_ratios}. (3) Better W8A8: degradation clearly below standard: {', '.join(lower_deg) or 'none'}. "
            + ("The standard model shows outliers (kurtosis > 20 or inf-norm > 20), the regime the paper studies."
               if big_outliers else
               "But the standard model here has no outliers to remove (average kurtosis "
               f"{base['avg_kurtosis']['mean']:.2f}, near the Gaussian 3; max inf-norm "
               f"{base['max_inf_norm']['mean']:.2f}), so W8A8 costs every model at most "
               f"{max(v['w8a8_increase_pct']['mean'] for v in m.values()):.2f}% perplexity, against the paper's "
               f"vanilla BERT-base (max inf-norm {bert[1]}, kurtosis {bert[2]}: W8A8 perplexity {bert[3]} vs FP16 "
               f"{bert[0]}) and OPT-125m ({opt[1]}, {opt[2]}: {opt[3]} vs {opt[0]}). Bondarenko et al. argue the "
               "outliers grow the longer the network is trained; these tiny models are trained for minutes. (The "
               "statistics differ slightly in definition: the max inf-norm here is the maximum over all validation "
               "tokens, which is at least the paper's per-sequence maximum averaged over the validation set, so it "
               "cannot understate outliers; kurtosis here is over the hidden dimension per token, averaged over "
               "tokens and layers.) Verdict: the fp32 part of the claim agrees; "
               + (f"{', '.join(lower_norm)} {'lowers' if len(lower_norm) == 1 else 'lower'} the max inf-norm "
                  "beyond the seeds' spread, the paper's "
                  "direction, but by tens of percent on activations without outliers, not the paper's one to two "
                  "orders of magnitude on outliers of hundreds; " if lower_norm else "")
               + "the outlier and int8 parts are neither confirmed nor refuted at this scale."))
    return "\n".join(lines) + "\n" + verdict + f"\n\n**Paper.** {PAPER}"


def main(argv=None) -> dict:
    started = time.time()
    args = parse_args(argv)
    if args.rerender:
        saved = json.loads((Path(args.output_dir) / "results.json").read_text())
        rows = [{k: v for k, v in row.items() if k != "summary"} for row in saved["rows"]]
        return render(Path(args.output_dir), saved["config"], rows, environment=saved.get("environment"))
    train, validation, vocab_size = corpus_token_streams(args.tokenization)
    rows = []
    for variant in args.variants:
        values: dict[str, list[float]] = {k: [] for k in METRICS}
        for seed in args.seeds:
            cell = run_cell(variant, seed, args, train, validation, vocab_size)
            for k in METRICS:
                values[k].append(cell[k])
            print(f"{variant} seed {seed}: " + ", ".join(f"{k} {cell[k]:.3f}" for k in METRICS), flush=True)
        rows.append({"cell": {"attention": variant}, "metrics": values})
    config = {**vars(args), "experiment": "quantization_outliers", "vocab_size": vocab_size,
              "train_tokens": len(train), "validation_tokens": len(validation),
              "quantization": "W8A8 per-tensor: int8 symmetric weights, uint8 asymmetric activations at every "
                              "Linear input and output and every layer output; min-max calibration",
              "variant_config_keys": VARIANTS}
    return render(Path(args.output_dir), config, rows, started=started)


def render(out: Path, config: dict, rows: list[dict], started: float | None = None,
           environment: dict | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = aggregate(rows)
    figure, axes = new_figure(3, width=4.0)
    names = [r["cell"]["attention"] for r in summary]
    x = range(len(names))
    for ax, (metric, label) in zip(axes, [("fp32_perplexity", "perplexity"), ("max_inf_norm", "max inf-norm"),
                                           ("avg_kurtosis", "avg kurtosis")]):
        if metric == "fp32_perplexity":
            width = 0.38
            for shift, (key, tag) in zip((-width / 2, width / 2), (("fp32_perplexity", "fp32"),
                                                                    ("w8a8_perplexity", "W8A8"))):
                ax.bar([i + shift for i in x], [r["summary"][key]["mean"] for r in summary], width,
                       yerr=[r["summary"][key]["std"] for r in summary], capsize=3, label=tag)
            ax.legend()
        else:
            ax.bar(list(x), [r["summary"][metric]["mean"] for r in summary],
                   yerr=[r["summary"][metric]["std"] for r in summary], capsize=3)
        ax.set_xticks(list(x), names, rotation=20)
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle(f"tiny {config.get('model', 'decoder')}s, {config['steps']} steps, "
                    f"{len(config['seeds'])} seeds (mean ± std)")
    figure.tight_layout()
    figure.savefig(out / "quantization_outliers.png")
    title = "Softmax variants vs outliers and W8A8 quantization" + (
        " (masked-LM encoders)" if config.get("model") == "encoder" else " (causal-LM decoders)")
    return write_results(out, title, config, rows,
                         discussion=discussion(summary, config["steps"]), metric_names=METRICS,
                         plots=["quantization_outliers.png"],
                         started=started, environment=environment)


if __name__ == "__main__":
    main()
