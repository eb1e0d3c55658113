"""The retentive network (``hfgen_retnet``; Sun et al. 2023, arXiv 2307.08621, named by seed 004: "may help it to
be more scaleable than O(N^2) memory and O(N) inference complexity").

Retention of one head with decay ``gamma`` (the paper's eqs. 5-8), ``Q = (X W_Q) * Theta``,
``K = (X W_K) * conj(Theta)``
(xPos-style rotation ``Theta_n = e^{i n theta}``, here in the rotate-half layout), ``V = X W_V``:

* parallel:  ``Retention(X) = (Q K^T * D) V``,  ``D_nm = gamma^(n-m)`` for ``n >= m``, else 0
* recurrent: ``S_n = gamma S_(n-1) + K_n^T V_n``,  ``Retention(X_n) = Q_n S_n``
* chunkwise: ``R_i = K_[i]^T (V_[i] * zeta) + gamma^B R_(i-1)``, ``zeta_j = gamma^(B-j-1)``;
  ``Retention(X_[i]) = (Q_[i] K_[i]^T * D) V_[i] + (Q_[i] R_(i-1)) * xi``, ``xi_j = gamma^(j+1)``

Multi-scale retention (eq. 8): ``gamma_h = 1 - 2^(-5-h)`` per head,
``Y = GroupNorm_h(Concat(head_1..head_H))``, ``MSR(X) = (swish(X W_G) * Y) W_O``.

Queries are scaled by ``1/sqrt(d_k)``. The paper's further per-row normalisations of ``QK^T * D`` only rescale each
(token, head) row by a positive number, which the group norm cancels; they are left out so that the three forms
are the same arithmetic, not just the same function.

Padding: keys of masked tokens are zeroed, so they add nothing to any state; decay and rotation are relative, so a
left-padded row computes exactly what the row computes alone.

Cache: :class:`HfGenRetNetCache` holds one ``[B, H, d_k, d_v]`` state per layer, whatever the context length (the
recurrent form's O(1) memory per token). ``generate`` receives it from the first forward and passes it back.

Decoding: one new token without gradients takes ``HfGenRetNetLayer.step``, the same arithmetic in fewer operations
(a step is ~30 small operations per layer, so per-operation overhead is a large part of it): the four input
projections as one matmul against a cached input-major copy of their weights (remade when a weight changes), the
rotation as a roll and a signed sine, the state updated in place when no autograd graph holds it, the residual
additions inside ``addmm``, no ``nn.Module`` calls below the layer, rotation tables made per block of positions.
Anything it cannot take (hooks, PEFT adapters, a mixture of experts) goes through the modules, as do gradients.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_hfgen_retnet import HfGenRetNetConfig, validate_retnet_config
from .layers import HfGenLayerNorm, HfGenMLP, HfGenRMSNorm, build_norm
from .model_card import HfGenHubCardMixin
from .modeling_common import check_checkpoint_folder, check_inputs
from .moe import HfGenSparseMoeBlock, build_feed_forward, moe_causal_lm_output, validate_moe_config

# ---------------------------------------------------------------------------------------------------- the math


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


# ---------------------------------------------------------------------------------------------------- the cache


class HfGenRetNetCacheLayer(LinearAttentionCacheLayerMixin):
    """One layer's retention state ``[B, H, d_k, d_v]`` (transformers' linear-attention layer protocol: beam
    reordering, reset, offloading come from the mixin)."""

    def lazy_initialization(self, conv_states=None, recurrent_states=None, state_idx: int = 0) -> None:
        if recurrent_states is not None:
            self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
            self.is_recurrent_states_initialized[state_idx] = True

    def update_conv_state(self, conv_states, state_idx: int = 0, **kwargs):
        raise ValueError("Retention layers keep no convolution state.")

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        if not self.is_recurrent_states_initialized[state_idx]:
            self.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
        self.recurrent_states[state_idx] = recurrent_states
        self.has_previous_state[state_idx] = True
        self.batch_size = recurrent_states.shape[0]
        return recurrent_states

    def batch_repeat_interleave(self, repeats: int) -> None:
        for i, state in self.recurrent_states.items():
            if state is not None:
                self.recurrent_states[i] = state.repeat_interleave(repeats, dim=0)
                self.batch_size = self.recurrent_states[i].shape[0]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for i, state in self.recurrent_states.items():
            if state is not None:
                self.recurrent_states[i] = state[indices]
                self.batch_size = self.recurrent_states[i].shape[0]


class HfGenRetNetCache(Cache):
    """The recurrent-state cache of :class:`HfGenRetNetForCausalLM`: one retention state per layer, of a size that
    does not grow with the context, and the number of tokens seen (``get_seq_length``), which positions continue
    from. It cannot be cropped (a recurrent state cannot forget tokens), so assisted generation is refused."""

    def __init__(self, config: HfGenRetNetConfig):
        super().__init__(layers=[HfGenRetNetCacheLayer() for _ in range(config.num_hidden_layers)])
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_state(self, layer_idx: int) -> torch.Tensor | None:
        """Layer ``layer_idx``'s state ``[B, H, d_k, d_v]``, ``None`` before the first token (read directly: this
        runs once per layer per generated token)."""
        layer = self.layers[layer_idx]
        return layer.recurrent_states[0] if layer.has_previous_state[0] else None

    def update_state(self, state: torch.Tensor, layer_idx: int) -> torch.Tensor:
        layer = self.layers[layer_idx]
        if not layer.has_previous_state[0]:  # the first token (or after a reset): the full protocol
            return layer.update_recurrent_state(state)
        layer.recurrent_states[0] = state
        layer.batch_size = state.shape[0]
        return state

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("A retention state cannot forget tokens: HfGenRetNetCache cannot be cropped.")


# ---------------------------------------------------------------------------------------------------- the layers


def plain_module(module: nn.Module, cls: type) -> bool:
    """Whether ``module`` is exactly a ``cls`` with no hooks (none on it, none global): then the decoding step may
    use its weights with functional calls, skipping ``nn.Module.__call__``. Anything else (a PEFT adapter, a
    quantized layer, a hooked module) is called as a module."""
    return (type(module) is cls and not (module._forward_hooks or module._forward_pre_hooks)
            and not (_global_forward_hooks or _global_forward_pre_hooks))


def linear(module: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x)`` (``+ residual``) for a linear layer and 2D ``x``, functionally when it is a plain ``nn.Linear``
    (see ``plain_module``): ``residual + x W^T`` is then one ``addmm``."""
    if plain_module(module, nn.Linear):
        if residual is not None and module.bias is None:
            return torch.addmm(residual, x, module.weight.t())
        out = F.linear(x, module.weight, module.bias)
    else:
        out = module(x)
    return out if residual is None else residual + out


def norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an ``HfGenLayerNorm`` / ``HfGenRMSNorm``, functionally when plain (the same calls their
    forwards make: ``F.layer_norm``; ``F.rms_norm`` for float32)."""
    if plain_module(module, HfGenLayerNorm):
        return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    if plain_module(module, HfGenRMSNorm) and x.dtype == torch.float32 and module.weight.dtype == torch.float32:
        return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)
    return module(x)


class HfGenMultiScaleRetention(nn.Module):
    """Multi-scale retention: ``(swish(X W_G) * GroupNorm(heads)) W_O`` with one decay per head."""

    def __init__(self, config: HfGenRetNetConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim, self.value_head_dim = config.head_dim, config.value_head_dim
        self.rope_theta = config.rope_theta  # (read once: config attribute access is slow in a per-token path)
        value_width = self.num_heads * self.value_head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, value_width, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, value_width, bias=False)
        self.o_proj = nn.Linear(value_width, config.hidden_size, bias=False)
        self.group_norm = nn.GroupNorm(self.num_heads, value_width, eps=config.rms_norm_eps)
        # Constants of the layer, made once per device on first use (not buffers: from_pretrained builds on the
        # meta device, and recomputing them per token is measurable Python overhead in decoding).
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._fused_projection: tuple | None = None  # (key, weak references, weight): see fused_projection_weight

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_decay [H], gamma [1, H, 1, 1], rotation frequencies [d_k / 2])`` on ``device``, float32."""
        if device not in self._constants:
            log_decay = retention_log_decays(self.num_heads, device=device)
            self._constants[device] = (log_decay, torch.exp(log_decay)[None, :, None, None],
                                       rotation_frequencies(self.head_dim, self.rope_theta, device))
        return self._constants[device]

    def fused_projection_weight(self) -> torch.Tensor | None:
        """``[W_Q / sqrt(d_k); W_K; W_V; W_G]^T``, the four input projections as one ``[hidden, 2 H d_k + 2 H d_v]``
        matrix, for the decoding step: one matmul instead of four, queries and keys side by side for one rotation,
        and stored input-major because a single row times a wide row-major ``[in, out]`` matrix is 2-3x faster in
        CPU BLAS than the same product against the ``[out, in]`` layout of ``nn.Linear`` (measured with
        benchmarks/retnet.py's sizes: 1536 x 256, 61 vs 157 us). A copy made once and remade
        when a weight changes (a new tensor, new storage, or an in-place update such as an optimizer step, which
        bumps the tensor's version). ``None`` when a projection is not a plain bias-free ``nn.Linear`` without hooks
        (a PEFT adapter, a quantized layer, a hooked module): then the modules themselves must run."""
        q, k, v, g = self.q_proj, self.k_proj, self.v_proj, self.g_proj
        if not (plain_module(q, nn.Linear) and plain_module(k, nn.Linear) and plain_module(v, nn.Linear)
                and plain_module(g, nn.Linear)) or q.bias is not None or k.bias is not None or v.bias is not None \
                or g.bias is not None:
            return None
        weights = (q.weight, k.weight, v.weight, g.weight)
        try:  # (written out, not as a loop: this runs once per layer per generated token)
            key = (weights[0].data_ptr(), weights[0]._version, weights[1].data_ptr(), weights[1]._version,
                   weights[2].data_ptr(), weights[2]._version, weights[3].data_ptr(), weights[3]._version)
        except RuntimeError:  # inference-mode tensors keep no version counter: no safe cache
            return None
        cached = self._fused_projection
        if (cached is not None and cached[0] == key and cached[1][0]() is weights[0] and cached[1][1]() is weights[1]
                and cached[1][2]() is weights[2] and cached[1][3]() is weights[3]):
            return cached[2]
        with torch.no_grad():
            fused = torch.cat((weights[0] * self.head_dim**-0.5, *weights[1:])).t().contiguous()
        self._fused_projection = (key, tuple(weakref.ref(w) for w in weights), fused)
        return fused

    def step(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None, cache: HfGenRetNetCache | None,
             rotation: tuple[torch.Tensor, torch.Tensor], fused: torch.Tensor,
             residual: torch.Tensor | None = None) -> torch.Tensor:
        """One new token without gradients, ``hidden_states``: ``[B, hidden]`` (2D: the per-token path keeps no
        length axis) -> ``[B, hidden]`` (plus ``residual`` when given, in the output projection's matmul). The
        recurrent step with the fused input projection: the same arithmetic as ``forward`` in fewer operations (no
        module calls for the projections, no transposes, one group-norm call)."""
        batch = hidden_states.shape[0]
        heads, head_dim, value_head_dim = self.num_heads, self.head_dim, self.value_head_dim
        width, value_width = 2 * heads * head_dim, heads * value_head_dim
        projected = torch.mm(hidden_states, fused)  # [B, 2 H d_k + 2 H d_v]: q / sqrt(d_k), k, v, g
        qk = rotate(projected[:, :width].view(batch, 2 * heads, 1, head_dim), None, self.rope_theta, rotation)
        q, k = qk[:, :heads], qk[:, heads:]
        if key_mask is not None:
            k = k * key_mask[:, None, :, None].to(k.dtype)
        v = projected[:, width:width + value_width].view(batch, heads, 1, value_head_dim)
        gamma = self.constants(hidden_states.device)[1]
        state = cache.get_state(self.layer_idx) if cache is not None else None
        out, state = retention_step(q, k, v, gamma if gamma.dtype == q.dtype else gamma.to(q.dtype), state,
                                    in_place=True)
        if cache is not None:
            cache.update_state(state, self.layer_idx)
        group_norm = self.group_norm
        if plain_module(group_norm, nn.GroupNorm):
            out = F.group_norm(out.view(batch, value_width), heads, group_norm.weight, group_norm.bias, group_norm.eps)
        else:
            out = group_norm(out.view(batch, value_width))
        return linear(self.o_proj, F.silu(projected[:, width + value_width:]) * out, residual)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor | None,
                cache: HfGenRetNetCache | None = None, mode: str | None = None,
                rotation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``rotation``: ``rotation_tables`` of ``position_ids`` when the caller computed them once for all layers.
        One token without gradients (decoding) takes ``step``."""
        if hidden_states.shape[1] == 1 and not torch.is_grad_enabled():
            fused = self.fused_projection_weight()
            if fused is not None:
                if rotation is None:
                    rotation = rotation_tables(position_ids, self.constants(hidden_states.device)[2])
                batch, _, hidden = hidden_states.shape
                return self.step(hidden_states.view(batch, hidden), key_mask, cache, rotation, fused)[:, None]
        batch, length, _ = hidden_states.shape
        heads = self.num_heads
        q = self.q_proj(hidden_states).view(batch, length, heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, heads, self.value_head_dim).transpose(1, 2)
        log_decay, gamma, inv_freq = self.constants(q.device)
        if rotation is None:
            rotation = rotation_tables(position_ids, inv_freq)
        # queries and keys turned by one call (fewer operations in the per-token path)
        q, k = rotate(torch.cat((q, k), dim=1), position_ids, self.rope_theta, rotation).split(heads, dim=1)
        q = q * self.head_dim**-0.5
        if key_mask is not None:  # a masked token adds nothing to any state
            k = k * key_mask[:, None, :, None].to(k.dtype)
        state = cache.get_state(self.layer_idx) if cache is not None else None
        mode = "step" if length == 1 else (mode or self.config.retention_mode)
        if mode == "step":  # one token, whatever the configured form: the recurrent step
            out, state = retention_step(q, k, v, gamma if gamma.dtype == q.dtype else gamma.to(q.dtype), state)
        elif mode == "recurrent":
            out, state = retention_recurrent(q, k, v, log_decay, state)
        elif mode == "parallel":
            out, state = retention_parallel(q, k, v, log_decay, state)
        else:
            out, state = retention_chunkwise(q, k, v, log_decay, self.config.retention_chunk_size, state)
        if cache is not None:
            cache.update_state(state, self.layer_idx)
        out = out.transpose(1, 2).reshape(batch * length, heads * self.value_head_dim)
        out = self.group_norm(out).view(batch, length, -1)
        return self.o_proj(F.silu(self.g_proj(hidden_states)) * out)


class HfGenRetNetLayer(GradientCheckpointingLayer):
    """``Y = MSR(LN(X)) + X``; ``X' = FFN(LN(Y)) + Y`` (FFN: the MLP, or a mixture of experts)."""

    def __init__(self, config: HfGenRetNetConfig, layer_idx: int):
        super().__init__()
        self.retention = HfGenMultiScaleRetention(config, layer_idx)
        self.input_layernorm = build_norm(config)
        self.post_attention_layernorm = build_norm(config)
        feed_forward = build_feed_forward(config, lambda: HfGenMLP(config))
        self.is_moe = isinstance(feed_forward, HfGenSparseMoeBlock)
        if self.is_moe:
            self.block_sparse_moe = feed_forward
        else:
            self.mlp = feed_forward

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor | None,
                cache: HfGenRetNetCache | None = None, mode: str | None = None,
                rotation: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + self.retention(self.input_layernorm(hidden_states), position_ids, key_mask,
                                                       cache=cache, mode=mode, rotation=rotation)
        # (a flag, not hasattr: a missing nn.Module attribute costs a raised exception on every token)
        feed_forward = self.block_sparse_moe if self.is_moe else self.mlp
        return hidden_states + feed_forward(self.post_attention_layernorm(hidden_states))

    def step(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None, cache: HfGenRetNetCache | None,
             rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """``forward`` for one new token without gradients, ``hidden_states [B, hidden]`` (2D) -> ``[B, hidden]``,
        in functional calls (no ``nn.Module.__call__`` per sub-module: the per-token path runs this once per
        layer). ``None``, before computing anything, when this layer cannot take it (hooks on it, a mixture of
        experts, an MLP other than ``HfGenMLP``, projections that are not plain linear layers): the caller then calls
        the layer as a module."""
        if self.is_moe or self._forward_hooks or self._forward_pre_hooks:
            return None
        mlp = self.mlp
        if type(mlp) is not HfGenMLP or mlp._forward_hooks or mlp._forward_pre_hooks:
            return None
        act_fn = mlp.act_fn
        if act_fn._forward_hooks or act_fn._forward_pre_hooks:
            return None
        retention = self.retention
        if retention._forward_hooks or retention._forward_pre_hooks:
            return None
        fused = retention.fused_projection_weight()
        if fused is None:
            return None
        hidden_states = retention.step(norm(self.input_layernorm, hidden_states), key_mask, cache, rotation, fused,
                                       residual=hidden_states)
        x = norm(self.post_attention_layernorm, hidden_states)
        if mlp.gated:
            x = act_fn.forward(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x)
        else:
            x = act_fn.forward(linear(mlp.up_proj, x))
        return linear(mlp.down_proj, x, residual=hidden_states)


# ---------------------------------------------------------------------------------------------------- the models


# HfGenHubCardMixin: push_to_hub uploads hfgen's model card.
class HfGenRetNetPreTrainedModel(HfGenHubCardMixin, PreTrainedModel):
    config_class = HfGenRetNetConfig
    config: HfGenRetNetConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfGenRetNetLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _is_stateful = True
    _can_record_outputs = {"hidden_states": HfGenRetNetLayer}

    def __init__(self, config, *inputs, **kwargs):
        # from_pretrained(path, key=value) sets attributes after the config's own checks: check again.
        validate_retnet_config(config)
        validate_moe_config(config)
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if pretrained_model_name_or_path is not None:
            check_checkpoint_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not make a DynamicCache (keys and values per token): the model makes its own state cache.
        return False


def resolve_cache(cache, past_key_values):
    """The cache under either name (transformers 5 calls it ``cache``; ``past_key_values`` is the older name)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the state cache as `cache` or as `past_key_values`, not both.")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, HfGenRetNetCache):
        raise ValueError(
            f"HfGenRetNet keeps a fixed-size recurrent state per layer, not keys and values per token: it can use "
            f"an HfGenRetNetCache (or None, and one is made), not a {type(cache).__name__}."
        )
    return cache


class HfGenRetNetModel(HfGenRetNetPreTrainedModel):
    """Embeddings, RetNet layers, final norm. Returns ``BaseModelOutputWithPast`` whose cache is the state cache."""

    def __init__(self, config: HfGenRetNetConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([HfGenRetNetLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = build_norm(config)
        self.gradient_checkpointing = False
        # rotation tables of a block of positions, for decoding one token at a time: (device, first position, tables)
        self._rotation_block: tuple[torch.device, int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.post_init()

    ROTATION_BLOCK = 256

    def step_rotation(self, position: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``rotation_tables`` of the single position ``position`` (``[1, 1, 1, d_k]`` each), sliced from tables made
        for ``ROTATION_BLOCK`` positions at a time: the same numbers, two views per token instead of the table
        arithmetic, and memory that does not grow with the context."""
        block = self._rotation_block
        if block is None or block[0] != device or not block[1] <= position < block[1] + self.ROTATION_BLOCK:
            positions = torch.arange(position, position + self.ROTATION_BLOCK, device=device)[None]
            block = self._rotation_block = (device, position, rotation_tables(
                positions, self.layers[0].retention.constants(device)[2]))
        index = position - block[1]
        cos, signed_sin = block[2]
        return cos[:, :, index:index + 1], signed_sin[:, :, index:index + 1]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: HfGenRetNetCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                past_key_values: HfGenRetNetCache | None = None, retention_mode: str | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        """``attention_mask``: 2D ``[batch, seen + new]`` (1 = token, 0 = padding). ``retention_mode`` overrides
        ``config.retention_mode`` for this call (``parallel``, ``chunkwise``, ``recurrent``)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        cache = resolve_cache(cache, past_key_values)
        if retention_mode is not None and retention_mode not in ("parallel", "chunkwise", "recurrent"):
            raise ValueError(f"Unknown retention_mode={retention_mode!r}; valid choices are: 'parallel', "
                             f"'chunkwise', 'recurrent'.")
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"HfGenRetNet takes a 2D attention_mask [batch, tokens] (1 = token, 0 = padding); "
                             f"got {attention_mask.dim()} dimensions. Retention has no attention matrix to mask.")
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        if use_cache and cache is None:
            cache = HfGenRetNetCache(self.config)
        # (cast once here, not in every layer)
        key_mask = attention_mask[:, -length:].to(inputs_embeds.dtype) if attention_mask is not None else None
        # Every layer rotates by the same angles (same head width and theta): compute them once, as Llama does.
        decoding = length == 1 and not torch.is_grad_enabled()
        if decoding and position_ids is None:  # (the layers need only the tables)
            rotation = self.step_rotation(past_length, inputs_embeds.device)
        else:
            if position_ids is None:
                position_ids = (torch.arange(length, device=inputs_embeds.device) + past_length)[None]
            rotation = rotation_tables(position_ids, self.layers[0].retention.constants(inputs_embeds.device)[2])

        layer_cache = cache if use_cache else None
        if decoding:  # the per-token path: the layers' functional step, in 2D
            hidden = inputs_embeds[:, 0]
            for layer in self.layers:
                out = layer.step(hidden, key_mask, layer_cache, rotation)
                hidden = out if out is not None else layer(hidden[:, None], position_ids, key_mask, cache=layer_cache,
                                                           mode=retention_mode, rotation=rotation)[:, 0]
            hidden_states = hidden[:, None]
        else:
            hidden_states = inputs_embeds
            for layer in self.layers:
                hidden_states = layer(hidden_states, position_ids, key_mask, cache=layer_cache, mode=retention_mode,
                                      rotation=rotation)
        if use_cache:
            cache.seen_tokens += length
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache if use_cache else None)


class HfGenRetNetForCausalLM(HfGenRetNetPreTrainedModel, GenerationMixin):
    """RetNet with a language-modelling head. ``generate`` decodes with the recurrent form from the state cache
    (O(1) time and memory per token, whatever the context); left-padded batches give the rows' own tokens."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HfGenRetNetConfig):
        super().__init__(config)
        self.model = HfGenRetNetModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={implementation!r} cannot be used with HfGenRetNet: it keeps a fixed-size "
                f"recurrent state (HfGenRetNetCache, made by the model). Valid choices: None, 'dynamic'."
            )
        resolve_cache(model_kwargs.get("cache"), model_kwargs.get("past_key_values"))
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: HfGenRetNetCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                past_key_values: HfGenRetNetCache | None = None, **kwargs):
        """``labels`` are the input ids (shifted inside the loss); -100 marks positions to ignore. With
        ``num_experts`` the output is ``HfGenMoeCausalLMOutputWithPast`` (router losses and statistics)."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return moe_causal_lm_output(self.config, self.model, attention_mask, loss, logits=logits,
                                    cache=outputs.cache, hidden_states=outputs.hidden_states)
