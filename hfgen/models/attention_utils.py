"""What every attention kernel shares: key/value heads repeated for grouped queries, the mask normalised to allowed
positions, query rows in chunks of bounded memory, and one ``scaled_dot_product_attention`` call with an optional
additive bias. The variant tables (``softmax.py``, ``scoring.py``) build their fast kernels from these."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H_kv, S, D]`` -> ``[B, H_kv * groups, S, D]``: each key/value head serves ``groups`` query heads."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def allowed_positions(attention_mask: torch.Tensor | None, q_len: int, k_len: int, is_causal: bool,
                      device) -> torch.Tensor | None:
    """Normalise whatever mask transformers built (``None``, boolean, or additive float) to a boolean
    ``[B|1, 1|H, Q, K]`` mask of allowed positions, or ``None`` when everything is allowed.

    ``None`` from ``create_causal_mask`` means "plain causal, aligned top-left" (query i sees keys 0..i): it is
    returned when keys and queries coincide, or at prefill into a static cache whose later slots are still empty.
    That is also SDPA's ``is_causal`` convention, which the fast path relies on.

    Rows with no allowed key (queries at padding positions) are opened entirely: their outputs are never used,
    and a row of -inf would turn into NaN that leaks into gradients.
    """
    if attention_mask is None:
        if not is_causal or q_len == 1:
            return None
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if allowed.shape[-1] != k_len or allowed.shape[-2] not in (1, q_len):
        raise ValueError(f"Attention mask of shape {tuple(allowed.shape)} does not fit {q_len} queries and {k_len} keys.")
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def _rows(t: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """Query rows ``start:end`` of a mask or bias that may broadcast over queries."""
    if t is None or t.shape[-2] == 1:
        return t
    return t[..., start:end, :]


# Scores held at once by the chunked paths (16 MiB in fp32): bounds their memory whatever the batch and length.
CHUNK_ELEMENTS = 2**22


def query_chunk_rows(config, query: torch.Tensor, k_len: int, per_score: int = 1) -> int:
    """Query rows per chunk: ``query_chunk_size`` at most, fewer when one chunk would exceed CHUNK_ELEMENTS."""
    per_row = query.shape[0] * query.shape[1] * k_len * per_score
    return max(1, min(config.query_chunk_size, CHUNK_ELEMENTS // per_row))


def query_chunks(q_len: int, k_len: int, chunk_size: int, allowed, position_bias, causal: bool, device):
    """``(start, end, key_end, allowed_rows, bias_rows)`` per chunk of query rows. With ``causal`` (and no mask:
    top-left causal) a chunk needs only keys ``[:end]`` and a triangular mask of its own, never a [Q, K] one."""
    for start in range(0, q_len, chunk_size):
        end = min(start + chunk_size, q_len)
        key_end = min(end, k_len) if causal else k_len
        if causal:
            rows = torch.ones(end - start, key_end, dtype=torch.bool, device=device).tril(diagonal=start)[None, None]
        else:
            rows = _rows(allowed, start, end)
        bias = _rows(position_bias, start, end)
        yield start, end, key_end, rows, (bias[..., :key_end] if bias is not None else None)


def sdpa(query, key, value, allowed, position_bias, scaling, dropout, causal: bool, groups: int):
    """One SDPA call. ``causal`` asks for causal masking when ``allowed`` is ``None``: SDPA's own causal flag
    when nothing else is needed, otherwise a built mask combined with the additive ``position_bias``."""
    q_len, k_len = query.shape[2], key.shape[2]
    if allowed is None and causal and q_len > 1 and position_bias is not None:
        allowed = allowed_positions(None, q_len, k_len, True, query.device)
    attn_mask, is_causal = allowed, allowed is None and causal and q_len > 1
    if position_bias is not None:
        bias = position_bias.to(query.dtype)
        attn_mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout,
                                          is_causal=is_causal, scale=scaling, enable_gqa=groups > 1)
