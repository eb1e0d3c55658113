"""hfgen's encoder beside transformers' BertForMaskedLM of the same size and weights, in one run; and hfgen's
DeBERTa-style disentangled attention beside hfgen's BERT-like encoder (and transformers' DebertaV2ForMaskedLM).

hfgen runs with its BERT-like defaults and BERT's own weights (``load_state_dict``, the names are BERT's), so both
sides compute the same function (checked: max |logits difference| is reported). Measured, as ratios with PASS/FAIL
against the targets of issue 3: masked-LM training tokens/s (forward + backward + AdamW step, 15% of the positions
labelled) hfgen / BERT (target >= 1.0x); the same for disentangled / BERT-like hfgen (target: disentangled within 2x
of the BERT-like time, i.e. >= 0.5x); the peak memory of a training step (each in a fresh process; lower is better,
no target). Repetitions of the sides are interleaved so that machine noise hits all alike; a ratio is the median of
per-repetition ratios.

    python benchmarks/encoder.py --quick      # a smoke run (well under a minute on 2 CPU cores); writes nothing
    python benchmarks/encoder.py              # the full run; writes its section of benchmarks/RESULTS.md
    python benchmarks/encoder.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, DebertaV2Config, DebertaV2ForMaskedLM

from common import (CLOCK_HELP, CLOCKS, clock_description, interleaved, load_average, machine, measure_peak,
                    paired_ratio, run_probe, use_clock, write_section)
from hfgen import HfGenEncoderConfig, HfGenEncoderForMaskedLM
from hfgen.models import DEBERTA_LIKE_KEYS

VOCAB = 8195  # hfgen's shipped tokenizer plus the encoder's mask/cls/sep tokens
SIZES = {  # BERT's shapes: head size 64 (32 for tiny), MLP of 4 d
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1024, batch=8, seq=128),
    "small": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048, batch=8,
                  seq=256),
}
MODEL_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
SECTION = "## Encoder (`benchmarks/encoder.py`)"
MODELS = ("bert", "hfgen", "hfgen_disentangled", "deberta_v2")


def build(name: str, size: dict, device: str, dtype: torch.dtype, bert_state: dict | None = None):
    """One of MODELS with seeded weights; ``hfgen`` takes BERT's (the same function as ``bert``)."""
    torch.manual_seed(0)
    shapes = {k: size[k] for k in MODEL_KEYS}
    common = dict(vocab_size=VOCAB, max_position_embeddings=512, pad_token_id=1, hidden_dropout_prob=0.1, **shapes)
    if name == "bert":
        model = BertForMaskedLM(BertConfig(attention_probs_dropout_prob=0.1, **common))
    elif name == "hfgen":
        model = HfGenEncoderForMaskedLM(HfGenEncoderConfig(attention_dropout=0.1, **common))
        if bert_state is not None:
            model.load_state_dict(bert_state, strict=True)
    elif name == "hfgen_disentangled":
        model = HfGenEncoderForMaskedLM(HfGenEncoderConfig(attention_dropout=0.1, **common,
                                                           **{**DEBERTA_LIKE_KEYS, "position_buckets": 256}))
    else:  # transformers' DeBERTa-v2/v3 attention: c2p + p2c, shared keys, log buckets, normalised embeddings
        model = DebertaV2ForMaskedLM(DebertaV2Config(
            attention_probs_dropout_prob=0.1, relative_attention=True, pos_att_type=["c2p", "p2c"],
            share_att_key=True, position_buckets=256, norm_rel_ebd="layer_norm", position_biased_input=False,
            type_vocab_size=0, **common))
    if name != "deberta_v2":  # DeBERTa has its own attention only
        model.set_attn_implementation("sdpa")
    return model.to(device, dtype)


def batch_of(size: dict, batch: int, device: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, size["seq"]), generator=g)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=g) > 0.15, -100)
    return {"input_ids": ids.to(device), "labels": labels.to(device)}


def train_step(model, batch):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ratio_row(what: str, reference: str, ours: str, tokens: int, times: dict, target: float | None) -> dict:
    """Throughputs of ``reference`` and ``ours``, and ours / reference (median of per-repetition ratios)."""
    return dict(what=what, reference=reference, ours=ours,
                a=tokens / statistics.median(times[reference]), b=tokens / statistics.median(times[ours]),
                ratio=paired_ratio(times, reference, ours), unit="tok/s",
                target=target)


def memory_probe(spec: dict) -> dict:
    """In a process of its own: one training step of one model; its peak memory above the start."""
    size = SIZES[spec["size"]] | {"seq": spec["seq"]}
    model = build(spec["model"], size, spec["device"], getattr(torch, spec["dtype"]))
    gc.collect()
    step = train_step(model, batch_of(size, spec["batch"], spec["device"], seed=0))
    return {"peak_bytes": measure_peak(step, spec["device"])[0]}


def peak_memory(spec: dict) -> float | None:
    """MiB, or None where it cannot be measured (no /proc on this system)."""
    if spec["device"] == "cpu" and not Path("/proc/self/clear_refs").exists():
        return None
    return run_probe(__file__, spec)["peak_bytes"] / 2**20


def bench_size(name: str, args, notes: list[str]) -> list[dict]:
    size = dict(SIZES[name])
    if args.quick:
        size.update(batch=2, seq=size["seq"] // 2)
    label = f"{name} ({size['num_hidden_layers']}L, d={size['hidden_size']}, batch {size['batch']} x {size['seq']})"
    bert = build("bert", size, args.device, args.dtype)
    models = {"bert": bert, "hfgen": build("hfgen", size, args.device, args.dtype, bert.state_dict()),
              "hfgen_disentangled": build("hfgen_disentangled", size, args.device, args.dtype),
              "deberta_v2": build("deberta_v2", size, args.device, args.dtype)}
    check = batch_of(size, 2, args.device, seed=1)
    with torch.no_grad():
        diff = (models["bert"].eval()(**check).logits.float()
                - models["hfgen"].eval()(**check).logits.float()).abs().max().item()
    notes.append(f"{label}: max |logits difference| hfgen vs BERT = {diff:.1e} ({args.dtype_name}).")
    batch = batch_of(size, size["batch"], args.device, seed=2)
    tokens = batch["input_ids"].numel()
    times = interleaved({k: train_step(m, batch) for k, m in models.items()}, args.device, args.repeats)
    rows = [ratio_row(f"{label}: MLM training", "bert", "hfgen", tokens, times, 1.0),
            ratio_row(f"{label}: MLM training, disentangled vs BERT-like", "hfgen", "hfgen_disentangled", tokens,
                      times, 0.5),
            ratio_row(f"{label}: MLM training, disentangled", "deberta_v2", "hfgen_disentangled", tokens, times, None)]
    del models, bert
    gc.collect()
    peaks = {m: peak_memory(dict(model=m, size=name, seq=size["seq"], batch=size["batch"], device=args.device,
                                 dtype=args.dtype_name)) for m in MODELS}
    if None in peaks.values():
        notes.append(f"{label}: peak memory not measurable on this system.")
        return rows
    for reference, ours in (("bert", "hfgen"), ("hfgen", "hfgen_disentangled"), ("deberta_v2", "hfgen_disentangled")):
        rows.append(dict(what=f"{label}: peak memory of a training step", reference=reference, ours=ours,
                         a=peaks[reference], b=peaks[ours], ratio=peaks[ours] / peaks[reference], unit="MiB",
                         target=None))
    return rows


def verdict(row: dict) -> str:
    if row["target"] is None:
        return "(lower is better)" if row["unit"] == "MiB" else ""
    return f"≥ {row['target']:.1f}× {'PASS' if row['ratio'] >= row['target'] else 'FAIL'}"


def table(rows: list[dict]) -> str:
    lines = ["| measurement | reference | ours | ours / reference | target |", "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['reference']}: {r['a']:,.1f} {r['unit']} | {r['ours']}: {r['b']:,.1f} "
                     f"{r['unit']} | {r['ratio']:.2f}× | {verdict(r)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions; writes nothing")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5, quick 2)")
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
    notes: list[str] = []
    sizes = args.sizes if not args.quick else args.sizes[:1]
    load_before, started = load_average(), time.monotonic()
    rows = [row for name in sizes for row in bench_size(name, args, notes)]
    notes.append(f"load average (1 min) before / after: {load_before:.2f} / {load_average():.2f} on "
                 f"{os.cpu_count()} cores (other processes share them; ratios are paired per repetition); run took "
                 f"{time.monotonic() - started:.0f} s; command: `python benchmarks/encoder.py "
                 f"{' '.join(sys.argv[1:])}`.")
    targets = [r for r in rows if r["target"] is not None]
    passed = sum(r["ratio"] >= r["target"] for r in targets)
    body = "\n".join([
        f"{SECTION}, {args.device}, {args.dtype_name}", "",
        f"{datetime.date.today()} · {machine(args.device)} · {args.dtype_name} · torch {torch.__version__} · "
        f"{args.repeats} interleaved repetitions, medians · {'quick' if args.quick else 'full'} run, "
        f"sizes: {', '.join(sizes)} · timed by {clock_description(args.clock)}", "",
        "hfgen with BERT-like keys (its defaults) and the weights of `BertForMaskedLM` of the same size; hfgen "
        "disentangled = DeBERTa-v2-like keys (256 log buckets, c2p + p2c, shared projections); DeBERTa-v2 = "
        "`DebertaV2ForMaskedLM` with the same attention settings (its own eager attention). Dropout 0.1 everywhere; "
        "SDPA for BERT and hfgen. A ratio is the median of per-repetition ratios; for throughput higher is better.",
        "", table(rows), "", *[f"- {n}" for n in notes], f"- {passed}/{len(targets)} speed targets met.",
    ])
    print(body)
    if not (args.quick or args.no_write):
        write_section(args.results, body)


if __name__ == "__main__":
    main()
