"""Mixture of experts: the hfgen decoder with ``num_experts`` beside transformers' ``MixtralForCausalLM`` of the same
size and the same weights (a Mixtral checkpoint saved by transformers, loaded into hfgen), in one run.

Measures training throughput (forward + backward), prefill throughput and greedy generation speed, the ratio
hfgen / Mixtral (target >= 1.0x), and the largest logits difference (the two must agree).

    python benchmarks/moe.py --quick     # small shapes, few repetitions; prints, writes nothing
    python benchmarks/moe.py             # the full run; writes its section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import MixtralConfig, MixtralForCausalLM

from common import (CLOCK_HELP, CLOCKS, clock_description, load_average, machine, paired_ratio, ratios, timed,
                    use_clock, write_section)
from hfgen import HfGenDecoderForCausalLM

SECTION = "## Mixture of experts (`benchmarks/moe.py`)"
FULL = dict(hidden=256, layers=4, intermediate=512, experts=8, top_k=2, batch=8, length=256, new_tokens=32)
QUICK = dict(hidden=64, layers=2, intermediate=128, experts=4, top_k=2, batch=4, length=64, new_tokens=8)


def build_pair(shape: dict, device, dtype):
    config = MixtralConfig(vocab_size=8192, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                           num_hidden_layers=shape["layers"], num_attention_heads=max(1, shape["hidden"] // 64),
                           num_key_value_heads=max(1, shape["hidden"] // 128), num_local_experts=shape["experts"],
                           num_experts_per_tok=shape["top_k"], output_router_logits=True,
                           max_position_embeddings=4096, pad_token_id=0)
    torch.manual_seed(0)
    mixtral = MixtralForCausalLM(config)
    with tempfile.TemporaryDirectory() as folder:
        mixtral.save_pretrained(folder)
        hfgen = HfGenDecoderForCausalLM.from_pretrained(folder, router_z_loss_coef=0.0)
    return [m.to(device=device, dtype=dtype).eval() for m in (mixtral, hfgen)]


def train_step(model, ids):
    model.train()
    model(ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    model.eval()


@torch.no_grad()
def prefill(model, ids):
    model(ids, use_cache=False)


@torch.no_grad()
def generate(model, ids, new_tokens):
    model.generate(ids[:1], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions; writes nothing")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5, quick 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None, help=CLOCK_HELP)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    parser.add_argument("--note", default=None, help="a line of text written under the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = use_clock(args.clock, args.device)
    shape = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 5)
    load_before, started = load_average(), time.perf_counter()
    mixtral, hfgen = build_pair(shape, args.device, getattr(torch, args.dtype))
    ids = torch.randint(1, 8192, (shape["batch"], shape["length"]), device=args.device)
    with torch.no_grad():
        difference = (mixtral(ids).logits - hfgen(ids).logits).abs().max().item()
    tasks = {
        "training (tokens/s)": (lambda m: train_step(m, ids), ids.numel()),
        "prefill (tokens/s)": (lambda m: prefill(m, ids), ids.numel()),
        "generation, batch 1 (new tokens/s)": (lambda m: generate(m, ids, shape["new_tokens"]), shape["new_tokens"]),
    }
    for fn, _ in tasks.values():  # warm-up
        fn(mixtral), fn(hfgen)
    times = {task: {"mixtral": [], "hfgen": []} for task in tasks}
    for _ in tqdm(range(repeats), desc="repetitions"):
        for task, (fn, _) in tasks.items():
            times[task]["mixtral"].append(timed(lambda: fn(mixtral), args.device))
            times[task]["hfgen"].append(timed(lambda: fn(hfgen), args.device))
    rows = []
    for task, (_, count) in tasks.items():
        ratio, each = paired_ratio(times[task], "mixtral", "hfgen"), ratios(times[task], "mixtral", "hfgen")
        speed = {name: statistics.median(count / t for t in times[task][name]) for name in ("mixtral", "hfgen")}
        rows.append(f"| {task} | {speed['mixtral']:,.1f} | {speed['hfgen']:,.1f} | {ratio:.2f}× | "
                    f"{min(each):.2f}–{max(each):.2f}× | {'PASS' if ratio >= 1.0 else 'FAIL'} (≥ 1.0×) |")
    command = " ".join(["python benchmarks/moe.py", *(a for a in sys.argv[1:] if a != args.note)])
    command = command.replace("--note", "--note …")
    body = "\n".join([
        f"{SECTION}, {args.device}, {args.dtype}", "",
        f"{datetime.date.today()} · {machine(args.device)} · torch {torch.__version__} · {repeats} interleaved "
        f"repetitions, medians · {'quick' if args.quick else 'full'} run · `{command.strip()}` · load average "
        f"{load_before:.1f} before / {load_average():.1f} after ({time.perf_counter() - started:.0f} s; hfgen and "
        f"Mixtral interleaved, the ratio is the median of the per-repetition ratios) · timed by "
        f"{clock_description(args.clock)}", "",
        f"{shape['layers']} layers, d={shape['hidden']}, {shape['experts']} experts of width {shape['intermediate']}, "
        f"top-{shape['top_k']}; batch {shape['batch']} x {shape['length']} tokens. Mixtral with its default experts "
        f"kernel (`{mixtral.config._experts_implementation}`) and SDPA; hfgen loads Mixtral's saved checkpoint. "
        f"Max |logits difference| = {difference:.1e}.", "",
        "| measurement | Mixtral | hfgen | hfgen / Mixtral | per-repetition range | target |",
        "| --- | ---: | ---: | ---: | ---: | --- |", *rows,
        *(["", args.note] if args.note else []),
    ])
    print(body)
    if not (args.quick or args.no_write):
        write_section(args.results, body)


if __name__ == "__main__":
    main()
