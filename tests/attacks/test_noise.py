"""Noise: eps times uniform random signs, clipped, drawn from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearNet
from project import gate_session, save_torchscript


def test_signs_are_plus_minus_one_balanced_and_batch_size_independent() -> None:
    from pytest_advrobust.attacks.basic import random_signs

    x = torch.full((500, 20), 0.5)
    whole = random_signs(x, np.random.default_rng(7))
    assert torch.equal(whole.abs(), torch.ones_like(x))
    assert 0.45 < float((whole > 0).float().mean()) < 0.55
    rng = np.random.default_rng(7)
    pieces = torch.cat([random_signs(x[i:i + 7], rng) for i in range(0, 500, 7)])
    assert torch.equal(pieces, whole)
    assert not torch.equal(random_signs(x, np.random.default_rng(8)), whole)


def test_noise_tries_the_interior_point_where_the_corner_is_recognised() -> None:
    """A model that classifies a point right when every value lies exactly eps off 0.5 (the
    corner noise lands on) and wrong anywhere else off 0.5: noise hands the engine both
    points (the gate counts a sample fooled when either fools it), and only the interior
    point fools this model."""
    from pytest_advrobust.attacks.basic import noise
    from pytest_advrobust.models.torch_models import TorchClassifier

    class Corners(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            corner = ((x - 0.5).abs() - 0.1).abs().lt(1e-6).all(1, keepdim=True).float()
            return torch.cat([corner, 1 - corner], 1)

    model = TorchClassifier(Corners(), name="corners", input_range=(0, 1))
    x = torch.full((30, 6), 0.5)
    corner, inside = noise(model, x, 0.1, np.random.default_rng(2))
    rng = np.random.default_rng(2)
    signs = np.where(rng.random((30, 6)) < 0.5, -1.0, 1.0)
    scale = 0.99 + 0.009 * rng.random(30)  # after the signs, one draw per sample
    np.testing.assert_allclose(corner.numpy(), 0.5 + 0.1 * signs, atol=1e-7)
    np.testing.assert_allclose(inside.numpy(), 0.5 + 0.1 * scale[:, None] * signs, atol=1e-7)
    assert (model.scores(corner).argmax(1) == 0).all() and (model.scores(inside).argmax(1) == 1).all()


def test_noise_gate_matches_its_definition(tmp_path) -> None:
    """Recompute the gate from the definition with the same draws: the corner
    x_c = clip(x + eps*s) and the interior point x + scale * (x_c - x); a sample is right
    when both are."""
    from pytest_advrobust.engine import Request
    from pytest_advrobust.randomness import row_random, sample_key

    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 10)).astype(np.float32), np.zeros(3, np.float32)
    x = rng.uniform(0, 1, size=(150, 10)).astype(np.float32)
    y = (x @ w.T).argmax(1).astype(np.int64)
    save_torchscript(LinearNet(w, b), tmp_path / "m.pt")
    session = gate_session(tmp_path, "m.pt", x, y, checks='[[tool.advrobust.checks]]\nattack = "noise"\nreport-only = true\neps = 0.3\n')
    spec = session.spec()
    result = session.engine.measure(spec, Request(spec.checks[0], 0.3))
    # sample i's draws come from its own stream, keyed by (seed, model, check, eps, i): ten
    # signs, then the interior point's scale
    key = sample_key(spec.seed, spec.name, spec.checks[0].index, 0.3)
    draws = np.stack([row_random(key, i, 11) for i in range(len(x))])
    corner = np.clip(x + 0.3 * np.where(draws[:, :10] < 0.5, -1.0, 1.0), 0, 1)
    inside = x + (0.99 + 0.009 * draws[:, 10:]) * (corner - x)
    expected = int((((corner @ w.T).argmax(1) == y) & ((inside @ w.T).argmax(1) == y)).sum())
    assert result.correct == expected and result.n == 150
    assert expected < 150  # noise of 0.3 does move some samples
    again = gate_session(tmp_path, "m.pt", x, y,
                         checks='[[tool.advrobust.checks]]\nattack = "noise"\nreport-only = true\neps = 0.3\n',
                         extra="batch-size = 7\n".replace("batch-size = 7", "seed = 0"))
    assert again.engine.measure(again.spec(), Request(again.spec().checks[0], 0.3)).correct == expected


@pytest.mark.parametrize("batch_size", [7, 150])
def test_batch_size_does_not_change_noise_results(tmp_path, batch_size) -> None:
    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 10)).astype(np.float32)
    x = rng.uniform(0, 1, size=(150, 10)).astype(np.float32)
    y = (x @ w.T).argmax(1).astype(np.int64)
    save_torchscript(LinearNet(w, np.zeros(3, np.float32)), tmp_path / "m.pt")
    reference = gate_session(tmp_path, "m.pt", x, y, checks='[[tool.advrobust.checks]]\nattack = "noise"\nreport-only = true\neps = 0.4\n')
    session = gate_session(tmp_path, "m.pt", x, y, checks='[[tool.advrobust.checks]]\nattack = "noise"\nreport-only = true\neps = 0.4\n')
    object.__setattr__(session.spec(), "batch_size", batch_size)
    assert session.run_all()[0].correct == reference.run_all()[0].correct
