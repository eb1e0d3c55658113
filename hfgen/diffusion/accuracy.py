"""Classifier accuracy of images through the shipped evaluate module.

Kept apart from ``quality.py``: that file defines ``HfGenDigitClassifier``, whose code is exported next to its
weights for the Hub, and the exported file may import nothing of hfgen outside itself.
"""

from __future__ import annotations

import torch

from ..metrics import load_metric
from .quality import HfGenDigitClassifier


@torch.no_grad()
def classifier_accuracy(model: HfGenDigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` the classifier labels as ``labels``, by the shipped evaluate module
    (``hfgen.metrics``' classification_report)."""
    return load_metric("classification_report").compute(predictions=model(images).argmax(-1).tolist(),
                                                         references=labels.tolist())["accuracy"]
