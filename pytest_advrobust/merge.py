"""One evaluation sharded across CI jobs, merged exactly and gated once (no torch here).

Each job runs ``pytest --advrobust-shard=K/N --advrobust-json=shard-K.json``: it measures
every gate on its part of the data and writes partial counts. ``python -m pytest_advrobust
merge shard-*.json`` is as strict as a run:

- it reads the project's config (``pyproject.toml`` in the current folder, or ``--config
  PATH``) and checks that every shard was run with exactly that config;
- it validates every shard file against the schema a shard writes (types, whole numbers
  that are not booleans, ``0 <= correct, clean_correct <= n``, every shard 1..N exactly
  once, the same gates measured on the same data, each shard's counts matching the part
  of the data its index covers) and refuses anything else, naming the file, gate and field;
- it takes thresholds, ``report-only``, ``allow-masking``, losses and every other gate
  setting from the config (never from the shard files), sums the counts, and hands the
  sums to the same judge and the same report pipeline as a run.

Exit status: 0 every gate passed, 1 a gate failed (or errored), 2 the shards, the config
or the arguments do not fit together (the message says which and what to do).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from .errors import AdvRobustError
from .results import Measurement, gate_key

if TYPE_CHECKING:
    from .session import RobustnessSession

__all__ = ["MergeError", "ShardReport", "check_together", "expected_count", "load_shard", "main",
           "merge_measurements", "merge_shards", "parse_shard"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
HOW = "Write shard reports with pytest --advrobust-shard=K/N --advrobust-json=shard-K.json."


class MergeError(AdvRobustError):
    """Shard reports that cannot be merged: the message says which and why."""

    kind = "merge error"


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``; ValueError saying what is wrong."""
    match = _SHARD.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not K/N (this job's shard K of N, e.g. 2/3).")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"{text!r}: K must be one of 1..N and N at least 1 (e.g. 1/3, 2/3, 3/3).")
    return k, n


@dataclass(frozen=True)
class ShardReport:
    """One shard's JSON report, validated: its measurements by gate key."""

    path: Path
    index: int
    count: int
    config: str
    measurements: dict[str, Measurement]
    #: the gates the shard's run selected
    gates: tuple[str, ...]
    #: the shard's run measured every gate of the config (nothing deselected)
    complete: bool

    @property
    def name(self) -> str:
        return f"shard {self.index}/{self.count} ({self.path})"


# -- the schema ----------------------------------------------------------------------------
def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _scalar_or_list(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_scalar_or_list(v) for v in value)
    return value is None or isinstance(value, (bool, str)) or _number(value)


#: a shard result's fields: (is it valid, what it must be); all required
_ENTRY = {
    "key": (_text, "a string"),
    "model": (_text, "a string"),
    "attack": (_text, "a string"),
    "eps": (lambda v: v is None or (_number(v) and v >= 0), "a number >= 0, or null"),
    "check": (_whole, "a whole number >= 0"),
    "options": (lambda v: isinstance(v, dict) and all(_scalar_or_list(x) for x in v.values()),
                "an object of option values"),
    "correct": (_whole, "a whole number >= 0 (not true/false)"),
    "clean_correct": (_whole, "a whole number >= 0 (not true/false)"),
    "n": (_whole, "a whole number >= 0 (not true/false)"),
    "stats": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _scalar_or_list(x)
                                                    for k, x in v.items()),
              "an object of numbers and words"),
    "details": (_text, "a string"),
    "fingerprint": (lambda v: isinstance(v, dict), "an object"),
    "artifacts": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
                  "a list of file names"),
    "shard": (lambda v: isinstance(v, dict), "an object"),
    "per_class": (lambda v: isinstance(v, list) and all(
        isinstance(row, dict) and set(row) == {"label", "n", "clean_correct", "correct"}
        and all(_whole(x) for x in row.values()) for row in v),
        "a list of {label, n, clean_correct, correct} objects of whole numbers"),
}
#: a shard result's ``shard`` record
_RECORD = {
    "index": (_whole, "a whole number"),
    "count": (_whole, "a whole number"),
    "samples": (_whole, "a whole number >= 0"),
    "labels": (_text, "a string"),
    "zero_gradient": (lambda v: v is None or _whole(v), "a whole number >= 0, or null"),
    "notes": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
              "a list of words"),
}


def _field_error(where: str, key: str, name: str, value: Any, expected: str) -> MergeError:
    shown = json.dumps(value)[:80] if not isinstance(value, str) else repr(value[:80])
    return MergeError(f"gate {key!r}: the field {name!r} is {shown}; it must be {expected}. The "
                      f"file was edited or damaged, or not written by pytest --advrobust-shard. "
                      f"{HOW}", where=where)


def load_shard(path: Path) -> ShardReport:
    """Read and validate a shard's ``--advrobust-json`` report; every problem is a
    :class:`MergeError` naming the file (and the gate and field at fault)."""
    where = str(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"the file does not exist. {HOW}", where=where) from None
    except IsADirectoryError:
        raise MergeError(f"is a folder, not a shard report. {HOW}", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeError(f"cannot be read ({exc}).", where=where) from None
    except (ValueError, RecursionError) as exc:
        raise MergeError(f"is not valid JSON ({exc}); the report is damaged or was cut short "
                         "(did the shard's job finish?).", where=where) from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise MergeError(f"is not a pytest-advrobust JSON report (no \"results\" list). {HOW}",
                         where=where)
    if document.get("version") != 1:
        raise MergeError(f"has report version {document.get('version')!r}; this merge reads "
                         "version 1.", where=where)
    shard = document.get("shard")
    if not isinstance(shard, dict):
        raise MergeError("is the report of an unsharded run (no \"shard\"), whose gates were "
                         f"already judged on all the data; there is nothing to merge. {HOW}",
                         where=where)
    if not (_whole(shard.get("index")) and _whole(shard.get("count"))):
        raise MergeError(f"has a malformed \"shard\" record {json.dumps(shard)[:120]} (index and "
                         "count must be whole numbers).", where=where)
    try:
        index, count = parse_shard(f"{shard['index']}/{shard['count']}")
    except ValueError as exc:
        raise MergeError(f"has a malformed \"shard\" record ({exc}).", where=where) from None
    if document.get("interrupted") is not False:
        raise MergeError("comes from a run that was interrupted (or does not say it was not): "
                         "its gates may not all have run. Rerun that shard to completion.",
                         where=where)
    gates = document.get("gates")
    if not (isinstance(gates, list) and all(isinstance(g, str) for g in gates)):
        raise MergeError("has no list of the gates its run selected (\"gates\"); it was not written "
                         f"by pytest --advrobust-shard. {HOW}", where=where)
    if not isinstance(document.get("config"), str):
        raise MergeError(f"does not say which config it ran (\"config\"). {HOW}", where=where)
    measurements: dict[str, Measurement] = {}
    for entry in document["results"]:
        if not isinstance(entry, dict):
            raise MergeError(f"holds a result that is not an object: {json.dumps(entry)[:120]}",
                             where=where)
        key = entry.get("key") if isinstance(entry.get("key"), str) else "?"
        if entry.get("status") in ("error", "not run"):
            what = "errored" if entry["status"] == "error" else "did not run"
            raise MergeError(f"gate {key!r} {what} in this shard "
                             f"({str(entry.get('error') or entry.get('message') or 'no reason given')[:300]}). "
                             "Fix it and rerun the shard: a merge without it would gate on less "
                             "than was configured.", where=where)
        measurement = _measurement(entry, key, where, index, count)
        if measurement.key in measurements:
            raise MergeError(f"holds gate {measurement.key!r} twice; the file was assembled from "
                             "several runs.", where=where)
        measurements[measurement.key] = measurement
    return ShardReport(Path(path), index, count, document["config"], measurements, tuple(gates),
                       complete=document.get("complete") is True)


def _measurement(entry: dict[str, Any], key: str, where: str, index: int, count: int) -> Measurement:
    """A shard result entry as a :class:`Measurement`, every field checked."""
    for name, (valid, expected) in _ENTRY.items():
        if name not in entry:
            raise MergeError(f"gate {key!r} has no {name!r} field. {HOW}", where=where)
        if not valid(entry[name]):
            raise _field_error(where, key, name, entry[name], expected)
    record = entry["shard"]
    for name, (valid, expected) in _RECORD.items():
        if name not in record:
            raise MergeError(f"gate {key!r}: its shard record has no {name!r} field. {HOW}",
                             where=where)
        if not valid(record[name]):
            raise _field_error(where, key, f"shard.{name}", record[name], expected)
    if (record["index"], record["count"]) != (index, count):
        raise MergeError(f"the result {key!r} says shard {record['index']}/{record['count']} but the "
                         f"report says {index}/{count}; the file was edited or assembled from "
                         "several runs.", where=where)
    if count > 1:
        parts = record.get("parts")
        if not (isinstance(parts, list) and len(parts) == count and all(isinstance(p, str) for p in parts)
                and isinstance(record.get("evaluated"), str)):
            raise MergeError(f"gate {key!r}: its shard record has no digest of each shard's part "
                             f"(\"parts\", \"evaluated\"); rerun the shards with this version. {HOW}",
                             where=where)
        if record["evaluated"] != parts[index - 1]:
            raise MergeError(f"gate {key!r} was measured on the part of the data of another shard "
                             f"than {index}/{count} (its evaluated samples are not shard {index}'s): "
                             "the file was copied or relabelled. Give each shard's own report.",
                             where=where)
    for name in ("correct", "clean_correct"):
        if entry[name] > entry["n"]:
            raise MergeError(f"gate {key!r}: {name} = {entry[name]} is more than n = {entry['n']}, "
                             "the samples it was counted on; the file was edited or damaged.",
                             where=where)
    if entry["n"] > record["samples"]:
        raise MergeError(f"gate {key!r}: n = {entry['n']} is more than the {record['samples']} "
                         "samples of the whole data; the file was edited or damaged.", where=where)
    zero = record["zero_gradient"]
    if zero is not None and zero > entry["clean_correct"]:
        raise MergeError(f"gate {key!r}: {zero} zero gradients among {entry['clean_correct']} "
                         "correctly classified samples; the file was edited or damaged.", where=where)
    rows = entry["per_class"]
    if len({row["label"] for row in rows}) != len(rows) or any(
            row["correct"] > row["n"] or row["clean_correct"] > row["n"] for row in rows) or \
            [sum(row[f] for row in rows) for f in ("n", "clean_correct", "correct")] != \
            [entry["n"], entry["clean_correct"], entry["correct"]]:
        raise MergeError(f"gate {key!r}: its per-class counts do not add up to its counts (n, "
                         "clean_correct, correct) or repeat a label; the file was edited or damaged.",
                         where=where)
    expected = gate_key(entry["model"], entry["attack"], entry["eps"], entry["options"])
    if expected != key:
        raise MergeError(f"gate {key!r}: its key does not match its model, attack, eps and options "
                         f"({expected!r}); the file was edited.", where=where)
    return Measurement(model=entry["model"], attack=entry["attack"], eps=entry["eps"],
                       check=entry["check"], options=dict(entry["options"]),
                       correct=entry["correct"], clean_correct=entry["clean_correct"], n=entry["n"],
                       stats=dict(entry["stats"]), details=entry["details"],
                       fingerprint=dict(entry["fingerprint"]), zero_gradient=zero,
                       model_notes=[str(n) for n in record.get("notes") or []],
                       shard=dict(record), artifacts=list(entry["artifacts"]),
                       per_class=[dict(row) for row in rows])


# -- fitting together ----------------------------------------------------------------------
def expected_count(samples: int, batch_size: int, index: int, count: int, *, start: int = 0,
                   stop: int | None = None) -> int:
    """How many of the samples ``[start, stop)`` (of ``samples`` in all) lie in shard
    ``index`` of ``count``, whose batches are ``index-1, index-1+count, ...``."""
    stop = samples if stop is None else min(stop, samples)
    total = 0
    for batch in range(index - 1, -(-samples // batch_size), count):
        low, high = batch * batch_size, min((batch + 1) * batch_size, samples)
        total += max(0, min(high, stop) - max(low, start))
    return total


def check_together(shards: Sequence[ShardReport], session: "RobustnessSession",
                   config_hash: str) -> None:
    """The shards are of one evaluation of this config: the config's fingerprint, all of
    1..N once, the same gates measured on the same data, and each shard's counts exactly
    the samples its part of the data holds. A :class:`MergeError` says which and how."""
    if not shards:
        raise MergeError(f"no shard reports given. {HOW}")
    first = shards[0]
    for shard in shards:
        if shard.config != config_hash:
            raise MergeError(f"{shard.name} was run with another config than {session.path} "
                             f"(fingerprints {shard.config} and {config_hash}): [tool.advrobust] "
                             "or the pytest-advrobust version differs. Merge with the config the "
                             "shards ran (--config PATH), or rerun every shard from this commit.")
        if shard.count != first.count:
            raise MergeError(f"{first.name} and {shard.name} split the data into different numbers "
                             "of shards; every job of one evaluation must use the same N.")
    seen: dict[int, ShardReport] = {}
    for shard in shards:
        if shard.index in seen:
            raise MergeError(f"shard {shard.index}/{shard.count} is given twice: "
                             f"{seen[shard.index].path} and {shard.path} (overlapping shards would "
                             "count samples twice). Pass each shard's report once.")
        seen[shard.index] = shard
    missing = [k for k in range(1, first.count + 1) if k not in seen]
    if missing:
        raise MergeError(f"shard{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(f'{k}/{first.count}' for k in missing)} "
                         f"{'are' if len(missing) > 1 else 'is'} missing (given: "
                         f"{', '.join(s.name for s in sorted(shards, key=lambda s: s.index))}). "
                         "Every shard's report is needed: a merge of some shards would gate on part "
                         "of the data.")
    gates = _config_gates(session)
    for shard in shards:
        if set(shard.gates) != set(first.gates):
            extra = sorted(set(shard.gates) ^ set(first.gates))
            raise MergeError(f"{first.name} and {shard.name} selected different gates (for example "
                             f"{extra[0]!r}): run every shard with the same -k / -m selection.")
        unknown = sorted(set(shard.gates) - set(gates))
        if unknown:
            raise MergeError(f"{shard.name} selected gate {unknown[0]!r}, which {session.path} does "
                             "not configure. Merge with the config the shards ran (--config PATH).")
        lost = sorted(set(shard.gates) - set(shard.measurements))
        if lost:
            raise MergeError(f"gate {lost[0]!r} has no result in {shard.name}"
                             f"{f' (and {len(lost) - 1} more)' if len(lost) > 1 else ''}: it errored "
                             "there (see that job's log). Fix the error and rerun the shard; a "
                             "merge without it would gate on less than was configured.")
        stray = sorted(set(shard.measurements) - set(shard.gates))
        if stray:
            raise MergeError(f"{shard.name} holds a result for gate {stray[0]!r}, which its run did "
                             "not select; the file was assembled from several runs.")
    if not first.gates:
        raise MergeError(f"{first.name} holds no gate results, so there is nothing to gate on "
                         "(its job collected no gates, or they all errored). A merge of no gates "
                         "must not pass: check that job's log.")
    for key in first.gates:
        spec, request, attack = gates[key]
        reference = first.measurements[key]
        for shard in shards:
            _check_gate(key, spec, request, attack, reference, shard.measurements[key], first, shard)
        samples = reference.shard["samples"]
        # the first samples a gate does not evaluate: its fit split, unless it is cross-fitted
        fit = (attack.fit_samples(request.check.options)
               if attack.fit is not None and attack.folds_key is None else 0)
        cap = attack.samples_cap(request.check.options)
        limit = samples if cap is None else min(cap, samples)
        for shard in shards:
            want = expected_count(samples, spec.batch_size, shard.index, shard.count, start=fit,
                                  stop=limit)
            got = shard.measurements[key].n
            if got != want:
                raise MergeError(f"gate {key!r}: {shard.name} counted {got} samples but its part of "
                                 f"the data ({samples} samples in batches of {spec.batch_size}) "
                                 f"holds {want} for this gate; the parts do not tile the data (a "
                                 "shard file edited, relabelled or written with another "
                                 "batch-size?).")


def _check_gate(key: str, spec: Any, request: Any, attack: Any, a: Measurement, b: Measurement,
                first: ShardReport, other: ShardReport) -> None:
    """One gate of two shards: measured alike (all but the counts), and as the config says."""
    if (a.model, a.attack, a.check) != (spec.name, request.check.attack, request.check.index):
        raise MergeError(f"gate {key!r} in {first.name} is check {a.check} of {a.attack} on "
                         f"{a.model}, not what {spec.source} configures; merge with the config "
                         "the shards ran (--config PATH).")
    differ = [f for f in ("model", "attack", "eps", "check", "options", "model_notes")
              if getattr(a, f) != getattr(b, f)]
    fa, fb = dict(a.fingerprint), dict(b.fingerprint)
    fa.pop("n", None), fb.pop("n", None)
    differ += [f"fingerprint {f}" for f in sorted(set(fa) | set(fb)) if fa.get(f) != fb.get(f)]
    sa, sb = a.shard or {}, b.shard or {}
    if sa.get("samples") != sb.get("samples"):
        differ.append(f"the data (the shards read {sa.get('samples')} and {sb.get('samples')} "
                      "samples)")
    elif sa.get("labels") != sb.get("labels") or sa.get("parts") != sb.get("parts"):
        differ.append("the data (same size, but the samples differ or come in another order: a "
                      "shuffling loader?)")
    if sa.get("fit") != sb.get("fit"):
        differ.append("the fitted perturbation (fitted differently: another device or library "
                      "version?)")
    if (sa.get("zero_gradient") is None) != (sb.get("zero_gradient") is None) or \
            (sa.get("zero_gradient") is None) == bool(attack.needs_gradient):
        differ.append("the masking diagnostic's count (zero_gradient: written by another version?)")
    if differ:
        raise MergeError(f"gate {key!r} was measured differently in {first.name} and {other.name}: "
                         f"{'; '.join(differ)}. The shards are not parts of one evaluation; rerun "
                         "them all from the same commit, data and environment.")


def _config_gates(session: "RobustnessSession") -> dict[str, tuple[Any, Any, Any]]:
    """gate key -> (model spec, request, attack) for every gate of the config."""
    out = {}
    for spec in session.spec_list():
        for request in session.requests(spec):
            attack = session.registry[request.check.attack]
            eps = request.eps if attack.uses_eps else None
            out[gate_key(spec.name, request.check.attack, eps, dict(request.check.options))] = \
                (spec, request, attack)
    return out


def merge_measurements(shards: Sequence[ShardReport]) -> list[Measurement]:
    """Per gate, the shards' counts summed: the unsharded measurement (no verdict yet)."""
    merged = []
    ordered_shards = sorted(shards, key=lambda s: s.index)
    for key in ordered_shards[0].gates:
        parts = [shard.measurements[key] for shard in ordered_shards]
        first = parts[0]
        zeros = [p.zero_gradient for p in parts]
        fingerprint = dict(first.fingerprint)
        total = sum(p.n for p in parts)
        if "n" in fingerprint:
            fingerprint["n"] = total
        merged.append(Measurement(
            model=first.model, attack=first.attack, eps=first.eps, check=first.check,
            options=first.options, correct=sum(p.correct for p in parts),
            clean_correct=sum(p.clean_correct for p in parts), n=total,
            stats=_merge_stats([p.stats for p in parts]), model_notes=list(first.model_notes),
            fingerprint=fingerprint,
            zero_gradient=None if any(z is None for z in zeros) else sum(zeros),
            artifacts=list(dict.fromkeys(a for p in parts for a in p.artifacts)),
            per_class=_merge_classes([p.per_class for p in parts])))
    return merged


def _merge_classes(parts: Sequence[list[dict[str, int]]]) -> list[dict[str, int]]:
    """The shards' per-class counts, summed label by label (in label order)."""
    sums: dict[int, dict[str, int]] = {}
    for rows in parts:
        for row in rows:
            total = sums.setdefault(row["label"], {"label": row["label"], "n": 0, "clean_correct": 0,
                                                   "correct": 0})
            for name in ("n", "clean_correct", "correct"):
                total[name] += row[name]
    return [sums[label] for label in sorted(sums)]


def _merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts add up; a counterexample (``counterexample_*``) is the smallest of the shards'."""
    out: dict[str, Any] = {}
    best: dict[str, Any] | None = None
    for stats in parts:
        example = {k: v for k, v in stats.items() if k.startswith("counterexample_")}
        if example and (best is None or example.get("counterexample_max_delta", float("inf"))
                        < best.get("counterexample_max_delta", float("inf"))):
            best = example
        for key, value in stats.items():
            if key.startswith("counterexample_"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            else:
                out.setdefault(key, value)
    if best:
        out.update(best)
    return out


def _describe(session: "RobustnessSession", measurements: Sequence[Measurement]) -> None:
    """The attack's words for the merged statistics (its ``describe``; a shard's words
    described its part only)."""
    for m in measurements:
        describe = session.registry[m.attack].describe_function()
        m.details = describe(m.stats) if describe is not None else ""


def merge_shards(shards: Sequence[ShardReport], session: "RobustnessSession", config_hash: str, *,
                 baseline: Any = None, accept: Sequence[str] = ()) -> list[Any]:
    """The merged, judged results of ``shards`` of the config of ``session``: checked to fit
    together, counts summed, judged by the one judge with the config's settings."""
    from .gate import Judge

    check_together(shards, session, config_hash)
    measurements = merge_measurements(shards)
    _describe(session, measurements)
    judge = Judge(session.lookup, session.registry, baseline=baseline, accept=accept)
    return judge.results(measurements)


# -- the command ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m pytest_advrobust merge ...``: 0 all gates pass, 1 a gate fails, 2 the
    shards, the config or the arguments do not fit together."""
    from . import __version__

    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m pytest_advrobust",
                                     description="pytest-advrobust command-line tools")
    parser.add_argument("--version", action="version", version=f"pytest-advrobust {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge", help="merge the JSON reports of a sharded run and gate on the merged figures",
        description="Merge the --advrobust-json reports of the jobs of a sharded run "
                    "(pytest --advrobust-shard=K/N), judge the merged figures with the "
                    "thresholds and settings of the project's config, and write the reports a "
                    "single run writes. Exit status: 0 every gate passed, 1 a gate failed, 2 the "
                    "shards, the config or the arguments do not fit together (the message says "
                    "which).")
    merge.add_argument("shards", nargs="+", metavar="SHARD.json", type=Path,
                       help="every shard's --advrobust-json report (all N of them)")
    merge.add_argument("--config", metavar="PATH", type=Path, default=Path("pyproject.toml"),
                       help="the pyproject.toml holding [tool.advrobust] that the shards ran "
                            "(default: ./pyproject.toml); thresholds and gate settings come "
                            "from it, never from the shard files")
    merge.add_argument("--json", metavar="PATH", type=Path, help="write the merged JSON report")
    merge.add_argument("--junitxml", metavar="PATH", type=Path,
                       help="write a JUnit XML report: one testcase per gate")
    merge.add_argument("--markdown", metavar="PATH", type=Path,
                       help="write the summary as Markdown (also appended to $GITHUB_STEP_SUMMARY "
                            "whenever that variable is set)")
    merge.add_argument("--baseline", metavar="PATH", type=Path,
                       help="compare with a saved baseline (a fall beyond max-regression fails)")
    merge.add_argument("--save-baseline", metavar="PATH", type=Path,
                       help="save the merged results as a baseline file (not when a gate failed, "
                            "unless --accept names it)")
    merge.add_argument("--accept", metavar="GATE[,GATE...]", action="append", default=None,
                       help="accept these failed gates (keys, or all) into --save-baseline")
    args = parser.parse_args(argv)
    try:
        return _merge(args, out)
    except AdvRobustError as exc:
        print(f"pytest-advrobust merge: {exc.kind}: {exc}", file=sys.stderr)
        return 2


def _merge(args: argparse.Namespace, out: TextIO) -> int:
    from .report.files import unwritable
    from .report.pipeline import ReportTargets, RunRecord, step_summary_path, write_reports

    for flag, value in (("--json", args.json), ("--junitxml", args.junitxml),
                        ("--markdown", args.markdown), ("--save-baseline", args.save_baseline),
                        ("$GITHUB_STEP_SUMMARY", step_summary_path())):
        problem = unwritable(Path(value).resolve(), False) if value is not None else ""
        if problem:
            raise MergeError(f"{flag}={value}: {problem}. Give a file path this command can write.")
    session, config_hash = _open_config(args.config)
    accept = tuple(k.strip() for value in args.accept or [] for k in value.split(",") if k.strip())
    gates = _config_gates(session)
    unknown = [k for k in accept if k != "all" and k not in gates]
    if unknown:
        raise MergeError(f"--accept: {unknown[0]!r} is not a gate of {session.path}. Give gate keys "
                         "as the reports write them (MODEL::ATTACK[eps=E]), or all.")
    shards = [load_shard(path) for path in args.shards]
    baseline = None
    if args.baseline is not None:
        from .report.baseline import BaselineError, load_baseline

        try:
            baseline = load_baseline(args.baseline)
        except BaselineError as exc:
            raise MergeError(str(exc)) from None
    results = merge_shards(shards, session, config_hash, baseline=baseline, accept=accept)
    comparison = None
    if baseline is not None:
        from .report.baseline import compare

        comparison = compare(baseline, results)
    complete = all(s.complete for s in shards) and set(shards[0].gates) == set(gates)
    record = RunRecord(results=results, complete=complete, comparison=comparison)
    written = write_reports(record, ReportTargets(
        json=args.json, junitxml=args.junitxml, markdown=args.markdown,
        step_summary=step_summary_path(), save_baseline=args.save_baseline))
    _print_summary(record, written, shards, out)
    if any(r.status in ("failed", "error") for r in results):
        return 1
    return 2 if written.problems else 0


def _open_config(path: Path) -> tuple["RobustnessSession", str]:
    """The project's session (config, attack registry and the conftest.py's hooks, as a run
    has them; no model is loaded) and the config's fingerprint."""
    from .api import open_session
    from .errors import ConfigError
    from .fingerprint import config_fingerprint

    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise MergeError(f"--config {path}: {resolved} does not exist (or is not a file). Run the "
                         "merge in the project's folder, or point --config at the pyproject.toml "
                         "the shards ran: thresholds come from it, never from the shard files.")
    try:
        session = open_session(resolved)
    except ConfigError as exc:
        raise MergeError(f"--config {path}: {exc}") from None
    return session, config_fingerprint(resolved)


def _print_summary(record: Any, written: Any, shards: Sequence[ShardReport], out: TextIO) -> None:
    from .report.escape import one_line
    from .report.pipeline import comparison_section, summary_lines
    from .report.terminal import ordered

    print(f"advrobust merge: {len(shards)} shards of {shards[0].count}, config {shards[0].config}",
          file=out)
    for text, _ in summary_lines(record, written, verbose=True):
        print(text, file=out)
    for r in ordered(record.results):
        if r.status in ("failed", "error"):
            print(one_line(f"FAILED {r.message}"), file=out)
    for line in comparison_section(record):
        print(f"baseline: {line}", file=out)
