"""Thresholds -> verdict and message. Numbers in, words out; no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .results import AttackResult

__all__ = ["Verdict", "judge", "baseline_figure", "masking_words", "partial_message",
           "regression_reason"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


def judge(result: AttackResult) -> Verdict:
    """Apply ``min-accuracy`` and ``max-drop`` (and a baseline's ``max-regression``, when
    the result carries a baseline figure). Every failed threshold is named."""
    low, high = result.interval
    context = f"(n={result.n}, clean {result.clean_accuracy:.3f}, 95% CI {low:.3f}-{high:.3f})"
    if result.details:
        context = f"{context}; {result.details}"
    # gradient masking: a gate whose attack could not move its samples fails whatever its
    # thresholds say (diagnostics.py); the statistical signs only add their words
    masking = masking_words(result)
    masked = bool(masking) and bool(result.diagnostics.get("fails_gate"))
    if result.report_only:  # measured, never judged: no threshold, no baseline rule
        return Verdict(True, f"{result.label}: accuracy {result.accuracy:.3f}, measured "
                             f"(report-only, no verdict) {context}" + (f"; {masking}" if masking else ""))
    reasons = [masking + " (see README, \"when the gate says masking suspected\"; "
               "allow-masking = true in the check accepts it)"] if masked else []
    if result.min_accuracy is not None and result.accuracy < result.min_accuracy:
        reasons.append(f"accuracy {result.accuracy:.3f} < min-accuracy {result.min_accuracy:.3f}")
    if result.max_drop is not None and result.drop > result.max_drop + 1e-12:
        reasons.append(f"drop {result.drop:.3f} from clean > max-drop {result.max_drop:.3f} "
                       f"(accuracy {result.accuracy:.3f})")
    if result.baseline_accuracy is not None:
        regression = regression_reason(result)
        if regression:
            reasons.append(regression)
    if masking and not masked:
        context = f"{context}; {masking}"
    if reasons:
        return Verdict(False, f"{result.label}: {'; '.join(reasons)} {context}")
    bounds = [f"min-accuracy {result.min_accuracy:.3f}" if result.min_accuracy is not None else "",
              f"max-drop {result.max_drop:.3f}" if result.max_drop is not None else ""]
    within = ", ".join(b for b in bounds if b) or "no threshold"
    return Verdict(True, f"{result.label}: accuracy {result.accuracy:.3f} within {within} {context}")


def partial_message(result: AttackResult) -> str:
    """A shard's result: counts only, no verdict (the thresholds apply to the merged figure)."""
    shard = result.shard or {}
    return (f"{result.label}: partial, shard {shard.get('index')}/{shard.get('count')}: "
            f"{result.correct}/{result.n} correct (clean {result.clean_correct}); no verdict "
            "until the shards are merged (python -m pytest_advrobust merge)")


def masking_words(result: AttackResult) -> str:
    """``gradient masking suspected: <figures>`` when a diagnostic tripped, else ``""``."""
    suspected = result.diagnostics.get("suspected") if result.diagnostics else None
    return f"gradient masking suspected: {'; '.join(suspected)}" if suspected else ""


def baseline_figure(entry: Any, result: AttackResult) -> float | None:
    """The baseline accuracy to judge ``result`` against: ``entry`` is a number, or an object
    with ``accuracy`` and ``fingerprint``; None when absent or measured on something else."""
    if entry is None:
        return None
    if isinstance(entry, (int, float)):
        return float(entry)
    from .fingerprint import differences

    if differences(getattr(entry, "fingerprint", None) or {}, result.fingerprint, measurement=True):
        return None  # measured on something else: not comparable
    return float(entry.accuracy)


def regression_reason(result: AttackResult) -> str:
    """A fall below the baseline larger than ``max-regression`` and than sampling noise.

    With ``max-regression`` unset (0.0) a fall counts only when the baseline figure lies
    above the new result's 95% interval, so a regression is not declared on noise alone.
    """
    baseline = result.baseline_accuracy
    assert baseline is not None
    allowed = result.max_regression or 0.0
    fall = baseline - result.accuracy
    if result.max_regression is None:
        _, high = result.interval
        if baseline > high + 1e-12:
            return (f"regression: accuracy {result.accuracy:.3f} vs baseline {baseline:.3f} "
                    f"(baseline above the 95% interval)")
        return ""
    if fall > allowed + 1e-12:
        return (f"regression: accuracy {result.accuracy:.3f} vs baseline {baseline:.3f}, "
                f"a fall of {fall:.3f} > max-regression {allowed:.3f}")
    return ""
