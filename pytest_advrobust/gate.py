"""The one judge: measurements + the config's checks + a baseline -> statuses and messages.

Every verdict the product gives comes from :class:`Judge`: a gate item's pass or fail,
the reports at the end of a run (serial or under xdist), the Python API and the shard
merge. The engine only measures (:class:`~pytest_advrobust.results.Measurement`); the
thresholds, ``report-only``, ``allow-masking``, the loss an attack ascends and the
baseline rule are read here, from the config, never from what a worker or a shard file
says. Numbers in, words out; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, Sequence

from .results import AttackResult, Measurement, wilson_interval

if TYPE_CHECKING:
    from .attacks import AttackRegistry
    from .config import CheckSpec, ModelSpec

__all__ = ["DECIDE_EARLY_ERROR", "Decision", "FIRST_STAGE", "Judge", "Verdict", "decide",
           "decide_early_error", "draws_words", "early_verdict", "judge", "baseline_figure",
           "kl_interval", "masking_words", "never_fails", "partial_message", "regression_reason",
           "stage_error", "stage_samples"]


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
                 accept: Collection[str] = (), decide_early: bool | None = None) -> None:
        self.lookup = lookup
        self.registry = registry
        self.baseline = dict(baseline or {})
        self.accept = frozenset(accept)
        #: ``--advrobust-decide-early``: True turns decide-early on where the config does not
        #: say, False off everywhere, None leaves it to the config
        self.decide_early = decide_early

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
            report_only=check.report_only, shard=m.shard, samples=m.samples,
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
            # decide-early on a stream not yet read to its end: the baseline's figure cannot
            # be matched to the data yet, so its rule stays open (never skipped)
            pending = m.decided_early and m.samples is None and entry is not None
            if not check.report_only:
                result.note = never_fails(check, m.eps, uses_eps=attack is None or attack.uses_eps,
                                          compared=figure is not None or pending)
                result.report_only = bool(result.note)
            if not result.report_only:
                result.baseline_accuracy = figure
            if m.decided_early:
                self._decided_early(result, m, spec, check, attack, loss, pending)
            else:
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

    # -- decide-early -------------------------------------------------------------------
    def early_error(self, model: str, check: int) -> float | None:
        """The error decide-early may make on this gate's verdict (None: it is measured on
        all its data)."""
        return decide_early_error(*self.lookup(model, check), self.decide_early)

    def decides_early(self, model: str, check: int) -> bool:
        """Whether the engine checks this gate at the end of each stage (its callback)."""
        return self.early_error(model, check) is not None

    def settled(self, m: Measurement) -> bool:
        """At the end of stage ``m.stage``: whether the gate's counts so far (``m``, marked
        decided early) settle its verdict, so the engine may stop it (its callback)."""
        decision = self.result(m).decision
        return bool(decision) and decision.get("passed") is not None

    def _decided_early(self, result: AttackResult, m: Measurement, spec: "ModelSpec",
                       check: "CheckSpec", attack: Any, loss: str, pending: bool) -> None:
        """The verdict of a gate decide-early stopped: :func:`decide` on its counts, by the
        rules that apply to it, at the stage it stopped at (the same call that stopped it)."""
        result.decided_early = True
        error = self.early_error(m.model, m.check)
        if error is None or m.stage < 1:
            result.passed = False
            result.error = result.message = (
                f"{result.label}: measured on {m.n} samples and marked as decided early, but "
                "decide-early is off for this gate in this config; rerun it.")
            return
        needs_gradient = attack is not None and attack.needs_gradient
        from .config import masking_probe
        from .diagnostics import masking_counts, probe_trips

        judged = not (result.report_only or check.allow_masking)
        masking = masking_counts(m.stats, needs_gradient=needs_gradient,
                                 zero_gradient=m.zero_gradient if needs_gradient else None,
                                 loss=loss) if judged else ()
        # the masking probe attacks the first masking-probe-samples samples of the order a
        # gate that decides early reads (engine: ModelPass._probe_members), so its paired
        # test is the full run's, with no error to spend, once it has measured that many (or all)
        probe = None
        settings = masking_probe(spec, check) if judged and needs_gradient and attack is not None \
            and attack.cross_checked else None
        if settings is not None:
            done = m.n >= settings[0] or (m.samples is not None and m.n >= m.samples)
            probe = probe_trips(m.stats) if done else None
        decision = decide(correct=m.correct, clean_correct=m.clean_correct, gained=m.gained, n=m.n,
                          stage=m.stage, error=error, min_accuracy=result.min_accuracy,
                          max_drop=result.max_drop, masking=masking,
                          regression=regression_bounds(result, m.samples, pending=pending),
                          report_only=result.report_only, probe=probe,
                          probed=settings is not None)
        result.decision = decision.to_dict()
        if decision.passed is None:  # the engine stopped it on this very rule: a bug if seen
            result.passed = False
            result.error = result.message = (
                f"{result.label}: stopped by decide-early after {m.n} samples, but its counts "
                "do not settle its verdict; rerun with --advrobust-no-decide-early and "
                "please report it.")
            return
        verdict = early_verdict(result, decision)
        result.passed, result.message = verdict.passed, verdict.message

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


#: what a message that fails a gate for gradient masking adds: where to read and the way out
MASKING_HINT = (" (see docs: \"Masking\", section \"When the gate says masking suspected\"; "
                "allow-masking = true in the check accepts it)")


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
    reasons = [masking + MASKING_HINT] if masked else []
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


# -- decide-early -----------------------------------------------------------------------------
#: decide-early's first stage: a gate is first checked after this many samples of its
#: model's pass, then after each doubling (256, 512, 1,024, ...)
FIRST_STAGE = 128
#: ``decide-early-error``'s default: the most chance that a verdict decided early differs
#: from the verdict the gate would get on all its data
DECIDE_EARLY_ERROR = 1e-3
#: the most a config may allow (a gate that decides wrongly once in ten is not a gate)
MAX_DECIDE_EARLY_ERROR = 0.1


def decide_early_error(spec: "ModelSpec", check: "CheckSpec", override: bool | None = None) -> float | None:
    """The error decide-early may make on ``check``'s gates, or None when they are measured
    on all their data: the check's ``decide-early``, else its model's; ``override`` (the
    command line) turns it on where the config says nothing, or off (False) everywhere."""
    if override is False:
        return None
    enabled = check.decide_early if check.decide_early is not None else spec.decide_early
    if not (enabled if enabled is not None else bool(override)):
        return None
    return check.decide_early_error if check.decide_early_error is not None else spec.decide_early_error


def stage_samples(stage: int) -> int:
    """How many samples of the pass lie before the end of stage ``stage`` (1, 2, ...)."""
    return FIRST_STAGE << (stage - 1)


def stage_error(error: float, stage: int) -> float:
    """What stage ``stage`` may spend of a gate's ``error``: 6 / (pi^2 stage^2) of it, so
    all the stages together spend at most ``error``, however many the data has."""
    return error * 6.0 / (math.pi ** 2 * stage * stage)


def _kl(p: float, q: float) -> float:
    """KL divergence of Bernoulli(q) from Bernoulli(p)."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q) if q > 0 else math.inf
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q)) if q < 1 else math.inf
    return out


def kl_interval(successes: int, n: int, error: float) -> tuple[float, float]:
    """Where the proportion of a population lies, from ``successes`` of ``n`` samples drawn
    from it, except with chance at most ``error`` (half on each side): the Chernoff bound
    with the Bernoulli KL divergence, ``n KL(successes/n || q) <= log(2 / error)``. It holds
    for draws without replacement (Hoeffding 1963, theorem 4) and for any variable in [0, 1],
    and always contains ``successes / n``. The ends are rounded outwards."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    bound = math.log(2.0 / error) / n

    def edge(outside: float) -> float:
        inside = p
        if _kl(p, outside) <= bound:
            return outside
        for _ in range(64):
            middle = (inside + outside) / 2
            if _kl(p, middle) <= bound:
                inside = middle
            else:
                outside = middle
        return outside

    return edge(0.0), edge(1.0)


@dataclass(frozen=True)
class Decision:
    """decide-early's reading of one gate's counts at the end of a stage."""

    #: True: the gate passes on all its data too, False: it fails there, each with chance at
    #: least 1 - decide-early-error; None: not settled yet
    passed: bool | None
    stage: int
    #: the gate's decide-early-error, and the share of it this stage spent (all its
    #: intervals together)
    error: float
    share: float
    #: name -> (low, high): the intervals the decision used: ``accuracy`` always, ``drop``
    #: with max-drop, ``masking`` (the failing count's share of the correctly classified
    #: samples) when that count can fail the gate
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the rules settled failing / passing (``min-accuracy``, ``max-drop``, ``regression``,
    #: ``masking``)
    failing: tuple[str, ...] = ()
    passing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "stage": self.stage, "error": self.error,
                "share": self.share, "intervals": {name: [round(low, 6), round(high, 6)]
                              for name, (low, high) in self.intervals.items()},
                "failing": list(self.failing), "passing": list(self.passing)}


def decide(*, correct: int, clean_correct: int, gained: int, n: int, stage: int, error: float,
           min_accuracy: float | None = None, max_drop: float | None = None,
           regression: tuple[float, float] | None = None,
           masking: int | Sequence[int] | None = None, report_only: bool = False,
           probe: bool | None = None, probed: bool = False) -> Decision:
    """Whether a gate's counts on its first ``n`` samples (a uniformly random part of its
    data) settle the verdict it would get on all of it.

    Each rule that applies is settled when an interval lies wholly on one side of it:
    ``min-accuracy`` by the accuracy's; ``max-drop`` by the drop's, ``(clean_correct -
    correct) / n`` split into what the attack took (``clean_correct - correct + gained``)
    and gave (``gained``), an interval on each; the baseline rule by the accuracy's against
    ``regression = (pass_at, fail_below)`` (:func:`regression_bounds`); the masking rule by
    the failing ``masking`` count's share of the correctly classified samples against
    :data:`~pytest_advrobust.diagnostics.ZERO_GRADIENT_LIMIT` (each of ``masking``'s counts
    when it gives several); the masking probe's rule (``probed``) by the probe's own exact
    test once its subsample is measured (``probe``: True trips it, False clears it, None not
    yet), which spends no error: the probe's subsample is the gate's first samples, so the
    same test would be taken on all the data. The gate fails as soon as one
    rule is settled failing, and passes once all are settled passing. The stage's share of
    ``error`` (:func:`stage_error`) is split evenly over the intervals, so the chance that
    any interval of any stage misses its figure on all the data, and so that a settled
    verdict differs from the verdict there, is at most ``error``. A report-only gate has
    nothing to decide: it is settled at once (passed, with its accuracy's interval).
    """
    from .diagnostics import ZERO_GRADIENT_LIMIT

    share = stage_error(error, stage)
    if report_only:
        return Decision(True, stage, error, share, {"accuracy": kl_interval(correct, n, share)})
    counts = () if masking is None else ((masking,) if isinstance(masking, int) else tuple(masking))
    parts = 1 + (2 if max_drop is not None else 0) + len(counts)
    each = share / parts
    intervals = {"accuracy": kl_interval(correct, n, each)}
    low, high = intervals["accuracy"]
    settled: dict[str, bool | None] = {}

    def side(name: str, passes: bool, fails: bool) -> None:
        settled[name] = True if passes else (False if fails else None)

    if min_accuracy is not None:
        side("min-accuracy", low >= min_accuracy, high < min_accuracy)
    if regression is not None:
        side("regression", low >= regression[0], high < regression[1])
    if max_drop is not None:
        took = kl_interval(clean_correct - correct + gained, n, each)
        gave = kl_interval(gained, n, each)
        intervals["drop"] = (took[0] - gave[1], took[1] - gave[0])
        limit = max_drop + 1e-12  # judge()'s tolerance
        side("max-drop", intervals["drop"][1] <= limit, intervals["drop"][0] > limit)
    for index, count in enumerate(counts):
        name = "masking" if index == 0 else f"masking-{index + 1}"
        intervals[name] = kl_interval(count, clean_correct, each)
        side(name, intervals[name][1] <= ZERO_GRADIENT_LIMIT, intervals[name][0] > ZERO_GRADIENT_LIMIT)
    if probed:
        side("masking-probe", probe is False, probe is True)
    failing = tuple(name for name, value in settled.items() if value is False)
    passing = tuple(name for name, value in settled.items() if value is True)
    passed = False if failing else (True if len(passing) == len(settled) else None)
    return Decision(passed, stage, error, share, intervals, failing, passing)


def regression_bounds(result: AttackResult, samples: int | None, *,
                      pending: bool = False) -> tuple[float, float] | None:
    """The baseline rule as a rule on the accuracy over all the gate's ``samples``:
    ``(pass_at, fail_below)``, or None without a baseline figure. With max-regression the
    rule is a floor, ``baseline - max-regression``; without, the fall must clear the 95%
    interval of all ``samples`` (:func:`regression_reason`), which is the floor ``k / samples``
    for the smallest count ``k`` whose interval reaches the baseline. ``pending`` (a figure
    that cannot be matched yet) or an unknown ``samples`` keep it open on that side."""
    baseline = result.baseline_accuracy
    if baseline is None:
        return (math.inf, -math.inf) if pending else None
    if result.max_regression is not None:
        floor = baseline - result.max_regression - 1e-12
        return floor, floor
    if samples is None:  # passing above the baseline itself passes whatever the size
        return baseline, -math.inf
    low, high = 0, samples  # wilson_interval(samples, samples)[1] == 1 >= baseline
    while low < high:
        middle = (low + high) // 2
        if wilson_interval(middle, samples)[1] + 1e-12 >= baseline:
            high = middle
        else:
            low = middle + 1
    return low / samples, low / samples


def early_verdict(result: AttackResult, decision: Decision) -> Verdict:
    """The verdict of a gate decide-early settled, in :func:`judge`'s words for the rules
    it settled, with the interval it used and how many samples it took."""
    intervals = ", ".join(f"{name} {low:.3f}-{high:.3f}" for name, (low, high) in decision.intervals.items())
    context = (f"(n={result.n}, {result.decided_after} samples, clean {result.clean_accuracy:.3f}; "
               f"decide-early intervals: {intervals}; error <= {decision.error:g})")
    if result.details:
        context = f"{context}; {result.details}"
    masking = masking_words(result)
    if result.report_only:
        why = f"; {result.note}" if result.note else " (report-only, no verdict)"
        return Verdict(True, f"{result.label}: accuracy {result.accuracy:.3f}, measured{why}: nothing "
                             f"to decide, so decide-early stopped it at its first stage {context}"
                       + (f"; {masking}" if masking else ""))
    words = {
        "min-accuracy": (f"accuracy {result.accuracy:.3f} < min-accuracy {result.min_accuracy or 0:.3f}",
                         f"accuracy {result.accuracy:.3f} >= min-accuracy {result.min_accuracy or 0:.3f}"),
        "max-drop": (f"drop {result.drop:.3f} from clean {result.clean_accuracy:.3f} > max-drop "
                     f"{result.max_drop or 0:.3f} (accuracy {result.accuracy:.3f})",
                     f"drop {result.drop:.3f} <= max-drop {result.max_drop or 0:.3f}"),
        "regression": (f"regression: accuracy {result.accuracy:.3f} vs baseline "
                       f"{result.baseline_accuracy or 0:.3f}, below what the baseline rule allows",
                       f"no regression from baseline {result.baseline_accuracy or 0:.3f}"),
        "masking": (masking + MASKING_HINT, ""),
    }
    if decision.failing:  # the masking rules (counts, the probe) fail in one set of words
        reasons = dict.fromkeys(words["masking" if name.startswith("masking") else name][0]
                                for name in decision.failing)
        return Verdict(False, f"{result.label}: {'; '.join(reasons)} {context}")
    if masking:
        context = f"{context}; {masking}"
    shown = [words[name][1] for name in decision.passing if name in words and words[name][1]]
    return Verdict(True, f"{result.label}: {', '.join(shown) or 'passed'} {context}")
