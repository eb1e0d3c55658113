#!/usr/bin/env python
"""FuseLLM on the embedded corpus: train source LMs with their own tokenizers on different slices, fuse their
next-token distributions into a target LM by continued training (MinCE and AvgCE), and compare with CLM-only
continued training on the same tokens, over several seeds, by validation perplexity.

    python recipes/fusellm.py --output_dir outputs/fusellm
    python recipes/fusellm.py --quick

The corpus' training documents are cut into slices: one per source, one for the target (its pre-training and the
continued training). Sources get byte-level BPE tokenizers of different sizes trained on their own slice; the
target uses hfgen's shipped tokenizer. Loss of the fused runs: lambda * CLM + (1 - lambda) * fusion (Wan et al.).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hfgen.data.corpus import load_corpus
from hfgen.data.tokenizer import load_tokenizer, train_tokenizer
from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.training.fusellm import (SourceModel, VocabularyMap, aligned_distributions, fuse_distributions,
                                    fusellm_loss)

METHODS = ("clm", "min_ce", "avg_ce")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fusellm")
    parser.add_argument("--source_vocab_sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--source_steps", type=int, default=300)
    parser.add_argument("--target_pretrain_steps", type=int, default=100)
    parser.add_argument("--continue_steps", type=int, default=100)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--lam", type=float, default=0.9, help="lambda: weight of the CLM loss (FuseLLM: 0.9)")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--fusion_blocks", type=int, default=96, help="continued-training blocks (same for all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny settings: proves the pipeline runs")
    return parser


def blocks_of(texts: list[str], tokenizer, block_size: int) -> torch.Tensor:
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // block_size
    return torch.tensor(ids[:n * block_size]).view(n, block_size)


def lm(vocab_size: int, hidden: int, tokenizer, seed: int) -> HfGenDecoderForCausalLM:
    torch.manual_seed(seed)
    return HfGenDecoderForCausalLM(HfGenDecoderConfig(vocab_size=vocab_size, hidden_size=hidden,
                                                      intermediate_size=2 * hidden, num_hidden_layers=2,
                                                      num_attention_heads=4, max_position_embeddings=256,
                                                      pad_token_id=tokenizer.pad_token_id,
                                                      eos_token_id=tokenizer.eos_token_id))


def train_clm(model, blocks: torch.Tensor, steps: int, args, seed: int, desc: str) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc=desc):
        batch = blocks[torch.randint(len(blocks), (args.batch_size,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor) -> float:
    model.eval()
    losses = [model(input_ids=blocks[i:i + 16], labels=blocks[i:i + 16]).loss.item() for i in range(0, len(blocks), 16)]
    return math.exp(sum(losses) / len(losses))


@torch.no_grad()
def source_distributions(sources: list[SourceModel], target_tokenizer, blocks: torch.Tensor, top_k: int) -> list:
    """Per source, per block: the aligned distributions on the target's tokens, as dense [T-1, V] in float16."""
    out = []
    for source in sources:
        vocab_map = VocabularyMap(source.tokenizer, target_tokenizer)
        source.model.eval()
        rows = []
        for block in tqdm(blocks, desc="align"):
            text = target_tokenizer.decode(block)
            source_ids = source.tokenizer(text, add_special_tokens=False)["input_ids"]
            logits = source.model(input_ids=torch.tensor([source_ids])).logits[0, :-1]
            rows.append(aligned_distributions(logits, source_ids, block.tolist(), source.tokenizer, target_tokenizer,
                                              vocab_map, len(target_tokenizer), top_k).to_sparse())
        out.append(rows)
    return out


def continue_training(model, blocks, distributions, method: str, args, seed: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(args.continue_steps), desc=method):
        index = torch.randint(len(blocks), (args.batch_size,), generator=generator)
        batch = blocks[index]
        logits = model(input_ids=batch).logits[:, :-1]
        labels = batch[:, 1:]
        mask = torch.ones_like(labels, dtype=torch.float)
        if method == "clm":
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        else:
            per_source = [torch.stack([rows[i].to_dense() for i in index.tolist()]) for rows in distributions]
            fused = fuse_distributions(per_source, labels, mask, method)
            loss = fusellm_loss(logits, labels, fused, mask, args.lam)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.source_steps, args.target_pretrain_steps, args.continue_steps = 20, 10, 10
        args.fusion_blocks, args.seeds, args.source_vocab_sizes = 16, [0], [512, 1024]
    os.makedirs(args.output_dir, exist_ok=True)
    corpus = load_corpus()
    documents = corpus["train"]["text"]
    slices = [documents[i::len(args.source_vocab_sizes) + 1] for i in range(len(args.source_vocab_sizes) + 1)]
    target_tokenizer = load_tokenizer()
    sources = []
    for k, vocab_size in enumerate(args.source_vocab_sizes):
        tokenizer = train_tokenizer(slices[k], vocab_size=vocab_size)
        model = lm(len(tokenizer), args.hidden_size, tokenizer, seed=100 + k)
        train_clm(model, blocks_of(slices[k], tokenizer, args.block_size), args.source_steps, args, 100 + k,
                  f"source {k} (vocab {vocab_size})")
        sources.append(SourceModel(model, tokenizer))
    target_blocks = blocks_of(slices[-1], target_tokenizer, args.block_size)
    fusion_blocks = target_blocks[:args.fusion_blocks]
    validation = blocks_of(corpus["validation"]["text"], target_tokenizer, args.block_size)[:64]
    source_ppl = {}
    for k, source in enumerate(sources):
        source_ppl[f"source_{k}_validation_perplexity_own_tokens"] = perplexity(
            source.model, blocks_of(corpus["validation"]["text"], source.tokenizer, args.block_size)[:64])
    distributions = source_distributions(sources, target_tokenizer, fusion_blocks, args.top_k)
    results = {method: [] for method in METHODS}
    for seed in args.seeds:
        base = lm(len(target_tokenizer), args.hidden_size, target_tokenizer, seed)
        train_clm(base, target_blocks, args.target_pretrain_steps, args, seed, f"target pre-training (seed {seed})")
        state = {k: v.clone() for k, v in base.state_dict().items()}
        results.setdefault("before_continued_training", []).append(perplexity(base, validation))
        for method in METHODS:
            base.load_state_dict(state)
            continue_training(base, fusion_blocks, distributions, method, args, seed)
            results[method].append(perplexity(base, validation))
    # The last fused target (AvgCE, last seed), saved Hub-loadable with its tokenizer and reloaded.
    path = os.path.join(args.output_dir, "target_avg_ce")
    base.save_pretrained(path)
    target_tokenizer.save_pretrained(path)
    reloaded = HfGenDecoderForCausalLM.from_pretrained(path).eval()
    base.eval()
    with torch.no_grad():
        identical = torch.equal(base(input_ids=validation[:2]).logits, reloaded(input_ids=validation[:2]).logits)
    print(f"saved {path}; identical logits: {identical}")
    summary = {name: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "per_seed": v}
               for name, v in results.items()}
    summary.update(source_ppl)
    summary["identical_logits_after_reload"] = identical
    for name, value in summary.items():
        print(name, value)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump({"args": vars(args), "results": summary}, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
