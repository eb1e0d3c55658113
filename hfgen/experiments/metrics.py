"""Metrics of the experiments: kurtosis (outliers), distinct-n (diversity), entropy, mean +- spread over seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def kurtosis(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson kurtosis ``E[(x - mu)^4] / sigma^4`` along ``dim`` (not the excess: a Gaussian gives 3).

    Bondarenko et al. 2023 report the kurtosis of attention-layer outputs over the hidden dimension of each token:
    a few channels holding huge values (outliers) give values in the hundreds or thousands. Population moments
    (divide by n), in fp64.
    """
    x = x.double()
    centred = x - x.mean(dim=dim, keepdim=True)
    variance = centred.pow(2).mean(dim=dim)
    return centred.pow(4).mean(dim=dim) / variance.pow(2)


def distinct_n(sequences: Iterable[Sequence[int]], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over every sequence; 0.0 when there are none."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    seen, total = set(), 0
    for sequence in sequences:
        sequence = list(sequence)
        for i in range(len(sequence) - n + 1):
            seen.add(tuple(sequence[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` over the last dimension, in fp64; ``-inf`` logits (top-k/top-p
    filtered) count as zero mass. torch's ``Categorical.entropy`` rather than TRL's ``entropy_from_logits``: TRL's
    gives NaN for a row holding ``-inf``."""
    return torch.distributions.Categorical(logits=logits.double()).entropy()


def mean_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max over seeds; non-finite values are kept
    (a diverged run shows as inf/nan rather than disappearing)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_spread needs at least one value")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}
