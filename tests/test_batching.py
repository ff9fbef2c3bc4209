"""Re-cutting data into batches (no copy of the remainder per batch) and the per-eps
projection (exact inside the ball, no host sync) give the same numbers as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_advrobust.data import _rechunk
from pytest_advrobust.engine import _project


@pytest.mark.parametrize("chunk_sizes", [[100], [7, 50, 1, 42], [33, 33, 34]])
@pytest.mark.parametrize("size,start,stop", [(16, 0, None), (64, 5, 90), (1, 98, None), (200, 0, 60)])
def test_rechunk_covers_exactly_the_requested_samples(chunk_sizes, size, start, stop) -> None:
    x = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    y = np.arange(100)
    bounds = np.cumsum([0] + chunk_sizes)
    chunks = [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    batches = list(_rechunk(chunks, size, start, stop))
    expected = np.arange(start, 100 if stop is None else stop)
    assert np.array_equal(np.concatenate([b[1] for b in batches]), expected)
    assert np.array_equal(np.concatenate([b[0] for b in batches])[:, 2], expected.astype(np.float32))
    assert [b[2] for b in batches] == list(range(start, start + len(expected), size))
    assert all(len(b[1]) == size for b in batches[:-1])


class _Spec:
    name = "m"


class _Request:
    class check:
        attack = "custom"


def test_projection_is_exact_inside_the_ball_and_clips_outside() -> None:
    x = torch.tensor([[0.0, 0.5, 0.98, 0.3]])
    eps = 0.05
    inside = x + eps * torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    out = _project(inside, x, eps, (0.0, 1.0), _Spec(), _Request())
    expected = inside.clamp(0.0, 1.0)  # FGSM's step, clipped to input-range only
    assert torch.equal(out, expected)
    too_far = x + torch.tensor([[0.2, -0.3, 0.01, 0.0]])
    out = _project(too_far, x, eps, (0.0, 1.0), _Spec(), _Request())
    assert torch.allclose(out, torch.tensor([[0.05, 0.45, 0.99, 0.3]]))
    assert float((out - x).abs().max()) <= eps + 1e-7
    assert too_far.data_ptr() != out.data_ptr() and float(too_far[0, 0]) == pytest.approx(0.2)
