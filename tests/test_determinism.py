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


RANDOM_CHECKS = '''
[[tool.advrobust.models.mlp.checks]]
attack = "noise"
report-only = true
eps = 0.25

[[tool.advrobust.models.mlp.checks]]
attack = "pgd"
report-only = true
eps = 0.05
steps = 3
restarts = 2

[[tool.advrobust.models.mlp.checks]]
attack = "spsa"
report-only = true
eps = 0.1
queries = 170
samples = 8
'''


def test_random_attacks_do_not_depend_on_the_batch_size(tmp_path) -> None:
    """Every draw is keyed by the sample's position: noise signs, PGD starts and SPSA
    directions (SPSA drew per step for the batch's active rows, so its figure moved with
    batch-size) give the same counts at batch sizes 7, 64 and 100000."""
    from digits_project import write_digits_project
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    path = write_digits_project(tmp_path, RANDOM_CHECKS, max_samples=150)
    counts = {}
    for size in (7, 64, 100000):
        path.write_text(path.read_text().replace("batch-size = 256", f"batch-size = {size}")
                        .replace("batch-size = 7\n", f"batch-size = {size}\n")
                        .replace("batch-size = 64\n", f"batch-size = {size}\n"))
        results = RobustnessSession(plugin_manager().hook, path).run_all()
        counts[size] = [(r.attack, r.correct, r.n, r.stats.get("queries")) for r in results]
    assert counts[7] == counts[64] == counts[100000]
    assert [c[0] for c in counts[7]] == ["noise", "pgd", "spsa"]
    assert all(c[2] == 150 for c in counts[7])
    assert 0 < counts[7][2][1] < 150  # spsa fooled some samples, not all
