"""Progress in a CI log (no terminal): a line when each model's pass starts and ends, at most
one every 30 s in between; nothing with --advrobust-progress=off; xdist workers' lines reach
the log through their stderr. JUnit gives each gate its share of its model's pass."""

from __future__ import annotations

import re
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

from project import write_project
from pytest_advrobust.progress import LOG_INTERVAL, Progress

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.01, 0.05]
min-accuracy = 0.001
'''
RUN = ("-p", "no:cacheprovider")


class _Terminal:
    """A terminal reporter writing to a CI log (not a terminal)."""

    isatty = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_line(self, text: str) -> None:
        self.lines.append(text)


def _progress(mode: str, clock) -> tuple[Progress, _Terminal]:
    terminal = _Terminal()
    plugins = {"terminalreporter": terminal}
    config = SimpleNamespace(getoption=lambda name: mode,
                             pluginmanager=SimpleNamespace(get_plugin=plugins.get))
    return Progress(config, clock=clock), terminal


def test_a_log_gets_the_start_the_end_and_a_line_at_most_every_interval() -> None:
    now = [100.0]
    progress, terminal = _progress("auto", lambda: now[0])
    with progress.model_pass("mlp", "clean, fgsm 0.1", 2):
        for now[0] in (101.0, 110.0, 100.0 + LOG_INTERVAL + 1, 140.0, 100.0 + 2 * LOG_INTERVAL + 2):
            progress(f"mlp: batch at {now[0]:g}")
        now[0] = 200.0
    assert terminal.lines == [
        "advrobust mlp: pass started: 2 gates (clean, fgsm 0.1)",
        f"advrobust mlp: batch at {100 + LOG_INTERVAL + 1:g} [{LOG_INTERVAL + 1:.1f} s into the pass]",
        f"advrobust mlp: batch at {100 + 2 * LOG_INTERVAL + 2:g} [1 min 02 s into the pass]",
        "advrobust mlp: pass done in 1 min 40 s (2 gates)",
    ]


def test_on_writes_every_update_and_off_nothing() -> None:
    progress, terminal = _progress("on", lambda: 0.0)
    with progress.model_pass("mlp", "clean", 1):
        progress("mlp: batch 1/2")
        progress("mlp: batch 2/2")
    assert [line.split(" [")[0] for line in terminal.lines] == [
        "advrobust mlp: pass started: 1 gate (clean)", "advrobust mlp: batch 1/2",
        "advrobust mlp: batch 2/2", "advrobust mlp: pass done in 0.0 s (1 gate)"]
    progress, terminal = _progress("off", lambda: 0.0)
    with progress.model_pass("mlp", "clean", 1):
        progress("mlp: batch 1/2")
    assert terminal.lines == []


def test_a_pass_that_raises_says_it_stopped() -> None:
    now = [0.0]
    progress, terminal = _progress("auto", lambda: now[0])
    with pytest.raises(RuntimeError), progress.model_pass("mlp", "fgsm 0.1", 1):
        now[0] = 3.0
        raise RuntimeError("boom")
    assert terminal.lines[-1] == "advrobust mlp: pass stopped by an error in 3.0 s (1 gate)"


def test_a_ci_log_shows_each_pass_by_default(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    result = pytester.runpytest(*RUN)  # not a terminal: a CI log
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["advrobust blob: pass started: 3 gates (clean, fgsm 0.01/0.05)",
                                 "advrobust blob: pass done in *s (3 gates)"])
    assert "batch 1/4" not in result.stdout.str()  # 4 batches in well under 30 s
    assert len(re.findall("pass started", result.stdout.str())) == 1  # one pass for 3 gates
    quiet = pytester.runpytest(*RUN, "--advrobust-progress=off")
    quiet.assert_outcomes(passed=3)
    assert "advrobust blob" not in quiet.stdout.str()


def test_xdist_workers_progress_reaches_the_log(pytester: pytest.Pytester, blobs) -> None:
    pytest.importorskip("xdist")
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    result = pytester.runpytest_subprocess(*RUN, "-n", "2")
    result.assert_outcomes(passed=3)
    log = result.stdout.str() + result.stderr.str()
    started = re.findall(r"advrobust \[gw[01]\] blob: pass started: \d gates? \(([^)]*)\)", log)
    done = re.findall(r"advrobust \[gw[01]\] blob: pass done in [\d.]+ s \(\d gates?\)", log)
    # each worker runs the passes of the checks it got, each said when it starts and ends
    assert started and len(started) == len(done), log
    assert any("fgsm" in gates for gates in started), started
    silent = pytester.runpytest_subprocess(*RUN, "-n", "2", "--advrobust-progress=off")
    silent.assert_outcomes(passed=3)
    assert "advrobust [gw" not in silent.stdout.str() + silent.stderr.str()


def test_junit_gives_each_gate_its_share_of_the_pass(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS.replace("eps = [0.01, 0.05]", "eps = [0.01, 0.05, 0.1]"))
    # the call phase alone (pytest's default adds each item's own set-up and tear-down)
    pytester.runpytest(*RUN, "--junitxml=junit.xml", "-o", "junit_duration_report=call",
                       "--advrobust-json=r.json").assert_outcomes(passed=4)
    cases = {case.get("name"): case.get("time")
             for case in ElementTree.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    assert set(cases) == {"clean", "fgsm[eps=0.01]", "fgsm[eps=0.05]", "fgsm[eps=0.1]"}
    # one pass computed all four; each is booked a quarter of it (not all on "clean")
    assert len(set(cases.values())) == 1 and float(cases["clean"]) > 0, cases
