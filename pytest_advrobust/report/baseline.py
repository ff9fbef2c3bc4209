"""Baselines: a run's results saved as a plain versioned JSON file, and compared later.

``--advrobust-save-baseline PATH`` writes (atomically)::

    {"format": "pytest-advrobust-baseline", "version": 1,
     "results": {"<gate key>": {"model", "attack", "eps", "accuracy", "ci_low", "ci_high",
                                "correct", "n", "fingerprint": {...}}}}

``--advrobust-baseline PATH`` loads one; each gate is compared with the entry of the same
key when the fingerprints agree (see ``gate.regression_reason`` for the rule).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import AdvRobustError
from ..fingerprint import differences
from ..results import AttackResult
from .files import atomic_write_text

__all__ = ["BaselineEntry", "BaselineError", "Comparison", "compare", "load_baseline",
           "to_baseline", "write_baseline", "FORMAT", "VERSION"]

FORMAT = "pytest-advrobust-baseline"
VERSION = 1


class BaselineError(AdvRobustError):
    """A baseline file that is missing, unreadable or not a baseline."""

    kind = "baseline error"


@dataclass(frozen=True)
class BaselineEntry:
    """One gate's figure in a baseline file."""

    key: str
    accuracy: float
    n: int = 0
    fingerprint: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class Comparison:
    """How a run relates to its baseline, gate by gate (keys), for the summary."""

    compared: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # key -> fields that differ
    #: compared gates whose model differs from the baseline's (retrained): information
    model_changed: list[str] = field(default_factory=list)
    #: gates without figures this run (errored, not run): nothing to compare
    unmeasured: list[str] = field(default_factory=list)

    def note(self, key: str) -> str:
        """The summary's "vs baseline" cell for a gate with no figure to compare."""
        if key in self.changed:
            return "changed data" if self.changed[key] == ["data"] else "changed config"
        if key in self.new:
            return "new"
        if key in self.unmeasured:
            return "no figure"
        return ""


def to_baseline(results: Iterable[AttackResult], keep: dict[str, Any] | None = None) -> str:
    """Deterministic text (sorted keys, no timestamps), so a committed baseline diffs well.
    ``keep``: entries of an existing baseline that this run did not measure, kept as they are."""
    entries = dict(keep or {})
    for r in results:
        low, high = r.interval
        entries[r.key] = {"model": r.model, "attack": r.attack, "eps": r.eps,
                          "accuracy": round(r.accuracy, 6), "ci_low": round(low, 6),
                          "ci_high": round(high, 6), "correct": r.correct, "n": r.n,
                          "fingerprint": r.fingerprint}
    document = {"format": FORMAT, "version": VERSION, "results": entries}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_baseline(path: Path, results: Iterable[AttackResult], *, merge: bool = False) -> Path:
    """Write ``results`` as the baseline at ``path``; with ``merge``, an existing baseline's
    entries for gates not in ``results`` are kept (a partial run never shrinks a baseline)."""
    keep = None
    if merge and Path(path).exists():
        load_baseline(path)  # a damaged file is reported, never silently replaced
        keep = json.loads(Path(path).read_text(encoding="utf-8"))["results"]
    return atomic_write_text(path, to_baseline(results, keep))


def load_baseline(path: Path) -> dict[str, BaselineEntry]:
    """Gate key -> entry. Every problem is a :class:`BaselineError` naming the file (and the
    entry and field at fault)."""
    hint = "Write one with --advrobust-save-baseline PATH on a run you trust."
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BaselineError(f"the baseline file does not exist. {hint}", where=where) from None
    except OSError as exc:
        raise BaselineError(f"cannot read the baseline file ({exc.strerror}).", where=where) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BaselineError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); a "
                            f"baseline is JSON written by pytest-advrobust, so the file is damaged "
                            f"or is another file. {hint}", where=where) from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"is not valid JSON ({exc}); the file is damaged. {hint}",
                            where=where) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BaselineError(f"is not a pytest-advrobust baseline (no \"format\": \"{FORMAT}\"). "
                            f"{hint} (An --advrobust-json report is not a baseline.)", where=where)
    if document.get("version") != VERSION:
        raise BaselineError(f"has baseline version {document.get('version')!r}; this "
                            f"pytest-advrobust reads version {VERSION}. {hint}", where=where)
    raw = document.get("results")
    if not isinstance(raw, dict):
        raise BaselineError(f"\"results\" must be an object of gate key -> figures. {hint}",
                            where=where)

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    # field -> (is it valid, what it must be); a field that is absent is not checked
    rules = {
        "eps": (lambda v: v is None or (number(v) and v >= 0), "a number >= 0, or null for clean"),
        "n": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "a whole number >= 0"),
        "correct": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                    "a whole number >= 0"),
        "fingerprint": (lambda v: v is None or isinstance(v, dict), "an object"),
        "model": (lambda v: isinstance(v, str), "a string"),
        "attack": (lambda v: isinstance(v, str), "a string"),
    }
    entries = {}
    for key, item in raw.items():
        if not isinstance(item, dict):
            raise BaselineError(f"the entry {key!r} must be an object of figures, not "
                                f"{type(item).__name__}. {hint}", where=where)
        accuracy = item.get("accuracy")
        if not (number(accuracy) and 0.0 <= accuracy <= 1.0):
            raise BaselineError(f"the entry {key!r} has no valid \"accuracy\" (a number in [0, 1]"
                                f"{'' if 'accuracy' not in item else f', not {accuracy!r}'}). {hint}",
                                where=where)
        for name, (valid, expected) in rules.items():
            if name in item and not valid(item[name]):
                raise BaselineError(f"the entry {key!r} has an invalid \"{name}\": {item[name]!r} "
                                    f"(it must be {expected}). {hint}", where=where)
        accuracy = float(accuracy)
        exact = _exact(item)
        if exact is not None and abs(exact - accuracy) <= 1e-6:
            accuracy = exact  # the stored figure is rounded; a hand-edited one wins
        entries[key] = BaselineEntry(key=key, accuracy=accuracy, n=int(item.get("n", 0)),
                                     fingerprint=dict(item.get("fingerprint") or {}),
                                     label=_label(item, key))
    return entries


def compare(baseline: dict[str, BaselineEntry], results: Iterable[AttackResult]) -> Comparison:
    """Sort each gate of the run (and each baseline entry) into compared/new/changed/not run."""
    out = Comparison()
    seen = set()
    for r in sorted(results, key=lambda r: r.key):
        seen.add(r.key)
        entry = baseline.get(r.key)
        if entry is None:
            out.new.append(r.key)
        elif not r.measured:
            out.unmeasured.append(r.key)
        elif differences(entry.fingerprint, r.fingerprint, measurement=True):
            out.changed[r.key] = differences(entry.fingerprint, r.fingerprint, measurement=True)
        else:
            out.compared.append(r.key)
            if "model" in differences(entry.fingerprint, r.fingerprint):
                out.model_changed.append(r.key)
    out.not_run = sorted(k for k in baseline if k not in seen)
    return out


def comparison_lines(comparison: Comparison, results: Iterable[AttackResult]) -> list[str]:
    """The summary's "baseline" section: what was and was not compared, in words."""
    by_key = {r.key: r for r in results}
    regressions = [k for k in comparison.compared if "regression" in by_key[k].message
                   and not by_key[k].passed]
    lines = [f"{len(comparison.compared)} compared, {len(regressions)} regressed, "
             f"{len(comparison.new)} new, {len(comparison.changed)} changed config, "
             f"{len(comparison.not_run)} in the baseline but not run"
             + (f", {len(comparison.unmeasured)} without a figure this run" if comparison.unmeasured else "")]
    lines += [f"regression: {by_key[k].label}" for k in regressions]
    if comparison.model_changed:
        lines.append(f"model changed since baseline (compared all the same): "
                     f"{len(comparison.model_changed)} gate(s), e.g. {by_key[comparison.model_changed[0]].label}")
    lines += [(f"changed data, not compared: {by_key[k].label} (the evaluation data differs "
               "from the baseline's)" if fields == ["data"] else
               f"changed config, not compared: {by_key[k].label} (differs in {', '.join(fields)})")
              for k, fields in comparison.changed.items()]
    lines += [f"no figure this run, not compared: {by_key[k].label} ({by_key[k].status})"
              for k in comparison.unmeasured]
    lines += [f"new gate (not in the baseline): {by_key[k].label}" for k in comparison.new]
    lines += [f"not run (removed or deselected): {k}" for k in comparison.not_run]
    return lines


def _label(item: dict[str, Any], key: str) -> str:
    eps = item.get("eps")
    if "attack" in item and "model" in item:
        return f"{item['attack']}{'' if eps is None else f' eps={eps:g}'} on {item['model']}"
    return key


def _exact(item: dict[str, Any]) -> float | None:
    correct, n = item.get("correct"), item.get("n")
    if isinstance(correct, int) and isinstance(n, int) and n > 0:
        return correct / n
    return None
