"""Tiny language models for the experiments: the embedded corpus as token streams, a short training loop, and
evaluation (perplexity at any length, outlier statistics of the attention-layer outputs).

A plain PyTorch loop rather than ``transformers.Trainer``: the experiments train dozens of tiny models on two
cores, where Trainer's per-run set-up costs more than the training itself. The models are ordinary hfgen models
(``HfGenDecoderForCausalLM``, ``HfGenEncoderForMaskedLM``) and save/load like any other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from ..models import HfGenDecoderConfig, HfGenDecoderForCausalLM
from .metrics import kurtosis


BYTE_VOCAB_SIZE = 257  # the 256 byte values + an end-of-document token
BYTE_EOS = 256
TOKENIZATIONS = ("bytes", "hfgen")


@functools.lru_cache(maxsize=4)
def corpus_token_streams(tokenization: str = "bytes", include_docstrings: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(train, validation, vocab_size)``: 1-D token streams of the embedded corpus (``hfgen.data.load_corpus``,
    seed-0 split), every document followed by an end-of-document token.

    ``tokenization="bytes"`` (default): UTF-8 bytes, vocabulary 257. The experiments train dozens of tiny models
    on two shared cores; with the shipped 8192-token BPE the LM head alone costs most of every step of a hidden-64
    model, with bytes the attention layers under study do. ``"hfgen"``: the BPE tokenizer that ships with hfgen.
    """
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"Unknown tokenization={tokenization!r}; valid choices are: "
                         f"{', '.join(map(repr, TOKENIZATIONS))}.")
    from ..data import load_corpus

    corpus = load_corpus(include_docstrings=include_docstrings, validation_fraction=0.1, seed=0)
    streams = []
    if tokenization == "bytes":
        for split in ("train", "validation"):
            ids = [t for text in corpus[split]["text"] for t in [*text.encode("utf-8"), BYTE_EOS]]
            streams.append(torch.tensor(ids, dtype=torch.long))
        return streams[0], streams[1], BYTE_VOCAB_SIZE
    from ..data import load_tokenizer

    tokenizer = load_tokenizer()
    for split in ("train", "validation"):
        ids = tokenizer(list(corpus[split]["text"]), add_special_tokens=False, verbose=False)["input_ids"]
        streams.append(torch.tensor([t for doc in ids for t in doc + [tokenizer.eos_token_id]], dtype=torch.long))
    return streams[0], streams[1], len(tokenizer)


def tiny_decoder_config(vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2,
                        num_attention_heads: int = 4, **variant_keys) -> HfGenDecoderConfig:
    """A small decoder config (Llama defaults otherwise); ``variant_keys`` set softmax/position/gate keys."""
    return HfGenDecoderConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                              num_attention_heads=num_attention_heads,
                              intermediate_size=variant_keys.pop("intermediate_size", 4 * hidden_size),
                              **variant_keys)


def random_blocks(stream: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch_size, block_size]`` windows of ``stream`` at uniformly random offsets."""
    starts = torch.randint(0, len(stream) - block_size + 1, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + block_size] for s in starts.tolist()])


def eval_blocks(stream: torch.Tensor, block_size: int, max_blocks: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping blocks of ``stream`` (the tail shorter than a block dropped)."""
    n = len(stream) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n < 1:
        raise ValueError(f"the stream has {len(stream)} tokens, fewer than one block of {block_size}")
    return stream[: n * block_size].view(n, block_size)


def train_language_model(model: nn.Module, stream: torch.Tensor, block_size: int, steps: int, batch_size: int,
                         learning_rate: float, seed: int, make_batch: Callable | None = None,
                         weight_decay: float = 0.0, progress: bool = False, desc: str = "train") -> list[float]:
    """AdamW with linear warm-up (5%) and cosine decay; returns the loss of every step.

    ``make_batch(blocks, generator) -> dict`` turns ``[B, T]`` token blocks into the model's keyword arguments;
    the default is causal LM (``input_ids`` and ``labels`` = the blocks).
    """
    generator = torch.Generator().manual_seed(seed)
    make_batch = make_batch or (lambda blocks, g: {"input_ids": blocks, "labels": blocks})
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay,
                                  betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, steps - warmup))))))
    model.train()
    losses = []
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, leave=False, mininterval=5)
    for _ in iterator:
        loss = model(**make_batch(random_blocks(stream, block_size, batch_size, generator), generator)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def causal_lm_perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """``exp`` of the mean next-token cross-entropy over every predicted token of ``blocks`` (each block
    evaluated alone, from its first token)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size]
        logits = model(input_ids=batch).logits[:, :-1].float()
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                             reduction="sum").item()
        count += batch[:, 1:].numel()
    mean = total / count
    return math.exp(mean) if mean < 700 else math.inf


@torch.no_grad()
def attention_output_stats(model: nn.Module, batches: list[dict[str, torch.Tensor]],
                           attention_class_suffix: str = "Attention") -> dict[str, float]:
    """Bondarenko et al.'s outlier statistics of the attention-layer outputs (the output of every attention
    module, after ``o_proj`` and the gate): the maximum infinity norm over all tokens and layers, and the kurtosis
    over the hidden dimension averaged over tokens, then over layers. Tokens whose output is exactly zero (clipped
    softmax can switch every head off) have no kurtosis and are left out of the average."""
    modules = [m for m in model.modules() if type(m).__name__.endswith(attention_class_suffix)]
    if not modules:
        raise ValueError(f"no module whose class name ends with {attention_class_suffix!r} in the model")
    max_norm = [0.0] * len(modules)
    kurt_sum, kurt_count = [0.0] * len(modules), [0] * len(modules)

    def hook(index):
        def record(module, args, output):
            out = (output[0] if isinstance(output, tuple) else output).detach()
            max_norm[index] = max(max_norm[index], out.abs().max().item())
            k = kurtosis(out.reshape(-1, out.shape[-1]), dim=-1)
            k = k[torch.isfinite(k)]  # an exactly-zero output (a head set that attends to nothing) has none
            kurt_sum[index] += k.sum().item()
            kurt_count[index] += k.numel()
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        model.eval()
        for batch in batches:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    per_layer = [s / c for s, c in zip(kurt_sum, kurt_count) if c]
    return {"max_inf_norm": max(max_norm),
            "avg_kurtosis": sum(per_layer) / len(per_layer) if per_layer else math.nan}


def new_decoder(seed: int, vocab_size: int, **config_keys) -> HfGenDecoderForCausalLM:
    """A freshly initialised tiny decoder; the same ``seed`` gives the same initial weights for the shared
    parameters of every variant (extra variant parameters are drawn after them)."""
    torch.manual_seed(seed)
    return HfGenDecoderForCausalLM(tiny_decoder_config(vocab_size, **config_keys))


def mask_tokens(blocks: torch.Tensor, mask_token_id: int, vocab_size: int, generator: torch.Generator,
                probability: float = 0.15) -> dict[str, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019): each token is chosen with ``probability``; a chosen token becomes
    ``mask_token_id`` 80% of the time, a random token 10%, itself 10%. ``labels`` hold the original id at chosen
    positions and -100 elsewhere; at least one token per row is chosen so that every row has a loss."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    chosen = torch.rand(blocks.shape, generator=generator) < probability
    first = torch.randint(0, blocks.shape[1], (blocks.shape[0],), generator=generator)
    chosen[torch.arange(blocks.shape[0]), first] |= ~chosen.any(dim=1)
    labels = blocks.masked_fill(~chosen, -100)
    action = torch.rand(blocks.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, blocks.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(blocks, mask_token_id), blocks)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return {"input_ids": inputs, "labels": labels}


@torch.no_grad()
def masked_lm_perplexity(model: nn.Module, blocks: torch.Tensor, mask_token_id: int, vocab_size: int, seed: int,
                         batch_size: int = 16) -> float:
    """``exp`` of the mean cross-entropy at the masked positions of ``blocks`` (masking drawn with ``seed``, the
    same for every model evaluated with that seed)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = mask_tokens(blocks[i : i + batch_size], mask_token_id, vocab_size, generator)
        logits = model(input_ids=batch["input_ids"]).logits.float()
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                             ignore_index=-100, reduction="sum").item()
        count += (batch["labels"] != -100).sum().item()
    mean = total / count
    return math.exp(mean) if mean < 700 else math.inf


def new_encoder(seed: int, vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2,
                num_attention_heads: int = 4, max_position_embeddings: int = 512, **config_keys):
    """A freshly initialised tiny masked-LM encoder (BERT layout: post-norm LayerNorm, GELU MLP, learned
    positions unless ``position_embedding`` says otherwise), without dropout: the runs are too short for it."""
    from ..models import HfGenEncoderConfig, HfGenEncoderForMaskedLM

    torch.manual_seed(seed)
    config = HfGenEncoderConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                                num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                                max_position_embeddings=max_position_embeddings, hidden_dropout_prob=0.0,
                                attention_dropout=0.0, **config_keys)
    return HfGenEncoderForMaskedLM(config)
