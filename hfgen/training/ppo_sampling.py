"""Sampling whose randomness is keyed by the episode, not by a process's random stream: the same prompt at the same
step gets the same response whichever process draws it, so N processes roll out what one process rolls out.

Gumbel-max (Gumbel 1954; e.g. Maddison et al. 2014): with ``g_v`` independent standard Gumbel variables,
``argmax_v (logits_v / T + g_v)`` is distributed exactly as ``softmax(logits / T)``, the distribution
``generate(do_sample=True, temperature=T, top_k=0, top_p=1)`` samples from. :class:`KeyedGumbelNoise` adds
``g`` drawn from a generator keyed by ``(seed, key, step, position)`` (``key``: the prompt's index in the dataset)
and greedy decoding takes the argmax, as :class:`hfgen.data.denoising.ExampleKeyedNoise` keys masking noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor


def keyed_gumbel(key: Sequence[int], size: int) -> torch.Tensor:
    """``size`` standard Gumbel variables ``-log(-log(u))``, ``u`` uniform from a generator seeded by ``key``."""
    uniform = np.random.default_rng([int(part) for part in key]).random(size)
    return torch.from_numpy(-np.log(-np.log(np.maximum(uniform, np.finfo(np.float64).tiny))))


class KeyedGumbelNoise(LogitsProcessor):
    """``logits / temperature + g``, ``g`` keyed by ``(seed, keys[row], step, position in the response)``: with
    greedy decoding (``do_sample=False``), row ``r`` samples from ``softmax(logits / temperature)`` with noise that
    depends only on its key and position.

    Args:
        seed: the run's seed.
        keys: one non-negative int per batch row (e.g. the prompt's index in the dataset).
        step: the training step (a prompt seen again at another step gets other noise).
        prompt_width: the prompts' padded width (the position in the response is ``input_ids.shape[1] -
            prompt_width``).
        temperature: the sampling temperature (> 0).
    """

    def __init__(self, seed: int, keys: Sequence[int], step: int, prompt_width: int, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if any(int(key) < 0 for key in keys) or seed < 0 or step < 0:
            raise ValueError(f"seed, keys and step must be non-negative, got seed={seed}, step={step}, "
                             f"keys={list(keys)}.")
        self.seed, self.keys, self.step = seed, [int(key) for key in keys], step
        self.prompt_width, self.temperature = prompt_width, temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.keys):
            raise ValueError(f"KeyedGumbelNoise has {len(self.keys)} keys for a batch of {scores.shape[0]} rows.")
        position = input_ids.shape[1] - self.prompt_width
        noise = torch.stack([keyed_gumbel((self.seed, key, self.step, position), scores.shape[-1])
                             for key in self.keys])
        return scores / self.temperature + noise.to(device=scores.device, dtype=scores.dtype)
