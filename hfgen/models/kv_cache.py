"""A key/value cache layer that writes each step's keys and values in place instead of concatenating.

transformers' ``DynamicLayer`` grows with ``torch.cat`` at every decoding step: step ``t`` copies all ``t`` cached
positions again, so generating ``n`` tokens copies O(n^2) key/value elements. ``PreallocatedLayer`` keeps a buffer
with room to spare (``generate`` knows the final length and asks for exactly that) and writes only the new
positions; it hands attention a view of the filled part. Everything else about ``DynamicLayer`` -- cropping, beam
reordering, batch selection, offloading -- still works: those methods replace ``keys``/``values`` with new tensors,
and the next ``update`` notices and moves them into a fresh buffer.

Why hfgen keeps its own layer beside transformers' caches: ``generate``'s default decoding is eager, and there the
alternatives cost more -- ``DynamicLayer`` copies the whole cache every step, and a ``StaticCache`` run eagerly
attends over its whole capacity, masked, from the first step on (benchmarks/RESULTS.md, "Compiled generation":
eager KV caches at a long prompt). With ``cache_implementation="static"`` and a ``compile_config`` ``generate`` uses
transformers' ``StaticCache`` and compiles the step instead; this layer never enters that path.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# Room added when a buffer without a known final length runs full: at least this many positions, or doubling.
MIN_GROWTH = 256


class PreallocatedLayer(DynamicLayer):
    """``DynamicLayer`` with the same contents and results, filled in place: O(new tokens) copying per step.

    Used only without autograd (a buffer written in place under autograd would tie every step into one graph);
    with gradients it falls back to ``DynamicLayer``'s concatenation.
    """

    def __init__(self, capacity: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers, self._length = None, 0

    def _reallocate(self, needed: int, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        current = self._buffers[0].shape[-2] if self._buffers is not None else 0
        capacity = max(needed, self.capacity or 0, current + max(current, MIN_GROWTH))
        self.capacity = None  # the hint sizes the first buffer only
        batch, heads, _, _ = like_keys.shape
        keys = like_keys.new_empty(batch, heads, capacity, like_keys.shape[-1])
        values = like_values.new_empty(batch, like_values.shape[1], capacity, like_values.shape[-1])
        if self._length:
            keys[:, :, : self._length] = self.keys
            values[:, :, : self._length] = self.values
        self._buffers = (keys, values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # Runs once per layer per generated token: kept to a few cheap checks (narrow + copy_, not indexing).
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad):
            self._buffers, self._length = None, 0
            return super().update(key_states, value_states, *args, **kwargs)
        buffers = self._buffers
        if buffers is None or self.keys is not self._views[0] or self.values is not self._views[1]:
            # First call, or keys replaced by crop / reorder / batch selection / offload: continue from them.
            buffers, self._length = None, self.keys.shape[-2] if self.keys.numel() else 0
        start, new = self._length, key_states.shape[-2]
        end = start + new
        if (buffers is None or end > buffers[0].shape[-2] or buffers[0].shape[0] != key_states.shape[0]
                or buffers[0].dtype is not key_states.dtype):
            self._reallocate(end, key_states, value_states)
            buffers = self._buffers
        keys, values = buffers
        keys.narrow(2, start, new).copy_(key_states)
        values.narrow(2, start, new).copy_(value_states)
        self._length = end
        self.keys, self.values = keys.narrow(2, 0, end), values.narrow(2, 0, end)
        self._views = (self.keys, self.values)
        return self.keys, self.values


def use_preallocated_layers(cache: Cache | None, capacity: int | None) -> None:
    """Swap the plain ``DynamicLayer``s of a fresh ``DynamicCache`` built by ``generate`` for ``PreallocatedLayer``s
    sized ``capacity`` (prompt + new tokens). Caches of other kinds, offloaded ones and user-made ones are left
    alone."""
    if type(cache) is not DynamicCache or getattr(cache, "_is_user_defined", False) or cache.offloading:
        return
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            cache.layers[index] = PreallocatedLayer(capacity=capacity)


class PreallocatedCacheMixin:
    """For a ``GenerationMixin`` model: ``generate``'s default dynamic cache writes in place (``PreallocatedLayer``),
    sized once for the prompt plus ``max_new_tokens``. Same tokens as ``DynamicCache``, without its O(n^2) copying."""

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, generation_mode, batch_size: int,
                                      max_cache_length: int):
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size,
                                                       max_cache_length)
        use_preallocated_layers(model_kwargs.get("cache"), max_cache_length)
        return result
