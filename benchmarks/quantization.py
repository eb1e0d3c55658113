#!/usr/bin/env python
"""Quantized weights through transformers' ``quantization_config``: perplexity on the embedded corpus (the
validation split of the Python reference manual) and greedy tokens/s at batch 1, against fp32.

Rows: SmolLM2-135M-Instruct loaded through hfgen (fp32; torchao int8 weight-only; torchao int4 weight-only, groups
of 32; optimum-quanto int8 and int4 when that package is installed), and tiny decoders pre-trained with
``recipes/pretrain_causal_lm.py`` with each softmax variant (``--tiny NAME=FOLDER``), whose perplexity change under
quantization tests seed 000's claim that off-by-one softmax matters most for quantized weights. Timing: the
generation calls of all rows interleaved, CPU time of one thread (see common.py). ::

    python benchmarks/quantization.py --tiny standard=outputs/pt_standard --tiny off_by_one=outputs/pt_obo --write
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import statistics
from collections.abc import Callable

import torch

import common

logger = logging.getLogger("quantization")


def schemes() -> dict[str, Callable[[], object | None]]:
    """Name -> quantization config (``None``: fp32). quanto rows only when optimum-quanto is installed."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    rows = {"fp32": lambda: None,
            "torchao int8 weight-only": lambda: TorchAoConfig(Int8WeightOnlyConfig()),
            "torchao int4 weight-only (group 32)": lambda: TorchAoConfig(
                IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))}
    try:
        importlib.metadata.version("optimum-quanto")
    except importlib.metadata.PackageNotFoundError:  # (its folder can outlive an uninstall: ask the metadata)
        return rows
    else:
        from transformers import QuantoConfig

        rows["quanto int8"] = lambda: QuantoConfig(weights="int8")
        rows["quanto int4"] = lambda: QuantoConfig(weights="int4")
        return rows


def corpus_blocks(tokenizer, blocks: int, length: int) -> torch.Tensor:
    from hfgen.data.corpus import load_corpus

    text = "\n\n".join(load_corpus()["validation"]["text"])
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    if ids.numel() < blocks * length:
        raise SystemExit(f"the validation text has {ids.numel()} tokens, fewer than --blocks x --block-length")
    return ids[: blocks * length].view(blocks, length)


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor) -> float:
    losses = [model(row[None], labels=row[None]).loss.item() for row in blocks]
    return float(torch.exp(torch.tensor(losses).mean()))


def load_all(folder, rows: dict) -> dict:
    from hfgen import HfGenDecoderForCausalLM

    models = {}
    for name, make in rows.items():
        config = make()
        kwargs = {} if config is None else {"quantization_config": config}
        models[name] = HfGenDecoderForCausalLM.from_pretrained(folder, **kwargs).eval()
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="append", default=[], metavar="NAME=FOLDER",
                        help="a pre-trained hfgen decoder (with its tokenizer) to quantize; repeatable")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M rows")
    parser.add_argument("--blocks", type=int, default=8, help="perplexity blocks of the validation text")
    parser.add_argument("--block-length", type=int, default=256, help="tokens per perplexity block")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per timed generate call")
    common.add_run_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    clock = common.use_clock(None, "cpu")
    load = common.load_average()
    rows = schemes()
    lines = []

    if not args.no_smollm2:
        from hfgen.pretrained import SMOLLM2_NAME, default_cache_dir, load_smollm2

        _, tokenizer = load_smollm2()  # converts the GGUF on first use
        models = load_all(default_cache_dir() / SMOLLM2_NAME, rows)
        blocks = corpus_blocks(tokenizer, args.blocks, args.block_length)
        prompt = tokenizer("The with statement", return_tensors="pt")

        def generate(model):
            return lambda: model.generate(**prompt, max_new_tokens=args.new_tokens,
                                          min_new_tokens=args.new_tokens, do_sample=False)

        times = common.interleaved({n: generate(m) for n, m in models.items()}, "cpu", args.repeats)
        base = perplexity(models["fp32"], blocks)
        lines += ["| SmolLM2-135M | perplexity | vs fp32 | tokens/s | speed vs fp32 |", "|---|---|---|---|---|"]
        for name, model in models.items():
            ppl = base if name == "fp32" else perplexity(model, blocks)
            speed = args.new_tokens / statistics.median(times[name])
            ratio = common.paired_ratio(times, "fp32", name)
            lines.append(f"| {name} | {ppl:.2f} | {100 * (ppl / base - 1):+.1f} % | {speed:.1f} | {ratio:.2f}x |")
            logger.info(lines[-1])
        del models

    if args.tiny:
        from transformers import AutoTokenizer

        lines += ["", "| tiny decoder (pre-trained) | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
        for spec in args.tiny:
            name, _, folder = spec.partition("=")
            models = load_all(folder, rows)
            blocks = corpus_blocks(AutoTokenizer.from_pretrained(folder), args.blocks, args.block_length)
            base = perplexity(models["fp32"], blocks)
            cells = [f"{base:.2f}"] + [f"{(p := perplexity(m, blocks)):.2f} ({100 * (p / base - 1):+.1f} %)"
                                       for n, m in models.items() if n != "fp32"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            logger.info(lines[-1])

    section = "\n".join([
        "## Quantized weights (issue 21 item 2)", "",
        f"`python benchmarks/quantization.py {' '.join(f'--tiny {t}' for t in args.tiny)} --write`; "
        f"{common.machine('cpu')}, {common.clock_description(clock)}, batch 1, {args.new_tokens} greedy tokens, "
        f"median of {args.repeats} interleaved repetitions; load average {load:.1f} (a shared machine: the ratios "
        f"mean more than the absolute numbers). Perplexity: {args.blocks} blocks of {args.block_length} tokens of "
        f"the validation split of the embedded corpus.", "", *lines])
    print(section)
    if args.write:
        common.write_section(common.RESULTS, section)


if __name__ == "__main__":
    main()
