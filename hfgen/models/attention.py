"""The shared attention layer: projections, scoring, and the kernels that compute every softmax variant.

The math lives in the config (``attention_scoring``, ``softmax_variant``, ``position_embedding``, ...); the kernel
is chosen with ``attn_implementation``:

* ``eager``: scores, probabilities and output materialised (returns attention weights), straight from the formulas.
* ``sdpa``: the fast path. Every variant that is mathematically a dot-product softmax runs in
  ``torch.nn.functional.scaled_dot_product_attention``: temperature is SDPA's ``scale``, general scoring a
  transformed query, off-by-one a prepended zero key and zero value (its logit is exactly 0). Adaptive temperature
  takes two passes: the row entropies chunked over queries (memory O(n * chunk), never n x n), then SDPA on
  queries scaled by each row's beta. Additive scoring and clipped softmax need the probabilities themselves:
  eager, chunked over queries.
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

from .positions import apply_rotary
from .softmax import SOFTMAX_FUNCTIONS, beta_from_entropy


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


def attention_probabilities(module: HfGenAttention, query: torch.Tensor, key: torch.Tensor,
                            allowed: torch.Tensor | None, position_bias: torch.Tensor | None,
                            scaling: float) -> torch.Tensor:
    """``[B, H, Q, K]`` probabilities of the configured scoring and softmax variant (keys already repeated)."""
    if module.config.attention_scoring == "additive":
        # Bahdanau: score_ij = v^T tanh(W_q q_i + W_k k_j); W_q, W_k are q_proj / k_proj. [B,H,Q,K,D] in fp32
        # would be huge, so callers chunk queries before they get here.
        hidden = torch.tanh(query.unsqueeze(3) + key.unsqueeze(2))
        scores = torch.einsum("bhqkd,hd->bhqk", hidden, module.score_vector.to(hidden.dtype))
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if position_bias is not None:
        scores = scores + position_bias.to(scores.dtype)
    return SOFTMAX_FUNCTIONS[module.config.softmax_variant](scores, allowed, module.config)


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


def _recomputed_in_backward(fn, *args):
    """Run ``fn`` so that autograd keeps only its inputs and recomputes the rest in backward: the chunked paths
    then train in O(n * chunk) memory instead of keeping every chunk's n x chunk probabilities."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


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
    # Additive scoring builds a [Q, K, D] tanh per head: chunk it even here.
    additive = module.config.attention_scoring == "additive"
    chunk = query_chunk_rows(module.config, query, k_len, per_score=query.shape[-1]) if additive else q_len
    out, weights = chunked_attention(module, query, key, value, allowed, position_bias, scaling, dropout, chunk,
                                     return_weights=True)
    return out.transpose(1, 2).contiguous(), weights


def _sdpa(query, key, value, allowed, position_bias, scaling, dropout, causal: bool, groups: int):
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


def sdpa_attention(module: HfGenAttention, query, key, value, attention_mask, dropout: float = 0.0,
                   scaling: float | None = None, position_bias=None, **kwargs):
    """Fast kernel: SDPA wherever the variant allows it, chunked eager elsewhere. Output ``[B, S, H, D]``."""
    config = module.config
    variant, groups = module.softmax_variant, module.num_key_value_groups
    dropout = dropout if module.training else 0.0
    q_len, k_len = query.shape[2], key.shape[2]
    plain_causal = attention_mask is None and module.is_causal
    allowed = None if plain_causal else allowed_positions(attention_mask, q_len, k_len, module.is_causal,
                                                          query.device)

    if module.scoring == "additive" or variant == "clipped":
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        per_score = query.shape[-1] if module.scoring == "additive" else 1
        chunk = query_chunk_rows(config, query, k_len, per_score)
        out, _ = chunked_attention(module, query, key, value, allowed, position_bias, scaling, dropout, chunk,
                                   return_weights=False, causal=plain_causal and q_len > 1)
    elif variant == "off_by_one":
        out = _off_by_one_sdpa(query, key, value, allowed, position_bias, scaling, dropout, plain_causal, groups)
    elif variant == "adaptive_temperature":
        beta = _adaptive_beta(module, query, repeat_kv(key, groups), allowed, position_bias, scaling,
                              causal=plain_causal and q_len > 1)
        if position_bias is not None:
            position_bias = position_bias * beta  # beta * (s q.k + b) = s (beta q).k + beta b
        out = _sdpa(query * beta.to(query.dtype), key, value, allowed, position_bias, scaling, dropout,
                    plain_causal, groups)
    else:
        if variant == "temperature":  # exp(z / theta), z = scale * q.k + bias
            scaling = scaling / module.softmax_temperature
            if position_bias is not None:
                position_bias = position_bias / module.softmax_temperature
        out = _sdpa(query, key, value, allowed, position_bias, scaling, dropout, plain_causal, groups)
    return out.transpose(1, 2).contiguous(), None


def _off_by_one_sdpa(query, key, value, allowed, position_bias, scaling, dropout, plain_causal, groups):
    """``exp(z_i) / (1 + sum_j exp(z_j))`` = standard softmax over the keys plus one extra key whose logit is
    exactly 0 (a zero key, whatever the scale) and whose value is zero (it adds nothing to the output)."""
    b, h_kv, _, d = key.shape
    zeros = key.new_zeros(b, h_kv, 1, d)
    key, value = torch.cat((zeros, key), dim=2), torch.cat((zeros, value), dim=2)
    if plain_causal and position_bias is None and query.shape[2] > 1:
        # Keep SDPA's causal fast path: with one dummy query in front, "query i sees keys 0..i" covers exactly
        # the zero key plus real keys 0..i-1 of the real query i-1.
        query = torch.cat((query.new_zeros(query.shape[0], query.shape[1], 1, d), query), dim=2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling,
                                             enable_gqa=groups > 1)
        return out[:, :, 1:]
    q_len, k_len = query.shape[2], key.shape[2] - 1
    if plain_causal and q_len > 1:
        allowed = allowed_positions(None, q_len, k_len, True, query.device)
    if allowed is not None:
        allowed = F.pad(allowed, (1, 0), value=True)
    if position_bias is not None:
        position_bias = F.pad(position_bias, (1, 0), value=0.0)
    return _sdpa(query, key, value, allowed, position_bias, scaling, dropout, False, groups)


def _fused_entropy(query, key, allowed, scaling, causal: bool) -> torch.Tensor | None:
    """Row entropies from ONE fused attention call whose values are the keys themselves:
    ``H = logsumexp(z) - sum_j p_j z_j`` and ``sum_j p_j z_j = scale * q . (sum_j p_j k_j)``. The fused kernels
    return the log-sum-exp beside the output, so nothing of size n x n is ever built. Returns ``None`` where no
    such kernel is available (other devices, unsupported shapes): the caller then takes the chunked pass.

    Differs from the seed's ``-sum p log(p + 1e-9)`` by less than ``K * 1e-9`` nats, far below what moves beta.
    """
    cuda = query.device.type == "cuda"
    # On a CPU in fp32; on a GPU in the model's dtype (the kernels accumulate and return lse in fp32; the dot
    # product below is taken in fp32).
    q, k = (query, key) if cuda else (query.float(), key.float())
    mask = None
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    try:
        if q.device.type == "cpu":
            expected_key, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, k, 0.0, causal, attn_mask=mask, scale=scaling)
        elif cuda and mask is None and q.dtype in (torch.float16, torch.bfloat16):
            expected_key, lse = torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, k, 0.0, causal, scale=scaling)[:2]
        elif cuda:
            if mask is not None:
                mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            expected_key, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, k, mask, True, 0.0, causal, scale=scaling)[:2]
        else:
            return None
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    lse = lse[:, :, : q.shape[2]].unsqueeze(-1).float()  # some kernels pad the query dimension of lse
    return lse - scaling * (q.float() * expected_key.float()).sum(dim=-1, keepdim=True)


def _chunked_entropy(module, query, key, allowed, position_bias, scaling, causal: bool) -> torch.Tensor:
    """Row entropies a chunk of query rows at a time (memory O(n * chunk)), for position biases and devices
    without a fused kernel that returns the log-sum-exp."""

    def chunk_entropy(q, k, allowed_rows, bias_rows):
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scaling
        if bias_rows is not None:
            scores = scores + bias_rows.float()
        if allowed_rows is not None:  # large but finite: exp() gives 0, and 0 times it stays 0
            scores = scores.masked_fill(~allowed_rows, -1e9)
        peak = scores.amax(dim=-1, keepdim=True)
        weights = torch.exp(scores - peak)
        total = weights.sum(dim=-1, keepdim=True)
        weighted = torch.matmul(weights.unsqueeze(-2), scores.unsqueeze(-1)).squeeze(-1)  # sum_j e_j z_j
        return torch.log(total) + peak - weighted / total

    chunk_size = query_chunk_rows(module.config, query, key.shape[2])
    entropies = [chunk_entropy(query[:, :, start:end], key[:, :, :key_end], allowed_rows, bias_rows)
                 for start, end, key_end, allowed_rows, bias_rows in query_chunks(
                     query.shape[2], key.shape[2], chunk_size, allowed, position_bias, causal, query.device)]
    return torch.cat(entropies, dim=2)


@torch.no_grad()
def _adaptive_beta(module, query, key, allowed, position_bias, scaling, causal: bool) -> torch.Tensor:
    """First pass of adaptive temperature: beta per query row (``[B, H, Q, 1]``). A constant in backward, as in
    the eager kernel (see ``adaptive_temperature_softmax``)."""
    entropy = None
    if position_bias is None:
        entropy = _fused_entropy(query, key, allowed, scaling, causal)
    if entropy is None:
        entropy = _chunked_entropy(module, query, key, allowed, position_bias, scaling, causal)
    return beta_from_entropy(entropy)


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
        # Seed 003: "QK^T is divided by sqrt(d_k)" for scaled dot product; plain and general scoring are unscaled.
        self.scaling = self.head_dim**-0.5 if config.attention_scoring == "scaled_dot_product" else 1.0
        self.attention_dropout = config.attention_dropout
        # Read on every call: plain attributes, not the config's __getattribute__ (measurable per decoded token).
        self.scoring, self.softmax_variant = config.attention_scoring, config.softmax_variant
        self.softmax_temperature, self.gated_heads = config.softmax_temperature, bool(config.attention_gate)
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        if config.attention_scoring == "general":
            self.score_weight = nn.Parameter(torch.empty(self.num_heads, self.head_dim, self.head_dim))
        if config.attention_scoring == "additive":
            self.score_vector = nn.Parameter(torch.empty(self.num_heads, self.head_dim))
        if config.attention_gate:
            self.head_gate = nn.Linear(config.hidden_size, self.num_heads, bias=True)

    @property
    def is_plain_softmax(self) -> bool:
        """True when the math is ``softmax(scale * QK^T + mask) V``, which any attention backend can compute."""
        c = self.config
        return (c.softmax_variant in ("standard", "temperature") and c.attention_scoring != "additive"
                and c.position_embedding not in ("relative_bias", "alibi"))

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
        if self.scoring == "general":
            query = torch.einsum("bhqd,hde->bhqe", query, self.score_weight.to(query.dtype))

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
