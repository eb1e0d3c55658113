"""Gist tokens for the encoder-decoder family (``hfgen_seq2seq``), as Mu et al. 2023 ("Learning to Compress Prompts
with Gist Tokens") do for FLAN-T5; seed 004: "Can enable 26x compression and 40% FLOP reduction ... Trains 'gist
tokens' to summarize information".

The encoder input is ``prompt <gist_0> ... <gist_k-1> input``; the span ``[s, e)`` holds the gist tokens. In the
paper's encoder mask (their ``make_gist_mask``) the prompt and the gist tokens attend to each other only (keys
before ``e``) and every token after the gist attends to the gist tokens and the input (keys from ``s`` on), never to
the prompt; the decoder's cross-attention reads only the gist tokens and the input (keys from ``s`` on). So
everything downstream of the prompt goes through the gist tokens' activations, and at inference the prompt is run
once and only those are kept: per encoder layer, the gist tokens' keys and values (which the input attends to), and
their final encoder states (which the decoder reads) -- ``k`` positions in place of ``len(prompt) + k``.

The three masks (``mode``) of the paper's comparison, as in :mod:`gist`:
  * ``gist``: as above;
  * ``positive``: plain bidirectional encoder, the decoder reads everything (no compression: the upper bound);
  * ``negative``: after the gist span nothing sees the prompt or the gist tokens (prompt masked: the lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutput

from .gist import GIST_MODES, gist_spans


def _check_mode(mode: str) -> None:
    if mode not in GIST_MODES:
        raise ValueError(f"Unknown gist mask mode={mode!r}; valid choices are: {', '.join(map(repr, GIST_MODES))}.")


def _first_readable(input_ids: torch.Tensor, gist_token_ids, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first key after the gist may read [B], gist end [B])``; rows without gist tokens read from 0 and end at
    the row's length (no token counts as after the gist)."""
    spans = gist_spans(input_ids, gist_token_ids)
    has_gist = spans[:, 0] >= 0
    length = input_ids.shape[1]
    first = spans[:, 0] if mode == "gist" else spans[:, 1]
    first = torch.where(has_gist & (mode != "positive"), first, 0)
    end = torch.where(has_gist, spans[:, 1], length)
    return first, end


def gist_encoder_attention_mask(input_ids: torch.Tensor, gist_token_ids: list[int] | torch.Tensor,
                                attention_mask: torch.Tensor | None = None, mode: str = "gist") -> torch.Tensor:
    """Boolean ``[B, 1, L, L]`` mask (True = may attend) of the encoder's self-attention under ``mode``: padding
    keys masked; with a gist span ``[s, e)`` (``gist``) queries before ``e`` see keys before ``e`` and queries from
    ``e`` on see keys from ``s`` on; (``negative``) queries from ``e`` on see keys from ``e`` on; (``positive``) no
    further masking. Rows without gist tokens are plainly bidirectional."""
    _check_mode(mode)
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)
    allowed = torch.ones(batch, length, length, dtype=torch.bool, device=input_ids.device)
    if attention_mask is not None:
        allowed &= attention_mask.bool()[:, None, :]
    if mode != "positive":
        first, end = (t[:, None, None] for t in _first_readable(input_ids, gist_token_ids, mode))
        query_after = positions[None, :, None] >= end
        key_after = positions[None, None, :] >= end
        # before the end of the gist span: nothing after it; after it: nothing before `first`
        allowed &= torch.where(query_after, positions[None, None, :] >= first, ~key_after)
    return allowed[:, None]


def gist_cross_attention_mask(input_ids: torch.Tensor, gist_token_ids: list[int] | torch.Tensor,
                              attention_mask: torch.Tensor | None = None, mode: str = "gist") -> torch.Tensor:
    """``[B, L]`` (1 = the decoder may read it) of the encoder tokens the decoder's cross-attention sees under
    ``mode``: from the first gist token on (``gist``), from the first token after the gist span on (``negative``),
    all (``positive``); padding never. Rows without gist tokens read everything."""
    _check_mode(mode)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    first, _ = _first_readable(input_ids, gist_token_ids, mode)
    readable = positions[None, :] >= first[:, None]
    if attention_mask is not None:
        readable &= attention_mask.bool()
    return readable.long()


@dataclass
class Seq2SeqGistCache:
    """What inference keeps of a prompt: the gist tokens' keys and values in every encoder layer
    (``key_values``, ``k`` positions each), their final encoder states ``[1, k, d]`` and the position the input
    starts at (the gist tokens keep the positions they were computed at)."""

    key_values: DynamicCache
    hidden_states: torch.Tensor
    next_position: int

    @property
    def num_positions(self) -> int:
        return self.hidden_states.shape[1]


def _check_one_row(name: str, ids: torch.Tensor) -> None:
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"{name} takes one non-empty row, shape [1, length]; got {tuple(ids.shape)}.")


def _encoder(model):
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    if encoder is None or not hasattr(encoder, "_run") or not getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is not an hfgen encoder-decoder (hfgen_seq2seq) model; for the "
                         f"decoder family use hfgen.models.gist.compress_prompt.")
    return encoder


@torch.no_grad()
def compress_prompt_seq2seq(model, prompt_ids: torch.Tensor,
                            gist_token_ids: list[int] | torch.Tensor) -> Seq2SeqGistCache:
    """Run ``prompt_ids`` (one row: the prompt followed by its gist tokens, nothing after) through the encoder and
    keep only the gist tokens' activations. Under the gist mask the prompt and gist tokens see each other only, so
    this is exactly what the full gist-masked forward computes for them."""
    encoder = _encoder(model)
    _check_one_row("compress_prompt_seq2seq", prompt_ids)
    start, end = gist_spans(prompt_ids, gist_token_ids)[0].tolist()
    if start < 0:
        raise ValueError("The prompt holds no gist token: append the gist tokens (add_gist_tokens) to it.")
    if end != prompt_ids.shape[1]:
        raise ValueError(f"The gist tokens must end the prompt (they end at {end}, the prompt at "
                         f"{prompt_ids.shape[1]}): compress the prompt, then encode the input from the cache.")
    key_values = DynamicCache()
    # The encoder's own loop, with a cache handed to its self-attention layers to collect keys and values.
    hidden = encoder._run(prompt_ids, None, None, None, 0, dict(attention_mask=None, cache=key_values))
    for layer in key_values.layers:
        layer.keys, layer.values = layer.keys[:, :, start:end].contiguous(), layer.values[:, :, start:end].contiguous()
    return Seq2SeqGistCache(key_values, hidden[:, start:end].contiguous(), end)


@torch.no_grad()
def encode_from_gist(model, gist: Seq2SeqGistCache, input_ids: torch.Tensor) -> BaseModelOutput:
    """Encode ``input_ids`` (one row) attending to the cached gist activations instead of the prompt. Returns the
    encoder output the decoder reads, ``[1, k + len(input), d]``: the gist tokens' states, then the input's. Pass
    it as ``encoder_outputs`` (with an all-ones ``attention_mask`` of that width) to ``forward`` or ``generate``.
    The cache is not changed."""
    encoder = _encoder(model)
    _check_one_row("encode_from_gist", input_ids)
    if not isinstance(gist, Seq2SeqGistCache):
        raise ValueError(f"gist must be the Seq2SeqGistCache of compress_prompt_seq2seq, not {type(gist).__name__}.")
    key_values = DynamicCache()
    for index, layer in enumerate(gist.key_values.layers):  # a copy: the input's keys must not stay in the gist cache
        key_values.update(layer.keys, layer.values, index)
    length = input_ids.shape[1]
    positions = torch.arange(gist.next_position, gist.next_position + length, device=input_ids.device)[None]
    # Queries after the gist see every cached gist key and every input key: no mask. The cache slot offset k also
    # gives relative position biases the distances of the full sequence (the gist tokens end right before the input).
    hidden = encoder._run(input_ids, None, None, positions, gist.num_positions,
                          dict(attention_mask=None, cache=key_values))
    return BaseModelOutput(last_hidden_state=torch.cat((gist.hidden_states.to(hidden.dtype), hidden), dim=1))


@torch.no_grad()
def generate_from_gist(model, gist: Seq2SeqGistCache, input_ids: torch.Tensor, **generate_kwargs) -> torch.Tensor:
    """``model.generate`` for ``input_ids`` after a compressed prompt: the encoder output comes from
    :func:`encode_from_gist`, so neither the prompt nor its activations beyond the gist tokens are used."""
    encoder_outputs = encode_from_gist(model, gist, input_ids)
    mask = torch.ones(encoder_outputs.last_hidden_state.shape[:2], dtype=torch.long, device=input_ids.device)
    return model.generate(encoder_outputs=encoder_outputs, attention_mask=mask, **generate_kwargs)
