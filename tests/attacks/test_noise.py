"""Noise: eps times uniform random signs, clipped, drawn from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearNet
from project import gate_session, save_torchscript


def test_signs_are_plus_minus_one_balanced_and_batch_size_independent() -> None:
    from pytest_advrobust.attacks.basic import noise, random_signs

    x = torch.full((500, 20), 0.5)
    whole = noise(x, 0.1, np.random.default_rng(7)) - x
    assert torch.allclose(whole.abs(), torch.full_like(x, 0.1))
    assert 0.45 < float((whole > 0).float().mean()) < 0.55
    rng = np.random.default_rng(7)
    pieces = torch.cat([random_signs(x[i:i + 7], rng) for i in range(0, 500, 7)])
    assert torch.equal(pieces, whole.sign())
    other = noise(x, 0.1, np.random.default_rng(8)) - x
    assert not torch.equal(other, whole)


def test_noise_gate_matches_its_definition(tmp_path) -> None:
    """Recompute the gate from the definition with the same draws: x' = clip(x + eps*s)."""
    import zlib

    from pytest_advrobust.engine import Request
    from pytest_advrobust.randomness import row_generator

    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 10)).astype(np.float32), np.zeros(3, np.float32)
    x = rng.uniform(0, 1, size=(150, 10)).astype(np.float32)
    y = (x @ w.T).argmax(1).astype(np.int64)
    save_torchscript(LinearNet(w, b), tmp_path / "m.pt")
    session = gate_session(tmp_path, "m.pt", x, y, checks='[[tool.advrobust.checks]]\nattack = "noise"\nreport-only = true\neps = 0.3\n')
    spec = session.spec()
    result = session.engine.measure(spec, Request(spec.checks[0], 0.3))
    # sample i's signs come from its own stream, keyed by (seed, model, check, eps in 1e-9, i)
    key = [spec.seed, zlib.crc32(spec.name.encode()), spec.checks[0].index, 300_000_000]
    draws = np.stack([row_generator(key, i).random(10) for i in range(len(x))])
    adv = np.clip(x + 0.3 * np.where(draws < 0.5, -1.0, 1.0), 0, 1)
    expected = int(((adv @ w.T).argmax(1) == y).sum())
    assert result.correct == expected and result.n == 150
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
