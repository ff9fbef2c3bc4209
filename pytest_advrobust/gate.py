"""The one judge: measurements + the config's checks + a baseline -> statuses and messages.

Every verdict the product gives comes from :class:`Judge`: a gate item's pass or fail,
the reports at the end of a run (serial or under xdist), the Python API and the shard
merge. The engine only measures (:class:`~pytest_advrobust.results.Measurement`); the
thresholds, ``report-only``, ``allow-masking``, the loss an attack ascends and the
baseline rule are read here, from the config, never from what a worker or a shard file
says. Numbers in, words out; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, Sequence

from .results import AttackResult, Measurement

if TYPE_CHECKING:
    from .attacks import AttackRegistry
    from .config import CheckSpec, ModelSpec

__all__ = ["Judge", "Verdict", "judge", "baseline_figure", "draws_words", "masking_words", "never_fails",
           "partial_message", "regression_reason"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


class Judge:
    """Turns measurements into results: ``lookup(model, check index)`` gives the gate's
    model spec and check (the config's, or a hand-written call's); ``registry`` what each
    attack declares; ``baseline`` (gate key -> entry) the figures to compare with; ``accept``
    the gate keys (or ``"all"``) whose failure the user accepts into a saved baseline."""

    def __init__(self, lookup: Callable[[str, int], tuple["ModelSpec", "CheckSpec"]],
                 registry: "AttackRegistry", *, baseline: Mapping[str, Any] | None = None,
                 accept: Collection[str] = ()) -> None:
        self.lookup = lookup
        self.registry = registry
        self.baseline = dict(baseline or {})
        self.accept = frozenset(accept)

    def result(self, m: Measurement, siblings: Sequence[Measurement] = ()) -> AttackResult:
        """The verdict of one gate; ``siblings`` (the model's other measurements) add the
        statistical masking signs, which inform and never change a verdict."""
        spec, check = self.lookup(m.model, m.check)
        attack = self.registry[m.attack] if m.attack in self.registry else None
        result = AttackResult(
            model=m.model, attack=m.attack, eps=m.eps, correct=m.correct,
            clean_correct=m.clean_correct, n=m.n, min_accuracy=check.min_accuracy,
            max_drop=check.max_drop,
            max_regression=check.max_regression if check.max_regression is not None else spec.max_regression,
            check=m.check, options=dict(m.options), stats=dict(m.stats),
            artifacts=list(m.artifacts), fingerprint=dict(m.fingerprint), seconds=m.seconds,
            details="; ".join(filter(None, [m.details, *m.model_notes, draws_words(m)])),
            report_only=check.report_only, shard=m.shard,
            per_class=[dict(row) for row in m.per_class])
        if m.error:
            result.passed, result.error, result.message = False, m.error, m.error
        elif m.shard is not None:  # one shard's counts: judged once the shards are merged
            result.passed, result.message = None, partial_message(result)
        elif m.n == 0:
            result.passed, result.error = False, (
                f"{result.label}: no samples to evaluate (the fit split or the samples cap "
                "takes them all)")
            result.message = result.error
        else:
            needs_gradient = attack is not None and attack.needs_gradient
            loss = _loss(attack, check)
            from .diagnostics import diagnose

            measured = [s for s in siblings if not s.error and s.n]
            result.diagnostics = diagnose(m, measured, needs_gradient=needs_gradient,
                                          zero_gradient=m.zero_gradient if needs_gradient else None,
                                          loss=loss, allow_masking=check.allow_masking,
                                          black_box=self._black_box(measured) if attack is not None
                                          and attack.cross_checked else ())
            entry = self.baseline.get(result.key)
            figure = baseline_figure(entry, result)
            if not check.report_only:
                result.note = never_fails(check, m.eps, uses_eps=attack is None or attack.uses_eps,
                                          compared=figure is not None)
                result.report_only = bool(result.note)
            if not result.report_only:
                result.baseline_accuracy = figure
            verdict = judge(result)
            result.passed, result.message = verdict.passed, verdict.message
        result.accepted = result.status in ("failed", "error") and (
            "all" in self.accept or result.key in self.accept)
        return result

    def _black_box(self, measurements: Sequence[Measurement]) -> list[Measurement]:
        """The gates among ``measurements`` whose attack needs no gradient of the model
        (square, spsa, transfer, a custom one), ``noise`` aside (compared on its own) and
        ``strongest`` aside (its gradient members are stronger than fgsm or pgd, so its
        lower figure is no sign of masking; its square member is judged within it)."""
        return [s for s in measurements if s.attack in self.registry and s.eps is not None
                and s.attack not in ("noise", "strongest")
                and not self.registry[s.attack].needs_gradient]

    def not_run(self, gate: Mapping[str, Any], why: str) -> AttackResult:
        """A selected gate that never got a measurement (``gate``: its description: model,
        attack, eps, check, options): its thresholds and why it did not run."""
        spec, check = self.lookup(gate["model"], gate["check"])
        return AttackResult(model=gate["model"], attack=gate["attack"], eps=gate["eps"], correct=0,
                            clean_correct=0, n=0, min_accuracy=check.min_accuracy,
                            max_drop=check.max_drop, passed=False, check=gate["check"],
                            options=dict(gate["options"]), report_only=check.report_only,
                            not_run=why, message=why)

    def results(self, measurements: Iterable[Measurement]) -> list[AttackResult]:
        """Every gate's verdict, each with its model's other measurements as siblings."""
        measurements = list(measurements)
        by_model: dict[str, list[Measurement]] = {}
        for m in measurements:
            by_model.setdefault(m.model, []).append(m)
        return [self.result(m, by_model[m.model]) for m in measurements]


def never_fails(check: "CheckSpec", eps: float | None, *, uses_eps: bool, compared: bool) -> str:
    """Why ``check`` can never fail at ``eps`` in this run (empty when it can): such a gate
    is measured and shown as MEASURED with this note, never as a pass. ``compared``: a
    baseline figure is there, so the regression rule can fail it."""
    if uses_eps and eps == 0:
        return ("eps = 0 leaves the inputs unperturbed (this is the clean accuracy), so the "
                "check could never fail: measured, not judged. Give eps > 0.")
    floor = check.min_accuracy is not None and check.min_accuracy > 0
    drop = check.max_drop is not None and check.max_drop < 1
    if floor or drop or compared:
        return ""
    given = [f"min-accuracy = {check.min_accuracy:g}" if check.min_accuracy is not None else "",
             f"max-drop = {check.max_drop:g}" if check.max_drop is not None else ""]
    return (f"{' and '.join(g for g in given if g)} can never fail: measured, not judged. Raise "
            "min-accuracy above 0 or lower max-drop below 1 to gate on it (or say report-only = "
            "true).")


def _loss(attack: Any, check: "CheckSpec") -> str:
    """The loss the gate's attack ascends, from the check (or the attack's default)."""
    return "ce" if attack is None else attack.loss(check.options)


def judge(result: AttackResult) -> Verdict:
    """Apply ``min-accuracy`` and ``max-drop`` (and a baseline's ``max-regression``, when
    the result carries a baseline figure). Every failed threshold is named."""
    low, high = result.interval
    context = f"(n={result.n}, clean {result.clean_accuracy:.3f}, 95% CI {low:.3f}-{high:.3f})"
    if result.details:
        context = f"{context}; {result.details}"
    # gradient masking: a gate whose attack could not move its samples, or that the masking
    # probe's square beat on the same samples, fails whatever its thresholds say
    # (diagnostics.py); the comparisons with other gates only add their words
    masking = masking_words(result)
    masked = bool(masking) and bool(result.diagnostics.get("fails_gate"))
    if result.report_only:  # measured, never judged: no threshold, no baseline rule
        why = f"; {result.note}" if result.note else " (report-only, no verdict)"
        return Verdict(True, f"{result.label}: accuracy {result.accuracy:.3f}, measured{why} "
                             f"{context}" + (f"; {masking}" if masking else ""))
    reasons = [masking + " (see docs: \"Masking\", section \"When the gate says masking suspected\"; "
               "allow-masking = true in the check accepts it)"] if masked else []
    if result.min_accuracy is not None and result.accuracy < result.min_accuracy:
        reasons.append(f"accuracy {result.accuracy:.3f} < min-accuracy {result.min_accuracy:.3f}")
    if result.max_drop is not None and result.drop > result.max_drop + 1e-12:
        reasons.append(f"drop {result.drop:.3f} from clean {result.clean_accuracy:.3f} > max-drop "
                       f"{result.max_drop:.3f} (accuracy {result.accuracy:.3f})")
    if result.baseline_accuracy is not None:
        regression = regression_reason(result)
        if regression:
            reasons.append(regression)
    if masking and not masked:
        context = f"{context}; {masking}"
    if reasons:
        return Verdict(False, f"{result.label}: {'; '.join(reasons)} {context}")
    bounds = [f"accuracy {result.accuracy:.3f} >= min-accuracy {result.min_accuracy:.3f}"
              if result.min_accuracy is not None else "",
              f"drop {result.drop:.3f} <= max-drop {result.max_drop:.3f}"
              if result.max_drop is not None else ""]
    return Verdict(True, f"{result.label}: {', '.join(b for b in bounds if b)} {context}")


def partial_message(result: AttackResult) -> str:
    """A shard's result: counts only, no verdict (the thresholds apply to the merged figure)."""
    shard = result.shard or {}
    return (f"{result.label}: partial, shard {shard.get('index')}/{shard.get('count')}: "
            f"{result.correct}/{result.n} correct (clean {result.clean_correct}); no verdict "
            "until the shards are merged (python -m pytest_advrobust merge shard-*.json)")


def draws_words(m: Measurement) -> str:
    """A randomised model's figure in words: the gate counts samples right in all draws;
    the mean over draws beside it (empty for a deterministic model)."""
    evaluations = m.stats.get("eot_evaluations")
    if not evaluations or not m.n:
        return ""
    draws = round(evaluations / m.n)
    if draws <= 1:
        return ""
    return (f"{m.correct} of {m.n} samples correct in all {draws} draws (accuracy {m.accuracy:.3f}); "
            f"mean accuracy over the draws {m.stats.get('eot_correct_draws', 0) / evaluations:.3f}")


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
