"""What a gate produces: counts, accuracies, thresholds and the verdict, JSON-ready."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AttackResult", "wilson_interval"]


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
    passed: bool = True
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
    #: gradient-masking diagnostics (see ``diagnostics.py``): figures such as
    #: ``zero_gradient``, and when one trips ``suspected`` (words) and ``fails_gate``
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.n if self.n else 0.0

    @property
    def drop(self) -> float:
        return self.clean_accuracy - self.accuracy

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def key(self) -> str:
        """Stable identity across runs: model, attack, eps and check options."""
        eps = "" if self.eps is None else f"[eps={self.eps:g}]"
        options = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.model}::{self.attack}{eps}" + (f"{{{options}}}" if options else "")

    @property
    def label(self) -> str:
        """How messages name the gate: ``fgsm eps=0.1 on mlp-torch``."""
        eps = "" if self.eps is None else f" eps={self.eps:g}"
        return f"{self.attack}{eps} on {self.model}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's entry (schema version 1: keys are only ever added)."""
        low, high = self.interval
        data = asdict(self)
        data.pop("seconds")
        data.update(accuracy=round(self.accuracy, 6), clean_accuracy=round(self.clean_accuracy, 6),
                    ci_low=round(low, 6), ci_high=round(high, 6), key=self.key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttackResult":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})
