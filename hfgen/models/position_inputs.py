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

from .positions import POSITION_TABLE, check_learned_positions

__all__ = ["add_position_modules", "check_learned_positions", "position_inputs", "positions_from_mask"]


def add_position_modules(stack: nn.Module, config, bidirectional: bool) -> None:
    """Give ``stack`` the modules its ``config.position_embedding`` needs (:data:`positions.POSITION_TABLE`).
    ``bidirectional``: an encoder's buckets and ALiBi distances count both directions (T5's encoder), a decoder's
    only the past."""
    POSITION_TABLE[config.position_embedding].add_modules(stack, config, bidirectional)


def positions_from_mask(attention_mask: torch.Tensor | None, length: int, past_length: int,
                        device) -> torch.Tensor:
    """``[B|1, S]`` position ids counted from each row's first real token, so a left-padded row gets the positions
    it has alone; without a 2D mask, ``past_length + arange(S)``."""
    if attention_mask is not None and attention_mask.dim() == 2:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -length:].to(device)
    return (torch.arange(length, device=device) + past_length).unsqueeze(0)


def position_inputs(stack: nn.Module, config, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                    q_offset: int, cached: bool = False, absolute: bool = True
                    ) -> tuple[torch.Tensor, tuple | None, torch.Tensor | Callable | None]:
    """``(hidden_states, rotary (cos, sin) or None, bias or None)`` for one forward pass of ``stack``.

    ``q_offset`` is the cache slot of the first query (relative distances are counted between cache slots, so left
    padding shifts queries and keys alike); the bias is computed once and shared by every layer, as T5 computes it in
    its first layer only. Without a cache (``cached=False``) the keys are the queries and the bias is the
    ``[1, H, S, S]`` tensor itself, computed here before any layer: layers take it as a positional argument, which
    reentrant gradient checkpointing needs to carry its gradient out of each checkpointed layer. ``cached``: keys come
    from a cache, so their count is known only after the first layer's update; the bias is then a function of
    ``(q_len, k_len)`` (inference only: checkpointing drops the cache). ``absolute=False``: the caller has added
    absolute positions already (the encoder's embeddings, in BERT's order).
    """
    kind = POSITION_TABLE[config.position_embedding]
    hidden_states = inputs_embeds
    if absolute and kind.inputs is not None:
        check_learned_positions(config, position_ids)
        hidden_states = kind.inputs(config, hidden_states, position_ids, getattr(stack, "embed_positions", None))
    rotary = stack.rotary_emb(hidden_states, position_ids) if kind.rotary else None
    if kind.bias is None:
        return hidden_states, rotary, None
    device, memo = hidden_states.device, {}
    if isinstance(q_offset, torch.Tensor):
        # A static cache reports its length as a tensor that its update() increments in place, and the bias is
        # computed after the first layer's update: keep the value of now.
        q_offset = q_offset.clone()

    def bias(q_len: int, k_len: int) -> torch.Tensor:
        if (q_len, k_len) not in memo:
            memo[q_len, k_len] = kind.bias(stack, q_len, k_len, q_offset, device)
        return memo[q_len, k_len]

    if not cached:
        return hidden_states, None, bias(inputs_embeds.shape[1], inputs_embeds.shape[1])
    return hidden_states, None, bias
