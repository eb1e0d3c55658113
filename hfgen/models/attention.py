"""The shared attention layer: projections, scoring, and the kernels that compute every softmax variant.

The math lives in the config (``attention_scoring``, ``softmax_variant``, ``position_embedding``, ...); the kernel
is chosen with ``attn_implementation``:

* ``eager``: scores, probabilities and output materialised (returns attention weights), straight from the formulas.
* ``sdpa``: the fast path: the softmax variant's SDPA kernel from ``softmax.SOFTMAX_TABLE`` (temperature is SDPA's
  ``scale``, off-by-one a prepended zero key and zero value, adaptive temperature two passes) when the scoring of
  ``scoring.SCORING_TABLE`` is a dot product (general scoring: a transformed query). Variants that need the
  probabilities themselves (additive scoring, clipped softmax): the reference formulas, chunked over queries.
* any other name registered with ``transformers.AttentionInterface`` (flash attention, user kernels) for the
  variants that are a plain ``softmax(scale * QK^T + mask) V``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention_utils import allowed_positions, query_chunk_rows, query_chunks, repeat_kv
from .positions import POSITION_TABLE, apply_rotary
from .scoring import SCORING_TABLE
from .softmax import SOFTMAX_TABLE

__all__ = ["ATTENTION_KERNELS", "HfGenAttention", "allowed_positions", "eager_attention", "repeat_kv",
           "sdpa_attention"]


def attention_probabilities(module: HfGenAttention, query: torch.Tensor, key: torch.Tensor,
                            allowed: torch.Tensor | None, position_bias: torch.Tensor | None,
                            scaling: float) -> torch.Tensor:
    """``[B, H, Q, K]`` probabilities of the configured scoring and softmax variant (keys already repeated): the
    reference formulas of both tables."""
    scores = module.scoring_entry.scores(module, query, key, scaling)
    if position_bias is not None:
        scores = scores + position_bias.to(scores.dtype)
    return module.softmax_entry.reference(scores, allowed, module.config)


def _recomputed_in_backward(fn, *args):
    """Run ``fn`` so that autograd keeps only its inputs and recomputes the rest in backward: the chunked paths
    then train in O(n * chunk) memory instead of keeping every chunk's n x chunk probabilities."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def chunked_attention(module: HfGenAttention, query, key, value, allowed, position_bias, scaling: float,
                      dropout: float, chunk_size: int, return_weights: bool, causal: bool = False):
    """Probabilities then output, ``chunk_size`` query rows at a time: memory O(chunk * K) per head.

    With ``return_weights`` the probabilities of every chunk are joined first and the returned weights are the
    tensor that multiplies the values (after dropout, as Llama's ``eager_attention_forward`` returns them): they
    belong to the graph, so gradients reach them. Only their scoring is chunked then (additive scoring's
    ``[Q, K, D]`` tanh); the ``[Q, K]`` weights are materialised anyway because they are returned."""
    chunks = query_chunks(query.shape[2], key.shape[2], chunk_size, allowed, position_bias, causal, query.device)
    if return_weights:
        probs = torch.cat([attention_probabilities(module, query[:, :, start:end], key[:, :, :key_end],
                                                   allowed_rows, bias_rows, scaling)
                           for start, end, key_end, allowed_rows, bias_rows in chunks], dim=2)
        probs = F.dropout(probs, p=dropout, training=module.training).to(value.dtype)
        return torch.matmul(probs, value), probs

    def chunk_output(q, k, v, allowed_rows, bias_rows):
        probs = attention_probabilities(module, q, k, allowed_rows, bias_rows, scaling)
        probs = F.dropout(probs, p=dropout, training=module.training)
        return torch.matmul(probs.to(v.dtype), v)

    outputs = [_recomputed_in_backward(chunk_output, query[:, :, start:end], key[:, :, :key_end],
                                       value[:, :, :key_end], allowed_rows, bias_rows)
               for start, end, key_end, allowed_rows, bias_rows in chunks]
    return torch.cat(outputs, dim=2), None


def eager_attention(module: HfGenAttention, query, key, value, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, position_bias=None, **kwargs):
    """Reference kernel: every variant, weights returned. Output ``[B, S, H, D]``."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    q_len, k_len = query.shape[2], key.shape[2]
    allowed = allowed_positions(attention_mask, q_len, k_len, module.is_causal, query.device)
    # A scoring that is not a dot product (additive: a [Q, K, D] tanh per head) is chunked even here.
    scoring = module.scoring_entry
    chunk = q_len if scoring.dot_product else query_chunk_rows(module.config, query, k_len,
                                                               scoring.per_score(query.shape[-1]))
    out, weights = chunked_attention(module, query, key, value, allowed, position_bias, scaling, dropout, chunk,
                                     return_weights=True)
    return out.transpose(1, 2).contiguous(), weights


def sdpa_attention(module: HfGenAttention, query, key, value, attention_mask, dropout: float = 0.0,
                   scaling: float | None = None, position_bias=None, **kwargs):
    """Fast kernel: the softmax variant's SDPA kernel (:data:`softmax.SOFTMAX_TABLE`) where the scoring is a dot
    product and the variant has one, the reference chunked over query rows elsewhere. Output ``[B, S, H, D]``."""
    dropout = dropout if module.training else 0.0
    q_len, k_len = query.shape[2], key.shape[2]
    plain_causal = attention_mask is None and module.is_causal
    allowed = None if plain_causal else allowed_positions(attention_mask, q_len, k_len, module.is_causal,
                                                          query.device)
    scoring, fast = module.scoring_entry, module.softmax_entry.fast
    if scoring.dot_product and fast is not None:
        out = fast(module, query, key, value, allowed, position_bias, scaling, dropout, plain_causal)
    else:
        groups = module.num_key_value_groups
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        chunk = query_chunk_rows(module.config, query, k_len, scoring.per_score(query.shape[-1]))
        out, _ = chunked_attention(module, query, key, value, allowed, position_bias, scaling, dropout, chunk,
                                   return_weights=False, causal=plain_causal and q_len > 1)
    return out.transpose(1, 2).contiguous(), None


ATTENTION_KERNELS: dict[str, Callable] = {"eager": eager_attention, "sdpa": sdpa_attention}


class HfGenAttention(nn.Module):
    """Multi-head / grouped-query / multi-query attention, self or cross, with every scoring and softmax variant.

    Parameter names follow Llama (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``). Variant parameters:
    ``score_weight`` (general scoring, ``softmax(Q W_k K^T) V``: one ``W_k`` per head, initialised to the identity),
    ``score_vector`` (additive scoring's ``v``), ``head_gate`` (gated attention: Bondarenko et al. 2023, each head's
    output multiplied by ``sigmoid(G(x))`` of the token, so a head can switch itself off instead of growing outliers).
    """

    def __init__(self, config, layer_idx: int, is_causal: bool = True, is_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        # The entries of the variant tables (scoring.py, softmax.py) this module computes.
        self.scoring_entry = SCORING_TABLE[config.attention_scoring]
        self.softmax_entry = SOFTMAX_TABLE[config.softmax_variant]
        self.scaling = self.scoring_entry.scale(self.head_dim)
        self.attention_dropout = config.attention_dropout
        # Read on every call: plain attributes, not the config's __getattribute__ (measurable per decoded token).
        self.softmax_temperature, self.gated_heads = config.softmax_temperature, bool(config.attention_gate)
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.scoring_entry.add_parameters(self)  # (general scoring: score_weight, additive: score_vector)
        if config.attention_gate:
            self.head_gate = nn.Linear(config.hidden_size, self.num_heads, bias=True)

    @property
    def is_plain_softmax(self) -> bool:
        """True when the math is ``softmax(scale * QK^T + mask) V``, which any attention backend can compute."""
        return (self.softmax_entry.any_backend and self.scoring_entry.dot_product
                and POSITION_TABLE[self.config.position_embedding].bias is None)

    def _kernel(self) -> Callable:
        implementation = self.config._attn_implementation or "sdpa"
        # Continuous batching runs eager as "paged|eager": the paged cache's update returns whole keys and values,
        # so hfgen's own eager kernel (every variant) serves it.
        implementation = {"paged|eager": "eager"}.get(implementation, implementation)
        if implementation in ATTENTION_KERNELS:
            return ATTENTION_KERNELS[implementation]
        if not self.is_plain_softmax:
            raise ValueError(
                f"attn_implementation={implementation!r} computes only plain softmax attention; this model uses "
                f"attention_scoring={self.config.attention_scoring!r}, softmax_variant="
                f"{self.config.softmax_variant!r}, position_embedding={self.config.position_embedding!r}. "
                f"Use one of {sorted(ATTENTION_KERNELS)}."
            )
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)

    def _key_value(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (source.shape[0], source.shape[1], -1, self.head_dim)
        return (self.k_proj(source).view(shape).transpose(1, 2), self.v_proj(source).view(shape).transpose(1, 2))

    def _cached_cross_key_value(self, encoder_states: torch.Tensor | None,
                                cache: EncoderDecoderCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the encoder output: projected once, at the first decoding step, then
        read back from ``cache.cross_attention_cache`` (transformers' convention, which ``generate`` relies on)."""
        if cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        if encoder_states is None:
            raise ValueError("Cross-attention needs key_value_states (the encoder output) until its cache is filled.")
        key, value = cache.cross_attention_cache.update(*self._key_value(encoder_states), self.layer_idx)
        cache.is_updated[self.layer_idx] = True
        return key, value

    def score_bias(self, position_bias: torch.Tensor | Callable | None, query: torch.Tensor,
                   key: torch.Tensor) -> torch.Tensor | None:
        """The additive score bias: ``position_bias`` itself when it is a tensor, else ``position_bias(q_len,
        k_len)`` (with a cache, the key count is known only after the update). A subclass whose bias depends on the
        content too (the encoder's DeBERTa-style disentangled attention) overrides this; it sees the projected
        queries ``[B, H, Q, D]`` and keys ``[B, H_kv, K, D]``."""
        if position_bias is None or isinstance(position_bias, torch.Tensor):
            return position_bias
        return position_bias(query.shape[2], key.shape[2])

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                position_bias: torch.Tensor | Callable[[int, int], torch.Tensor] | None = None, cache=None,
                key_value_states: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``position_bias``: the additive ``[1, H, Q, K]`` bias, or a function ``(q_len, k_len)`` returning it
        once the key length is known (after the cache update)."""
        batch, q_len, _ = hidden_states.shape
        kernel = self._kernel()  # before the cache update: a backend that cannot run this variant changes nothing
        query = self.q_proj(hidden_states).view(batch, q_len, -1, self.head_dim).transpose(1, 2)
        if self.is_cross_attention and isinstance(cache, EncoderDecoderCache):
            key, value = self._cached_cross_key_value(key_value_states, cache)
        else:
            if isinstance(cache, EncoderDecoderCache):
                cache = cache.self_attention_cache
            key, value = self._key_value(hidden_states if key_value_states is None else key_value_states)
            if position_embeddings is not None and not self.is_cross_attention:
                cos, sin = position_embeddings
                query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
            if cache is not None and position_bias is not None and not isinstance(cache, Cache):
                # Continuous batching's PagedAttentionCache packs every request's keys into one row: the slot
                # distances a relative or ALiBi bias is computed from are not the tokens' distances there.
                raise ValueError(
                    f"position_embedding={self.config.position_embedding!r} cannot run with continuous batching "
                    f"({type(cache).__name__}); use generate(), or rotary, learned, sinusoidal or no positions.")
            if cache is not None:
                # kwargs=: continuous batching's PagedAttentionCache fills the paged kernel's arguments into
                # kwargs in place (as Llama passes them); every other cache ignores them.
                key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        if self.scoring_entry.query is not None:
            query = self.scoring_entry.query(self, query)

        bias = self.score_bias(position_bias, query, key)
        if kernel in ATTENTION_KERNELS.values():
            kernel_kwargs = {"position_bias": bias, "scaling": self.scaling}
        else:  # other backends know no temperature: exp(s q.k / theta) is softmax with scale s / theta
            kernel_kwargs = {"scaling": self.scaling / self.softmax_temperature}
        out, weights = kernel(self, query, key, value, attention_mask,
                              dropout=self.attention_dropout if self.training else 0.0, **kernel_kwargs, **kwargs)
        if self.gated_heads:
            gate = torch.sigmoid(self.head_gate(hidden_states)).unsqueeze(-1)  # [B, S, H, 1]
            out = out * gate.to(out.dtype)
        out = self.o_proj(out.reshape(batch, q_len, -1))
        return out, weights
