"""The max-retrieval task of Velickovic et al. 2024 ("softmax is not enough (for sharp out-of-distribution)"),
seed 000: a set of items, each with a priority and a class; the answer is the class of the highest-priority item.

An MLP encodes every item, ONE attention head with a learned query attends over the items, an MLP reads the
class off the attended value. The attention uses hfgen's own softmax functions (``hfgen.models.softmax``), so the
adaptive temperature tested here is exactly the one the models use (seed 000's polynomial in the entropy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..models.softmax import SOFTMAX_FUNCTIONS


def make_max_retrieval_batch(batch_size: int, num_items: int, num_classes: int,
                             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [B, N, 1 + C], labels [B])``: feature 0 is the priority (uniform in [0, 1), ties have
    probability zero), the rest a one-hot class drawn uniformly; the label is the class of the max-priority item."""
    for name, value in (("batch_size", batch_size), ("num_items", num_items), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    priority = torch.rand(batch_size, num_items, generator=generator)
    classes = torch.randint(num_classes, (batch_size, num_items), generator=generator)
    features = torch.cat([priority.unsqueeze(-1), nn.functional.one_hot(classes, num_classes).float()], dim=-1)
    labels = classes.gather(1, priority.argmax(dim=1, keepdim=True)).squeeze(1)
    return features, labels


@dataclass
class RetrievalOutput:
    logits: torch.Tensor  # [B, C]
    attention: torch.Tensor  # [B, N] coefficients over the items


class MaxRetrievalModel(nn.Module):
    """Item MLP -> single-head attention with a learned query -> output MLP.

    ``forward(features, softmax_variant)`` takes any name of ``hfgen.models.softmax.SOFTMAX_FUNCTIONS`` that
    needs no extra config (``standard``, ``adaptive_temperature``, ``off_by_one``): the same weights can be
    evaluated with another softmax at inference, as the paper does.
    """

    def __init__(self, num_classes: int, hidden_size: int = 64):
        super().__init__()
        self.item_encoder = nn.Sequential(nn.Linear(1 + num_classes, hidden_size), nn.GELU(),
                                          nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                          nn.Linear(hidden_size, hidden_size))
        self.query = nn.Parameter(torch.randn(hidden_size) / math.sqrt(hidden_size))
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.classifier = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                        nn.Linear(hidden_size, num_classes))
        self.scaling = hidden_size**-0.5

    def forward(self, features: torch.Tensor, softmax_variant: str = "standard") -> RetrievalOutput:
        if softmax_variant not in ("standard", "adaptive_temperature", "off_by_one"):
            raise ValueError(f"Unknown softmax_variant={softmax_variant!r}; valid choices are: 'standard', "
                             f"'adaptive_temperature', 'off_by_one'.")
        items = self.item_encoder(features)
        scores = (self.key(items) @ self.query) * self.scaling  # [B, N]
        attention = SOFTMAX_FUNCTIONS[softmax_variant](scores.unsqueeze(1), None)[:, 0]  # one query row
        pooled = (attention.unsqueeze(-1) * self.value(items)).sum(dim=1)
        return RetrievalOutput(logits=self.classifier(pooled), attention=attention)


def train_max_retrieval(seed: int, num_classes: int = 10, hidden_size: int = 64, train_items: int = 16,
                        steps: int = 1500, batch_size: int = 128, learning_rate: float = 1e-3,
                        progress: bool = False) -> tuple[MaxRetrievalModel, list[float]]:
    """Train with the standard softmax on sets of ``train_items``; return the model and the loss per step."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MaxRetrievalModel(num_classes, hidden_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"max-retrieval seed {seed}", leave=False)
    for _ in iterator:
        features, labels = make_max_retrieval_batch(batch_size, train_items, num_classes, generator)
        loss = nn.functional.cross_entropy(model(features).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model, losses


@torch.no_grad()
def evaluate_max_retrieval(model: MaxRetrievalModel, num_items: int, num_sets: int, softmax_variant: str,
                           seed: int, num_classes: int = 10, max_items_per_batch: int = 2**18) -> dict[str, float]:
    """Accuracy, mean attention entropy (nats), mean max coefficient and mean coefficient on the true
    max-priority item, over ``num_sets`` fresh sets of ``num_items`` (the same sets for every softmax: ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    per_batch = max(1, min(num_sets, max_items_per_batch // num_items))
    correct = entropy = max_coef = target_coef = 0.0
    done = 0
    while done < num_sets:
        b = min(per_batch, num_sets - done)
        features, labels = make_max_retrieval_batch(b, num_items, num_classes, generator)
        out = model(features, softmax_variant)
        p = out.attention.double()
        correct += (out.logits.argmax(-1) == labels).sum().item()
        entropy += (-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).sum().item()
        max_coef += p.max(-1).values.sum().item()
        target_coef += p.gather(1, features[..., 0].argmax(1, keepdim=True)).sum().item()
        done += b
    return {"accuracy": correct / num_sets, "entropy": entropy / num_sets, "max_coefficient": max_coef / num_sets,
            "target_coefficient": target_coef / num_sets}
