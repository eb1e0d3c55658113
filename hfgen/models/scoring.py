"""Attention scoring functions (seed 003, "Attention Scores"): :data:`SCORING_TABLE`, one entry per
``attention_scoring``.

Each entry holds the score formula, the scale of ``q . k``, the parameters the scoring adds to an attention module
and their initialisation, and its traits (:class:`Scoring`). Every family's attention (and the diffusion denoisers')
reads this table, so a new scoring is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init


def dot_product_scores(module: nn.Module, query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scale * Q K^T`` (``[B, H, Q, K]``; keys already repeated to the query heads)."""
    return torch.matmul(query, key.transpose(-1, -2)) * scaling


def additive_scores(module: nn.Module, query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Bahdanau: ``score_ij = v^T tanh(W_q q_i + W_k k_j)``; ``W_q``, ``W_k`` are ``q_proj`` / ``k_proj``. The
    ``[B, H, Q, K, D]`` tanh would be huge: callers chunk queries before they get here (``per_score``)."""
    hidden = torch.tanh(query.unsqueeze(3) + key.unsqueeze(2))
    return torch.einsum("bhqkd,hd->bhqk", hidden, module.score_vector.to(hidden.dtype))


def general_query(module: nn.Module, query: torch.Tensor) -> torch.Tensor:
    """Luong's general scoring ``Q W_k K^T`` as a dot product of ``Q W_k`` (one ``W_k`` per head) with the keys."""
    return torch.einsum("bhqd,hde->bhqe", query, module.score_weight.to(query.dtype))


def add_general_parameters(module: nn.Module) -> None:
    module.score_weight = nn.Parameter(torch.empty(module.num_heads, module.head_dim, module.head_dim))


def init_general_parameters(module: nn.Module, std: float) -> None:
    """``W_k`` starts as the identity: general scoring starts as plain dot product."""
    init.copy_(module.score_weight, torch.eye(module.head_dim).expand_as(module.score_weight))


def add_additive_parameters(module: nn.Module) -> None:
    module.score_vector = nn.Parameter(torch.empty(module.num_heads, module.head_dim))


def init_additive_parameters(module: nn.Module, std: float) -> None:
    init.normal_(module.score_vector, mean=0.0, std=std)


def no_parameters(module: nn.Module, *args) -> None:
    """A scoring without parameters of its own."""


@dataclass(frozen=True)
class Scoring:
    """One ``attention_scoring``.

    Attributes:
        scaled: ``q . k`` is divided by ``sqrt(d_k)`` (seed 003: "QK^T is divided by sqrt(d_k)").
        scores: ``(module, query, key, scaling) -> [B, H, Q, K]`` scores (eager kernel, chunked paths).
        query: ``(module, query) -> query`` applied once per forward before any kernel, or ``None``.
        add_parameters / init_parameters: ``(module)`` adds the scoring's parameters to an attention module,
            ``(module, std)`` initialises them (every family's ``_init_weights`` and the diffusion denoisers).
        dot_product: the score is ``scale * q' . k`` (``q'`` from ``query``), which SDPA and every attention backend
            compute; ``False``: the probabilities are computed from ``scores``, chunked over query rows.
        per_score: elements one score materialises (additive: a ``D``-wide tanh), for sizing those chunks.
    """

    scaled: bool = False
    scores: Callable[..., torch.Tensor] = dot_product_scores
    query: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    add_parameters: Callable[[nn.Module], None] = no_parameters
    init_parameters: Callable[[nn.Module, float], None] = no_parameters
    dot_product: bool = True
    per_score: Callable[[int], int] = lambda head_dim: 1

    def scale(self, head_dim: int) -> float:
        """The factor on ``q . k``."""
        return head_dim**-0.5 if self.scaled else 1.0


SCORING_TABLE: dict[str, Scoring] = {
    "scaled_dot_product": Scoring(scaled=True),
    "dot_product": Scoring(),
    "general": Scoring(query=general_query, add_parameters=add_general_parameters,
                       init_parameters=init_general_parameters),
    "additive": Scoring(scores=additive_scores, add_parameters=add_additive_parameters,
                        init_parameters=init_additive_parameters, dot_product=False,
                        per_score=lambda head_dim: head_dim),
}
