"""Same answer twice: identical JSON across runs and across batch sizes."""

from __future__ import annotations

import json

import pytest

from project import write_project

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
report-only = true

[[tool.advrobust.checks]]
attack = "fgsm"
report-only = true
eps = [0.05, 0.2]

[[tool.advrobust.checks]]
attack = "noise"
report-only = true
eps = [0.1, 0.3]

[[tool.advrobust.checks]]
attack = "universal"
report-only = true
eps = 0.2
fit-samples = 60
'''


def test_two_runs_write_byte_identical_json_and_batch_size_does_not_matter(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    project = write_project(pytester.path, x, y, CHECKS)
    pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "a.json").assert_outcomes(passed=6)
    pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "b.json").assert_outcomes(passed=6)
    first = (pytester.path / "a.json").read_bytes()
    assert first == (pytester.path / "b.json").read_bytes()
    project.write_text(project.read_text().replace("batch-size = 64", "batch-size = 7"))
    pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "c.json").assert_outcomes(passed=6)
    by_batch_7 = json.loads((pytester.path / "c.json").read_text())["results"]
    by_batch_64 = json.loads(first)["results"]
    assert [(r["key"], r["correct"], r["n"]) for r in by_batch_7] == \
           [(r["key"], r["correct"], r["n"]) for r in by_batch_64]
    assert {r["attack"] for r in by_batch_64} == {"clean", "fgsm", "noise", "universal"}
