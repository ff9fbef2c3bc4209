"""scikit-learn's bundled 8x8 digits (1,797 images, no download), split with a fixed seed."""

from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.3
SPLIT_SEED = 0


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    cut = int(len(y) * (1 - TEST_FRACTION))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def train_set() -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = _split()
    return x, y


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The evaluation split the robustness gates run on: inputs in [0, 1], 64 features."""
    _, _, x, y = _split()
    return x, y
