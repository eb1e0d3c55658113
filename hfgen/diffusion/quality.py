"""Measuring image generators offline (no Inception weights): a small digit classifier trained here, and in its
feature space

* the Fréchet distance (the FID formula, Heusel et al. 2017) between generated and held-out real images, with the
  distance between two real sets of the same size beside it as the floor a perfect generator would reach;
* the fraction of samples the classifier labels confidently (max probability >= ``threshold``): blurry or
  ambiguous samples are not;
* the per-class spread of the samples' predicted labels: its normalised entropy (1 = every digit equally often),
  the number of digits seen and the largest share -- a mode-collapse detector (seeds 000/002).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .export_hfgen import HubExportMixin


class HfGenDigitClassifier(HubExportMixin, ModelMixin, ConfigMixin):
    """Three convolutions (the last two strided) and global average pooling to ``feature_dim`` features, then a
    linear layer to ``num_classes`` logits. Any image size >= 4."""

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, feature_dim, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be [batch, {self.config.in_channels}, height, width], got shape "
                             f"{tuple(images.shape)}.")
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int = 600, batch_size: int = 64,
                           lr: float = 3e-3, seed: int = 0, progress: bool = False) -> HfGenDigitClassifier:
    """Train :class:`HfGenDigitClassifier` on ``[-1, 1]`` images with Adam and cross-entropy; returns it in eval
    mode."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = HfGenDigitClassifier(in_channels=images.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(steps), desc="digit classifier", disable=not progress):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` between the Gaussians fitted to two
    feature sets ``[N, D]`` (in float64; the symmetric form equals ``Tr (S_a S_b)^1/2``)."""
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"Need two [N, D] feature sets of the same D, got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}.")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("The Fréchet distance needs at least 2 samples per set.")
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    d = a.shape[1]
    cov_a, cov_b = torch.cov(a.T).reshape(d, d), torch.cov(b.T).reshape(d, d)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross))


def class_spread(predicted: torch.Tensor, num_classes: int = 10, min_share: float = 0.01) -> dict[str, float]:
    """Normalised entropy of the predicted-label histogram, classes with at least ``min_share`` of the samples,
    and the largest class share."""
    counts = torch.bincount(predicted.flatten(), minlength=num_classes).double()
    shares = counts / counts.sum()
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * nonzero.log()).sum() / math.log(num_classes))
    return {"class_entropy": entropy, "classes_covered": int((shares >= min_share).sum()),
            "max_class_share": float(shares.max())}


@torch.no_grad()
def evaluate_samples(classifier: HfGenDigitClassifier, generated: torch.Tensor, held_out: torch.Tensor,
                     real_reference: torch.Tensor, threshold: float = 0.9) -> dict[str, float]:
    """Every quality number of generated ``[-1, 1]`` images: ``fd`` against ``held_out`` and ``fd_real_floor``
    (``real_reference``, as many real training images as samples, against the same held-out set), the confident
    fraction and the class spread. Samples with a non-finite pixel (a flow's inverse can overflow far in the
    tails) are counted in ``nonfinite_fraction`` and measured no further."""
    finite = torch.isfinite(generated).flatten(1).all(1)
    nonfinite_fraction = 1.0 - float(finite.float().mean()) if len(generated) else 0.0
    generated = generated[finite]
    n = min(len(generated), len(real_reference))
    classifier = classifier.eval()
    gen_features = classifier.features(generated)
    probs = classifier.head(gen_features).softmax(-1)
    held_features = classifier.features(held_out)
    return {
        "num_samples": len(generated),
        "nonfinite_fraction": nonfinite_fraction,
        "fd": frechet_distance(gen_features, held_features),
        "fd_real_floor": frechet_distance(classifier.features(real_reference[:n]), held_features),
        "confident_fraction": float((probs.max(-1).values >= threshold).float().mean()),
        **class_spread(probs.argmax(-1), probs.shape[-1]),
    }
