"""hfgen's decoder beside transformers' LlamaForCausalLM of the same size and weights, in one run, as ratios.

Measures training tokens/s (forward + backward + AdamW step), generation tokens/s with a KV cache (greedy, batch 1
and 8), each softmax variant and scoring against hfgen's standard softmax, and forward time and peak memory at
1k/4k/8k tokens. Repetitions of the two sides are interleaved so that machine noise hits both alike; medians are
reported. Targets (issue "Foundation", section 7) are printed beside each ratio as PASS/FAIL.

    python benchmarks/decoder.py --quick            # a smoke run (a minute on 2 CPU cores)
    python benchmarks/decoder.py                    # the full run; writes benchmarks/RESULTS.md
    python benchmarks/decoder.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM

SIZES = {
    "tiny": dict(num_hidden_layers=6, hidden_size=256, intermediate_size=688, num_attention_heads=8, seq=256,
                 batch=8),
    "small": dict(num_hidden_layers=8, hidden_size=512, intermediate_size=1376, num_attention_heads=8, seq=512,
                  batch=8),
}
VARIANTS = {
    "temperature": dict(softmax_variant="temperature", softmax_temperature=0.8),
    "off_by_one": dict(softmax_variant="off_by_one"),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "clipped": dict(softmax_variant="clipped"),
    "general": dict(attention_scoring="general"),
    "additive": dict(attention_scoring="additive"),
    "gate": dict(attention_gate=True),
}
TARGETS = {"temperature": 0.9, "off_by_one": 0.9, "adaptive_temperature": 0.5}
VOCAB = 8192


@dataclass
class Row:
    what: str
    baseline: float
    hfgen: float
    unit: str
    target: float | None = None

    @property
    def ratio(self) -> float:
        return self.hfgen / self.baseline

    def verdict(self) -> str:
        if self.target is None:
            return ""
        return f"≥ {self.target:.1f}× {'PASS' if self.ratio >= self.target else 'FAIL'}"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pair(size: dict, device: str, dtype: torch.dtype, **variant) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Llama and hfgen with identical weights (hfgen's names are Llama's)."""
    keys = {k: v for k, v in size.items() if k not in ("seq", "batch")}
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, **keys)).to(device, dtype)
    ours = HfGenDecoderForCausalLM(HfGenDecoderConfig(vocab_size=VOCAB, **keys, **variant)).to(device, dtype)
    missing = ours.load_state_dict(llama.state_dict(), strict=False)
    assert not missing.unexpected_keys, missing
    for model in (llama, ours):
        model.set_attn_implementation("sdpa")
    return llama, ours


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict, device: str, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, their repetitions interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def train_step(model, ids):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward_backward(model, ids):
    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def generation(model, prompt, new_tokens):
    def run():
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)

    return run


def bench_against_llama(size_name: str, device: str, dtype, repeats: int, quick: bool) -> list[Row]:
    size = dict(SIZES[size_name])
    if quick:
        size.update(batch=2, seq=size["seq"] // 2)
    llama, ours = pair(size, device, dtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (size["batch"], size["seq"]), generator=g).to(device)
    tokens = ids.numel()
    t = interleaved({"llama": train_step(llama.train(), ids), "hfgen": train_step(ours.train(), ids)}, device,
                    repeats)
    rows = [Row(f"{size_name}: training tokens/s", tokens / t["llama"], tokens / t["hfgen"], "tok/s", 1.0)]
    llama.eval(), ours.eval()
    new_tokens = 16 if quick else 64
    for batch in (1, 8):
        prompt = torch.randint(0, VOCAB, (batch, 32), generator=g).to(device)
        t = interleaved({"llama": generation(llama, prompt, new_tokens), "hfgen": generation(ours, prompt, new_tokens)},
                        device, repeats)
        made = batch * new_tokens
        rows.append(Row(f"{size_name}: generation tokens/s, batch {batch}", made / t["llama"], made / t["hfgen"],
                        "tok/s", 1.0))
    return rows


def bench_variants(device: str, dtype, repeats: int, quick: bool) -> list[Row]:
    size = dict(SIZES["tiny"])
    if quick:
        size.update(batch=2, seq=128)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (size["batch"], size["seq"]), generator=g).to(device)
    _, standard = pair(size, device, dtype)
    fns = {"standard": forward_backward(standard.train(), ids)}
    for name, variant in VARIANTS.items():
        fns[name] = forward_backward(pair(size, device, dtype, **variant)[1].train(), ids)
    t = interleaved(fns, device, repeats)
    tokens = ids.numel()
    return [Row(f"{name} vs standard: forward+backward tokens/s", tokens / t["standard"], tokens / t[name], "tok/s",
                TARGETS.get(name)) for name in VARIANTS]


def memory_probe(variant: str, seq: int, device: str, dtype_name: str) -> dict:
    """One forward of a 1-layer model at ``seq`` tokens: seconds, and peak memory above what was held before it.

    Run in a process of its own: on a CPU the peak comes from ``ru_maxrss``, which only ever grows, so the first
    forward gives the memory and a second one the time.
    """
    dtype = getattr(torch, dtype_name)
    keys = {k: v for k, v in SIZES["tiny"].items() if k not in ("seq", "batch")}
    torch.manual_seed(0)
    config = HfGenDecoderConfig(vocab_size=VOCAB, **{**keys, "num_hidden_layers": 1}, **VARIANTS.get(variant, {}))
    model = HfGenDecoderForCausalLM(config).to(device, dtype).eval()
    ids = torch.randint(0, VOCAB, (1, seq)).to(device)
    with torch.no_grad():
        if device == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            model.model(input_ids=ids)
            peak = torch.cuda.max_memory_allocated() - before
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            model.model(input_ids=ids)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        seconds = statistics.median(timed(lambda: model.model(input_ids=ids), device) for _ in range(3))
    return {"seconds": seconds, "peak_bytes": peak}


def bench_long_context(device: str, dtype_name: str, quick: bool) -> list[Row]:
    """Each measurement in its own process, so peak RSS on a CPU belongs to that forward alone."""
    lengths = (1024, 2048) if quick else (1024, 4096, 8192)
    rows = []
    for seq in lengths:
        results = {}
        for variant in ("standard", "off_by_one", "adaptive_temperature"):
            out = subprocess.run([sys.executable, __file__, "--memory-probe", f"{variant}:{seq}", "--device", device,
                                  "--dtype", dtype_name], capture_output=True, text=True, check=True)
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        for variant in ("off_by_one", "adaptive_temperature"):
            rows.append(Row(f"{seq} tokens: {variant} vs standard, forward tokens/s",
                            seq / results["standard"]["seconds"], seq / results[variant]["seconds"], "tok/s",
                            TARGETS.get(variant)))
            rows.append(Row(f"{seq} tokens: {variant} vs standard, peak forward memory",
                            results["standard"]["peak_bytes"] / 2**20, results[variant]["peak_bytes"] / 2**20,
                            "MiB", 2.0 if variant == "adaptive_temperature" else None))
    return rows


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def render(rows: list[Row]) -> str:
    lines = ["| measurement | baseline | hfgen | ratio | target |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.baseline:,.1f} | {r.hfgen:,.1f} | {r.ratio:.2f}× | {r.verdict()} |")
    return "\n".join(lines)


def write_results(path: Path, device_title: str, body: str) -> None:
    """Replace this device's section of RESULTS.md, keep the other devices' sections."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nLatest run per machine; ratios are hfgen / baseline.\n"
    header = f"## {device_title}"
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{header}\n\n{body}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per side (default 5, quick 2)")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None,
                        help="model sizes against Llama (default: tiny and small; quick: tiny)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"),
                        help="markdown file to refresh (not written with --quick)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        variant, seq = args.memory_probe.split(":")
        print(json.dumps(memory_probe(variant, int(seq), args.device, args.dtype)))
        return
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (2 if args.quick else 5)
    sizes = args.sizes or (["tiny"] if args.quick else ["tiny", "small"])
    started = time.time()
    rows: list[Row] = []
    for size in sizes:
        print(f"[{time.time() - started:6.0f}s] {size} model vs Llama ...", flush=True)
        rows += bench_against_llama(size, args.device, dtype, repeats, args.quick)
    print(f"[{time.time() - started:6.0f}s] softmax and scoring variants ...", flush=True)
    rows += bench_variants(args.device, dtype, repeats, args.quick)
    print(f"[{time.time() - started:6.0f}s] long context ...", flush=True)
    rows += bench_long_context(args.device, args.dtype, args.quick)
    table = render(rows)
    print(table)
    if not args.quick:
        command = "python benchmarks/decoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
        body = (f"{machine(args.device)}; torch {torch.__version__}; {args.dtype}; "
                f"{datetime.date.today().isoformat()}; `{command.strip()}`\n\n{table}")
        write_results(args.out, f"{args.device}: {machine(args.device)}", body)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
