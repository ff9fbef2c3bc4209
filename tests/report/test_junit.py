"""The merge's JUnit: a gate's time where it is known, none rather than a false 0.000."""

from __future__ import annotations

from xml.etree import ElementTree

from pytest_advrobust.report.junit import to_junit
from pytest_advrobust.results import AttackResult


def _case(**fields) -> ElementTree.Element:
    result = AttackResult(model="mlp", attack="fgsm", eps=0.1, correct=5, clean_correct=9, n=10,
                          min_accuracy=0.3, **fields)
    return next(ElementTree.fromstring(to_junit([result]).split("\n", 1)[1]).iter("testcase"))


def test_a_merged_gate_has_no_time_and_a_timed_one_its_share() -> None:
    assert _case().get("time") is None  # merged from shards: no timing is known
    assert _case(seconds=1.25).get("time") == "1.250"
