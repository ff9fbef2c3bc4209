"""Linearity curves against the closed form of a linear model; plots without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import LinearNet
from pytest_advrobust.linearity import linearity_curves
from pytest_advrobust.models.torch_models import TorchClassifier


def test_scores_move_linearly_along_the_fgsm_direction() -> None:
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(3, 5)), rng.normal(size=3)
    model = TorchClassifier(LinearNet(weight, bias), name="lin", input_range=(0.0, 1.0))
    x = torch.tensor(rng.uniform(0.2, 0.8, size=(2, 5)), dtype=torch.float32)
    y = torch.tensor([0, 2])
    curves = linearity_curves(model, x, y, eps_max=0.5, steps=5, seed=0)
    assert curves.eps.tolist() == [-0.5, -0.25, 0.0, 0.25, 0.5]
    # closed form: grad of CE w.r.t. x is W^T (softmax(Wx+b) - onehot(y))
    logits = x.double().numpy() @ weight.T + bias
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    direction = np.sign((soft - np.eye(3)[y.numpy()]) @ weight)
    for i in range(2):
        for j, e in enumerate(curves.eps):
            expected = (x[i].double().numpy() + e * direction[i]) @ weight.T + bias
            np.testing.assert_allclose(curves.fgsm[i, j], expected, atol=1e-4)
    # along FGSM the true class's score falls; the random direction is +-1 per element
    assert all(curves.fgsm[i, -1, y[i]] < curves.fgsm[i, 2, y[i]] for i in range(2))
    # the random direction is some d in {-1, +1}^5: the slope is W @ d for one of the 32
    import itertools

    slopes = (curves.random[:, -1] - curves.random[:, 0]) / 1.0
    candidates = [np.array(d) @ weight.T for d in itertools.product((-1.0, 1.0), repeat=5)]
    for i in range(2):
        assert min(np.abs(slopes[i] - c).max() for c in candidates) < 1e-4


def test_plots_say_how_to_install_matplotlib(monkeypatch) -> None:
    from pytest_advrobust.report.plots import PlotsUnavailable, pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotsUnavailable, match=r"pip install pytest-advrobust\[plots\]"):
        pyplot()
