"""Position inputs of a stack of layers (an encoder, a decoder): the modules a ``position_embedding`` choice needs,
and what each forward pass hands its layers -- absolute embeddings added to the input, rotary ``(cos, sin)``, or an
additive bias as a function of ``(q_len, k_len)``.

The modules are attributes of the stack itself, with the decoder family's names (``embed_positions``,
``rotary_emb``, ``relative_position_bias``, ``alibi``), so checkpoints keep one naming scheme across families.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .positions import AlibiBias, RelativePositionBias, RotaryEmbedding, sinusoidal_position_embedding


def add_position_modules(stack: nn.Module, config, bidirectional: bool) -> None:
    """Give ``stack`` the module its ``config.position_embedding`` needs. ``bidirectional``: an encoder's buckets
    and ALiBi distances count both directions (T5's encoder), a decoder's only the past."""
    kind = config.position_embedding
    if kind == "learned":
        stack.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
    elif kind == "rotary":
        stack.rotary_emb = RotaryEmbedding(config)
    elif kind == "relative_bias":
        stack.relative_position_bias = RelativePositionBias(config, bidirectional=bidirectional)
    elif kind == "alibi":
        stack.alibi = AlibiBias(config, bidirectional=bidirectional)


def positions_from_mask(attention_mask: torch.Tensor | None, length: int, past_length: int,
                        device) -> torch.Tensor:
    """``[B|1, S]`` position ids counted from each row's first real token, so a left-padded row gets the positions
    it has alone; without a 2D mask, ``past_length + arange(S)``."""
    if attention_mask is not None and attention_mask.dim() == 2:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -length:].to(device)
    return (torch.arange(length, device=device) + past_length).unsqueeze(0)


def check_learned_positions(config, position_ids: torch.Tensor) -> None:
    """Learned positions have a table of ``max_position_embeddings`` rows: say so instead of an index error."""
    if config.position_embedding != "learned" or not position_ids.numel() or torch.compiler.is_compiling():
        return
    last = int(position_ids.max())
    if last >= config.max_position_embeddings:
        raise ValueError(
            f"Position {last} is beyond max_position_embeddings={config.max_position_embeddings} of the learned "
            f"position table: shorten the input to at most {config.max_position_embeddings} tokens, or use a "
            f"position_embedding that extrapolates ('rotary', 'sinusoidal', 'relative_bias', 'alibi')."
        )


def position_inputs(stack: nn.Module, config, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                    q_offset: int, cached: bool = False
                    ) -> tuple[torch.Tensor, tuple | None, torch.Tensor | Callable | None]:
    """``(hidden_states, rotary (cos, sin) or None, bias or None)`` for one forward pass of ``stack``.

    ``q_offset`` is the cache slot of the first query (relative distances are counted between cache slots, so left
    padding shifts queries and keys alike); the bias is computed once and shared by every layer, as T5 computes it in
    its first layer only. Without a cache (``cached=False``) the keys are the queries and the bias is the
    ``[1, H, S, S]`` tensor itself, computed here before any layer: layers take it as a positional argument, which
    reentrant gradient checkpointing needs to carry its gradient out of each checkpointed layer. ``cached``: keys come
    from a cache, so their count is known only after the first layer's update; the bias is then a function of
    ``(q_len, k_len)`` (inference only: checkpointing drops the cache).
    """
    kind = config.position_embedding
    hidden_states = inputs_embeds
    if kind == "sinusoidal":
        # Vaswani et al. scale the token embeddings by sqrt(d_model) before adding the unit-amplitude sinusoids.
        hidden_states = hidden_states * config.hidden_size**0.5 + sinusoidal_position_embedding(
            position_ids, config.hidden_size, hidden_states.dtype)
    elif kind == "learned":
        check_learned_positions(config, position_ids)
        hidden_states = hidden_states + stack.embed_positions(position_ids)
    rotary = stack.rotary_emb(hidden_states, position_ids) if kind == "rotary" else None
    if kind not in ("relative_bias", "alibi"):
        return hidden_states, rotary, None
    device, memo = hidden_states.device, {}
    if isinstance(q_offset, torch.Tensor):
        # A static cache reports its length as a tensor that its update() increments in place, and the bias is
        # computed after the first layer's update: keep the value of now.
        q_offset = q_offset.clone()

    def bias(q_len: int, k_len: int) -> torch.Tensor:
        if (q_len, k_len) not in memo:
            if kind == "alibi":
                memo[q_len, k_len] = stack.alibi(q_len, k_len, q_offset, device=device)
            else:  # contiguous: CUDA's fused SDPA kernels take no bias with a strided last dimension
                memo[q_len, k_len] = stack.relative_position_bias(q_len, k_len, q_offset).contiguous()
        return memo[q_len, k_len]

    if not cached:
        return hidden_states, None, bias(inputs_embeds.shape[1], inputs_embeds.shape[1])
    return hidden_states, None, bias
