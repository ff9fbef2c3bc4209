"""SPSA: scores only, a counted query budget, near the linear optimum, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearNet
from pytest_advrobust.attacks.spsa import margin, spsa
from pytest_advrobust.models.torch_models import TorchClassifier


class ScoresOnly(TorchClassifier):
    """Counts every input row scored; refuses gradients (a black box)."""

    rows = 0

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return super().scores(x)

    def loss_gradient(self, x, y):
        raise AssertionError("spsa must not ask for gradients")


@pytest.fixture
def linear():
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(3, 12))
    x = torch.from_numpy(rng.uniform(0.3, 0.7, size=(120, 12)).astype(np.float32))
    bias = -np.median(x.numpy() @ weight.T, axis=0)
    model = ScoresOnly(LinearNet(weight, bias).eval(), name="m", input_range=(0.0, 1.0))
    y = model.scores(x).argmax(1)
    return model, weight, bias, x, y


def best_linear_margin(weight, bias, x, y, eps):
    """The smallest margin any point of the L-inf ball reaches (exact for a linear model,
    no clipping needed inside [0.3, 0.7] with eps <= 0.3): min over other classes j of
    (w_y - w_j).x + b_y - b_j - eps * |w_y - w_j|_1."""
    x, y = x.numpy().astype(np.float64), y.numpy()
    out = np.full(len(y), np.inf)
    for j in range(weight.shape[0]):
        diff = weight[y] - weight[j]
        value = (diff * x).sum(1) + bias[y] - bias[j] - eps * np.abs(diff).sum(1)
        out = np.where(y == j, out, np.minimum(out, value))
    return out


def test_spsa_fools_what_can_be_fooled_on_a_linear_model(linear) -> None:
    model, weight, bias, x, y = linear
    eps = 0.02
    possible = best_linear_margin(weight, bias, x, y, eps) < 0
    assert 10 < possible.sum() < len(y) - 10
    stats: dict = {}
    adversarial = spsa(model, x, y, eps, np.random.default_rng(0), model.scores(x), stats, queries=1000)
    fooled = (model.scores(adversarial).argmax(1) != y).numpy()
    assert not (fooled & ~possible).any()  # no attack beats the optimum (sanity of the bound)
    assert fooled.sum() >= 0.95 * possible.sum()
    assert float((adversarial - x).abs().max()) <= eps * (1 + 1e-6)


def test_spsa_spends_and_reports_its_query_budget(linear) -> None:
    model, _, _, x, y = linear
    scores = model.scores(x)
    model.rows = 0
    stats: dict = {"queries": 5}  # summed across batches: an earlier batch's count stays
    spsa(model, x, y, 0.01, np.random.default_rng(0), scores, stats, queries=300, samples=8)
    assert model.rows == stats["queries"] - 5  # every row it scored is counted
    per_step = 2 * 8 + 1
    assert 0 < stats["queries"] - 5 <= len(x) * (300 // per_step) * per_step
    # a weak eps fools few samples, so most spend the whole budget
    assert stats["queries"] - 5 > 0.5 * len(x) * (300 // per_step) * per_step


def test_spsa_is_deterministic_given_the_seed(linear) -> None:
    model, _, _, x, y = linear
    scores = model.scores(x)
    runs = [spsa(model, x, y, 0.05, np.random.default_rng(seed), scores, {}, queries=200)
            for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_margin_of_probabilities_is_the_logit_margin() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    expected = torch.tensor([2.0 - 0.5, 1.0 - 3.0], dtype=torch.float64)
    assert torch.allclose(margin(logits, y), expected)
    assert torch.allclose(margin(logits.softmax(1), y, probabilities=True), expected)
