"""Position information: absolute embeddings added to the input, rotary embeddings applied to queries and keys,
and additive attention biases (T5 relative buckets, ALiBi, DeBERTa's relative embeddings):
:data:`POSITION_TABLE`, one entry per ``position_embedding``.

Seed 003: "Because attention layers don't understand order by default, we encode the ordering of the tokens in an
embedding": absolute (sinusoidal, learned), relative, rotary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update

from .disentangled import add_disentangled_modules, relative_embeddings


def sinusoidal_position_embedding(position_ids: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Vaswani et al. 2017: ``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(pos / 10000^(2i/d))``.

    Computed from ``position_ids`` on the fly (no buffer, so nothing to go stale after ``from_pretrained``), so
    left-padded batches get the same positions as the rows alone.
    """
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32) / dim))
    angles = position_ids.float().unsqueeze(-1) * inv_freq  # [B, S, dim/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2).to(dtype)  # interleave sin, cos


def default_rope_parameters(config, device=None, seq_len=None, layer_type=None) -> tuple[torch.Tensor, float]:
    """RoFormer / Llama inverse frequencies ``1 / theta^(2i/d)`` for the rotated channel pairs, and the cos/sin scale
    1.0: the ``"default"`` entry transformers leaves to each model (``ROPE_INIT_FUNCTIONS`` holds the others)."""
    # No rope_parameters: rotary was switched on after the config was built (e.g. from_pretrained(..., kwargs)).
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    dim = config.head_dim
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)), 1.0


def rope_init_function(rope_type: str) -> Callable[..., tuple[torch.Tensor, float]]:
    """``(config, device=None, seq_len=None) -> (inv_freq, attention_scaling)`` for ``rope_type``: transformers'
    own table ``ROPE_INIT_FUNCTIONS`` (linear, dynamic, yarn, longrope, llama3, ... -- read at call time, so a type
    registered there later works too), :func:`default_rope_parameters` for ``"default"``."""
    return default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) with every rope type of transformers (``rope_parameters``), laid
    out exactly as Llama's ``LlamaRotaryEmbedding`` so that Llama checkpoints give the same logits: the inverse
    frequencies and the cos/sin scale (yarn's and longrope's attention factor) come from transformers'
    ``ROPE_INIT_FUNCTIONS``, and ``dynamic_rope_update`` recomputes them where the type depends on the length
    (dynamic NTK: beyond ``max_position_embeddings``; longrope: long factors beyond
    ``original_max_position_embeddings``). Returns ``(cos, sin)`` of shape ``[B, S, head_dim]`` for
    ``position_ids``, as transformers' rotary modules do (computed once per forward, used by every layer).

    The frequencies are fixed when the module is built, as Llama's are: a ``rope_parameters`` set on the config
    afterwards takes effect in models built from it afterwards, not in this one.

    ``inv_freq`` and ``original_inv_freq`` are non-persistent buffers: transformers 5 builds models on the meta
    device, and its ``_init_weights`` recomputes buffers of this shape (``rope_type``, ``original_inv_freq``,
    ``compute_default_rope_parameters``) after ``from_pretrained``; ``modeling_common`` does it too.
    """

    compute_default_rope_parameters = staticmethod(default_rope_parameters)

    def __init__(self, config):
        super().__init__()
        self.config = config
        # dynamic_rope_update's bookkeeping: the length the current inv_freq serves, and where dynamic scaling starts
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        inv_freq, self.attention_scaling = rope_init_function(self.rope_type)(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def compute_inv_freq(self, device=None) -> torch.Tensor:
        """The inverse frequencies of the config at its original length (what ``__init__`` computes)."""
        return rope_init_function(self.rope_type)(self.config, device)[0]

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)  # [B, S, D]: channel i and i + D/2 form a pair
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` of the two halves of the last dimension: the pair partner of each channel, signed."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[B, H, S, D]``) by the angles of its positions (``cos``, ``sin``: ``[B, S, D]`` from
    :class:`RotaryEmbedding`), in Llama's half-split layout and order of operations (``apply_rotary_pos_emb``):
    ``x * cos + rotate_half(x) * sin``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's buckets (Raffel et al. 2020): exact buckets for small distances, logarithmic ones up to
    ``max_distance``, one shared bucket beyond. ``relative_position = key_position - query_position``."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)  # only the past is visible
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_bucket = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    log_bucket = torch.clamp(log_bucket, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, log_bucket)


def relative_positions(q_len: int, k_len: int, q_offset: int | torch.Tensor, device) -> torch.Tensor:
    """``key_slot - query_slot`` for every pair (``[Q, K]``). Slots are cache indices: left padding shifts both
    equally, so distances between real tokens are those of the unpadded row. ``q_offset`` may be a 0-d tensor (a
    static cache's length): it is added to ``arange(q_len)``, never used as an ``arange`` bound, so the shape stays
    ``[Q, K]`` under ``torch.compile(fullgraph=True)`` instead of depending on the cache's contents."""
    query_slots = torch.arange(q_len, device=device) + q_offset
    key_slots = torch.arange(k_len, device=device)
    return key_slots[None, :] - query_slots[:, None]


class RelativePositionBias(nn.Module):
    """A learned scalar bias per head and relative-distance bucket, added to the attention scores (T5)."""

    def __init__(self, config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_attention_heads)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        """Bias of shape ``[1, H, Q, K]``."""
        relative = relative_positions(q_len, k_len, q_offset, self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Press et al. 2022: the geometric sequence ``2^(-8h/n)``; for a head count that is not a power of two,
    the slopes of the closest power of two plus every other slope of the next one."""
    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes)


class AlibiBias(nn.Module):
    """ALiBi: ``-slope_h * distance`` added to the scores; no parameters, so nothing to go stale on reload."""

    def __init__(self, config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_heads = config.num_attention_heads

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, device=None) -> torch.Tensor:
        relative = relative_positions(q_len, k_len, q_offset, device).float()
        distance = relative.abs() if self.bidirectional else (-relative).clamp(min=0)
        slopes = alibi_slopes(self.num_heads).to(device)
        return (-slopes[:, None, None] * distance).unsqueeze(0)


def check_learned_positions(config, position_ids: torch.Tensor) -> None:
    """Learned positions have a table of ``max_position_embeddings`` rows: say so instead of an index error."""
    if config.position_embedding != "learned" or not position_ids.numel() or torch.compiler.is_compiling():
        return
    last = int(position_ids.max())
    if last >= config.max_position_embeddings:
        extrapolating = ", ".join(repr(name) for name, kind in POSITION_TABLE.items()
                                  if kind.extrapolates and kind.families is None and name != "none")
        raise ValueError(
            f"Position {last} is beyond max_position_embeddings={config.max_position_embeddings} of the learned "
            f"position table: shorten the input to at most {config.max_position_embeddings} tokens, or use a "
            f"position_embedding that extrapolates ({extrapolating})."
        )


# ------------------------------------------------------------------------------------------------ the table


def sinusoidal_inputs(config, hidden_states: torch.Tensor, position_ids: torch.Tensor, table) -> torch.Tensor:
    """Vaswani et al. scale the token embeddings by ``sqrt(d_model)`` before adding the unit-amplitude sinusoids."""
    return hidden_states * config.hidden_size**0.5 + sinusoidal_position_embedding(
        position_ids, config.hidden_size, hidden_states.dtype)


def learned_inputs(config, hidden_states: torch.Tensor, position_ids: torch.Tensor, table: nn.Embedding):
    """One learned vector per position (BERT, GPT-2), from ``table``, added to the input."""
    return hidden_states + table(position_ids)


def add_learned_modules(stack: nn.Module, config, bidirectional: bool) -> None:
    stack.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)


def add_rotary_modules(stack: nn.Module, config, bidirectional: bool) -> None:
    stack.rotary_emb = RotaryEmbedding(config)


def add_relative_bias_modules(stack: nn.Module, config, bidirectional: bool) -> None:
    stack.relative_position_bias = RelativePositionBias(config, bidirectional=bidirectional)


def add_alibi_modules(stack: nn.Module, config, bidirectional: bool) -> None:
    stack.alibi = AlibiBias(config, bidirectional=bidirectional)


def relative_bias(stack: nn.Module, q_len: int, k_len: int, q_offset, device) -> torch.Tensor:
    # contiguous: CUDA's fused SDPA kernels take no bias with a strided last dimension
    return stack.relative_position_bias(q_len, k_len, q_offset).contiguous()


def alibi_bias(stack: nn.Module, q_len: int, k_len: int, q_offset, device) -> torch.Tensor:
    return stack.alibi(q_len, k_len, q_offset, device=device)


def disentangled_rows(stack: nn.Module, q_len: int, k_len: int, q_offset, device) -> torch.Tensor:
    """The rows of DeBERTa's relative embeddings that these lengths reach: each attention layer projects them and
    builds its own bias from them and its content (``HfGenEncoderSelfAttention.score_bias``)."""
    return relative_embeddings(stack, stack.config, q_len, k_len)


def check_rotary(config) -> None:
    if config.head_dim % 2 != 0:
        raise ValueError(f"Rotary positions rotate pairs of channels: head_dim must be even, got {config.head_dim}.")


def check_sinusoidal(config) -> None:
    if config.hidden_size % 2 != 0:
        raise ValueError(f"Sinusoidal positions pair sin/cos channels: hidden_size must be even, got {config.hidden_size}.")


def check_relative_bias(config) -> None:
    if config.relative_attention_max_distance <= config.relative_attention_num_buckets // 2:
        raise ValueError(
            f"relative_attention_max_distance ({config.relative_attention_max_distance}) must exceed "
            f"relative_attention_num_buckets // 2 ({config.relative_attention_num_buckets // 2}): the logarithmic "
            f"buckets span the distances between the exact ones and the maximum.")


def check_disentangled(config) -> None:
    if config.position_buckets < 4:
        raise ValueError(f"position_buckets must be at least 4 (half of it are exact distances), got "
                         f"{config.position_buckets}.")
    if config.max_relative_distance <= config.position_buckets // 2 + 1:
        raise ValueError(
            f"max_relative_positions ({config.max_relative_distance}) must exceed position_buckets // 2 + 1 "
            f"({config.position_buckets // 2 + 1}): the log buckets span the distances between them.")


def nothing(*args) -> None:
    """A position kind without modules (or without checks) of its own."""


@dataclass(frozen=True)
class PositionKind:
    """One ``position_embedding``.

    Attributes:
        add_modules: ``(stack, config, bidirectional)`` gives a stack of layers the modules the kind needs, with the
            decoder family's names (``embed_positions``, ``rotary_emb``, ``relative_position_bias``, ``alibi``;
            DeBERTa's ``rel_embeddings``). ``bidirectional``: an encoder's buckets and distances count both
            directions (T5's encoder), a decoder's only the past.
        inputs: ``(config, hidden_states, position_ids, table) -> hidden_states`` adds absolute positions to the
            input (``table``: the learned embedding), or ``None``.
        scales_inputs: ``inputs`` rescales the token embeddings too, so it comes before anything else is added
            (an encoder's token types).
        rotary: queries and keys are rotated by ``(cos, sin)`` of the stack's ``rotary_emb``.
        bias: ``(stack, q_len, k_len, q_offset, device) -> tensor`` what every layer adds to its scores (an additive
            ``[1, H, Q, K]`` bias; DeBERTa: the relative embeddings its layers build one from), or ``None``. A kind
            with a bias runs on hfgen's own kernels only, not on other attention backends or paged caches.
        extrapolates: inputs may be longer than ``max_position_embeddings``.
        families: the model types that implement the kind (``None``: every family built on hfgen's attention).
        validate: ``(config)`` checks how the kind's keys fit the sizes (``ValueError``).
    """

    add_modules: Callable[[nn.Module, object, bool], None] = nothing
    inputs: Callable[..., torch.Tensor] | None = None
    scales_inputs: bool = False
    rotary: bool = False
    bias: Callable[..., torch.Tensor] | None = None
    extrapolates: bool = True
    families: tuple[str, ...] | None = None
    validate: Callable[[object], None] = nothing


POSITION_TABLE: dict[str, PositionKind] = {
    "rotary": PositionKind(add_rotary_modules, rotary=True, validate=check_rotary),
    "sinusoidal": PositionKind(inputs=sinusoidal_inputs, scales_inputs=True, validate=check_sinusoidal),
    "learned": PositionKind(add_learned_modules, inputs=learned_inputs, extrapolates=False),
    "relative_bias": PositionKind(add_relative_bias_modules, bias=relative_bias, validate=check_relative_bias),
    "alibi": PositionKind(add_alibi_modules, bias=alibi_bias),
    "none": PositionKind(),
    # DeBERTa's disentangled attention (He et al. 2021) is defined for bidirectional self-attention.
    "disentangled": PositionKind(add_disentangled_modules, bias=disentangled_rows, families=("hfgen_encoder",),
                                 validate=check_disentangled),
}
