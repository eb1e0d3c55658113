"""hfgen's decoder beside transformers' LlamaForCausalLM: same config, same weights, one run, ratios.

Three sections, each against a reference measured in the same process with its repetitions interleaved (the order
rotates every repetition), so that machine noise hits both sides alike:

  llama     HfGenDecoderForCausalLM vs LlamaForCausalLM (tiny and small): training tokens/s (forward + backward
            + AdamW step), greedy generation tokens/s with a KV cache (batch 1 and 8, 64 new tokens after a
            32-token prompt, min_new_tokens = max_new_tokens), peak memory of one training step.
  variants  each softmax variant and attention scoring vs hfgen's standard softmax, sdpa path, tiny model:
            forward + backward and forward-only tokens/s.
  long      forward time and peak memory at 1k / 4k / 8k tokens (batch 1, one layer, no grad): standard vs
            off_by_one vs adaptive_temperature.

Ratios are hfgen / reference: the median over repetitions of the per-repetition ratio (for memory, the ratio of
the two peaks). Peak memory is measured in a fresh process per measurement: torch.cuda.max_memory_allocated on a
GPU; on a CPU the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) above the resident set
just before the measured step -- the process's real footprint, allocator caching included.

Targets (PASS/FAIL beside each ratio): default decoder >= 1.0x Llama in training and generation; temperature and
off_by_one >= 0.9x standard; adaptive_temperature >= 0.5x standard and its forward memory at 8k <= 2x standard's.

examples:
  python benchmarks/decoder.py --quick                       # smoke run, about a minute on 2 CPU cores
  python benchmarks/decoder.py                               # full run, writes benchmarks/RESULTS.md
  python benchmarks/decoder.py --device cuda --dtype bfloat16
  python benchmarks/decoder.py --sections variants long --no-write
  python benchmarks/decoder.py --threads 1 --sections llama   # CPU time of one thread: fair on a busy machine
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from common import (CLOCKS, CLOCK_HELP, CPU_MEMORY_METHOD, GENERATION_REPEATS_HELP, clock_description,
                    generation_repeats, interleaved, machine, measure_peak, paired_ratio, run_probe, use_clock,
                    write_section)
from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM

VOCAB = 8192
MODEL_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
SIZES = {
    "tiny": dict(num_hidden_layers=6, hidden_size=256, intermediate_size=688, num_attention_heads=8, seq=256,
                 batch=8),
    "small": dict(num_hidden_layers=8, hidden_size=512, intermediate_size=1376, num_attention_heads=8, seq=512,
                  batch=8),
}
# Training the small model at batch 8 x 512 takes ~6 s a step on 2 CPU cores; batch 4 keeps the full run short.
CPU_BATCH = {"small": 4}
VARIANTS = {
    "temperature": dict(softmax_variant="temperature", softmax_temperature=0.8),
    "off_by_one": dict(softmax_variant="off_by_one"),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "clipped": dict(softmax_variant="clipped"),
    "general": dict(attention_scoring="general"),
    "additive": dict(attention_scoring="additive"),
    "attention_gate": dict(attention_gate=True),
}
SPEED_TARGETS = {"temperature": 0.9, "off_by_one": 0.9, "adaptive_temperature": 0.5}
LONG_VARIANTS = ("standard", "off_by_one", "adaptive_temperature")
LONG_MEMORY_TARGET = ("adaptive_temperature", 8192, 2.0)  # variant, length, at most this x standard's peak
PROMPT, NEW_TOKENS = 32, 64


# --------------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One comparison. ``ratio`` = hfgen / reference; for speeds higher is better and ``target`` is a floor, for
    memory lower is better and ``target`` is a ceiling."""

    section: str
    what: str
    reference: float
    value: float
    ratio: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True

    def verdict(self) -> str:
        if self.target is None:
            return ""
        ok = self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target
        return f"{'≥' if self.higher_is_better else '≤'} {self.target:g}× {'PASS' if ok else 'FAIL'}"


SECTION_TITLES = {
    "llama": ("hfgen vs transformers LlamaForCausalLM (same config and weights, sdpa)", "Llama", "hfgen/Llama"),
    "variants": ("Softmax and scoring variants vs hfgen standard (sdpa)", "standard", "variant/std"),
    "long": ("Long context: forward, batch 1, one layer, no grad", "standard", "variant/std"),
}


def render(rows: list[Row]) -> str:
    out = []
    for section, (title, reference, ratio) in SECTION_TITLES.items():
        chosen = [r for r in rows if r.section == section]
        if not chosen:
            continue
        out += [f"### {title}", "", f"| measurement | {reference} | hfgen | {ratio} | target |", "|---|---:|---:|---:|---|"]
        for r in chosen:
            digits = 0 if max(r.reference, r.value) >= 100 else 1 if max(r.reference, r.value) >= 10 else 2
            out.append(f"| {r.what} ({r.unit}) | {r.reference:,.{digits}f} | {r.value:,.{digits}f} | {r.ratio:.2f}× "
                       f"| {r.verdict()} |")
        out.append("")
    return "\n".join(out).rstrip()


# --------------------------------------------------------------------------------------------------- timing
def throughput_row(section: str, what: str, work: float, times: dict[str, list[float]], reference: str, name: str,
                   target: float | None, unit: str = "tok/s") -> Row:
    """Throughputs from median times; the ratio as the median of per-repetition ratios (robust to drift)."""
    return Row(section, what, work / statistics.median(times[reference]), work / statistics.median(times[name]),
               paired_ratio(times, reference, name), unit, target)


# --------------------------------------------------------------------------------------------------- models
def model_keys(size: dict, **overrides) -> dict:
    return {**{k: size[k] for k in MODEL_KEYS}, **overrides}


def build_llama(size: dict, device: str, dtype: torch.dtype, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, **model_keys(size, **overrides)))
    model.set_attn_implementation("sdpa")
    return model.to(device, dtype)


def build_hfgen(size: dict, state_dict: dict, device: str, dtype: torch.dtype, variant: dict | None = None,
                **overrides) -> HfGenDecoderForCausalLM:
    """hfgen with Llama's weights (its parameter names are Llama's); variant-only parameters keep their init."""
    torch.manual_seed(0)
    config = HfGenDecoderConfig(vocab_size=VOCAB, **model_keys(size, **overrides), **(variant or {}))
    model = HfGenDecoderForCausalLM(config)
    result = model.load_state_dict(state_dict, strict=False)
    extra = ("score_weight", "score_vector", "head_gate")
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(any(e in k for e in extra) for k in result.missing_keys), result.missing_keys
    model.set_attn_implementation("sdpa")
    return model.to(device, dtype)


def token_ids(batch: int, seq: int, device: str, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(device)


def train_step(model, ids) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward_backward(model, ids) -> Callable[[], None]:
    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def forward_only(model, ids) -> Callable[[], None]:
    def step():
        with torch.no_grad():
            model(input_ids=ids)

    return step


def generation(model, prompt, new_tokens) -> Callable[[], torch.Tensor]:
    # The same explicit settings for both models: their generation_config defaults differ (Llama's eos is 2).
    def run():
        with torch.no_grad():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                  eos_token_id=2, pad_token_id=0)

    return run


# --------------------------------------------------------------------------------------------------- memory
def memory_probe(spec: dict) -> dict:
    """Runs in a process of its own (see ``peak_memory``): builds one model and measures one step's peak."""
    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    size = SIZES[spec["size"]]
    overrides = spec.get("overrides", {})
    llama = build_llama(size, "cpu", torch.float32, **overrides)
    if spec["model"] == "llama":
        model = llama.to(device, dtype)
    else:
        model = build_hfgen(size, llama.state_dict(), device, dtype, spec.get("variant"), **overrides)
        del llama
    ids = token_ids(spec["batch"], spec["seq"], device, seed=0)
    with torch.no_grad():  # warm the kernels' one-time set-up so it is not counted
        model(input_ids=ids[:, :8])
    if spec["workload"] == "train":
        step = train_step(model.train(), ids)
    else:
        def step():
            with torch.no_grad():
                model.model(input_ids=ids)  # the bare decoder: no [seq, vocab] logits to dwarf attention
    peak, method = measure_peak(step, device)
    return {"peak_bytes": peak, "method": method}


def peak_memory(spec: dict) -> dict:
    """A fresh process per measurement: on a CPU the peak is a process-wide figure, shared by anything else."""
    return run_probe(__file__, spec)


# --------------------------------------------------------------------------------------------------- sections
def bench_llama(size_name: str, args, notes: list[str]) -> list[Row]:
    size = dict(SIZES[size_name])
    if args.quick:
        size.update(batch=2, seq=size["seq"] // 2)
    elif args.device == "cpu" and size_name in CPU_BATCH:
        size["batch"] = CPU_BATCH[size_name]
        notes.append(f"{size_name}: training batch {size['batch']} on CPU (batch {SIZES[size_name]['batch']} on GPU).")
    device, dtype = args.device, args.dtype
    llama = build_llama(size, device, dtype)
    ours = build_hfgen(size, llama.state_dict(), device, dtype)

    check = token_ids(2, 64, device, seed=1)
    with torch.no_grad():
        diff = (llama(input_ids=check).logits.float() - ours(input_ids=check).logits.float()).abs().max().item()
    notes.append(f"{size_name}: max |logits difference| hfgen vs Llama = {diff:.1e} ({args.dtype_name}).")

    ids = token_ids(size["batch"], size["seq"], device, seed=2)
    label = f"{size_name} ({size['num_hidden_layers']}L, d={size['hidden_size']})"
    times = interleaved({"llama": train_step(llama.train(), ids), "hfgen": train_step(ours.train(), ids)}, device,
                        args.repeats)
    rows = [throughput_row("llama", f"{label}: training, batch {size['batch']}×{size['seq']}", ids.numel(), times,
                           "llama", "hfgen", 1.0)]
    llama.eval(), ours.eval()
    new_tokens = 16 if args.quick else NEW_TOKENS
    for batch in (1, 8):
        prompt = token_ids(batch, PROMPT, device, seed=3)
        fns = {"llama": generation(llama, prompt, new_tokens), "hfgen": generation(ours, prompt, new_tokens)}
        same = torch.equal(fns["llama"](), fns["hfgen"]())
        times = interleaved(fns, device, args.generation_repeats)
        rows.append(throughput_row("llama", f"{label}: generation, batch {batch}, {PROMPT}+{new_tokens} tokens",
                                   batch * new_tokens, times, "llama", "hfgen", 1.0, "new tok/s"))
        if not same:
            notes.append(f"{size_name}: greedy tokens differ between hfgen and Llama at batch {batch} "
                         f"({args.dtype_name}; expected only in low precision).")
    del llama, ours
    gc.collect()

    peaks = {}
    for model in ("llama", "hfgen"):
        spec = dict(model=model, size=size_name, workload="train", batch=size["batch"], seq=size["seq"],
                    device=device, dtype=args.dtype_name)
        peaks[model] = peak_memory(spec)
    mib = {m: p["peak_bytes"] / 2**20 for m, p in peaks.items()}
    rows.append(Row("llama", f"{label}: peak memory of a training step", mib["llama"], mib["hfgen"],
                    mib["hfgen"] / mib["llama"], "MiB", None, higher_is_better=False))
    return rows


def bench_variants(args, notes: list[str]) -> list[Row]:
    size = dict(SIZES["tiny"])
    if args.quick:
        size.update(batch=2, seq=128)
    device, dtype = args.device, args.dtype
    state = build_llama(size, "cpu", torch.float32).state_dict()
    models = {"standard": build_hfgen(size, state, device, dtype)}
    for name, variant in VARIANTS.items():
        models[name] = build_hfgen(size, state, device, dtype, variant)
    ids = token_ids(size["batch"], size["seq"], device, seed=4)
    shape = f"batch {size['batch']}×{size['seq']}"
    rows = []
    for mode, make in (("forward+backward", forward_backward), ("forward", forward_only)):
        times = interleaved({name: make(m.train(), ids) for name, m in models.items()}, device, args.repeats)
        rows += [throughput_row("variants", f"{name}: {mode}, {shape}", ids.numel(), times, "standard", name,
                                SPEED_TARGETS.get(name)) for name in VARIANTS]
    notes.append("variants: tiny model (6L, d=256, 8 heads); targets apply to forward+backward and forward alike.")
    return rows


def bench_long(args, notes: list[str]) -> list[Row]:
    lengths = (1024, 2048) if args.quick else tuple(args.long_lengths)
    device, dtype = args.device, args.dtype
    size = SIZES["tiny"]
    overrides = dict(num_hidden_layers=1, max_position_embeddings=max(lengths))
    state = build_llama(size, "cpu", torch.float32, **overrides).state_dict()
    models = {name: build_hfgen(size, state, device, dtype, VARIANTS.get(name), **overrides).eval()
              for name in LONG_VARIANTS}
    rows = []
    for seq in lengths:
        ids = token_ids(1, seq, device, seed=5)
        fns = {name: forward_only(m.model, ids) for name, m in models.items()}
        times = interleaved(fns, device, max(2, args.repeats - 2))
        peaks = {}
        for name in LONG_VARIANTS:
            spec = dict(model="hfgen", size="tiny", overrides=overrides, variant=VARIANTS.get(name), workload="forward",
                        batch=1, seq=seq, device=device, dtype=args.dtype_name)
            peaks[name] = peak_memory(spec)["peak_bytes"] / 2**20
        for name in LONG_VARIANTS[1:]:
            rows.append(throughput_row("long", f"{name}: {seq} tokens, speed", seq, times, "standard", name,
                                       SPEED_TARGETS.get(name)))
            target = LONG_MEMORY_TARGET[2] if (name, seq) == LONG_MEMORY_TARGET[:2] else None
            rows.append(Row("long", f"{name}: {seq} tokens, peak memory", peaks["standard"], peaks[name],
                            peaks[name] / peaks["standard"], "MiB", target, higher_is_better=False))
    notes.append("long: the bare decoder (no LM head, whose [seq, vocab] logits would dwarf attention); "
                 "d=256, 8 heads, one layer.")
    return rows


# --------------------------------------------------------------------------------------------------- report
def revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hfgen"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return commit + (" + uncommitted changes in hfgen/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", dest="dtype_name", choices=["float32", "bfloat16"], default="float32",
                        help="parameter and activation dtype (default: float32)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model only, smaller batches and sequences, 2 repeats, long context at "
                             "1k/2k; writes no results file unless --out is given")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per model (default 5; quick 2)")
    parser.add_argument("--generation-repeats", type=int, default=None, help=GENERATION_REPEATS_HELP)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None,
                        help="model sizes compared with Llama (default: tiny small; quick: tiny)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTION_TITLES), default=list(SECTION_TITLES),
                        help="which comparisons to run (default: all)")
    parser.add_argument("--long-lengths", nargs="+", type=int, default=[1024, 4096, 8192],
                        help="token counts of the long-context section (default: 1024 4096 8192)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None, help=CLOCK_HELP)
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file whose section for this machine is replaced "
                             "(default: benchmarks/RESULTS.md; not written with --quick unless given)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    args.dtype = getattr(torch, args.dtype_name)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.generation_repeats = generation_repeats(args.generation_repeats, args.repeats)
    args.sizes = args.sizes or (["tiny"] if args.quick else ["tiny", "small"])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = use_clock(args.clock, args.device)
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return
    transformers.logging.set_verbosity_error()
    started, load_before = time.time(), os.getloadavg()
    rows: list[Row] = []
    notes: list[str] = []

    def progress(message: str) -> None:
        print(f"[{time.time() - started:5.0f}s] {message}", file=sys.stderr, flush=True)

    if "llama" in args.sections:
        for size in args.sizes:
            progress(f"{size} model vs Llama")
            rows += bench_llama(size, args, notes)
    if "variants" in args.sections:
        progress("softmax and scoring variants")
        rows += bench_variants(args, notes)
    if "long" in args.sections:
        progress("long context")
        rows += bench_long(args, notes)
    elapsed, load_after = time.time() - started, os.getloadavg()

    command = "python benchmarks/decoder.py " + " ".join(sys.argv[1:] if argv is None else argv)
    memory_method = "torch.cuda.max_memory_allocated" if args.device == "cuda" else CPU_MEMORY_METHOD
    header = [
        "Decoder (`benchmarks/decoder.py`): hfgen beside `LlamaForCausalLM`, softmax variants, long context.", "",
        f"- machine: {machine(args.device, threads=False)}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); transformers {transformers.__version__}; hfgen {revision()}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; {args.dtype_name}; "
        f"{args.repeats} repetitions ({args.generation_repeats} for generation); run took {elapsed:.0f} s; timed by "
        f"{clock_description(args.clock)}",
        f"- command: `{command.strip()}`",
        f"- peak memory: {memory_method}",
    ]
    if args.device == "cpu":
        header.append(f"- load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} "
                      f"(other processes on the same cores make timings noisy; ratios are paired per repetition)")
    header += [f"- {note}" for note in notes]
    table = render(rows)
    print("\n".join(header) + "\n\n" + table)
    out = args.out or (None if args.quick else Path(__file__).with_name("RESULTS.md"))
    if out is not None and not args.no_write:
        title = f"{args.device}: {machine(args.device, threads=False)}, {args.dtype_name}"
        write_section(out, f"## {title}\n\n" + "\n".join(header) + "\n\n" + table)
        print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
