"""One evaluation sharded across CI jobs, merged exactly and gated once (no torch here).

Each job runs ``pytest --advrobust-shard=K/N --advrobust-json=shard-K.json``: it measures
every gate on its part of the data and writes partial counts. ``python -m pytest_advrobust
merge shard-*.json`` checks that the reports belong together (the same config, every shard
1..N exactly once, the same gates measured on the same data), sums the counts, applies the
thresholds and the baseline rule to the merged figures, writes the reports a single run
writes and exits 1 when a gate fails, 2 when the shards do not fit together.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from .errors import AdvRobustError
from .results import AttackResult

__all__ = ["MergeError", "ShardReport", "check_together", "load_shard", "main", "merge_results",
           "parse_shard"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
#: a shard result's fields that must agree across shards (the counts are what differ)
_SAME = ("model", "attack", "eps", "check", "options", "min_accuracy", "max_drop",
         "max_regression")
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
    """One shard's JSON report."""

    path: Path
    index: int
    count: int
    config: str
    results: tuple[dict[str, Any], ...]
    #: the gates the shard's run selected (a gate that errored is listed but has no result)
    gates: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"shard {self.index}/{self.count} ({self.path})"


def load_shard(path: Path) -> ShardReport:
    """Read a shard's ``--advrobust-json`` report; every problem names the file."""
    where = str(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"the file does not exist. {HOW}", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeError(f"cannot be read ({exc}).", where=where) from None
    except ValueError as exc:
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
    try:
        index, count = parse_shard(f"{shard['index']}/{shard['count']}")
    except (KeyError, ValueError) as exc:
        raise MergeError(f"has a malformed \"shard\" record {shard!r} ({exc}).", where=where) from None
    results = tuple(document["results"])
    for entry in results:
        if isinstance(entry, dict) and entry.get("status") in ("error", "not run"):
            what = "errored" if entry["status"] == "error" else "did not run"
            raise MergeError(f"gate {entry.get('key')!r} {what} in this shard "
                             f"({entry.get('error') or entry.get('message') or 'no reason given'}). "
                             "Fix it and rerun the shard: a merge without it would gate on less "
                             "than was configured.", where=where)
        if not (isinstance(entry, dict) and isinstance(entry.get("key"), str)
                and all(isinstance(entry.get(k), int) for k in ("correct", "clean_correct", "n"))
                and isinstance(entry.get("shard"), dict)):
            raise MergeError(f"holds a result that is not a shard's gate result: {str(entry)[:120]}",
                             where=where)
        if (entry["shard"].get("index"), entry["shard"].get("count")) != (index, count):
            raise MergeError(f"the result {entry['key']!r} says shard {entry['shard'].get('index')}/"
                             f"{entry['shard'].get('count')} but the report says {index}/{count}; "
                             "the file was edited or assembled from several runs.", where=where)
    gates = document.get("gates")
    if not (isinstance(gates, list) and all(isinstance(g, str) for g in gates)):
        raise MergeError("has no list of the gates its run selected (\"gates\"); it was not written "
                         f"by pytest --advrobust-shard. {HOW}", where=where)
    return ShardReport(Path(path), index, count, str(document.get("config", "")), results,
                       tuple(gates))


def check_together(shards: Sequence[ShardReport]) -> None:
    """The shards are of one evaluation: same config, all of 1..N once, the same gates
    measured on the same data. A :class:`MergeError` says which shard differs and how."""
    if not shards:
        raise MergeError(f"no shard reports given. {HOW}")
    first = shards[0]
    for other in shards[1:]:
        if other.count != first.count:
            raise MergeError(f"{first.name} and {other.name} split the data into different numbers "
                             "of shards; every job of one evaluation must use the same N.")
        if other.config != first.config:
            raise MergeError(f"{first.name} and {other.name} were run with different configs "
                             f"({first.config} vs {other.config}): [tool.advrobust] or the "
                             "pytest-advrobust version differs between the jobs. Rerun every shard "
                             "from the same commit.")
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
    for shard in shards:
        if set(shard.gates) != set(first.gates):
            extra = sorted(set(shard.gates) ^ set(first.gates))
            raise MergeError(f"{first.name} and {shard.name} selected different gates (for example "
                             f"{extra[0]!r}): run every shard with the same -k / -m selection.")
        lost = sorted(set(shard.gates) - {e["key"] for e in shard.results})
        if lost:
            raise MergeError(f"gate {lost[0]!r} has no result in {shard.name}"
                             f"{f' (and {len(lost) - 1} more)' if len(lost) > 1 else ''}: it errored "
                             "there (see that job's log). Fix the error and rerun the shard; a "
                             "merge without it would gate on less than was configured.")
    keys = {s.index: {e["key"]: e for e in s.results} for s in shards}
    reference = keys[first.index]
    if not reference:
        raise MergeError(f"{first.name} holds no gate results, so there is nothing to gate on "
                         "(its job collected no gates, or they all errored). A merge of no gates "
                         "must not pass: check that job's log.")
    for shard in shards:
        own = keys[shard.index]
        for key in sorted(set(reference) ^ set(own)):
            has, lacks = (first, shard) if key in reference else (shard, first)
            raise MergeError(f"gate {key!r} is in {has.name} but not in {lacks.name}: it errored "
                             "or was deselected (-k, -m) there. Every shard must measure the same "
                             "gates; rerun the shard that lacks it.")
        for key, entry in own.items():
            _check_same(key, reference[key], entry, first, shard)
    for key, entry in reference.items():  # clean evaluates every sample: the parts must tile
        if entry.get("attack") == "clean" and isinstance(entry["shard"].get("samples"), int):
            total = sum(keys[s.index][key]["n"] for s in shards)
            if total != entry["shard"]["samples"]:
                raise MergeError(f"gate {key!r}: the shards measured {total} samples together but "
                                 f"the data has {entry['shard']['samples']}; the parts do not tile "
                                 "the data (a shard's loader yielded different batches?).")


def _check_same(key: str, a: dict[str, Any], b: dict[str, Any], first: ShardReport,
                other: ShardReport) -> None:
    differ = [f for f in _SAME if a.get(f) != b.get(f)]
    fa, fb = dict(a.get("fingerprint") or {}), dict(b.get("fingerprint") or {})
    fa.pop("n", None), fb.pop("n", None)
    differ += [f"fingerprint {f}" for f in sorted(set(fa) | set(fb)) if fa.get(f) != fb.get(f)]
    sa, sb = a["shard"], b["shard"]
    if sa.get("samples") != sb.get("samples"):
        differ.append(f"the data (the shards read {sa.get('samples')} and {sb.get('samples')} "
                      "samples)")
    elif sa.get("labels") != sb.get("labels"):
        differ.append("the data (same size, but the labels differ or come in another order: a "
                      "shuffling loader?)")
    if sa.get("fit") != sb.get("fit"):
        differ.append("the fitted perturbation (fitted differently: another device or library "
                      "version?)")
    if differ:
        raise MergeError(f"gate {key!r} was measured differently in {first.name} and {other.name}: "
                         f"{'; '.join(differ)}. The shards are not parts of one evaluation; rerun "
                         "them all from the same commit, data and environment.")


def merge_results(shards: Sequence[ShardReport]) -> list[AttackResult]:
    """Per gate, the shards' counts summed (no verdict yet): the unsharded result."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for shard in sorted(shards, key=lambda s: s.index):
        for entry in shard.results:
            by_key.setdefault(entry["key"], []).append(entry)
    merged = []
    for entries in by_key.values():
        result = AttackResult.from_dict(entries[0])
        result.shard = None
        result.correct = sum(e["correct"] for e in entries)
        result.clean_correct = sum(e["clean_correct"] for e in entries)
        result.n = sum(e["n"] for e in entries)
        result.stats = _merge_stats([e.get("stats") or {} for e in entries])
        result.artifacts = list(dict.fromkeys(a for e in entries for a in e.get("artifacts") or []))
        result.fingerprint = {**(entries[0].get("fingerprint") or {})}
        if "n" in result.fingerprint:
            result.fingerprint["n"] = result.n
        result.details = _describe(result.attack, result.stats, entries)
        merged.append(result)
    _diagnose(merged, list(by_key.values()))
    return merged


def _diagnose(merged: Sequence[AttackResult], entries: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Gradient-masking diagnostics of the merged figures, as an unsharded run computes
    them: from the summed counts (zero gradients, attack statistics) and the model's other
    merged gates. A shard's own diagnostics saw only its part, so they are not reused."""
    from .diagnostics import diagnose

    inputs = {}
    for result, parts in zip(merged, entries):
        given = [(part.get("diagnostics") or {}).get("inputs") for part in parts]
        if any(not isinstance(item, dict) for item in given):
            raise MergeError(f"gate {result.key!r} has no masking-diagnostics record in every shard "
                             "(written by another version of pytest-advrobust?); rerun the shards "
                             "with one version: a merge without them could miss masked gradients.")
        # a shard whose part held none of the gate's samples counted nothing (None): zero
        zeros = [item.get("zero_gradient") if part.get("n") else (item.get("zero_gradient") or 0)
                 for item, part in zip(given, parts)]
        inputs[result.key] = {**given[0], "zero_gradient": None if any(z is None for z in zeros)
                              else sum(zeros)}
    for result in merged:
        siblings = [other for other in merged if other.model == result.model]
        result.diagnostics = diagnose(result, siblings, **inputs[result.key])


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


def _describe(attack: str, stats: dict[str, Any], entries: Sequence[dict[str, Any]]) -> str:
    """The attack's words for the merged statistics (the built-ins' ``describe``), or the
    shards' words when they agree."""
    from .attacks import AttackRegistry
    from .attacks.builtin import pytest_advrobust_add_attacks

    registry = AttackRegistry()
    pytest_advrobust_add_attacks(registry)
    if attack in registry and registry[attack].describe is not None:
        return registry[attack].describe_function()(stats)
    details = {e.get("details", "") for e in entries}
    return details.pop() if len(details) == 1 else ""


def judge_merged(results: Sequence[AttackResult], baseline: dict[str, Any] | None) -> None:
    """The verdict of each merged gate: thresholds and the baseline rule, as a single run's."""
    from .gate import baseline_figure, judge

    for result in results:
        if result.n == 0:
            result.passed = False
            result.message = (f"{result.label}: no samples to evaluate in any shard (the fit split "
                              "or the samples cap takes them all)")
            continue
        result.baseline_accuracy = baseline_figure((baseline or {}).get(result.key), result)
        verdict = judge(result)
        result.passed, result.message = verdict.passed, verdict.message


# -- the command ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m pytest_advrobust merge ...``: 0 all gates pass, 1 a gate fails, 2 the
    shards (or the arguments) do not fit together."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m pytest_advrobust",
                                     description="pytest-advrobust command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge", help="merge the JSON reports of a sharded run and gate on the merged figures",
        description="Merge the --advrobust-json reports of the jobs of a sharded run "
                    "(pytest --advrobust-shard=K/N), apply the thresholds and the baseline rule "
                    "to the merged figures and write the reports a single run writes. Exit "
                    "status: 0 every gate passed, 1 a gate failed, 2 the shards do not fit "
                    "together (the message says which).")
    merge.add_argument("shards", nargs="+", metavar="SHARD.json", type=Path,
                       help="every shard's --advrobust-json report (all N of them)")
    merge.add_argument("--json", metavar="PATH", type=Path, help="write the merged JSON report")
    merge.add_argument("--junitxml", metavar="PATH", type=Path,
                       help="write a JUnit XML report: one testcase per gate")
    merge.add_argument("--markdown", metavar="PATH", type=Path,
                       help="write the summary as Markdown (also appended to $GITHUB_STEP_SUMMARY "
                            "whenever that variable is set)")
    merge.add_argument("--baseline", metavar="PATH", type=Path,
                       help="compare with a saved baseline (a fall beyond max-regression fails)")
    merge.add_argument("--save-baseline", metavar="PATH", type=Path,
                       help="save the merged results as a baseline file")
    args = parser.parse_args(argv)
    try:
        shards = [load_shard(path) for path in args.shards]
        check_together(shards)
        baseline = None
        if args.baseline is not None:
            from .report.baseline import load_baseline

            baseline = load_baseline(args.baseline)
        results = merge_results(shards)
    except AdvRobustError as exc:
        print(f"pytest-advrobust merge: {exc.kind}: {exc}", file=sys.stderr)
        return 2
    judge_merged(results, baseline)
    try:
        notes = _write_reports(results, args, baseline)
    except OSError as exc:
        print(f"pytest-advrobust merge: cannot write a report: {exc}", file=sys.stderr)
        return 2
    _print_summary(results, baseline, shards, notes, out)
    return 0 if all(r.passed for r in results) else 1


def _write_reports(results: list[AttackResult], args: argparse.Namespace,
                   baseline: dict[str, Any] | None) -> list[str]:
    notes = []
    if args.json is not None:
        from .report.json_report import write_json

        # the same document an unsharded run writes (which checked every gate: complete)
        notes.append(f"json: {write_json(args.json, results, interrupted=False, complete=True)}")
    if args.junitxml is not None:
        from .report.junit import write_junit

        notes.append(f"junitxml: {write_junit(args.junitxml, results)}")
    if args.markdown is not None or os.environ.get("GITHUB_STEP_SUMMARY"):
        from .report.markdown import append_markdown, to_markdown, write_markdown

        text = to_markdown(results, _comparison(results, baseline))
        if args.markdown is not None:
            notes.append(f"markdown: {write_markdown(args.markdown, text)}")
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            append_markdown(Path(os.environ["GITHUB_STEP_SUMMARY"]), text)
    if args.save_baseline is not None:
        from .report.baseline import write_baseline

        notes.append(f"baseline saved: {write_baseline(args.save_baseline, results)}")
    return notes


def _comparison(results: list[AttackResult], baseline: dict[str, Any] | None) -> Any:
    if baseline is None:
        return None
    from .report.baseline import compare

    return compare(baseline, results)


def _print_summary(results: list[AttackResult], baseline: dict[str, Any] | None,
                   shards: Sequence[ShardReport], notes: list[str], out: TextIO) -> None:
    from .report.terminal import format_table, headers, ordered, summary_rows, verdict_line

    comparison = _comparison(results, baseline)
    print(f"advrobust merge: {len(shards)} shards of {shards[0].count}, config {shards[0].config}",
          file=out)
    for line in format_table(summary_rows(results, verbose=True, comparison=comparison),
                             headers(True, comparison is not None)):
        print(line, file=out)
    print(verdict_line(results), file=out)
    for r in ordered(results):
        if not r.passed:
            print(f"FAILED {r.message}", file=out)
    if comparison is not None:
        from .report.baseline import comparison_lines

        for line in comparison_lines(comparison, results):
            print(f"baseline: {line}", file=out)
    for note in notes:
        print(note, file=out)
