#!/usr/bin/env python
"""Time one PPO step of hfgen.training.ppo, split into generation, scoring (policy and reference log-probs, values,
reward model) and optimisation, for the default hfgen decoder and for the same weights running as transformers'
own Llama (``LlamaForCausalLM`` plus the same value head; ``LlamaForSequenceClassification`` as reward model).

    python benchmarks/ppo.py --quick     # small shapes, 2 repetitions, writes nothing
    python benchmarks/ppo.py             # the full run; writes its section of benchmarks/RESULTS.md

Both sides run the same PPOTrainer on the embedded task's prompts with the shipped tokenizer; rounds alternate
hfgen / Llama in ABBA order so a drifting load hits both alike. Ratio = Llama time / hfgen time (>= 1.0: hfgen at
least as fast).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from common import CLOCK_HELP, CLOCKS, clock_description, machine, use_clock, write_section

SECTION = "## PPO step (`benchmarks/ppo.py`)"
PARTS = ("time/generate_s", "time/score_s", "time/optimise_s")
SIZES = {"quick": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4),
         "default": {}}  # {}: HfGenDecoderConfig's defaults (6 layers, hidden 256, 8 heads)


def llama_value_head_class():
    from transformers import LlamaForCausalLM

    from hfgen.models import CausalLMOutputWithValue, HfGenValueHead

    class LlamaForCausalLMWithValueHead(LlamaForCausalLM):
        """transformers' Llama with hfgen's value head on its last hidden state (the reference side)."""

        def __init__(self, config):
            super().__init__(config)
            self.v_head = HfGenValueHead(config)

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
            kwargs.pop("labels", None)
            outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 **kwargs)
            hidden = outputs.last_hidden_state
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            return CausalLMOutputWithValue(logits=self.lm_head(hidden[:, keep]), value=self.v_head(hidden),
                                           cache=outputs.cache)

    return LlamaForCausalLMWithValueHead


def build_pair(size: dict, tokenizer, seed: int = 0):
    """(hfgen policy, hfgen reward model), (Llama policy, Llama reward model) with identical weights."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from hfgen.models import HfGenDecoderForCausalLMWithValueHead, HfGenDecoderForSequenceClassification
    from hfgen.training.rlhf import chat_decoder_config

    defaults = {} if size else dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                                    num_attention_heads=8, num_key_value_heads=8)
    config = chat_decoder_config(tokenizer, **{**defaults, "num_key_value_heads": None, **size,
                                               "tie_word_embeddings": False})
    torch.manual_seed(seed)
    policy = HfGenDecoderForCausalLMWithValueHead(config)
    reward = HfGenDecoderForSequenceClassification(chat_decoder_config(
        tokenizer, **{**defaults, "num_key_value_heads": None, **size, "num_labels": 1, "tie_word_embeddings": False}))
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "pad_token_id", "eos_token_id",
            "bos_token_id")
    llama_config = LlamaConfig(**{k: getattr(config, k) for k in keys}, tie_word_embeddings=False,
                               rope_parameters=dict(config.rope_parameters))
    llama_policy = llama_value_head_class()(llama_config)
    llama_policy.load_state_dict(policy.state_dict())
    llama_reward = LlamaForSequenceClassification(LlamaConfig(**llama_config.to_dict(), num_labels=1))
    llama_reward.load_state_dict(reward.state_dict())
    llama_policy.generation_config.eos_token_id = policy.generation_config.eos_token_id
    return (policy, reward), (llama_policy, llama_reward)


def one_run(policy, reward_model, tokenizer, prompts, args, out: str) -> dict[str, float]:
    """Median seconds per step of each part over ``args.steps`` PPO steps after one warm-up step."""
    import copy

    from hfgen.training.ppo import PPOConfig, PPOTrainer

    config = PPOConfig(output_dir=out, per_device_train_batch_size=args.batch_size, num_mini_batches=2,
                       num_ppo_epochs=2, max_steps=args.steps + 1, response_length=args.response_length,
                       learning_rate=1e-5, logging_steps=1, disable_tqdm=True, seed=0, stop_token_id=-1)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=copy.deepcopy(policy),
                         train_dataset=prompts, reward_model=reward_model)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if PARTS[0] in entry][1:]  # drop the warm-up step
    return {part: statistics.median(entry[part] for entry in logs) for part in PARTS}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model and batch, 2 repetitions; writes nothing")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds per side (default 4, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed PPO steps per round (default 3, quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (default 16, quick 8)")
    parser.add_argument("--response-length", type=int, default=None, help="tokens per response (32, quick 16)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--note", default=None, help="a line added under the table (e.g. earlier runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None, help=CLOCK_HELP)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.clock = use_clock(args.clock, "cpu" if not torch.cuda.is_available() else "cuda")
    args.repeats = args.repeats or (2 if args.quick else 4)
    args.steps = args.steps or (2 if args.quick else 3)
    args.batch_size = args.batch_size or (8 if args.quick else 16)
    args.response_length = args.response_length or (16 if args.quick else 32)
    warnings.filterwarnings("ignore")
    import hfgen  # noqa: F401
    from hfgen.data import load_tokenizer
    from hfgen.training import ppo

    ppo.step_clock = CLOCKS[args.clock]  # the trainer's own per-part timers
    from hfgen.data.instructions import prompt_dataset

    tokenizer = load_tokenizer()
    size_name = "quick" if args.quick else "default"
    (policy, reward), (llama_policy, llama_reward) = build_pair(SIZES[size_name], tokenizer)
    prompts = prompt_dataset()
    times = {"hfgen": [], "llama": []}
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    with tempfile.TemporaryDirectory() as out:
        for round_index in range(args.repeats):
            # ABBA order: on a shared machine the load drifts, and whichever side always ran second would gain
            # (or lose) from the drift; alternating who goes first cancels a steady trend.
            sides = ["hfgen", "llama"] if round_index % 2 == 0 else ["llama", "hfgen"]
            for side in sides:
                pair = (policy, reward) if side == "hfgen" else (llama_policy, llama_reward)
                times[side].append(one_run(*pair, tokenizer, prompts, args, out))
    load_after = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    rows = []
    for part in (*PARTS, "total"):
        def seconds(side):
            return statistics.median(sum(r.values()) if part == "total" else r[part] for r in times[side])
        ratios = [(sum(l.values()) if part == "total" else l[part]) / (sum(h.values()) if part == "total" else h[part])
                  for h, l in zip(times["hfgen"], times["llama"])]
        rows.append((part.removeprefix("time/").removesuffix("_s"), seconds("hfgen"), seconds("llama"),
                     statistics.median(ratios), min(ratios), max(ratios)))
    config = policy.config
    body = "\n".join([
        f"{SECTION}, {'cuda' if torch.cuda.is_available() else 'cpu'}, float32", "",
        f"{datetime.date.today()} · {machine('cpu')} · torch {torch.__version__} · {size_name} decoder "
        f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}) · batch "
        f"{args.batch_size} · response {args.response_length} tokens · 2 PPO epochs x 2 mini-batches · "
        f"{args.repeats} rounds (ABBA order) of {args.steps} steps, medians · timed by {clock_description(args.clock)} · "
        f"{'quick' if args.quick else 'full'} run · "
        f"load average (1/5/15 min) {' '.join(load_before)} at start, {' '.join(load_after)} at end",
        "", "| part of a PPO step | hfgen s | Llama s | Llama / hfgen | per-round range |", "|---|---:|---:|---:|---:|",
        *[f"| {name} | {h:.3f} | {l:.3f} | {r:.2f}x | {lo:.2f}-{hi:.2f}x |" for name, h, l, r, lo, hi in rows], "",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" (with OMP_NUM_THREADS=1).",
        f"- target hfgen >= 1.0x on the total: {'met' if rows[-1][3] >= 1.0 else 'NOT met'} ({rows[-1][3]:.2f}x).",
        *([f"- {args.note}"] if args.note else []),
    ])
    print(body)
    if not args.quick:
        write_section(args.results, body)
    return body


if __name__ == "__main__":
    main()
