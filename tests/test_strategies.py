"""hypothesis strategies and the flip search, checked against a linear model's closed form:
for two classes, a prediction flips inside the L-inf ball of radius eps (away from the
input-range's edges) iff the margin is below ``eps * ||w_0 - w_1||_1``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_advrobust.strategies import find_flip, inputs_near, linf_ball, linf_perturbations

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent

W = np.array([[0.8, -0.5, 0.3, 0.1], [-0.2, 0.4, -0.6, 0.5]], dtype=np.float32)
B = np.array([0.05, -0.05], dtype=np.float32)
W_DIFF_L1 = float(np.abs(W[0] - W[1]).sum())  # 3.4
EPS = 0.05
RANGE = (0.0, 1.0)


def predict(points: np.ndarray) -> np.ndarray:
    return (np.atleast_2d(points).astype(np.float64) @ W.T.astype(np.float64) + B).argmax(1)


def margin(point: np.ndarray) -> float:
    scores = point.astype(np.float64) @ W.T.astype(np.float64) + B
    return float(abs(scores[0] - scores[1]))


# samples well inside [0, 1] (so clipping never binds at eps), labelled by the model
_rng = np.random.default_rng(3)
X = _rng.uniform(0.2, 0.8, size=(400, 4)).astype(np.float32)
Y = predict(X)
SAFE = np.array([margin(p) >= EPS * W_DIFF_L1 * 1.01 for p in X])
UNSAFE = np.array([margin(p) <= EPS * W_DIFF_L1 * 0.5 for p in X])


@given(linf_perturbations((3, 5), eps=0.1))
def test_perturbations_stay_in_the_ball(delta: np.ndarray) -> None:
    assert delta.shape == (3, 5) and delta.dtype == np.float32
    assert np.abs(delta).max() <= 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_perturbations_reach_the_corners(dtype) -> None:
    from hypothesis import find

    corner = find(linf_perturbations(4, eps=0.1, dtype=dtype),
                  lambda d: bool((np.abs(d) == np.abs(d).max()).all() and d[0] < 0 < d[1]
                                 and float(np.abs(d).max()) > 0.1 - 1e-7),
                  settings=settings(database=None, max_examples=500))
    assert corner.dtype == dtype and np.abs(corner).max() <= 0.1


@given(inputs_near(np.array([[0.0, 0.5, 1.0], [0.99, 0.02, 0.3]], dtype=np.float32), eps=0.05,
                   input_range=RANGE))
def test_inputs_near_stay_in_ball_and_range(near) -> None:
    index, point = near
    centre = np.array([[0.0, 0.5, 1.0], [0.99, 0.02, 0.3]], dtype=np.float32)[index]
    assert point.dtype == np.float32 and point.shape == (3,)
    assert np.abs(point.astype(np.float64) - centre).max() <= 0.05
    assert point.min() >= 0.0 and point.max() <= 1.0


@given(linf_ball(np.full(3, 0.3, dtype=np.float32), eps=0.1))
def test_linf_ball_without_range(point) -> None:
    assert np.abs(point.astype(np.float64) - np.float64(np.float32(0.3))).max() <= 0.1


# the property test a user writes: no perturbation inside the eps ball flips a robust sample
@given(inputs_near(X[SAFE], EPS, RANGE))
def test_no_perturbation_flips_samples_with_enough_margin(near) -> None:
    index, point = near
    assert predict(point)[0] == Y[SAFE][index]


def test_closed_form_split_is_not_trivial() -> None:
    assert SAFE.sum() > 50 and UNSAFE.sum() > 20


def test_find_flip_finds_flips_of_thin_margins_no_smaller_than_the_closed_form() -> None:
    for point, label in list(zip(X[UNSAFE], Y[UNSAFE]))[:10]:
        flip = find_flip(lambda p: int(predict(p)[0]), point, int(label), EPS, RANGE,
                         max_examples=200, seed=1)
        assert flip is not None
        assert flip.new_label != label and predict(point + flip.delta)[0] == flip.new_label
        # no L-inf step smaller than margin / ||w_0 - w_1||_1 can flip a linear model
        assert margin(point) / W_DIFF_L1 * (1 - 1e-5) <= flip.size <= EPS


def test_find_flip_finds_nothing_for_robust_samples_and_is_deterministic() -> None:
    point, label = X[SAFE][0], int(Y[SAFE][0])
    assert find_flip(lambda p: int(predict(p)[0]), point, label, EPS, RANGE, max_examples=50) is None
    thin, thin_label = X[UNSAFE][0], int(Y[UNSAFE][0])
    runs = [find_flip(lambda p: int(predict(p)[0]), thin, thin_label, EPS, RANGE, seed=7)
            for _ in range(2)]
    assert np.array_equal(runs[0].delta, runs[1].delta)


@pytest.mark.e2e
def test_importing_strategies_does_not_import_torch() -> None:
    code = "import sys, pytest_advrobust.strategies; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@settings(max_examples=30)
@given(st.floats(0.0, 0.5))
def test_eps_bound_is_never_exceeded_after_float32_rounding(eps: float) -> None:
    bound = linf_perturbations(1, eps)  # must not raise for eps not representable in float32
    assert bound is not None
