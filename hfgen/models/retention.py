"""The retention arithmetic of RetNet (Sun et al. 2023, arXiv 2307.08621): the multi-scale decays, the xPos-style
rotation, and the three equivalent forms (parallel, chunkwise recurrent, recurrent) plus the one-token step. Plain
functions of tensors; the modules and the decoding plan call them (see ``modeling_hfgen_retnet`` for the formulas)."""

from __future__ import annotations

import torch


def retention_log_decays(num_heads: int, device=None) -> torch.Tensor:
    """``log(gamma_h)``, ``gamma_h = 1 - 2^(-5-h)`` for ``h = 0..H-1`` (the paper's multi-scale decays)."""
    return torch.log1p(-torch.exp2(-5.0 - torch.arange(num_heads, dtype=torch.float64, device=device))).float()


def rotation_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """``theta_i = theta^(-2i/d)`` for ``i = 0..d/2-1`` (float32)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def rotation_tables(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, signed sin)`` of the angles ``n theta_i``, each channel pair's angle written twice: ``[B|1, 1, L, d]``;
    the sine is negated on the first half of the channels, the sign of the rotate-half pairing (see ``rotate``)."""
    angles = position_ids.float()[:, None, :, None] * inv_freq  # [B, 1, L, d/2]
    sin = angles.sin()
    return torch.cat((angles, angles), -1).cos(), torch.cat((-sin, sin), -1)


def rotate(x: torch.Tensor, position_ids: torch.Tensor, theta: float,
           tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x * e^{i n theta}`` with channel pairs ``(i, i + d/2)`` as the complex numbers (rotate-half layout):
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = (-x_2, x_1)``, computed as
    ``x * cos + (x_2, x_1) * (-sin, sin)`` (a roll by ``d/2`` and a signed sine: the same products, three operations
    instead of seven in the per-token path). ``x``: ``[B, H, L, d]``; ``position_ids``: ``[B|1, L]``; ``tables``:
    ``rotation_tables`` of these positions, when the caller has them already (one computation for all layers)."""
    dim = x.shape[-1]
    cos, signed_sin = tables if tables is not None else rotation_tables(
        position_ids, rotation_frequencies(dim, theta, x.device))
    if x.dtype == torch.float32:
        return torch.addcmul(x * cos, x.roll(dim // 2, -1), signed_sin)
    x32 = x.float()
    return torch.addcmul(x32 * cos, x32.roll(dim // 2, -1), signed_sin).to(x.dtype)


def retention_parallel(q, k, v, log_decay, state=None):
    """One block in the parallel form, continuing from ``state`` (``None``: zeros). ``q, k``: ``[B, H, L, d_k]``,
    ``v``: ``[B, H, L, d_v]``, ``log_decay``: ``[H]``. Returns ``(output [B, H, L, d_v], state [B, H, d_k, d_v])``
    where the new state is ``sum_m gamma^(L-1-m) k_m^T v_m + gamma^L state``."""
    length = q.shape[2]
    index = torch.arange(length, device=q.device, dtype=torch.float32)
    distance = index[:, None] - index[None, :]  # n - m
    log_decay = log_decay.to(q.device)[:, None, None]
    decay = torch.exp(distance.clamp(min=0) * log_decay).masked_fill(distance < 0, 0.0)  # [H, L, L]
    scores = torch.matmul(q, k.transpose(-1, -2)) * decay.to(q.dtype)
    out = torch.matmul(scores, v)
    key_decay = torch.exp((length - 1 - index)[:, None] * log_decay).to(k.dtype)  # [H, L, 1]: gamma^(L-1-m)
    new_state = torch.matmul((k * key_decay).transpose(-1, -2), v)
    if state is not None:
        query_decay = torch.exp((index + 1)[:, None] * log_decay).to(q.dtype)  # gamma^(n+1)
        out = out + torch.matmul(q, state.to(q.dtype)) * query_decay
        new_state = new_state + torch.exp(length * log_decay).to(state.dtype) * state
    return out, new_state


def retention_chunkwise(q, k, v, log_decay, chunk_size: int, state=None):
    """Chunkwise recurrent form: the parallel form inside chunks of ``chunk_size`` tokens, the state carried from
    chunk to chunk. Time linear in the length, memory ``O(chunk_size^2)`` per head."""
    outputs = []
    for start in range(0, q.shape[2], chunk_size):
        rows = slice(start, start + chunk_size)
        out, state = retention_parallel(q[:, :, rows], k[:, :, rows], v[:, :, rows], log_decay, state)
        outputs.append(out)
    return torch.cat(outputs, dim=2), state


def retention_recurrent(q, k, v, log_decay, state=None):
    """Recurrent form, token by token: ``S_n = gamma S_(n-1) + k_n^T v_n``, ``o_n = q_n S_n``."""
    batch, heads, length, _ = q.shape
    gamma = torch.exp(log_decay.to(q.device)).to(q.dtype)[None, :, None, None]
    if length == 1:
        return retention_step(q, k, v, gamma, state)
    if state is None:
        state = q.new_zeros(batch, heads, q.shape[-1], v.shape[-1])
    outputs = []
    for n in range(length):
        state = gamma * state.to(q.dtype) + k[:, :, n, :, None] * v[:, :, n, None, :]
        outputs.append(torch.matmul(q[:, :, n, None, :], state))
    return torch.cat(outputs, dim=2), state


def retention_step(q, k, v, gamma, state=None, in_place: bool = False):
    """One token of the recurrent form (the decoding step), in as few operations as possible since it runs once per
    layer per generated token: ``S_n = gamma S_(n-1) + k_n^T v_n``, ``o_n = q_n S_n``. ``q, k``: ``[B, H, 1, d_k]``,
    ``v``: ``[B, H, 1, d_v]``, ``gamma``: ``[1, H, 1, 1]`` in the dtype of ``q``.

    ``in_place``: update ``state`` in its own memory (``S *= gamma; S += k^T v``), when that is safe (no autograd
    graph holds it, same dtype, not an inference tensor outside inference mode). The state is the largest tensor of
    the step ([B, H, d_k, d_v]); allocating two new ones per layer per token costs more than the arithmetic."""
    if state is None:
        state = k.transpose(-1, -2) * v  # the outer product k_n^T v_n, [B, H, d_k, d_v]
    elif (in_place and state.dtype == q.dtype and not state.requires_grad
          and (torch.is_inference_mode_enabled() or not state.is_inference())):
        state = state.mul_(gamma).addcmul_(k.transpose(-1, -2), v)
    else:
        state = torch.addcmul(k.transpose(-1, -2) * v, gamma, state.to(q.dtype))
    return torch.matmul(q, state), state
