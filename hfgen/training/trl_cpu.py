"""TRL's fused LM head on a CPU, computed with plain torch ops.

TRL 1.16's SFT, DPO, GRPO and RLOO trainers score tokens through ``add_fused_lm_head``, whose
``ChunkedLogProbFunction`` folds the logits tile by tile (online log-sum-exp) to avoid materialising them. Without
Triton (every CPU) the tiles are folded by a chain of element-wise torch ops, forward and again in a hand-written
backward: on a small model it makes an SFT step several times slower than computing the logits. For the vocabularies
this project trains on a CPU (8k tokens), the ``[tokens, vocab]`` logits fit in memory easily, so
:func:`hfgen.compat.use_plain_trl_logprobs` swaps the function for :class:`PlainLogProbFunction`, which computes the same quantities
from ``log_softmax`` and lets autograd differentiate them:

- ``z = softcap * tanh(logit_scale * (h W^T + b) / softcap) / T`` (the softcap only when the model has one),
- ``log_probs = z[target] - logsumexp(z)``, ``entropy = -sum_v p_v log p_v``,
- ``log_sum_sq_probs = log sum_v p_v^2``, ``mean_logits = mean_v z_v``, ``is_top1 = argmax(z) == target``.

tests/test_rlhf_trl.py compares every output and the gradients with TRL's own kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class PlainLogProbFunction:
    """Drop-in for ``trl.kernels.ChunkedLogProbFunction`` (same ``apply`` arguments and outputs) built on the full
    logits."""

    @staticmethod
    def apply(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
              temperature: float, chunk_size: int, final_logit_softcapping: float | None = None,
              logit_scale: float = 1.0, outputs: tuple[str, ...] = OPTIONAL_OUTPUTS):
        z = F.linear(hidden, weight, bias).float() * logit_scale
        if final_logit_softcapping is not None:
            z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
        z = z / temperature
        log_p = z.log_softmax(-1)
        log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * log_p, -1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1
