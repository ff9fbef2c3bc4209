"""The 95% Wilson interval against independent computations."""

from __future__ import annotations

import math

import pytest

from pytest_advrobust.results import AttackResult, wilson_interval

Z = 1.959963984540054


def _score_test_bounds(correct: int, n: int) -> tuple[float, float]:
    """Invert the score test by bisection: p is inside when |p_hat - p| <= z sqrt(p(1-p)/n)."""
    p_hat = correct / n

    def inside(p: float) -> bool:
        return abs(p_hat - p) <= Z * math.sqrt(p * (1 - p) / n)

    def boundary(lo: float, hi: float) -> float:  # lo outside, hi inside (or reversed)
        for _ in range(200):
            mid = (lo + hi) / 2
            if inside(mid) == inside(hi):
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    lower = 0.0 if correct == 0 else boundary(0.0, p_hat)
    upper = 1.0 if correct == n else boundary(1.0, p_hat)
    return lower, upper


@pytest.mark.parametrize("correct, n", [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (412, 540),
                                        (7, 1000), (239, 240)])
def test_interval_inverts_the_score_test(correct: int, n: int) -> None:
    assert wilson_interval(correct, n) == pytest.approx(_score_test_bounds(correct, n), abs=1e-9)


def test_closed_forms_at_the_ends() -> None:
    # 0 of n: [0, z^2 / (n + z^2)];  n of n: [n / (n + z^2), 1]
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z * Z / (10 + Z * Z)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + Z * Z), 1.0))
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)  # textbook value


def test_results_carry_the_interval_in_json_and_messages() -> None:
    from pytest_advrobust.gate import judge

    result = AttackResult(model="m", attack="fgsm", eps=0.1, correct=412, clean_correct=530, n=540,
                          min_accuracy=0.9)
    low, high = _score_test_bounds(412, 540)
    data = result.to_dict()
    assert data["ci_low"] == pytest.approx(low, abs=1e-6) and data["ci_high"] == pytest.approx(high, abs=1e-6)
    assert f"95% CI {low:.3f}-{high:.3f}" in judge(result).message
