"""What a gate produces, in two steps: the engine's :class:`Measurement` (counts, attack
statistics, what the masking diagnostics need; no thresholds, no verdict) and the judge's
:class:`AttackResult` (the measurement with its check's thresholds, status and message),
both JSON-ready."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AttackResult", "Measurement", "STATUSES", "class_accuracy", "format_eps", "gate_key",
           "wilson_interval"]

#: what a gate can end as: ``measured`` is a ``report-only`` check (figures, no verdict);
#: ``not run`` a selected gate the run never reached (interrupted, ``-x``, ``--maxfail``);
#: ``partial`` one shard's counts (``--advrobust-shard``), judged only once merged
STATUSES = ("passed", "failed", "error", "measured", "not run", "partial")


def format_eps(eps: float) -> str:
    """eps as ids, keys and tables show it: short (``0.1``), but never two values alike
    (``0.1000001`` is not shown as ``0.1``); ``-0.0`` is ``0``."""
    eps = eps + 0.0  # -0.0 -> 0.0
    short = f"{eps:g}"
    return short if float(short) == eps else repr(float(eps))


def gate_key(model: str, attack: str, eps: float | None, options: dict[str, Any]) -> str:
    """Stable identity of a gate across runs: model, attack, eps and check options."""
    shown = "" if eps is None else f"[eps={format_eps(eps)}]"
    listed = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{model}::{attack}{shown}" + (f"{{{listed}}}" if listed else "")


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``correct / n`` (exact at the 0 and 1 ends)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Measurement:
    """What the engine measured for one gate (a check of a model at one eps): counts on
    the samples it evaluated, the attack's statistics and words, and what the judge needs
    for the masking diagnostics. No thresholds and no verdict (see ``gate.py``), no files
    (a fitted ``state`` is handed out for the reports to save). ``error`` instead of
    figures when the gate could not be computed."""

    model: str
    attack: str
    eps: float | None
    check: int
    options: dict[str, Any] = field(default_factory=dict)
    correct: int = 0
    clean_correct: int = 0
    n: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    #: the attack's words for its statistics (a counterexample, which member fooled what)
    details: str = ""
    #: how the model was run (fixed batch, binary head, a straight-through gradient)
    model_notes: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: correctly classified samples whose cross-entropy input gradient is exactly zero
    #: (None: not measured, for an attack that needs no gradient)
    zero_gradient: int | None = None
    #: samples the model gets wrong clean and right under attack (noise can do that): with
    #: ``clean_correct - correct`` it splits the drop into what the attack took and gave
    gained: int = 0
    #: the samples the gate evaluates on all the data (None: ``n``, it measured them all;
    #: also None while a stream of batches has not been read to its end)
    samples: int | None = None
    #: decide-early stopped the gate at the end of ``stage`` (1, 2, ...), on ``n`` of its
    #: ``samples``, because its verdict was settled (see ``gate.decide``)
    decided_early: bool = False
    stage: int = 0
    #: a shard run's record (``--advrobust-shard``): the shard, the stream it read, a fit digest
    shard: dict[str, Any] | None = None
    #: ``kind: message`` when the gate could not be computed (no figures then)
    error: str = ""
    #: files a report stage saved for this gate (a fitted perturbation, an examples grid)
    artifacts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: per true label, in label order: ``{"label", "n", "clean_correct", "correct"}`` (the
    #: counts above, split by class; summed across shards)
    per_class: list[dict[str, int]] = field(default_factory=list)
    #: the fitted state (a universal perturbation), handed out, never serialised
    state: Any = field(default=None, repr=False, compare=False)
    #: the first flipped samples (``--advrobust-examples``): indices, labels, predictions,
    #: clean and attacked inputs; handed out like ``state``, never serialised
    examples: Any = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return gate_key(self.model, self.attack, self.eps, self.options)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (without what is handed out: ``state``, ``examples``): how a worker hands
        it to the controller."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in HANDED_OUT}
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        names = {f for f in cls.__dataclass_fields__ if f not in HANDED_OUT}
        return cls(**{k: v for k, v in data.items() if k in names})


#: what a measurement hands to the process that made it and never serialises
HANDED_OUT = ("state", "examples")


def class_accuracy(row: dict[str, int]) -> tuple[float, float]:
    """One ``per_class`` row's (clean accuracy, accuracy under attack)."""
    n = row["n"]
    return (row["clean_correct"] / n, row["correct"] / n) if n else (0.0, 0.0)


def json_safe(value: Any) -> Any:
    """Tuples as lists, recursively (options hold tuples so checks stay hashable)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class AttackResult:
    """One (model, attack, eps): accuracy under attack next to clean accuracy on the same
    samples. ``n`` is the number of samples both were measured on."""

    model: str
    attack: str
    eps: float | None
    correct: int
    clean_correct: int
    n: int
    min_accuracy: float | None = None
    max_drop: float | None = None
    max_regression: float | None = None
    #: the verdict; None for a shard's partial result, which has none until merged
    passed: bool | None = True
    message: str = ""
    check: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    baseline_accuracy: float | None = None
    #: what it was measured on (see ``fingerprint.py``); a baseline compares like with like
    fingerprint: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: what the attack found, in words (e.g. the hypothesis attack's shrunk counterexample)
    details: str = ""
    #: why the gate could not be computed (its status is then ``error``; no figures)
    error: str = ""
    #: a ``report-only`` check: figures without a verdict (status ``measured``)
    report_only: bool = False
    #: why a selected gate was never computed (status ``not run``; no figures)
    not_run: str = ""
    #: set on a shard run's result (``--advrobust-shard=K/N``): ``{"index": K, "count": N}``
    #: and what the merge checks (the stream's sample count and label digest, a fit digest)
    shard: dict[str, Any] | None = None
    #: gradient-masking diagnostics (see ``diagnostics.py``): figures such as
    #: ``zero_gradient``, and when one trips ``suspected`` (words) and ``fails_gate``
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: why a check is measured without a verdict although it was not marked report-only
    #: (a threshold that can never fail, eps = 0): said beside its figures
    note: str = ""
    #: a failed or errored gate whose figure the user accepted into the baseline
    #: (``--advrobust-accept``); its status stays what it is
    accepted: bool = False
    #: per true label: ``{"label", "n", "clean_correct", "correct"}`` (see Measurement)
    per_class: list[dict[str, int]] = field(default_factory=list)
    #: the samples the gate evaluates on all the data (None: ``n``)
    samples: int | None = None
    #: decide-early stopped the gate on ``n`` of its ``samples``: its verdict was settled
    decided_early: bool = False
    #: what decided it (``gate.Decision.to_dict``: the stage, the error it spent, the
    #: intervals it used); None for a gate measured on all its data
    decision: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``error``, ``measured``, ``not run``, or ``partial`` for
        one shard's counts (no verdict; see :data:`STATUSES`)."""
        if self.not_run:
            return "not run"
        if self.error:
            return "error"
        if self.shard is not None:
            return "partial"
        if not self.passed:
            return "failed"
        return "measured" if self.report_only else "passed"

    @property
    def measured(self) -> bool:
        """Whether the gate has figures (it was computed, not errored or left out)."""
        return not (self.error or self.not_run)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.n if self.n else 0.0

    @property
    def drop(self) -> float:
        """Clean accuracy minus accuracy under attack, on the same samples (one rounding)."""
        return (self.clean_correct - self.correct) / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """The accuracy's interval: the 95% Wilson interval, or for a gate decided early
        the interval its decision used (anytime-valid, at decide-early-error)."""
        if self.decision and "accuracy" in self.decision.get("intervals", {}):
            low, high = self.decision["intervals"]["accuracy"]
            return float(low), float(high)
        return wilson_interval(self.correct, self.n)

    @property
    def decided_after(self) -> str:
        """``decided after 512 of 6,000`` for a gate decide-early stopped, else ``""``."""
        if not self.decided_early:
            return ""
        return f"decided after {self.n:,} of {self.samples if self.samples is not None else self.n:,}"

    @property
    def key(self) -> str:
        """Stable identity across runs: model, attack, eps and check options."""
        return gate_key(self.model, self.attack, self.eps, self.options)

    @property
    def label(self) -> str:
        """How messages name the gate: ``fgsm eps=0.1 on mlp-torch``."""
        eps = "" if self.eps is None else f" eps={format_eps(self.eps)}"
        return f"{self.attack}{eps} on {self.model}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's entry (schema version 1: keys are only ever added)."""
        low, high = self.interval
        data = asdict(self)
        data.pop("seconds")
        data.update(accuracy=round(self.accuracy, 6), clean_accuracy=round(self.clean_accuracy, 6),
                    ci_low=round(low, 6), ci_high=round(high, 6), key=self.key, status=self.status)
        data["samples"] = self.samples if self.samples is not None else self.n
        if not self.measured:  # no figures were measured: say so rather than report zeros
            data.update(accuracy=None, clean_accuracy=None, ci_low=None, ci_high=None,
                        samples=None)
        if self.shard is None:
            data.pop("shard")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttackResult":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})
