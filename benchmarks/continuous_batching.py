#!/usr/bin/env python
"""Continuous batching (transformers' ``generate_batch``: paged KV cache, requests packed into one row per step)
on the hfgen decoder beside transformers' ``LlamaForCausalLM`` with the same weights, in the same mode: 32 requests
of mixed prompt lengths (8..200 tokens), greedy. Rows: tokens generated per second of each
model (runs interleaved, CPU time of one thread), their paired ratio, and whether every request got the same tokens
from both models. ::

    python benchmarks/continuous_batching.py --write
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
from transformers import ContinuousBatchingConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM

import common

logger = logging.getLogger("continuous_batching")
SIZE = dict(num_hidden_layers=6, hidden_size=256, intermediate_size=688, num_attention_heads=8,
            num_key_value_heads=4, vocab_size=8192, max_position_embeddings=512)  # benchmarks/decoder.py's tiny, GQA


def requests(count: int, seed: int = 0) -> list[list[int]]:
    """Prompts of 8..200 tokens, drawn once."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 201, (count,), generator=generator).tolist()
    return [torch.randint(1, SIZE["vocab_size"], (n,), generator=generator).tolist() for n in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="number of requests")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per request")
    common.add_run_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    clock = common.use_clock(None, "cpu")
    load = common.load_average()
    from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**SIZE)).eval()
    ours = HfGenDecoderForCausalLM(HfGenDecoderConfig(**SIZE)).eval()
    ours.load_state_dict(llama.state_dict(), strict=True)
    prompts = requests(args.requests)
    config = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    # sized for the requests: left alone the manager sizes its cache from the machine's free memory
    paged = ContinuousBatchingConfig(page_size=64, num_blocks=4 * args.requests, max_batch_tokens=512)
    outputs = {}

    def run(name, model):
        def call():
            outputs[name] = model.generate_batch(prompts, generation_config=config, continuous_batching_config=paged)
        return call

    times = common.interleaved({"llama": run("llama", llama), "hfgen": run("hfgen", ours)}, "cpu", args.repeats)
    generated = sum(len(o.generated_tokens) for o in outputs["hfgen"].values())
    same = sum(outputs["hfgen"][k].generated_tokens == outputs["llama"][k].generated_tokens for k in outputs["llama"])
    rows = [f"| {name} | {generated / statistics.median(times[name]):.0f} |" for name in ("llama", "hfgen")]
    ratio = common.paired_ratio(times, "llama", "hfgen")
    section = "\n".join([
        "## Continuous batching (issue 21 item 3)", "",
        f"`python benchmarks/continuous_batching.py --write`; {common.machine('cpu')}, "
        f"{common.clock_description(clock)}, median of {args.repeats} interleaved repetitions, load average "
        f"{load:.1f}. `generate_batch` (sdpa, paged cache: page 64, max 512 batch tokens), {args.requests} requests, "
        f"prompts of {min(map(len, prompts))}..{max(map(len, prompts))} tokens, {args.new_tokens} greedy tokens each; "
        f"model 6 layers, d=256, 8 heads / 4 KV heads, vocab 8192, random weights shared by both.", "",
        "| model | generated tokens/s |", "|---|---|", *rows, "",
        f"hfgen / Llama: {ratio:.2f}x (median of per-repetition ratios); requests with identical tokens: "
        f"{same}/{len(prompts)}."])
    print(section)
    if args.write:
        common.write_section(common.RESULTS, section)


if __name__ == "__main__":
    main()
