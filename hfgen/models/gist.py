"""Gist tokens (Mu et al. 2023, "Learning to Compress Prompts with Gist Tokens"; seed 004: "Can enable 26x compression
and 40% FLOP reduction ... Trains 'gist tokens' to summarize information").

A prompt is followed by ``k`` gist tokens; the *gist mask* lets every token after the gist tokens attend to the gist
tokens (and to each other, causally) but never to the prompt before them. Trained that way, the gist tokens' keys
and values must carry everything the rest of the sequence needs from the prompt, so at inference the prompt is run
once, its keys and values are thrown away and only the gist tokens' are kept: a cache of ``k`` positions in place
of ``len(prompt) + k``.

Three masks (``mode``), the paper's model and its two controls:
  * ``gist``: causal, and tokens after the gist span cannot see tokens before it;
  * ``positive``: plain causal attention (no compression: the upper bound);
  * ``negative``: tokens after the prompt see neither the prompt nor the gist tokens that read it
    (the prompt is masked: the lower bound).

Works with any hfgen causal LM that takes a 4D boolean ``attention_mask`` and a ``DynamicCache`` (the decoder).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

GIST_MODES = ("gist", "positive", "negative")


def gist_spans(input_ids: torch.Tensor, gist_token_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` (start, end) of each row's gist tokens (end exclusive); ``(-1, -1)`` for a row without any.
    A row's gist tokens must be one contiguous run."""
    gist = torch.isin(input_ids, torch.as_tensor(gist_token_ids, device=input_ids.device))
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    count = gist.sum(-1)
    start = torch.where(gist, positions, input_ids.shape[1]).amin(-1)
    end = torch.where(gist, positions + 1, 0).amax(-1)
    if ((end - start != count) & (count > 0)).any():
        row = int(((end - start != count) & (count > 0)).nonzero()[0])
        raise ValueError(f"Row {row} has gist tokens that are not one contiguous run (positions "
                         f"{gist[row].nonzero().flatten().tolist()}): put all gist tokens right after the prompt.")
    none = count == 0
    return torch.stack((start.masked_fill(none, -1), end.masked_fill(none, -1)), -1)


def gist_attention_mask(input_ids: torch.Tensor, gist_token_ids: list[int] | torch.Tensor,
                        attention_mask: torch.Tensor | None = None, mode: str = "gist") -> torch.Tensor:
    """Boolean ``[B, 1, L, L]`` mask (True = may attend) of ``mode`` (``gist``, ``positive``, ``negative``):
    causal, padding keys masked, and, after each row's gist span ``[s, e)``, no key before ``s`` (``gist``) or
    before ``e`` (``negative``). Rows without gist tokens stay plainly causal."""
    if mode not in GIST_MODES:
        raise ValueError(f"Unknown gist mask mode={mode!r}; valid choices are: {', '.join(map(repr, GIST_MODES))}.")
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)
    allowed = (positions[:, None] >= positions[None, :]).expand(batch, length, length).clone()
    if attention_mask is not None:
        allowed &= attention_mask.bool()[:, None, :]
    if mode != "positive":
        spans = gist_spans(input_ids, gist_token_ids)
        start, end = spans[:, 0, None, None], spans[:, 1, None, None]
        has_gist = (spans[:, 0] >= 0)[:, None, None]
        query_after = positions[None, :, None] >= end
        key_before = positions[None, None, :] < (start if mode == "gist" else end)
        allowed &= ~(has_gist & query_after & key_before)
    return allowed[:, None]


def check_gist_cache_model(model) -> None:
    """A gist cache is the gist tokens' keys and values cut out of a ``DynamicCache``: say so for a model that keeps
    none (a recurrent state: RetNet) or that is an encoder-decoder (see ``gist_seq2seq``)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is an encoder-decoder: use hfgen.models.gist_seq2seq "
                         f"(compress_prompt_seq2seq, encode_from_gist) instead.")
    supports = getattr(type(model), "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        raise ValueError(f"{type(model).__name__} keeps no keys and values per token (its cache is not a "
                         f"DynamicCache), so no gist cache can be cut from it: gist caching needs an attention model "
                         f"such as HfGenDecoderForCausalLM.")


@torch.no_grad()
def compress_prompt(model, prompt_ids: torch.Tensor, gist_token_ids: list[int] | torch.Tensor):
    """Run ``prompt_ids`` (one row: the prompt followed by its gist tokens, nothing after) and keep only the gist
    tokens' keys and values. Returns ``(cache, next_position)``: a ``DynamicCache`` of ``k`` positions per layer and
    the position the next token takes (the gist tokens keep the positions they were computed at)."""
    check_gist_cache_model(model)
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"compress_prompt takes one prompt, shape [1, length]; got {tuple(prompt_ids.shape)}.")
    start, end = gist_spans(prompt_ids, gist_token_ids)[0].tolist()
    if start < 0:
        raise ValueError("The prompt holds no gist token: append the gist tokens (add_gist_tokens) to it.")
    if end != prompt_ids.shape[1]:
        raise ValueError(f"The gist tokens must end the prompt (they end at {end}, the prompt at "
                         f"{prompt_ids.shape[1]}): compress the prompt, then decode the input from the cache.")
    cache = DynamicCache()
    model(prompt_ids, attention_mask=gist_attention_mask(prompt_ids, gist_token_ids), cache=cache, use_cache=True)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, start:end].contiguous(), layer.values[:, :, start:end].contiguous()
    return cache, end


@torch.no_grad()
def decode_from_gist(model, cache: DynamicCache, next_position: int, input_ids: torch.Tensor,
                     max_new_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue from a gist cache: feed ``input_ids`` (one row, at least one token), then pick ``max_new_tokens``
    greedily. Returns ``(logits, generated)``: the logits after every fed token ``[1, len(input) + new - 1, V]``
    and the new ids ``[1, max_new_tokens]``. The cache grows in place."""
    check_gist_cache_model(model)
    if not isinstance(cache, DynamicCache):
        raise ValueError(f"decode_from_gist continues from the DynamicCache that compress_prompt returns, not a "
                         f"{type(cache).__name__}.")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(f"decode_from_gist takes one non-empty row, shape [1, length]; got {tuple(input_ids.shape)}.")
    logits, generated, ids = [], [], input_ids
    while True:
        length = ids.shape[1]
        positions = torch.arange(next_position, next_position + length, device=ids.device)[None]
        mask = torch.ones(1, cache.get_seq_length() + length, dtype=torch.long, device=ids.device)
        out = model(ids, cache=cache, use_cache=True, position_ids=positions, attention_mask=mask)
        logits.append(out.logits)
        next_position += length
        if len(generated) == max_new_tokens:
            break
        ids = out.logits[:, -1:].argmax(-1)
        generated.append(ids)
        if len(generated) == max_new_tokens:
            break
    return torch.cat(logits, 1), torch.cat(generated, 1) if generated else input_ids[:, :0]
