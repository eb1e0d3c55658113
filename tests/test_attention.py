"""Every attention variant against a plain reference written straight from the seeds' formulas.

The reference below shares no code with hfgen: it loops over batch rows and heads in float64 and spells each
formula out (seed 000 for the softmax variants, seed 003 for the scoring functions, Bondarenko et al. 2023 for
clipped softmax and gated attention). Both kernels (``eager`` and the ``sdpa`` fast path) must match it, with
padding, causal and bidirectional masks, multi-head / grouped-query / multi-query heads, in fp32 and bf16.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hfgen import HfGenDecoderConfig
from hfgen.models.attention import HfGenAttention, eager_attention, sdpa_attention
from hfgen.models.scoring import SCORING_TABLE
from hfgen.models.softmax import SOFTMAX_TABLE

# Every entry of the variant tables: a new entry is tested here, and fails until ref_probs / ref_attention below
# spell its formula out.
SOFTMAXES = list(SOFTMAX_TABLE)
SCORINGS = list(SCORING_TABLE)

# --------------------------------------------------------------------------------------------- reference


def ref_probs(z: list[float], variant: str, temperature: float, gamma: float, zeta: float) -> list[float]:
    """One row of probabilities over the allowed keys, written out from the formulas."""
    if variant == "temperature":  # p_i = exp(z_i / theta) / sum_j exp(z_j / theta)
        e = [math.exp(x / temperature) for x in z]
        return [x / sum(e) for x in e]
    if variant == "off_by_one":  # p_i = exp(z_i) / (1 + sum_j exp(z_j))
        e = [math.exp(x) for x in z]
        return [x / (1.0 + sum(e)) for x in e]
    e = [math.exp(x - max(z)) for x in z]
    p = [x / sum(e) for x in e]
    if variant == "standard":
        return p
    if variant == "clipped":  # clip((zeta - gamma) * softmax(z) + gamma, 0, 1)
        return [min(max((zeta - gamma) * x + gamma, 0.0), 1.0) for x in p]
    if variant == "adaptive_temperature":
        # The seed's JAX snippet, line by line.
        entropy = sum(-x * math.log(x + 1e-9) for x in p)
        poly = -0.037 * entropy**4 + 0.481 * entropy**3 - 2.3 * entropy**2 + 4.917 * entropy - 1.791
        beta = max(poly, 1.0) if entropy > 0.5 else 1.0
        e = [math.exp(beta * x - beta * max(z)) for x in z]
        return [x / sum(e) for x in e]
    raise AssertionError(variant)


def ref_attention(q, k, v, allowed, cfg, bias=None, score_weight=None, score_vector=None):
    """q [B,H,Q,D], k/v [B,Hkv,K,D], allowed [B,Q,K] bool -> out [B,Q,H,D], all in float64."""
    q, k, v = q.detach().double(), k.detach().double(), v.detach().double()
    b_, h_, q_len, d = q.shape
    k_len = k.shape[2]
    groups = h_ // k.shape[1]
    out = torch.zeros(b_, q_len, h_, d, dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            kh, vh = k[b, h // groups], v[b, h // groups]
            for i in range(q_len):
                keys = [j for j in range(k_len) if allowed[b, i, j]] or list(range(k_len))
                z = []
                for j in keys:
                    if cfg.attention_scoring == "scaled_dot_product":  # QK^T / sqrt(d_k)
                        s = float(q[b, h, i] @ kh[j]) / math.sqrt(d)
                    elif cfg.attention_scoring == "dot_product":  # QK^T
                        s = float(q[b, h, i] @ kh[j])
                    elif cfg.attention_scoring == "general":  # Q W_k K^T
                        s = float(q[b, h, i] @ score_weight[h].detach().double() @ kh[j])
                    elif cfg.attention_scoring == "additive":  # v^T tanh(W_q q + W_k k)
                        s = float(score_vector[h].detach().double() @ torch.tanh(q[b, h, i] + kh[j]))
                    else:
                        raise AssertionError(f"no reference for attention_scoring={cfg.attention_scoring!r}")
                    if bias is not None:
                        s += float(bias[h, i, j])
                    z.append(s)
                p = ref_probs(z, cfg.softmax_variant, cfg.softmax_temperature, cfg.clipped_softmax_gamma,
                              cfg.clipped_softmax_zeta)
                for weight, j in zip(p, keys):
                    out[b, i, h] += weight * vh[j]
    return out


def causal_allowed(batch, q_len, k_len, padding=None, top_left=False):
    """Query i is the token at slot k_len - q_len + i (the newest tokens; a cache holds the rest), or at slot i
    with ``top_left`` (prefill into a static cache whose later slots are empty)."""
    allowed = torch.ones(batch, q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        allowed[:, i, (i if top_left else k_len - q_len + i) + 1:] = False
    if padding is not None:
        allowed &= padding[:, None, :]
    return allowed


# ------------------------------------------------------------------------------------------------ setup


def make_config(**overrides) -> HfGenDecoderConfig:
    base = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, position_embedding="none", query_chunk_size=3)
    base.update(overrides)
    if base.get("softmax_variant") == "temperature":
        base.setdefault("softmax_temperature", 0.7)
    if base.get("softmax_variant") == "clipped":
        base.setdefault("clipped_softmax_gamma", -0.05)
        base.setdefault("clipped_softmax_zeta", 1.1)
    return HfGenDecoderConfig(**base)


def make_attention(cfg, implementation: str, is_causal: bool = True, seed: int = 0) -> HfGenAttention:
    cfg = copy.deepcopy(cfg)
    cfg._attn_implementation = implementation
    torch.manual_seed(seed)
    module = HfGenAttention(cfg, layer_idx=0, is_causal=is_causal)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0.0, 0.3)
            if name == "score_weight":
                p.add_(torch.eye(cfg.head_dim))
    return module.eval().requires_grad_(True)


def random_qkv(cfg, batch, q_len, k_len, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, cfg.num_attention_heads, q_len, cfg.head_dim, generator=g) * scale
    k = torch.randn(batch, cfg.num_key_value_heads, k_len, cfg.head_dim, generator=g) * scale
    v = torch.randn(batch, cfg.num_key_value_heads, k_len, cfg.head_dim, generator=g)
    return q, k, v


def effective_query(module, q):
    """General scoring is applied to the query inside the module's forward; kernels see ``q W_k``."""
    if module.config.attention_scoring == "general":
        return torch.einsum("bhqd,hde->bhqe", q, module.score_weight)
    return q


def scaling_of(module):
    return module.scaling


# ------------------------------------------------------------------------------------------------ tests

VARIANTS = [(s, "scaled_dot_product") for s in SOFTMAXES] + [("standard", c) for c in SCORINGS[1:]] + [
    ("off_by_one", "general"), ("adaptive_temperature", "dot_product"), ("clipped", "additive")]


@pytest.mark.parametrize("kernel", [eager_attention, sdpa_attention], ids=["eager", "sdpa"])
@pytest.mark.parametrize("softmax,scoring", VARIANTS)
@pytest.mark.parametrize("case", ["causal", "causal_left_padding", "bidirectional_padding", "decode_step",
                                  "decode_no_padding", "chunked_prefill", "static_cache_prefill"])
def test_kernels_match_reference(kernel, softmax, scoring, case):
    cfg = make_config(softmax_variant=softmax, attention_scoring=scoring)
    is_causal = case != "bidirectional_padding"
    module = make_attention(cfg, "eager", is_causal=is_causal)
    batch, q_len, k_len = 2, 7, 7
    if case.startswith("decode"):
        q_len = 1
    if case in ("chunked_prefill", "static_cache_prefill"):
        q_len = 4
    q, k, v = random_qkv(cfg, batch, q_len, k_len, scale=1.5)
    padding = torch.ones(batch, k_len, dtype=torch.bool)
    if case in ("causal_left_padding", "bidirectional_padding", "decode_step"):
        padding[0, :3] = False
    # transformers passes mask=None for a plain causal mask aligned top-left (SDPA's is_causal convention).
    top_left = case == "static_cache_prefill"
    allowed = causal_allowed(batch, q_len, k_len, padding, top_left) if is_causal else padding[:, None, :].expand(
        batch, q_len, k_len)
    mask = None if case in ("causal", "static_cache_prefill", "decode_no_padding") else allowed[:, None]
    qe = effective_query(module, q)
    with torch.no_grad():
        out, _ = kernel(module, qe, k, v, mask, scaling=scaling_of(module))
    expected = ref_attention(q, k, v, allowed, cfg, score_weight=getattr(module, "score_weight", None),
                             score_vector=getattr(module, "score_vector", None))
    rows = allowed.any(-1)  # queries that are padding have no meaningful output
    torch.testing.assert_close(out.double()[rows], expected[rows], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", [eager_attention, sdpa_attention], ids=["eager", "sdpa"])
@pytest.mark.parametrize("softmax", SOFTMAXES)
def test_additive_position_bias_matches_reference(kernel, softmax):
    """Relative-bias and ALiBi reach the kernels as an additive [1, H, Q, K] bias; a random one must be added
    to the scores exactly, on top of a causal mask with padding."""
    cfg = make_config(softmax_variant=softmax)
    module = make_attention(cfg, "eager")
    q, k, v = random_qkv(cfg, 2, 6, 6)
    bias = torch.randn(1, cfg.num_attention_heads, 6, 6, generator=torch.Generator().manual_seed(5))
    padding = torch.ones(2, 6, dtype=torch.bool)
    padding[1, :2] = False
    allowed = causal_allowed(2, 6, 6, padding)
    for mask in (allowed[:, None], None if padding.all() else allowed[:, None]):
        with torch.no_grad():
            out, _ = kernel(module, q, k, v, mask, scaling=module.scaling, position_bias=bias)
        expected = ref_attention(q, k, v, allowed, cfg, bias=bias[0])
        rows = allowed.any(-1)
        torch.testing.assert_close(out.double()[rows], expected[rows], atol=2e-5, rtol=1e-4)
    # Without padding, the causal mask comes from the module itself (mask=None).
    allowed = causal_allowed(2, 6, 6)
    with torch.no_grad():
        out, _ = kernel(module, q, k, v, None, scaling=module.scaling, position_bias=bias)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, allowed, cfg, bias=bias[0]), atol=2e-5,
                               rtol=1e-4)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["multi_head", "grouped", "multi_query"])
@pytest.mark.parametrize("softmax", SOFTMAXES)
@pytest.mark.parametrize("gate", [False, True])
def test_module_eager_and_sdpa_match_reference(heads, kv_heads, softmax, gate):
    """The whole layer: projections, grouped heads, the gate (sigmoid(G(x)) per head) and the output projection."""
    cfg = make_config(softmax_variant=softmax, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      attention_gate=gate)
    x = torch.randn(2, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    padding = torch.ones(2, 5, dtype=torch.bool)
    padding[0, :2] = False
    allowed = causal_allowed(2, 5, 5, padding)
    float_mask = torch.zeros(2, 1, 5, 5).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    outputs = {}
    for implementation, mask in (("eager", float_mask), ("sdpa", allowed[:, None])):
        module = make_attention(cfg, implementation)
        with torch.no_grad():
            outputs[implementation] = module(x, attention_mask=mask)[0]
    m = module
    x, m = x.detach(), m.requires_grad_(False)
    q = (x @ m.q_proj.weight.T).view(2, 5, heads, -1).transpose(1, 2)
    k = (x @ m.k_proj.weight.T).view(2, 5, kv_heads, -1).transpose(1, 2)
    v = (x @ m.v_proj.weight.T).view(2, 5, kv_heads, -1).transpose(1, 2)
    attended = ref_attention(q, k, v, allowed, cfg)
    if gate:
        attended = attended * torch.sigmoid(x.double() @ m.head_gate.weight.double().T
                                            + m.head_gate.bias.double())[..., None]
    expected = attended.reshape(2, 5, -1) @ m.o_proj.weight.double().T
    rows = allowed.any(-1)
    for implementation, out in outputs.items():
        torch.testing.assert_close(out.double()[rows], expected[rows], atol=2e-5, rtol=1e-4, msg=implementation)


@pytest.mark.parametrize("softmax", SOFTMAXES)
@pytest.mark.parametrize("scoring", ["scaled_dot_product", "additive"])
def test_bf16_fast_path_close_to_fp64_reference(softmax, scoring):
    cfg = make_config(softmax_variant=softmax, attention_scoring=scoring)
    module = make_attention(cfg, "sdpa").to(torch.bfloat16)
    q, k, v = random_qkv(cfg, 2, 9, 9)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[0, :4] = False
    allowed = causal_allowed(2, 9, 9, padding)
    with torch.no_grad():
        out, _ = sdpa_attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), allowed[:, None],
                                scaling=module.scaling)
    assert out.dtype == torch.bfloat16
    expected = ref_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), allowed, cfg,
                             score_vector=getattr(module, "score_vector", torch.zeros(1)).float())
    rows = allowed.any(-1)
    torch.testing.assert_close(out.double()[rows], expected[rows], atol=4e-2, rtol=4e-2)


@pytest.mark.parametrize("softmax", SOFTMAXES)
def test_sdpa_and_eager_gradients_agree(softmax):
    cfg = make_config(softmax_variant=softmax)
    x = torch.randn(2, 6, cfg.hidden_size, generator=torch.Generator().manual_seed(4))
    grads = []
    for implementation in ("eager", "sdpa"):
        module = make_attention(cfg, implementation).train()
        module(x)[0].square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    for name in grads[0]:
        scale = grads[0][name].abs().max()
        assert (grads[0][name] - grads[1][name]).abs().max() <= 1e-5 * scale, name


def test_off_by_one_can_attend_to_nothing():
    """Seed 000: adding 1 to the denominator "allows for no attention": very negative scores give near-zero
    output, where the standard softmax must still average the values."""
    outputs = {}
    for softmax in ("standard", "off_by_one"):
        cfg = make_config(softmax_variant=softmax, attention_scoring="dot_product", num_key_value_heads=4)
        module = make_attention(cfg, "sdpa")
        q = torch.ones(1, 4, 3, cfg.head_dim)
        k = -torch.ones(1, 4, 3, cfg.head_dim) * 3.0  # q.k = -24 for every pair
        v = torch.ones(1, 4, 3, cfg.head_dim)
        outputs[softmax] = sdpa_attention(module, q, k, v, None, scaling=1.0)[0]
    assert outputs["off_by_one"].abs().max() < 1e-9
    torch.testing.assert_close(outputs["standard"], torch.ones_like(outputs["standard"]))


def test_adaptive_temperature_sharpens_only_high_entropy_rows():
    """beta = max(poly(H), 1) where H > 0.5, else 1: a flat row gets sharper, a peaked row is unchanged."""
    from hfgen.models.softmax import adaptive_temperature_softmax, standard_softmax

    flat = torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    peaked = torch.tensor([[8.0, 0.0, 0.0, 0.0]])
    assert adaptive_temperature_softmax(flat, None).max() > standard_softmax(flat, None).max()
    torch.testing.assert_close(adaptive_temperature_softmax(peaked, None), standard_softmax(peaked, None))


def test_adaptive_temperature_fast_path_never_builds_full_score_matrix(monkeypatch):
    """The first pass (row entropies) takes one fused kernel call; with an additive position bias it falls back
    to query chunks of at most ``query_chunk_size`` rows -- never a [Q, K] score matrix."""
    import hfgen.models.softmax as softmax
    from hfgen.models.attention_utils import repeat_kv

    cfg = make_config(softmax_variant="adaptive_temperature", query_chunk_size=4)
    module = make_attention(cfg, "sdpa")
    q, k, v = random_qkv(cfg, 1, 16, 16, scale=1.5)
    allowed = causal_allowed(1, 16, 16)
    fused = softmax.fused_entropy(q, repeat_kv(k, 2), None, module.scaling, causal=True)
    chunked = softmax.chunked_entropy(module, q, repeat_kv(k, 2), None, None, module.scaling, True)
    assert fused is not None  # CPU and CUDA have a fused kernel that returns the log-sum-exp
    torch.testing.assert_close(fused, chunked, atol=1e-5, rtol=1e-5)

    rows_seen = []
    original = softmax.query_chunks

    def spy(*args, **kwargs):
        for chunk in original(*args, **kwargs):
            rows_seen.append(chunk[1] - chunk[0])
            yield chunk

    monkeypatch.setattr(softmax, "query_chunks", spy)
    bias = torch.randn(1, cfg.num_attention_heads, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, _ = sdpa_attention(module, q, k, v, None, scaling=module.scaling, position_bias=bias)
    assert rows_seen and max(rows_seen) <= 4
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, allowed, cfg, bias=bias[0]), atol=2e-5,
                               rtol=1e-4)


def test_cross_attention_reads_keys_from_the_other_sequence():
    """Seed 003, cross-attention: Q from one sequence, K and V from another (no causal mask)."""
    cfg = make_config(softmax_variant="off_by_one", num_key_value_heads=4)
    for implementation in ("eager", "sdpa"):
        module = make_attention(cfg, implementation, is_causal=False)
        module.is_cross_attention = True
        x = torch.randn(1, 3, cfg.hidden_size, generator=torch.Generator().manual_seed(6))
        memory = torch.randn(1, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            out = module(x, key_value_states=memory)[0]
        m = module
        q = (x @ m.q_proj.weight.T).view(1, 3, 4, -1).transpose(1, 2)
        k = (memory @ m.k_proj.weight.T).view(1, 5, 4, -1).transpose(1, 2)
        v = (memory @ m.v_proj.weight.T).view(1, 5, 4, -1).transpose(1, 2)
        expected = ref_attention(q, k, v, torch.ones(1, 3, 5, dtype=torch.bool), cfg).reshape(1, 3, -1)
        torch.testing.assert_close(out.double(), expected @ m.o_proj.weight.double().T, atol=2e-5, rtol=1e-4)
