"""RetNet's per-token decoding path: a plan of the whole decoding step, made once and reused for every new token.

Decoding one token is ~20 small operations per layer at batch 1, so the Python around them (``nn.Module`` calls,
attribute look-ups through ``nn.Module.__getattr__``, hook checks, the output-capturing decorators) costs as much as
the arithmetic. The plan looks everything up once: each layer's weights as plain tensors, the four input projections
as one input-major matrix (``[W_Q / sqrt(d_k); W_K; W_V; W_G]^T``: one matmul instead of four, queries and keys side
by side for one rotation; a single row times a wide row-major ``[in, out]`` matrix is 2-3x faster in CPU BLAS than
the same product against ``nn.Linear``'s ``[out, in]`` layout; on Linux the copies share one block of memory
backed by 2 MiB pages), the decays in the model's dtype, the norms and activations as direct calls. The step then runs the recurrent form (``S_n = gamma S_(n-1) + k_n^T v_n``,
``o_n = q_n S_n``, Sun et al. 2023 eq. 6) with the same arithmetic as the modules (``tests/test_retnet.py``,
``test_decoding_step_*``).

A plan is only used while it still describes the model: ``is_current`` checks, before every step, that no module
was replaced, re-classed, hooked (forward hooks, global hooks, or a ``forward`` replaced on the instance as
Accelerate's hooks do) and that no weight was replaced, moved or updated in place (data pointer and version
counter). Anything a plan cannot take (a PEFT adapter, a quantized or hooked layer, a mixture of experts, weights
without version counters) gives no plan, and the modules run instead.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable
from functools import partial
from itertools import repeat
from operator import attrgetter, contains, is_
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from transformers.activations import GELUActivation

from .layers import HfGenLayerNorm, HfGenMLP, HfGenRMSNorm
from .retention import retention_step, rotate


def plain_module(module: nn.Module, cls: type) -> bool:
    """Whether ``module`` is exactly a ``cls`` whose call is its class's ``forward``: no hooks on it, none global, no
    ``forward`` replaced on the instance (Accelerate's device hooks wrap it that way). Then calling its weights
    functionally computes what calling the module would."""
    return (type(module) is cls and not (module._forward_hooks or module._forward_pre_hooks)
            and "forward" not in module.__dict__ and not (_global_forward_hooks or _global_forward_pre_hooks))


def norm_call(module: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``module``'s forward as a direct call (the same calls its ``forward`` makes), ``None`` if not a plain norm."""
    if plain_module(module, HfGenLayerNorm):
        return partial(F.layer_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                       bias=module.bias, eps=module.eps)
    if plain_module(module, HfGenRMSNorm):
        if dtype == torch.float32 and module.weight.dtype == torch.float32:
            return partial(F.rms_norm, normalized_shape=module.weight.shape, weight=module.weight,
                           eps=module.variance_epsilon)
        return module.forward
    return None


def plain_linear(module: nn.Module, bias: bool | None = None) -> bool:
    """A plain ``nn.Linear`` (see ``plain_module``), with or without a bias as asked (``None``: either)."""
    return plain_module(module, nn.Linear) and (bias is None or (module.bias is not None) == bias)


VERSION, FORWARD_HOOKS, FORWARD_PRE_HOOKS = (attrgetter(name) for name in
                                             ("_version", "_forward_hooks", "_forward_pre_hooks"))


class LayerPlan(NamedTuple):
    """One layer's tensors and calls for the decoding step. Matrices are input-major copies ``[in, out]`` (see the
    module's docstring); the rest is held directly (a parameter read through ``nn.Module.__getattr__`` costs a
    Python call per read)."""

    input_norm: Callable[[torch.Tensor], torch.Tensor]
    projection: torch.Tensor  # [hidden, 2 H d_k + 2 H d_v]: q / sqrt(d_k), k, v, g
    gamma: torch.Tensor  # [1, H, 1, 1], the decays in the model's dtype
    group_norm: tuple[torch.Tensor, torch.Tensor, float]  # weight, bias, eps
    output: torch.Tensor  # W_O
    post_norm: Callable[[torch.Tensor], torch.Tensor]
    gate: tuple[torch.Tensor, torch.Tensor | None] | None  # matrix, bias; None for a two-layer MLP
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]
    act: Callable[[torch.Tensor], torch.Tensor]


def input_major(*weights: torch.Tensor) -> torch.Tensor:
    """``[W_1; W_2; ...]^T`` as a contiguous ``[in, sum of outs]`` copy."""
    with torch.no_grad():
        return torch.cat(weights).t().contiguous()


def linear_input_major(module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return input_major(module.weight), module.bias


HUGE_PAGE = 2 << 20


def in_huge_pages(tensors: list[torch.Tensor]) -> tuple[mmap.mmap | None, list[torch.Tensor]]:
    """``tensors`` (CPU) copied into one block of memory that Linux may back with 2 MiB pages (transparent huge
    pages, which its ``madvise`` mode grants only when asked): a step streams every copy once, and with 4 KiB pages
    that is thousands of TLB misses and prefetchers stopping at every page boundary (measured on this project's
    benchmark machine: the plan's 25 matrix products 2.53 -> 2.22 ms). ``(block, views into it)``; ``(None,
    tensors)`` unchanged elsewhere (another OS, a GPU, an ``mmap`` refused)."""
    if not tensors or tensors[0].device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None, tensors
    sizes = [-(-t.numel() * t.element_size() // 64) * 64 for t in tensors]  # each view 64-byte aligned
    try:
        block = mmap.mmap(-1, sum(sizes) + HUGE_PAGE)
        block.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None, tensors
    raw = torch.frombuffer(block, dtype=torch.uint8)
    offset = -raw.data_ptr() % HUGE_PAGE  # the first view starts on a 2 MiB boundary
    views = []
    for tensor, size in zip(tensors, sizes):
        view = raw[offset:offset + tensor.numel() * tensor.element_size()].view(tensor.dtype).view(tensor.shape)
        views.append(view.copy_(tensor))
        offset += size
    return block, views


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """``GELU(x) = x Phi(x) = x / 2 (1 + erf(x / sqrt 2))``, what ``F.gelu`` computes, in plain kernels: on CPU
    ``F.gelu`` goes through oneDNN, whose per-call set-up costs more than the arithmetic for one token's row."""
    half = x * 0.5
    return torch.addcmul(half, half, torch.erf(x * (1 / math.sqrt(2.0))))


def activation_call(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s forward as a direct call; ``exact_gelu`` for transformers' exact GELU (``hidden_act="gelu"``)."""
    if type(module) is GELUActivation and module.act is F.gelu:
        return exact_gelu
    return module.forward


def project(x: torch.Tensor, matrix_and_bias: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """``x W^T + b`` from an input-major ``W^T``."""
    matrix, bias = matrix_and_bias
    return torch.mm(x, matrix) if bias is None else torch.addmm(bias, x, matrix)


class RetNetDecodingPlan:
    """The decoding step of an ``HfGenRetNetModel`` (and of its language-modelling head, when built with one), with
    every look-up done once (see the module's docstring). Made by ``build``; valid while ``is_current``; ``step``
    runs the layers on one token per row, ``logits`` the head."""

    def __init__(self, layers: list[LayerPlan], modules: list[nn.Module], shape: tuple[int, int, int, float],
                 embed: nn.Embedding, final_norm: Callable[[torch.Tensor], torch.Tensor], head: nn.Linear | None):
        self.layers = layers
        # What is_current compares, laid out for C-level iteration (map / all / any): it runs before every token.
        self.modules, self.classes = modules, [type(module) for module in modules]
        self.module_dicts = [module.__dict__ for module in modules]
        slots = [(module.__dict__[kind], name, value) for module in modules for kind in ("_modules", "_parameters")
                 for name, value in module.__dict__[kind].items()]
        self.tables, self.names, self.values = (list(column) for column in zip(*slots))
        self.weights = [value for value in self.values if isinstance(value, torch.Tensor)]
        self.key = self.weights_key()
        self.heads, self.head_dim, self.value_head_dim, self.theta = shape
        self.embed = embed.forward
        self.final_norm = final_norm
        self.dtype = embed.weight.dtype
        self.head_module = head
        self.head = linear_input_major(head) if head is not None else None
        self.block, placed = in_huge_pages(self.copies())  # (the block must live as long as the views)
        placed = iter(placed)  # (keyword arguments are evaluated in the order copies() lists them)
        self.layers = [layer._replace(projection=next(placed), output=next(placed), up=(next(placed), layer.up[1]),
                                      down=(next(placed), layer.down[1]),
                                      gate=(next(placed), layer.gate[1]) if layer.gate is not None else None)
                       for layer in self.layers]
        if self.head is not None:
            self.head = (next(placed), self.head[1])

    def copies(self) -> list[torch.Tensor]:
        """The weight copies the plan holds, in a fixed order."""
        copies = [t for layer in self.layers for t in (layer.projection, layer.output, layer.up[0], layer.down[0],
                                                        *((layer.gate[0],) if layer.gate is not None else ()))]
        return copies + ([self.head[0]] if self.head is not None else [])

    @classmethod
    def build(cls, model: nn.Module, layer_class: type, retention_class: type,
              head: nn.Linear | None = None) -> RetNetDecodingPlan | None:
        """The plan of ``model`` (an ``HfGenRetNetModel`` whose layers are exactly ``layer_class`` with a
        ``retention_class``) and of ``head`` (its language-modelling head, or ``None``), or ``None`` when a part is
        not one the plan can run (see the module's docstring)."""
        if not plain_module(model.embed_tokens, nn.Embedding) or (head is not None and not plain_linear(head)):
            return None
        dtype = model.embed_tokens.weight.dtype
        final_norm = norm_call(model.norm, dtype)
        if final_norm is None or not len(model.layers):
            return None
        for layer in model.layers:  # every check before the first copy
            if type(layer) is not layer_class or layer.is_moe or type(layer.retention) is not retention_class:
                return None
            retention, mlp = layer.retention, layer.mlp
            if (norm_call(layer.input_layernorm, dtype) is None or norm_call(layer.post_attention_layernorm, dtype)
                    is None or type(mlp) is not HfGenMLP or not plain_module(retention.group_norm, nn.GroupNorm)
                    or not all(plain_linear(p, bias=False) for p in (retention.q_proj, retention.k_proj,
                                                                     retention.v_proj, retention.g_proj,
                                                                     retention.o_proj))
                    or not all(plain_linear(p) for p in ((mlp.gate_proj,) if mlp.gated else ()) + (mlp.up_proj,
                                                                                                   mlp.down_proj))):
                return None
        modules = list(model.modules()) + ([head] if head is not None else [])
        try:
            [VERSION(weight) for module in modules for weight in module.parameters(recurse=False)]
        except RuntimeError:  # inference-mode weights keep no version counter: nothing tells when they change
            return None
        layers = []
        for layer in model.layers:
            retention, mlp, group_norm = layer.retention, layer.mlp, layer.retention.group_norm
            with torch.no_grad():
                scaled_queries = retention.q_proj.weight * retention.head_dim**-0.5
            projection = input_major(scaled_queries, retention.k_proj.weight, retention.v_proj.weight,
                                     retention.g_proj.weight)
            layers.append(LayerPlan(
                norm_call(layer.input_layernorm, dtype), projection,
                retention.constants(projection.device)[1].to(projection.dtype),
                (group_norm.weight, group_norm.bias, group_norm.eps), input_major(retention.o_proj.weight),
                norm_call(layer.post_attention_layernorm, dtype),
                linear_input_major(mlp.gate_proj) if mlp.gated else None, linear_input_major(mlp.up_proj),
                linear_input_major(mlp.down_proj), activation_call(mlp.act_fn)))
        first = model.layers[0].retention
        plan = cls(layers, modules, (first.num_heads, first.head_dim, first.value_head_dim, first.rope_theta),
                   model.embed_tokens, final_norm, head)
        return plan if plan.is_current() else None  # (also: no hooks on any module, none global)

    @property
    def copy_bytes(self) -> int:
        """Bytes held by the plan's weight copies (the memory price of ``config.decoding_weight_copies``; in one
        block of huge pages on Linux, up to 2 MiB more)."""
        return sum(t.numel() * t.element_size() for t in self.copies())

    def weights_key(self) -> list[int]:
        """Every weight's data pointer and version counter (an in-place update bumps the version; ``.to()`` and
        ``load_state_dict(assign=True)`` move the data)."""
        return [*map(torch.Tensor.data_ptr, self.weights), *map(VERSION, self.weights)]

    def is_current(self) -> bool:
        """Whether the model is still what the plan was made from: the same module in every child slot and
        parameter in every parameter slot, every module's class unchanged and without hooks (none global either)
        or a replaced ``forward``, every weight's data and version unchanged."""
        modules = self.modules
        if (_global_forward_hooks or _global_forward_pre_hooks or not all(map(is_, map(type, modules), self.classes))
                or any(map(FORWARD_HOOKS, modules)) or any(map(FORWARD_PRE_HOOKS, modules))
                or any(map(contains, self.module_dicts, repeat("forward")))
                or not all(map(is_, map(dict.get, self.tables, self.names), self.values))):
            return False
        try:
            return self.weights_key() == self.key
        except RuntimeError:
            return False

    def step(self, hidden: torch.Tensor, key_mask: torch.Tensor | None, cache,
             rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The layers on one token per row: ``hidden`` ``[B, hidden]`` (2D, no length axis) -> ``[B, hidden]``
        before the final norm. ``key_mask`` ``[B, 1]`` (0 for a padding token, which then adds nothing to any
        state), ``cache`` an ``HfGenRetNetCache`` or ``None``, ``rotation`` the ``[1, 1, 1, d_k]`` tables of the
        position. Without gradients (states are updated in place where no graph holds them).

        When every state will be updated in its own memory (each exists, in the model's dtype, held by no graph),
        the layers run in ``torch.inference_mode`` (fewer dispatch steps per operation): nothing made there
        outlives the step except ``hidden``, which later operations read like any tensor."""
        if cache is not None and self.updates_in_place(cache, hidden.shape[0]):
            with torch.inference_mode():
                return self.run_layers(hidden, key_mask, cache, rotation)
        return self.run_layers(hidden, key_mask, cache, rotation)

    def updates_in_place(self, cache, batch: int) -> bool:
        """Whether ``retention_step`` will update every layer's state of ``cache`` in place (see ``step``)."""
        dtype = self.dtype
        for index in range(len(self.layers)):
            state = cache.get_state(index)
            if (state is None or state.dtype != dtype or state.requires_grad or state.shape[0] != batch
                    or (state.is_inference() and not torch.is_inference_mode_enabled())):
                return False
        return True

    def run_layers(self, hidden: torch.Tensor, key_mask: torch.Tensor | None, cache,
                   rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch = hidden.shape[0]
        heads, head_dim, value_head_dim, theta = self.heads, self.head_dim, self.value_head_dim, self.theta
        width, value_width = 2 * heads * head_dim, heads * value_head_dim
        if key_mask is not None:
            key_mask = key_mask[:, None, :, None]
        for index, layer in enumerate(self.layers):
            projected = torch.mm(layer.input_norm(hidden), layer.projection)
            qk = rotate(projected[:, :width].view(batch, 2 * heads, 1, head_dim), None, theta, rotation)
            keys = qk[:, heads:] if key_mask is None else qk[:, heads:] * key_mask
            values = projected[:, width:width + value_width].view(batch, heads, 1, value_head_dim)
            state = cache.get_state(index) if cache is not None else None
            out, new_state = retention_step(qk[:, :heads], keys, values, layer.gamma, state, in_place=True)
            if cache is not None and new_state is not state:
                cache.update_state(new_state, index)
            out = F.group_norm(out.view(batch, value_width), heads, *layer.group_norm)
            hidden = torch.addmm(hidden, F.silu(projected[:, width + value_width:]) * out, layer.output)
            x = layer.post_norm(hidden)
            up = project(x, layer.up)
            x = layer.act(up) if layer.gate is None else layer.act(project(x, layer.gate)) * up
            down, down_bias = layer.down
            hidden = torch.addmm(hidden, x, down)
            if down_bias is not None:
                hidden += down_bias
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head on the final-normed ``hidden`` ``[B, hidden]`` -> ``[B, vocab]`` (a plan built with a head)."""
        return project(hidden, self.head)
