"""JUnit XML for a merged sharded run: one testcase per gate, with the properties a
single pytest run's gate items carry (``advrobust_*``), so CI dashboards read both alike."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable
from xml.etree import ElementTree

from ..results import AttackResult, format_eps
from .escape import xml_text
from .files import atomic_write_text
from .terminal import ordered, threshold_text

__all__ = ["gate_properties", "testcase_name", "to_junit", "write_junit"]


def gate_properties(result: AttackResult) -> list[tuple[str, str]]:
    """The ``advrobust_*`` properties of a gate: what the plugin sets on its items and the
    merge writes, so both JUnit reports agree. Set for failing and errored gates too."""
    low, high = result.interval
    baseline = result.baseline_accuracy
    figure = (lambda value: f"{value:.6f}") if result.measured else (lambda value: "")
    properties = [
        ("advrobust_model", result.model), ("advrobust_attack", result.attack),
        ("advrobust_eps", "" if result.eps is None else format_eps(result.eps)),
        ("advrobust_status", result.status),
        ("advrobust_accuracy", figure(result.accuracy)),
        ("advrobust_clean_accuracy", figure(result.clean_accuracy)),
        ("advrobust_ci_low", figure(low)), ("advrobust_ci_high", figure(high)),
        ("advrobust_n", str(result.n) if result.measured else ""),
        ("advrobust_min_accuracy", "" if result.min_accuracy is None else f"{result.min_accuracy:g}"),
        ("advrobust_max_drop", "" if result.max_drop is None else f"{result.max_drop:g}"),
        ("advrobust_threshold", threshold_text(result)),
        ("advrobust_baseline_accuracy", "" if baseline is None else f"{baseline:.6f}"),
    ]
    if result.error:
        properties.append(("advrobust_error", result.error))
    if result.note:  # measured, not judged: why
        properties.append(("advrobust_note", result.note))
    if result.accepted:
        properties.append(("advrobust_accepted", "true"))
    if result.decided_early:  # stopped on n of its samples once its verdict was settled
        properties += [("advrobust_decided_early", "true"),
                       ("advrobust_samples", str(result.samples))]
    if result.shard is not None:  # partial: counted here, judged by the merge
        properties += [("advrobust_shard", f"{result.shard['index']}/{result.shard['count']}"),
                       ("advrobust_correct", str(result.correct))]
    return properties


def testcase_name(result: AttackResult, indexed: bool = False) -> str:
    """The gate item's name in a pytest run: ``fgsm[eps=0.1]``, ``clean``, ``fgsm#2[eps=0.1]``."""
    label = f"{result.attack}#{result.check}" if indexed else result.attack
    if result.attack == "clean" and result.eps is None:
        return label
    return f"{label}[eps={format_eps(0.0 if result.eps is None else result.eps)}]"


def to_junit(results: Iterable[AttackResult], config: str = "pyproject.toml") -> str:
    """``<testsuites><testsuite name="advrobust">`` with a testcase per gate (classname
    ``pyproject.toml.<model>`` as pytest's own JUnit names the gate items), no timestamps; a
    gate's ``time`` is its share of its model's pass where the results carry it (a run), and
    absent where they do not (a merge: shard reports hold no timings)."""
    results = ordered(results)
    plain = Counter((r.model, testcase_name(r)) for r in results)
    checks = Counter((r.model, testcase_name(r), r.check) for r in results)
    failures = sum(r.status in ("failed", "error", "not run") for r in results)
    suites = ElementTree.Element("testsuites")
    suite = ElementTree.SubElement(suites, "testsuite", name="advrobust", errors="0",
                                   failures=str(failures), skipped="0", tests=str(len(results)))
    for r in results:
        # a name shared by two checks of the same attack gets the check index, as in pytest
        indexed = plain[(r.model, testcase_name(r))] > checks[(r.model, testcase_name(r), r.check)]
        case = ElementTree.SubElement(suite, "testcase", classname=f"{config}.{r.model}",
                                      name=testcase_name(r, indexed))
        if r.seconds:  # shard reports carry no timings (their JSON is deterministic): no
            case.set("time", f"{r.seconds:.3f}")  # time rather than a false 0.000
        properties = ElementTree.SubElement(case, "properties")
        for name, value in gate_properties(r):
            ElementTree.SubElement(properties, "property", name=name, value=xml_text(value))
        if r.status in ("failed", "error", "not run"):  # as pytest's own JUnit books them
            message = xml_text(r.message or r.not_run)
            failure = ElementTree.SubElement(case, "failure", message=message)
            failure.text = message
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


def write_junit(path: Path, results: Iterable[AttackResult]) -> Path:
    return atomic_write_text(path, to_junit(results))
