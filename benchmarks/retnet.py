"""RetNet decoding and training speed beside the hfgen decoder (a Llama-style transformer) of equal size.

Measures, in one run:
  * per-token decoding latency of RetNet (recurrent form, state cache) after 256 and after 4096 tokens of context:
    target 4096 / 256 <= 1.2x (flat);
  * the same for the hfgen decoder at 4096, with the KV cache ``generate`` gives it (written in place): target
    decoder / RetNet >= 3x; and, for information, with transformers' concatenating ``DynamicCache``;
  * for information, the same two models decoding a batch of 8 rows at 4096 (the paper's point: a transformer's
    step grows with batch x context, RetNet's state does not);
  * decoding memory: bytes held by each cache after each context length (RetNet's must not grow);
  * training throughput (forward + backward, tokens/s) at 4096 tokens: RetNet's chunkwise form vs the decoder (SDPA).

Every time is taken twice: wall clock, and the CPU time of the calling thread. On a shared CPU machine with one torch
thread (``--threads 1``) the CPU time is what the model itself costs, whatever else runs there (wall time then mostly
measures waiting for a core); it is the clock of the verdicts there (``--clock auto``). On CUDA, or with several
threads, only the wall clock means anything.

    python benchmarks/retnet.py --quick     # small shapes, few steps; prints, writes nothing
    python benchmarks/retnet.py             # the full run; writes its section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from common import machine, sync, write_section
from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenRetNetCache, HfGenRetNetConfig
from hfgen import HfGenRetNetForCausalLM
from hfgen.models.kv_cache import use_preallocated_layers

SECTION = "## RetNet (`benchmarks/retnet.py`)"
FULL = dict(hidden=256, layers=6, contexts=(256, 4096), train_length=4096, decode_steps=32, batch=8)
QUICK = dict(hidden=64, layers=2, contexts=(64, 512), train_length=512, decode_steps=8, batch=2)


def models(hidden: int, layers: int, dtype, device):
    """RetNet (value width 2d, FFN 2d) and the decoder (gated MLP 8d/3): both about 12 d^2 parameters a layer."""
    common = dict(vocab_size=8192, hidden_size=hidden, num_hidden_layers=layers, pad_token_id=0)
    retnet = HfGenRetNetForCausalLM(HfGenRetNetConfig(intermediate_size=2 * hidden, retention_chunk_size=256,
                                                      num_attention_heads=max(1, hidden // 64),
                                                      decoding_weight_copies=True, **common))
    decoder = HfGenDecoderForCausalLM(HfGenDecoderConfig(intermediate_size=8 * hidden // 3,
                                                         num_attention_heads=max(1, hidden // 32), **common))
    return [m.to(device=device, dtype=dtype).eval() for m in (retnet, decoder)]


def cache_bytes(cache) -> int:
    if isinstance(cache, HfGenRetNetCache):
        return sum(cache.get_state(i).numel() * cache.get_state(i).element_size() for i in range(len(cache.layers)))
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def decode_latency(model, context: int, steps: int, device, concatenating: bool = False,
                   batch: int = 1) -> tuple[float, float, int]:
    """Seconds per decoding step (one new token in each of ``batch`` rows) after ``context`` tokens of prompt (wall
    clock, thread CPU time), and the cache's bytes after the prompt. The decoder gets the cache ``generate`` gives it by default (keys and values written in
    place into a buffer sized for prompt + new tokens, ``kv_cache.PreallocatedLayer``), or with ``concatenating``
    transformers' plain ``DynamicCache`` (``torch.cat`` of the whole cache at every step)."""
    ids = torch.randint(1, 8192, (batch, context), device=device)
    if isinstance(model, HfGenRetNetForCausalLM):
        cache = HfGenRetNetCache(model.config)
    else:
        cache = DynamicCache(config=model.config)
        if not concatenating:
            use_preallocated_layers(cache, context + steps + 1)
    out = model(ids, cache=cache, use_cache=True, logits_to_keep=1)
    size = cache_bytes(cache)
    token = out.logits[:, -1:].argmax(-1)
    sync(device)
    start, cpu_start = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    sync(device)
    return (time.perf_counter() - start) / steps, (time.thread_time() - cpu_start) / steps, size


@torch.no_grad()
def ops_per_step(model, device, context: int = 64, steps: int = 4) -> float:
    """Top-level ATen operations per decoding step (torch.profiler; nested calls inside an operation not counted):
    a count that does not depend on the machine's load, unlike the times."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(1, 8192, (1, context), device=device)
    cache = HfGenRetNetCache(model.config) if isinstance(model, HfGenRetNetForCausalLM) else DynamicCache()
    token = model(ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top) / steps


def train_throughput(model, length: int, device) -> tuple[float, float]:
    """Tokens per second of one forward + backward at ``length`` tokens (wall clock, thread CPU time)."""
    model.train()
    ids = torch.randint(1, 8192, (1, length), device=device)
    sync(device)
    start, cpu_start = time.perf_counter(), time.thread_time()
    model(ids, labels=ids, use_cache=False).loss.backward()
    sync(device)
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    model.zero_grad(set_to_none=True)
    model.eval()
    return length / wall, length / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps; writes nothing")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 3, quick 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", default="auto", choices=["auto", "wall", "cpu"],
                        help="clock of the verdicts; auto: thread CPU time on a CPU with one thread, else wall")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 3)
    clock = args.clock
    if clock == "auto":
        clock = "cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    load_before = os.getloadavg()  # a shared machine: every number goes with the load it was measured under
    torch.manual_seed(0)
    retnet, decoder = models(shape["hidden"], shape["layers"], getattr(torch, args.dtype), args.device)
    short, long = shape["contexts"]
    samples: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    batch = shape["batch"]
    jobs = [(name, model, context, 1) for name, model in (("retnet", retnet), ("decoder", decoder))
            for context in (short, long)] + [("decoder-cat", decoder, long, 1)]
    jobs += [(f"{name}-b{batch}", model, long, batch) for name, model in (("retnet", retnet), ("decoder", decoder))]
    for _ in tqdm(range(repeats), desc="repetitions"):
        for name, model, context, rows in jobs:  # interleaved, so drift hits both models alike
            wall, cpu, size = decode_latency(model, context, shape["decode_steps"], args.device,
                                             concatenating=name == "decoder-cat", batch=rows)
            samples.setdefault(f"wall:{name}@{context}", []).append(wall)
            samples.setdefault(f"cpu:{name}@{context}", []).append(cpu)
            sizes[f"{name}@{context}"] = size
        for name, model in (("retnet", retnet), ("decoder", decoder)):
            wall, cpu = train_throughput(model, shape["train_length"], args.device)
            samples.setdefault(f"wall:train-{name}", []).append(wall)
            samples.setdefault(f"cpu:train-{name}", []).append(cpu)
    load_after = os.getloadavg()
    plan = retnet.model._decoding_plan  # made by the decoding above (config.decoding_weight_copies)
    weight_bytes = sum(p.numel() * p.element_size() for p in retnet.parameters())
    ops = {name: ops_per_step(model, args.device) for name, model in (("retnet", retnet), ("decoder", decoder))}
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {c: dict(flat=med[f"{c}:retnet@{long}"] / med[f"{c}:retnet@{short}"],
                      faster=med[f"{c}:decoder@{long}"] / med[f"{c}:retnet@{long}"],
                      faster_cat=med[f"{c}:decoder-cat@{long}"] / med[f"{c}:retnet@{long}"],
                      faster_batch=med[f"{c}:decoder-b{batch}@{long}"] / med[f"{c}:retnet-b{batch}@{long}"],
                      train=med[f"{c}:train-retnet"] / med[f"{c}:train-decoder"]) for c in ("wall", "cpu")}
    flat, faster, train = (ratios[clock][k] for k in ("flat", "faster", "train"))
    other = "wall" if clock == "cpu" else "cpu"
    params = [sum(p.numel() for p in m.parameters()) for m in (retnet, decoder)]
    ms = lambda key: f"{med['wall:' + key] * 1e3:,.2f} / {med['cpu:' + key] * 1e3:,.2f} ms"  # noqa: E731
    mib = lambda key: f"{sizes[key] / 2**20:,.2f} MiB"  # noqa: E731
    tps = lambda key: f"{med['wall:' + key]:,.0f} / {med['cpu:' + key]:,.0f}"  # noqa: E731
    rows = [
        f"| decoding latency per token, context {short} (wall / CPU) | {ms(f'retnet@{short}')} | "
        f"{ms(f'decoder@{short}')} | | |",
        f"| decoding latency per token, context {long} (wall / CPU) | {ms(f'retnet@{long}')} | "
        f"{ms(f'decoder@{long}')} | | |",
        f"| RetNet latency {long} / {short} ({clock}; {other}: {ratios[other]['flat']:.2f}×) | {flat:.2f}× | | "
        f"≤ 1.2× | {'PASS' if flat <= 1.2 else 'FAIL'} |",
        f"| decoder / RetNet latency at {long} ({clock}; {other}: {ratios[other]['faster']:.2f}×) | {faster:.2f}× | "
        f"| ≥ 3× | {'PASS' if faster >= 3 else 'FAIL'} |",
        f"| decoding latency per token, context {long}, decoder with transformers' concatenating `DynamicCache` "
        f"(wall / CPU) | | {ms(f'decoder-cat@{long}')} | | |",
        f"| decoder with `DynamicCache` / RetNet latency at {long} ({clock}; {other}: "
        f"{ratios[other]['faster_cat']:.2f}×) | {ratios[clock]['faster_cat']:.2f}× | | (information) | |",
        f"| decoding step, batch {batch}, context {long} (wall / CPU) | {ms(f'retnet-b{batch}@{long}')} | "
        f"{ms(f'decoder-b{batch}@{long}')} | | |",
        f"| decoder / RetNet step at {long}, batch {batch} ({clock}; {other}: {ratios[other]['faster_batch']:.2f}×) | "
        f"{ratios[clock]['faster_batch']:.2f}× | | (information) | |",
        f"| top-level ATen operations per decoding step (torch.profiler) | {ops['retnet']:.0f} | "
        f"{ops['decoder']:.0f} | | |",
        f"| decoding plan's weight copies (RetNet's weights: {weight_bytes / 2**20:,.2f} MiB) | "
        f"{(plan.copy_bytes if plan is not None else 0) / 2**20:,.2f} MiB | | | |",
        f"| cache memory after {short} tokens | {mib(f'retnet@{short}')} | {mib(f'decoder@{short}')} | | |",
        f"| cache memory after {long} tokens | {mib(f'retnet@{long}')} | {mib(f'decoder@{long}')} | flat | "
        f"{'PASS' if sizes[f'retnet@{long}'] == sizes[f'retnet@{short}'] else 'FAIL'} |",
        f"| training, {shape['train_length']} tokens, tokens/s (wall / CPU) | {tps('train-retnet')} (chunkwise) | "
        f"{tps('train-decoder')} (SDPA) | RetNet / decoder {train:.2f}× ({clock}; {other}: "
        f"{ratios[other]['train']:.2f}×) | |",
    ]
    body = "\n".join([
        f"{SECTION}, {args.device}, {args.dtype}", "",
        f"{datetime.date.today()} · {machine(args.device)} · torch {torch.__version__} · {repeats} interleaved "
        f"repetitions, medians · {'quick' if args.quick else 'full'} run · verdicts on the {clock} clock", "",
        f"RetNet: {shape['layers']} layers, d={shape['hidden']}, {params[0] / 1e6:.2f}M parameters; hfgen decoder "
        f"(Llama-style, SDPA, KV cache: `generate`'s default, written in place): {params[1] / 1e6:.2f}M parameters. "
        f"Batch 1 unless a row says otherwise, greedy, "
        f"{shape['decode_steps']} timed steps per context. Load average (1/5/15 min) at the start "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, at the end {'/'.join(f'{x:.1f}' for x in load_after)}; "
        f"command: `{' '.join(['python', *sys.argv])}`.", "",
        "RetNet decodes through its decoding plan (`hfgen/models/retnet_decoding.py`, on by default: "
        "`decoding_weight_copies=True`): from `HfGenRetNetForCausalLM.forward` straight to the layers, every look-up "
        "done once per model, the recurrent step against input-major copies of the matrices (q/k/v/g as one), the "
        "states updated in place (in inference mode), the residuals inside `addmm`; the numbers equal the modules' "
        "path (tests/test_retnet.py and tests/test_retnet_decoding.py). The decoder decodes through its modules "
        "(`nn.Linear` weights) with its in-place KV cache.", "",
        "| measurement | RetNet | decoder | target | verdict |", "| --- | ---: | ---: | --- | --- |", *rows,
    ])
    print(body)
    if not (args.quick or args.no_write):
        write_section(args.results, body)


if __name__ == "__main__":
    main()
