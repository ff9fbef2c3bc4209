"""hypothesis strategies for L-inf perturbations, and a search for a label flip.

For property tests such as "no perturbation inside the eps ball flips this prediction"::

    from hypothesis import given
    from pytest_advrobust.strategies import inputs_near

    @given(inputs_near(x_test, eps=0.05, input_range=(0.0, 1.0)))
    def test_robust(near):
        index, point = near
        assert predict(point[None])[0] == y_test[index]

Works on numpy arrays and never imports torch; ``predict`` is whatever the test wraps.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from hypothesis import HealthCheck, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from hypothesis.extra import numpy as hnp

__all__ = ["Counterexample", "find_flip", "inputs_near", "linf_ball", "linf_perturbations",
           "search_settings"]


def _bound(eps: float, dtype: np.dtype) -> float:
    """The largest value of ``dtype`` that is <= eps (0.1 is not a float32)."""
    value = np.asarray(eps, dtype=dtype)
    if float(value) > eps:
        value = np.nextafter(value, np.asarray(0, dtype=dtype))
    return float(value)


def linf_perturbations(shape: int | Sequence[int], eps: float,
                       dtype: Any = np.float32) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``shape`` with ``max|d| <= eps``: points inside the ball whose elements
    are often exactly ``-eps`` or ``eps``, and whole corners of the ball (every element
    ``±eps``, where a linear model is weakest). Shrinks towards zero, so a failing example
    comes out small."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, not {eps!r}")
    dtype = np.dtype(dtype)
    bound = _bound(float(eps), dtype)
    width = 8 * dtype.itemsize
    elements = st.one_of(st.floats(-bound, bound, width=width, allow_nan=False),
                         st.sampled_from([-bound, bound]))
    dims = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    corners = hnp.arrays(dtype, dims, elements=st.sampled_from([-bound, bound]))
    return st.one_of(hnp.arrays(dtype, dims, elements=elements), corners)


def _near(center: np.ndarray, delta: np.ndarray, eps: float,
          input_range: tuple[float, float] | None) -> np.ndarray:
    """``clip(center + delta)``, rounded so that ``max|point - center| <= eps`` holds exactly."""
    point = center + delta
    if input_range is not None:
        point = np.clip(point, input_range[0], input_range[1]).astype(center.dtype)
    over = np.abs(point.astype(np.float64) - center.astype(np.float64)) > eps
    while over.any():  # float rounding of center + delta: step back towards the center
        point = np.where(over, np.nextafter(point, center), point)
        over = np.abs(point.astype(np.float64) - center.astype(np.float64)) > eps
    return point


def linf_ball(center: Any, eps: float, input_range: tuple[float, float] | None = None
              ) -> st.SearchStrategy[np.ndarray]:
    """Points ``clip(center + d, input_range)`` with ``max|d| <= eps``, of ``center``'s
    shape and float dtype."""
    center = np.asarray(center)
    if center.dtype.kind != "f":
        center = center.astype(np.float32)
    return linf_perturbations(center.shape, eps, center.dtype).map(
        lambda d: _near(center, d, eps, input_range))


def inputs_near(x: Any, eps: float, input_range: tuple[float, float] | None = None
                ) -> st.SearchStrategy[tuple[int, np.ndarray]]:
    """``(index, point)``: a sample ``x[index]`` of the batch ``x`` and a point of its eps
    ball, clipped to ``input_range``. Shrinks towards the first sample and a zero step."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if len(x) == 0:
        raise ValueError("inputs_near needs at least one sample")
    return st.tuples(st.integers(0, len(x) - 1), linf_perturbations(x.shape[1:], eps, x.dtype)).map(
        lambda pair: (pair[0], _near(x[pair[0]], pair[1], eps, input_range)))


def search_settings(max_examples: int = 100) -> settings:
    """Settings for a search run from library code: no example database (nothing is
    written into the project), no deadline or health checks, the given example budget."""
    return settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False)


@contextlib.contextmanager
def _storage_outside_project() -> Iterator[None]:
    """hypothesis caches source constants under ``./.hypothesis``; during a search run by
    the plugin that goes to a temporary folder, so nothing is written into the project.
    The previous setting (the user's, or pytest's hypothesis plugin's) is restored."""
    from hypothesis import configuration

    attribute = "_" "_hypothesis_home_directory"  # module global, read to restore it
    previous = getattr(configuration, attribute, None)
    with tempfile.TemporaryDirectory(prefix="advrobust-hypothesis-") as folder:
        configuration.set_hypothesis_home_dir(folder)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(previous)


@dataclass(frozen=True)
class Counterexample:
    """A perturbation that changes a prediction."""

    delta: np.ndarray
    label: int
    new_label: int
    #: the step hypothesis shrank to, before it was scaled down (a less marginal flip)
    found: np.ndarray | None = None

    @property
    def size(self) -> float:
        """``max|delta|``."""
        return float(np.abs(self.delta).max()) if self.delta.size else 0.0


def find_flip(predict: Callable[[np.ndarray], int], center: Any, label: int, eps: float,
              input_range: tuple[float, float] | None = None, *, max_examples: int = 100,
              seed: int = 0) -> Counterexample | None:
    """Search the eps ball around ``center`` for a point whose predicted label
    (``predict(point)``) is not ``label``; hypothesis shrinks it, then the step is scaled
    down as far as the flip holds. None when no flip is found within ``max_examples``.

    Deterministic for a given ``seed``; writes no example database."""
    center = np.asarray(center)
    if center.dtype.kind != "f":
        center = center.astype(np.float32)

    def flips(delta: np.ndarray) -> bool:
        return int(predict(_near(center, delta, eps, input_range))) != int(label)

    try:
        with _storage_outside_project():
            delta = find(linf_perturbations(center.shape, eps, center.dtype), flips,
                         settings=search_settings(max_examples), random=random.Random(seed))
    except NoSuchExample:
        return None
    found = delta
    low, high = 0.0, 1.0  # the flip holds at scale 1; find the smallest scale that keeps it
    for _ in range(20):
        middle = (low + high) / 2
        if flips((delta * middle).astype(center.dtype)):
            high = middle
        else:
            low = middle
    if high < 1.0:
        delta = (delta * high).astype(center.dtype)
    point = _near(center, delta, eps, input_range)
    return Counterexample(delta=point - center, label=int(label), new_label=int(predict(point)),
                          found=_near(center, found, eps, input_range) - center)
