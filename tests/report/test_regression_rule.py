"""The baseline rule of gate.py: numbers in, verdict out."""

from __future__ import annotations

from pytest_advrobust.gate import baseline_figure, judge
from pytest_advrobust.report.baseline import BaselineEntry
from pytest_advrobust.results import AttackResult, wilson_interval


def _result(correct: int, n: int = 200, **kwargs) -> AttackResult:
    return AttackResult(model="m", attack="fgsm", eps=0.1, correct=correct, clean_correct=n, n=n, **kwargs)


def test_without_max_regression_a_fall_counts_only_beyond_the_interval() -> None:
    _, high = wilson_interval(100, 200)  # about 0.569
    inside = _result(100, baseline_accuracy=high - 0.01)
    beyond = _result(100, baseline_accuracy=high + 0.01)
    assert judge(inside).passed
    verdict = judge(beyond)
    assert not verdict.passed
    assert "regression: accuracy 0.500 vs baseline" in verdict.message
    assert f"{high + 0.01:.3f}" in verdict.message


def test_max_regression_is_an_exact_allowance() -> None:
    assert judge(_result(100, baseline_accuracy=0.52, max_regression=0.02)).passed
    failed = judge(_result(100, baseline_accuracy=0.53, max_regression=0.02))
    assert not failed.passed
    assert "a fall of 0.030 > max-regression 0.020" in failed.message
    strict = judge(_result(100, baseline_accuracy=0.505, max_regression=0.0))  # explicit 0: any fall
    assert not strict.passed


def test_an_improvement_never_fails() -> None:
    assert judge(_result(150, baseline_accuracy=0.5)).passed
    assert judge(_result(150, baseline_accuracy=0.5, max_regression=0.0)).passed


def test_baseline_figure_compares_a_retrained_model_but_not_a_changed_measurement() -> None:
    result = _result(100, fingerprint={"model": "sha256:a", "data": "d blake2b:1", "n": 200})
    same = BaselineEntry(key=result.key, accuracy=0.7, fingerprint={"model": "sha256:a", "data": "d blake2b:1", "n": 200})
    retrained = BaselineEntry(key=result.key, accuracy=0.7,
                              fingerprint={"model": "sha256:b", "data": "d blake2b:1", "n": 200})
    other_data = BaselineEntry(key=result.key, accuracy=0.7,
                               fingerprint={"model": "sha256:a", "data": "d blake2b:2", "n": 200})
    fewer = BaselineEntry(key=result.key, accuracy=0.7, fingerprint={"model": "sha256:a", "data": "d blake2b:1", "n": 100})
    assert baseline_figure(same, result) == 0.7
    assert baseline_figure(retrained, result) == 0.7  # a retrained model is what a regression gate compares
    assert baseline_figure(other_data, result) is None
    assert baseline_figure(fewer, result) is None
    assert baseline_figure(0.6, result) == 0.6  # a bare number: always compared
    assert baseline_figure(None, result) is None
