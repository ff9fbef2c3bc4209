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

[[tool.advrobust.models.mlp.checks]]
attack = "square"
report-only = true
eps = 0.05
queries = 60

[[tool.advrobust.models.mlp.checks]]
attack = "strongest"
report-only = true
eps = 0.05
steps = 3
targets = 2
square-queries = 30

[[tool.advrobust.models.mlp.checks]]
attack = "fgsm"
report-only = true
eps = 0.08
'''

#: what each random gate's figure is made of: its counts and the attack's own statistics
FIGURES = ("queries", "interior", "fooled_by_apgd-t-interior", "fooled_by_square")


def figures(results) -> list:
    return [(r.attack, r.correct, r.n, *(r.stats.get(k) for k in FIGURES)) for r in results]


def test_random_attacks_do_not_depend_on_the_batch_size_or_sharding(tmp_path) -> None:
    """Every draw is keyed by the sample's position: noise signs and interior scales, PGD and
    APGD starts, SPSA directions, square's windows (drawn per step for the samples still
    standing) give the same counts at batch sizes 7, 64 and 100000, and three shards of
    the batch-64 run add up to it exactly."""
    from digits_project import write_digits_project
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    path = write_digits_project(tmp_path, RANDOM_CHECKS, max_samples=150)
    counts = {}
    for size in (7, 100000, 64):
        path.write_text(path.read_text().replace("batch-size = 256", f"batch-size = {size}")
                        .replace("batch-size = 7\n", f"batch-size = {size}\n")
                        .replace("batch-size = 100000\n", f"batch-size = {size}\n"))
        counts[size] = figures(RobustnessSession(plugin_manager().hook, path).run_all())
    assert counts[7] == counts[64] == counts[100000]
    assert [c[0] for c in counts[7]] == ["noise", "pgd", "spsa", "square", "strongest", "fgsm"]
    assert all(c[2] == 150 for c in counts[7])
    assert 0 < counts[7][2][1] < 150  # spsa fooled some samples, not all
    assert 0 < counts[7][3][1] < 150 and counts[7][3][3] > 0  # so did square, with queries
    shards = []
    for k in (1, 2, 3):
        session = RobustnessSession(plugin_manager().hook, path)
        session.engine.shard = (k, 3)
        shards.append(figures(session.run_all()))
    assert all(len(shard) == len(counts[64]) for shard in shards)
    summed = [tuple(sum(s[i][j] or 0 for s in shards) if j else shards[0][i][0]
                    for j in range(len(counts[64][i]))) for i in range(len(counts[64]))]
    assert summed == [tuple(v or 0 if j else v for j, v in enumerate(row)) for row in counts[64]]
    assert all(0 < shard[0][2] < 150 for shard in shards)  # each shard measured a real part
