"""DeBERTa's disentangled attention (He et al. 2021, "DeBERTa: Decoding-enhanced BERT with Disentangled
Attention"; seed 000 lists it): each token is a content vector plus the relative positions it sees, and the score of
query ``i`` for key ``j`` sums three dot products,

    A_ij = ( Q^c_i . K^c_j   +   Q^c_i . K^r_{d(i,j)}   +   K^c_j . Q^r_{d(i,j)} ) / sqrt(3 d)
           content-to-content    content-to-position       position-to-content

with ``Q^c = H W_q``, ``K^c = H W_k`` (the layer's own projections of the content) and ``Q^r = P W_q``,
``K^r = P W_k`` (the same projections of the relative position embeddings ``P``, shared by all layers: DeBERTa-v2's
``share_att_key``), and ``d(i, j) = clamp(bucket(i - j) + span, 0, 2 span - 1)`` with DeBERTa-v2's log buckets.
Both position terms index ``P`` with the same ``d(i, j)``, as the reference implementation (microsoft/DeBERTa,
``transformers``' ``DebertaV2``) does: its p2c gathers at ``-r(j, i)``, which equals ``r(i, j)`` because the
buckets are odd in the distance.

Not carried over from DeBERTa: its dropout on the relative embeddings (``pos_dropout``), its optional convolution
layer (``conv_kernel_size``) and separate position projections (``share_att_key=False``, DeBERTa v1); attention
dropout applies as in every hfgen layer.

The c2c term is the shared attention layer's scoring; the two position terms form a ``[B, H, Q, K]`` additive bias
computed here, so every softmax variant and kernel (eager, SDPA, chunked) applies unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def log_bucket_position(relative: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v2's ``make_log_bucket_position``: distances with ``|r| < bucket_size // 2`` stay exact, longer ones
    are compressed logarithmically so that ``max_position - 1`` maps to bucket ``bucket_size - 1``; sign kept."""
    mid = bucket_size // 2
    sign = torch.sign(relative)
    near = (relative < mid) & (relative > -mid)
    distance = torch.where(near, torch.full_like(relative, mid - 1), relative.abs()).float()
    # The log of the ratio as a float32 tensor, as DeBERTa computes it: a float64 log could move a ceil() boundary.
    ratio = torch.log(torch.tensor((max_position - 1) / mid, device=relative.device))
    log_position = torch.ceil(torch.log(distance / mid) / ratio * (mid - 1)) + mid
    return torch.where(distance <= mid, relative.float(), log_position * sign).long()


def relative_embedding_index(q_len: int, k_len: int, span: int, max_position: int, device) -> torch.Tensor:
    """``d(i, j)`` for every query ``i`` and key ``j`` (``[Q, K]``): the row of the relative embedding table."""
    relative = torch.arange(q_len, device=device)[:, None] - torch.arange(k_len, device=device)[None, :]
    return torch.clamp(log_bucket_position(relative, span, max_position) + span, 0, 2 * span - 1)


def add_disentangled_modules(stack: nn.Module, config, bidirectional: bool = True) -> None:
    """DeBERTa-v2's names on the encoder stack: ``rel_embeddings`` (the ``2 * span`` relative position embeddings
    ``P``, shared by every layer) and, with ``norm_relative_embeddings``, ``LayerNorm`` on them
    (``norm_rel_ebd="layer_norm"``)."""
    stack.rel_embeddings = nn.Embedding(2 * config.relative_span, config.hidden_size)
    if config.norm_relative_embeddings:
        stack.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


def _reached_rows(config, q_len: int, k_len: int, device) -> tuple[torch.Tensor, int, int]:
    index = relative_embedding_index(q_len, k_len, config.relative_span, config.max_relative_distance, device)
    return index, int(index.min()), int(index.max())


def relative_embeddings(stack: nn.Module, config, q_len: int, k_len: int) -> torch.Tensor:
    """The rows of ``P`` that these lengths reach (``relative_row_index`` indexes them), so the position terms cost
    ``O(Q * 2 min(Q, span))`` per head rather than ``O(Q * 2 span)``, with the same result. A tensor (not a pair
    with its index): the layers take it positionally, as reentrant gradient checkpointing needs."""
    weight = stack.rel_embeddings.weight
    _, low, high = _reached_rows(config, q_len, k_len, weight.device)
    rows = weight[low:high + 1]
    if hasattr(stack, "LayerNorm"):
        rows = stack.LayerNorm(rows)
    return rows


def relative_row_index(config, q_len: int, k_len: int, device) -> torch.Tensor:
    """``[Q, K]``: the row of ``relative_embeddings(stack, config, q_len, k_len)`` for query ``i`` and key ``j``."""
    index, low, _ = _reached_rows(config, q_len, k_len, device)
    return index - low


def disentangled_bias(query: torch.Tensor, key: torch.Tensor, position_query: torch.Tensor,
                      position_key: torch.Tensor, index: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * (c2p + p2c)`` as ``[B, H, Q, K]``.

    Args:
        query: ``[B, H, Q, D]`` content queries ``Q^c``; key: ``[B, H, K, D]`` content keys ``K^c`` (one per query
            head: repeat grouped keys first).
        position_query / position_key: ``[H, R, D]`` the projected relative embeddings ``Q^r``, ``K^r``.
        index: ``[Q, K]`` the row ``d(i, j)`` of ``Q^r`` / ``K^r`` for query ``i`` and key ``j``.
    """
    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    c2p = torch.matmul(query, position_key.transpose(-1, -2).unsqueeze(0))  # [B, H, Q, R]: Q^c_i . K^r_r
    c2p = c2p.gather(-1, index.expand(batch, heads, q_len, k_len))
    p2c = torch.matmul(key, position_query.transpose(-1, -2).unsqueeze(0))  # [B, H, K, R]: K^c_j . Q^r_r
    p2c = p2c.gather(-1, index.transpose(0, 1).expand(batch, heads, k_len, q_len)).transpose(-1, -2)
    return (c2p + p2c) * scaling
