"""FuseLLM (Wan et al. 2024, "Knowledge Fusion of Large Language Models"): fuse the next-token distributions of
several source LMs -- with different tokenizers -- into a target LM by continued training.

1. Token alignment by minimum edit distance: each text is tokenized by every model; the source's token sequence is
   aligned to the target's by dynamic programming (dynamic time warping) whose step cost is the edit distance
   between the two token strings (:func:`align_sequences`); a source token in a distribution is mapped to the target
   vocabulary token of minimum edit distance (:class:`VocabularyMap`, exact matches first).
2. Fusion of the aligned distributions, per sequence, by their cross-entropy against the gold target tokens:
   ``MinCE`` keeps the distribution with the lowest cross-entropy; ``AvgCE`` averages them with weights
   ``softmax(-CE)`` (lower cross-entropy, larger weight).
3. Training objective ``L = lambda * L_CLM + (1 - lambda) * L_fusion``, with ``L_fusion = -sum_t sum_v
   P_fused(v | t) log Q_target(v | t)`` (:func:`fusellm_loss`), trained by :class:`FuseLLMTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Trainer

FUSIONS = ("min_ce", "avg_ce")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def align_sequences(source: list[str], target: list[str]) -> list[int]:
    """For each target token, the index of the source token aligned to it by minimum total edit distance (dynamic
    time warping: each step advances the source, the target, or both; a step costs the edit distance of the two
    tokens it pairs). Where several source tokens pair with one target token, the last one is kept (its
    distribution predicts what follows the span)."""
    n, m = len(source), len(target)
    if not n or not m:
        raise ValueError(f"Cannot align an empty token sequence (source {n} tokens, target {m} tokens).")
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            step = edit_distance(source[i - 1], target[j - 1])
            cost[i][j] = step + min(cost[i - 1][j - 1], cost[i - 1][j], cost[i][j - 1])
    aligned: list[int | None] = [None] * m
    i, j = n, m
    while i > 0 and j > 0:  # back from the end: the first source index met for a target token is its last
        if aligned[j - 1] is None:
            aligned[j - 1] = i - 1
        moves = {(i - 1, j - 1): cost[i - 1][j - 1], (i - 1, j): cost[i - 1][j], (i, j - 1): cost[i][j - 1]}
        i, j = min(moves, key=moves.get)
    return aligned


class VocabularyMap:
    """Source token id -> target token id of minimum edit distance between the token strings (exact match first;
    ties: the first in the target vocabulary). Computed lazily and cached: only tokens that appear in the
    distributions are ever mapped."""

    def __init__(self, source_tokenizer, target_tokenizer):
        for name, tokenizer in (("source", source_tokenizer), ("target", target_tokenizer)):
            if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
                raise ValueError(f"FuseLLM needs the {name} model's tokenizer (got {tokenizer!r}): token alignment "
                                 f"compares token strings.")
        self.source = source_tokenizer
        self.target_vocab = target_tokenizer.get_vocab()
        self.target_tokens = sorted(self.target_vocab, key=self.target_vocab.get)
        self.cache: dict[int, int] = {}
        self.by_length: dict[int, list[str]] | None = None

    def __call__(self, source_id: int) -> int:
        if source_id not in self.cache:
            token = self.source.convert_ids_to_tokens(source_id)
            if token in self.target_vocab:
                self.cache[source_id] = self.target_vocab[token]
            else:
                self.cache[source_id] = self.target_vocab[self._nearest(token)]
        return self.cache[source_id]

    def _nearest(self, token: str) -> str:
        """The target token minimising ``(|len difference| > 3, edit distance, target id)``. Tokens are visited by
        increasing length difference, which is a lower bound of the edit distance: a length group farther than the
        best distance found cannot hold a better token, so it is skipped (same answer as scanning the vocabulary,
        at a fraction of the cost)."""
        if self.by_length is None:
            self.by_length = {}
            for candidate in self.target_tokens:  # ordered by id
                self.by_length.setdefault(len(candidate), []).append(candidate)
        best: tuple[bool, int, int] | None = None
        best_token = None
        for gap in sorted({abs(length - len(token)) for length in self.by_length}):
            if best is not None and ((gap > 3 and not best[0]) or ((gap > 3) >= best[0] and gap > best[1])):
                break
            for length in (len(token) - gap, len(token) + gap) if gap else (len(token),):
                for candidate in self.by_length.get(length, ()):
                    key = (gap > 3, edit_distance(token, candidate), self.target_vocab[candidate])
                    if best is None or key < best:
                        best, best_token = key, candidate
        return best_token


def aligned_distributions(source_logits: torch.Tensor, source_ids: list[int], target_ids: list[int],
                          source_tokenizer, target_tokenizer, vocab_map: VocabularyMap, target_vocab_size: int,
                          top_k: int = 10) -> torch.Tensor:
    """One text's source next-token distributions, on the target's tokens and vocabulary: ``[len(target_ids) - 1,
    target_vocab_size]``, row ``t`` the distribution of target token ``t + 1``.

    ``source_logits[i]`` predicts source token ``i + 1``. Predicted tokens are aligned (:func:`align_sequences`);
    each aligned source distribution keeps its ``top_k`` tokens, mapped into the target vocabulary and renormalised.
    """
    source_tokens = source_tokenizer.convert_ids_to_tokens(source_ids)
    target_tokens = target_tokenizer.convert_ids_to_tokens(target_ids)
    aligned = align_sequences(source_tokens[1:], target_tokens[1:])  # predicted tokens only
    probabilities = source_logits.float().softmax(-1)
    top = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    out = torch.zeros(len(target_ids) - 1, target_vocab_size)
    for t, s in enumerate(aligned):
        for p, token in zip(top.values[s].tolist(), top.indices[s].tolist()):
            out[t, vocab_map(token)] += p
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)


def sequence_cross_entropy(distribution: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean of ``-log P(gold)``: ``distribution`` ``[B, T, V]``, ``labels`` / ``mask`` ``[B, T]``."""
    gold = distribution.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
    return -(gold.log() * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def fuse_distributions(distributions: list[torch.Tensor], labels: torch.Tensor, mask: torch.Tensor,
                       fusion: str = "min_ce") -> torch.Tensor:
    """Fuse K aligned distributions ``[B, T, V]`` per sequence: ``min_ce`` picks the one with the lowest
    cross-entropy to the gold ``labels``; ``avg_ce`` averages them with weights ``softmax(-CE)``."""
    if fusion not in FUSIONS:
        raise ValueError(f"Unknown fusion {fusion!r}; valid choices are: {', '.join(map(repr, FUSIONS))}.")
    if not distributions:
        raise ValueError("fuse_distributions needs at least one source distribution.")
    stacked = torch.stack(distributions)  # [K, B, T, V]
    ce = torch.stack([sequence_cross_entropy(d, labels, mask) for d in distributions])  # [K, B]
    if fusion == "min_ce":
        best = ce.argmin(0)  # [B]
        return stacked[best, torch.arange(stacked.shape[1])]
    weights = torch.softmax(-ce, dim=0)[:, :, None, None]
    return (weights * stacked).sum(0)


def fusellm_loss(logits: torch.Tensor, labels: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor,
                 lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lam * L_CLM + (1 - lam) * L_fusion`` for the target's ``logits`` ``[B, T, V]`` (position t predicts
    ``labels[:, t]``, already shifted) and the fused distributions ``[B, T, V]``; returns (total, clm, fusion)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}.")
    log_q = F.log_softmax(logits.float(), dim=-1)
    clm = -(log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask).sum() / mask.sum()
    fusion = -((fused * log_q).sum(-1) * mask).sum() / mask.sum()
    return lam * clm + (1 - lam) * fusion, clm, fusion


@dataclass
class SourceModel:
    """A source LM and its own tokenizer (FuseLLM's sources need not share the target's vocabulary)."""

    model: torch.nn.Module
    tokenizer: object

    def __post_init__(self):
        if self.tokenizer is None:
            raise ValueError("Every FuseLLM source model needs its tokenizer: token alignment compares the token "
                             "strings of the source and the target.")


class FuseLLMCollator:
    """Rows ``{"input_ids": [T], "index": i}`` -> ``input_ids`` and ``labels`` (the same ids: the model shifts them)
    ``[B, T]`` and, where ``distributions`` is given
    (per source, per row index, the aligned ``[T - 1, V]`` distributions, dense or sparse), ``source_distributions``
    ``[K, B, T - 1, V]``. Rows without ``"index"`` (evaluation blocks, which have no source distributions) get
    ``input_ids`` and ``labels`` only."""

    def __init__(self, distributions: list[list[torch.Tensor]] | None = None):
        self.distributions = distributions

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(r["input_ids"]) for r in rows])
        batch = {"input_ids": input_ids, "labels": input_ids}
        if self.distributions and all("index" in r for r in rows):
            index = [int(r["index"]) for r in rows]
            batch["source_distributions"] = torch.stack([torch.stack([per_row[i].to_dense() for i in index])
                                                         for per_row in self.distributions])
        return batch


class FuseLLMTrainer(Trainer):
    """A ``Trainer`` whose training loss is FuseLLM's ``lam * L_CLM + (1 - lam) * L_fusion`` (:func:`fusellm_loss`)
    over the sources' aligned distributions fused by ``method`` (``"min_ce"`` / ``"avg_ce"``), as TRL's
    distillation trainers override ``compute_loss``; ``method="clm"``, and every evaluation, use the model's own
    causal-LM loss. Batches come from :class:`FuseLLMCollator`."""

    def __init__(self, *args, method: str = "clm", lam: float = 0.9, **kwargs):
        if method not in ("clm", *FUSIONS):
            raise ValueError(f"method must be 'clm' or one of {FUSIONS}, got {method!r}.")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}.")
        super().__init__(*args, **kwargs)
        self.method, self.lam = method, lam
        # Both losses are per-batch means: Trainer scales them for accumulation and does not multiply them by the
        # number of processes.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        input_ids = inputs["input_ids"]
        distributions = inputs.get("source_distributions")
        if self.method == "clm" or distributions is None or not model.training:
            outputs = model(input_ids=input_ids, labels=input_ids)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        outputs = model(input_ids=input_ids)
        labels = input_ids[:, 1:]
        mask = torch.ones_like(labels, dtype=torch.float)
        fused = fuse_distributions(list(distributions.float()), labels, mask, self.method)
        loss = fusellm_loss(outputs.logits[:, :-1], labels, fused, mask, self.lam)[0]
        return (loss, outputs) if return_outputs else loss
