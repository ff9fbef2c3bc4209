"""Square: the paper's window schedule, corners of the ball only, and far more query-
efficient than SPSA at the same budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digits_project import digits_split, trained_mlp
from pytest_advrobust.attacks.spsa import spsa
from pytest_advrobust.attacks.square import square, window_fraction
from pytest_advrobust.models.torch_models import TorchClassifier


@pytest.fixture(scope="module")
def digits_mlp():
    _, _, x, y = digits_split()
    model = TorchClassifier(trained_mlp(), name="m", input_range=(0.0, 1.0))
    return model, torch.from_numpy(x[:200]), torch.from_numpy(y[:200])


def accuracy(model, x, y) -> float:
    return float((model.scores(x).argmax(1) == y).float().mean())


def test_window_fraction_halves_on_the_papers_schedule() -> None:
    assert window_fraction(0.8, 0, 5000) == 0.8
    assert window_fraction(0.8, 5, 5000) == 0.8  # 10 ten-thousandths of the budget: not yet
    assert window_fraction(0.8, 6, 5000) == 0.4
    assert window_fraction(0.8, 100, 5000) == 0.2  # 200
    assert window_fraction(0.8, 101, 5000) == 0.1
    assert window_fraction(0.8, 4999, 5000) == 0.8 / 512
    assert window_fraction(0.8, 50, 1000) == 0.8 / 8  # rescaled to the budget: 500 of 10000


def test_square_stays_on_corners_of_an_inner_ball_and_counts_queries(digits_mlp) -> None:
    """Every element of an attacked sample moves by exactly its radius s * eps, s in [0.99,
    0.999) drawn per sample first (interior.py), unless input-range clipped it: no candidate
    lies on the corners of the eps ball, which a model could recognise."""
    model, x, y = digits_mlp
    eps, stats = 0.1, {}
    adversarial = square(model, x, y, eps, np.random.default_rng(0), model.scores(x), stats, queries=300)
    delta = (adversarial - x).abs()
    assert float(delta.max()) <= eps * 0.999
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    radius = torch.from_numpy(eps * (0.99 + 0.009 * np.random.default_rng(0).random(len(x)))).float()
    radius = radius[:, None].expand_as(delta)
    attacked = (model.scores(x).argmax(1) == y)[:, None]
    inside = (adversarial > 0) & (adversarial < 1) & attacked
    assert int(inside.sum()) > 1000
    assert torch.allclose(delta[inside], radius[inside], atol=1e-6)
    standing = int((model.scores(x).argmax(1) == y).sum())
    assert standing <= stats["queries"] <= 300 * standing


def test_square_inside_strongest_searches_the_eps_ball_and_tries_the_interior_last(digits_mlp) -> None:
    """``interior=False`` (strongest's member): candidates on the eps ball's corners, and the
    last query of a sample still standing is its final point's interior point."""
    from pytest_advrobust.attacks.square import square_linf

    model, x, y = digits_mlp
    stats = {}
    adversarial = square_linf(model, x, y, 0.1, np.random.default_rng(0), scores=model.scores(x),
                              stats=stats, queries=40)
    standing = model.scores(adversarial).argmax(1) == y
    delta = (adversarial - x).abs()
    unclipped = (adversarial > 0) & (adversarial < 1)
    on_corner = ((delta - 0.1).abs() < 1e-6) | ~unclipped
    attacked = model.scores(x).argmax(1) == y
    assert standing.any() and on_corner[standing & attacked].all()  # the corners of the eps ball
    inside = attacked & ~standing & ~on_corner.all(1)  # fooled by a final point's interior point
    assert int(inside.sum()) == stats["interior"]
    assert (delta[inside][unclipped[inside]] < 0.1 * 0.999 + 1e-6).all()
    assert stats["queries"] <= 40 * int(attacked.sum())


def test_square_beats_spsa_at_equal_queries(digits_mlp) -> None:
    model, x, y = digits_mlp
    eps, scores = 0.1, model.scores(x)
    figures = {}
    for name, attack in (("square", square), ("spsa", spsa)):
        stats = {}
        adversarial = attack(model, x, y, eps, np.random.default_rng(0), scores, stats, queries=500)
        figures[name] = accuracy(model, adversarial, y)
        assert stats["queries"] <= 500 * len(x)
    assert accuracy(model, x, y) > 0.95
    assert figures["square"] < figures["spsa"] - 0.2, figures
    assert figures["square"] < 0.4


def test_square_on_images_and_seeded() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 10 * 14, 5)).eval()
    model = TorchClassifier(net, name="c", input_range=(0.0, 1.0))
    x = torch.rand(16, 3, 12, 16)
    y = model.scores(x).argmax(1)
    runs = [square(model, x, y, 0.05, np.random.default_rng(7), model.scores(x), {}, queries=50)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert float((runs[0] - x).abs().max()) <= 0.05 + 1e-6
    assert accuracy(model, runs[0], y) < 1.0  # a random net at eps 0.05 is easy to move


def test_no_queries_is_refused_not_reported_as_robust(digits_mlp) -> None:
    from pytest_advrobust.errors import AttackError

    model, x, y = digits_mlp
    with pytest.raises(AttackError, match="queries = 0 spends no query.*Set queries to 1 or more"):
        square(model, x, y, 0.1, np.random.default_rng(0), model.scores(x), {}, queries=0)


def test_default_budget_follows_input_size() -> None:
    from pytest_advrobust.attacks.square import default_queries

    assert default_queries(torch.zeros(2, 3, 32, 32)) == 5000  # AutoAttack's budget
    assert default_queries(torch.zeros(2, 3, 48, 192)) == 1000  # a forward costs 9x more


@pytest.mark.parametrize("shape", [(2, 40, 3), (5, 64), (1, 2, 2)])
def test_square_handles_narrow_and_flat_inputs(shape) -> None:
    torch.manual_seed(1)
    size = int(np.prod(shape))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size, 3)).eval()
    model = TorchClassifier(net, name="n", input_range=(0.0, 1.0))
    x = torch.rand((20,) + shape)
    y = model.scores(x).argmax(1)
    stats = {}
    adversarial = square(model, x, y, 0.2, np.random.default_rng(0), model.scores(x), stats, queries=100)
    assert adversarial.shape == x.shape
    assert float((adversarial - x).abs().max()) <= 0.2 + 1e-6
    assert 0 < stats["queries"] <= 100 * 20
    assert accuracy(model, adversarial, y) < 1.0
