"""hfgen's encoder-decoder beside transformers' T5ForConditionalGeneration of the same size and weights, in one run.

hfgen runs with T5-like keys and T5's own weights (``HfGenSeq2SeqForConditionalGeneration.from_t5``), so both sides
compute the same function (checked: logits and greedy tokens). Measured, as hfgen / T5 ratios with PASS/FAIL against
the target of issue 3 (>= 1.0x): training tokens/s (forward + backward + AdamW step; source and target tokens
counted), greedy generation tokens/s with the self- and cross-attention caches (batch 1 and 8), and the peak memory
of a training step (each in a fresh process; lower is better, reported without a target). Repetitions of the two
sides are interleaved so that machine noise hits both alike; the ratio is the median of per-repetition ratios.

    python benchmarks/seq2seq.py --quick      # a smoke run (about a minute on 2 CPU cores)
    python benchmarks/seq2seq.py              # the full run; writes its section of benchmarks/RESULTS.md
    python benchmarks/seq2seq.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from common import (CLOCKS, CLOCK_HELP, GENERATION_REPEATS_HELP, clock_description, generation_repeats, interleaved,
                    machine, measure_peak, paired_ratio, run_probe, use_clock, write_section)
from hfgen import HfGenSeq2SeqForConditionalGeneration

VOCAB = 8192
SIZES = {  # T5's own shapes: d_kv = d_model / heads, ReLU MLP of 4 d_model, tied embeddings (T5 v1.0)
    "tiny": dict(d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8, batch=8, source=128, target=32),
    "small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, batch=8, source=256, target=64),
}
MODEL_KEYS = ("d_model", "d_kv", "d_ff", "num_layers", "num_heads")
NEW_TOKENS = 32
TARGET = 1.0
SECTION = "## Encoder-decoder (`benchmarks/seq2seq.py`)"


def build_pair(size: dict, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, dropout_rate=0.1, decoder_start_token_id=0,
                      **{k: size[k] for k in MODEL_KEYS})
    t5 = T5ForConditionalGeneration(config)
    t5.generation_config.decoder_start_token_id = 0
    ours = HfGenSeq2SeqForConditionalGeneration.from_t5(t5)
    for model in (t5, ours):
        model.set_attn_implementation("sdpa")
    return t5.to(device, dtype), ours.to(device, dtype)


def batch_of(size: dict, batch: int, device: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, VOCAB, (batch, size["source"]), generator=g).to(device),
            "labels": torch.randint(2, VOCAB, (batch, size["target"]), generator=g).to(device)}


def train_step(model, batch):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generation(model, source, new_tokens):
    def run():
        with torch.no_grad():
            return model.generate(source, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  num_beams=1, use_cache=True, eos_token_id=1, pad_token_id=0)

    return run


def throughput_row(what: str, work: int, times: dict, unit: str) -> dict:
    return dict(what=what, t5=work / statistics.median(times["t5"]), hfgen=work / statistics.median(times["hfgen"]),
                ratio=paired_ratio(times, "t5", "hfgen"), unit=unit,
                target=TARGET)


# -------------------------------------------------------------------------------------------------- memory
def memory_probe(spec: dict) -> dict:
    """In a process of its own: one training step of one model; its resident-set high-water mark above the start."""
    size = SIZES[spec["size"]]
    t5, ours = build_pair(size, spec["device"], getattr(torch, spec["dtype"]))
    model = t5 if spec["model"] == "t5" else ours
    del t5, ours
    gc.collect()
    batch = batch_of(size, spec["batch"], spec["device"], seed=0)
    return {"peak_bytes": measure_peak(train_step(model.train(), batch), spec["device"])[0]}


def peak_memory(spec: dict) -> float | None:
    """MiB, or None where it cannot be measured (no /proc on this system)."""
    if spec["device"] == "cpu" and not Path("/proc/self/clear_refs").exists():
        return None
    return run_probe(__file__, spec)["peak_bytes"] / 2**20


# ------------------------------------------------------------------------------------------------- sections
def bench_size(name: str, args, notes: list[str]) -> list[dict]:
    size = dict(SIZES[name])
    if args.quick:
        size.update(batch=2, source=size["source"] // 2, target=size["target"] // 2)
    t5, ours = build_pair(size, args.device, args.dtype)
    label = f"{name} ({size['num_layers']}+{size['num_layers']}L, d={size['d_model']})"
    check = batch_of(size, 2, args.device, seed=1)
    with torch.no_grad():
        t5.eval(), ours.eval()
        diff = (t5(**check).logits.float() - ours(**check).logits.float()).abs().max().item()
    notes.append(f"{label}: max |logits difference| hfgen vs T5 = {diff:.1e} ({args.dtype_name}).")

    rows = []
    new_tokens = 8 if args.quick else NEW_TOKENS
    for gen_batch in (1, 8):  # first, while both hold the same weights (training below updates each its own)
        source = batch_of(size, gen_batch, args.device, seed=3)["input_ids"]
        fns = {"t5": generation(t5, source, new_tokens), "hfgen": generation(ours, source, new_tokens)}
        if not torch.equal(fns["t5"](), fns["hfgen"]()):
            notes.append(f"{label}: greedy tokens differ at batch {gen_batch} ({args.dtype_name}).")
        times = interleaved(fns, args.device, args.generation_repeats)
        rows.append(throughput_row(f"{label}: generation, batch {gen_batch}, {size['source']}+{new_tokens} tokens",
                                   gen_batch * new_tokens, times, "new tok/s"))

    batch = batch_of(size, size["batch"], args.device, seed=2)
    tokens = batch["input_ids"].numel() + batch["labels"].numel()
    times = interleaved({"t5": train_step(t5.train(), batch), "hfgen": train_step(ours.train(), batch)},
                        args.device, args.repeats)
    rows.insert(0, throughput_row(f"{label}: training, batch {size['batch']}, {size['source']}→{size['target']} "
                                  f"tokens", tokens, times, "tok/s"))
    del t5, ours
    gc.collect()

    peaks = {model: peak_memory(dict(model=model, size=name, batch=size["batch"], device=args.device,
                                     dtype=args.dtype_name)) for model in ("t5", "hfgen")}
    if None not in peaks.values():
        rows.append(dict(what=f"{label}: peak memory of a training step", t5=peaks["t5"], hfgen=peaks["hfgen"],
                         ratio=peaks["hfgen"] / peaks["t5"], unit="MiB", target=None))
    else:
        notes.append(f"{label}: peak memory not measurable on this system.")
    return rows


# --------------------------------------------------------------------------------------------------- report
def verdict(row: dict) -> str:
    if row["target"] is None:
        return "(lower is better)" if row["unit"] == "MiB" else ""
    return f"≥ {row['target']:.1f}× {'PASS' if row['ratio'] >= row['target'] else 'FAIL'}"


def table(rows: list[dict]) -> str:
    lines = ["| measurement | T5 | hfgen | hfgen / T5 | target |", "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['what']} | {row['t5']:,.1f} {row['unit']} | {row['hfgen']:,.1f} {row['unit']} | "
                     f"{row['ratio']:.2f}× | {verdict(row)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions; writes nothing")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5, quick 2)")
    parser.add_argument("--generation-repeats", type=int, default=None, help=GENERATION_REPEATS_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None, help=CLOCK_HELP)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"),
                        help="the Markdown file whose section for this device is replaced (default: RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = use_clock(args.clock, args.device)
    args.dtype_name, args.dtype = args.dtype, getattr(torch, args.dtype)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.generation_repeats = generation_repeats(args.generation_repeats, args.repeats)
    notes: list[str] = []
    rows = [row for name in args.sizes for row in bench_size(name, args, notes)]
    passed = sum(r["ratio"] >= r["target"] for r in rows if r["target"] is not None)
    total = sum(r["target"] is not None for r in rows)
    body = "\n".join([
        f"{SECTION}, {args.device}, {args.dtype_name}", "",
        f"{datetime.date.today()} · {machine(args.device)} · {args.dtype_name} · torch {torch.__version__} · "
        f"{args.repeats} interleaved repetitions ({args.generation_repeats} for generation), medians · {'quick' if args.quick else 'full'} run · timed by "
        f"{clock_description(args.clock)}", "",
        "hfgen with T5-like keys (relative bias, RMSNorm pre-norm, unscaled dot product, ReLU MLP, tied embeddings) "
        "and the weights of `T5ForConditionalGeneration` of the same size (`from_t5`); dropout 0.1 on both; SDPA on "
        "both. hfgen / T5 is the median of per-repetition ratios (robust to drift); each throughput column is the "
        "median of that side's own times, so on a noisy machine the two can disagree.", "",
        table(rows), "",
        *[f"- {n}" for n in notes],
        f"- {passed}/{total} speed targets met.",
    ])
    print(body)
    if not (args.quick or args.no_write):
        write_section(args.results, body)


if __name__ == "__main__":
    main()
