"""hfgen's speech encoder beside transformers' HubertModel of the same size and weights, in one run.

Both compute the same function (``convert_hubert_state_dict``; the max |difference| of the last hidden states is
reported). Measured: a pre-training step of the encoders (forward, backward of the mean of the last hidden states,
AdamW step) on a batch of one-second clips, hfgen / HuBERT as the median of per-repetition ratios (repetitions
interleaved, so machine noise hits both alike).

    python benchmarks/speech.py --quick      # a smoke run; writes nothing
    python benchmarks/speech.py              # the recipe's model size; writes its section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel

from common import (CLOCK_HELP, CLOCKS, clock_description, interleaved, load_average, machine, paired_ratio,
                    use_clock, write_section)
from hfgen.models.configuration_hfgen_speech import HfGenSpeechConfig
from hfgen.models.modeling_hfgen_speech import HfGenSpeechModel, convert_hubert_state_dict

# recipes/pretrain_speech.py's model: 7 convolutions of 32 channels, 4 layers of width 128
SIZE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, conv_dim=[32] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layer_norm_eps=1e-5)
SECTION = "## Speech encoder (`benchmarks/speech.py`)"


def models() -> tuple[HubertModel, HfGenSpeechModel]:
    torch.manual_seed(0)
    hubert = HubertModel(HubertConfig(**SIZE, feat_extract_norm="layer", layerdrop=0.0, apply_spec_augment=False))
    ours = HfGenSpeechModel(HfGenSpeechConfig(**SIZE, feat_extract_norm="layer", mask_time_prob=0.0))
    ours.load_state_dict(convert_hubert_state_dict(hubert.state_dict()))
    return hubert, ours


def train_step(model, values: torch.Tensor, optimizer) -> None:
    model(values).last_hidden_state.mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing (default: off)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (default: 16)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each clip (default: 1.0)")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved repetitions (default: 10)")
    parser.add_argument("--clock", choices=list(CLOCKS), default=None, help=CLOCK_HELP)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; the cpu clock needs 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = use_clock(args.clock, "cpu")
    repeats = 2 if args.quick else args.repeats
    hubert, ours = models()
    values = torch.randn(args.batch, int(16000 * args.seconds), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = (hubert.eval()(values).last_hidden_state - ours.eval()(values).last_hidden_state).abs().max()
    hubert.train(), ours.train()
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("hubert", hubert), ("hfgen", ours))}
    times = interleaved({"hubert": lambda: train_step(hubert, values, optimizers["hubert"]),
                         "hfgen": lambda: train_step(ours, values, optimizers["hfgen"])}, "cpu", repeats)
    ratio = paired_ratio(times, "hubert", "hfgen")  # HuBERT's time / hfgen's: > 1 means hfgen is faster
    lines = [SECTION + f", cpu, float32 ({datetime.date.today()})", "",
             f"{machine('cpu')}; {clock_description(clock)}; load average {load_average():.1f}; batch {args.batch} x "
             f"{args.seconds} s clips, {repeats} interleaved repetitions; max |last hidden state difference| "
             f"{difference:.2e}.", "",
             "| model | s / training step (median) | speed vs HubertModel |", "|---|---:|---:|",
             f"| transformers HubertModel | {statistics.median(times['hubert']):.3f} | 1.00x |",
             f"| hfgen_speech (same weights) | {statistics.median(times['hfgen']):.3f} | {ratio:.2f}x |"]
    print("\n".join(lines))
    if not args.quick:
        write_section(Path(__file__).with_name("RESULTS.md"), "\n".join(lines))


if __name__ == "__main__":
    main()
