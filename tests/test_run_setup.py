"""How a run is set up around the gates: thread shares under xdist, and a user's log free
of the plugin's own warnings."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch

from conftest import export_onnx
from project import write_project
from pytest_advrobust import threads

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.01, 0.05]
min-accuracy = 0.001
'''

#: a hand-written test that records what its process runs with
RECORDER = '''
import json, os, torch

def test_record(advrobust, worker_id):
    advrobust.clean()
    with open(f"threads-{worker_id}.json", "w") as handle:
        json.dump({"torch": torch.get_num_threads(),
                   "env": os.environ.get("PYTEST_ADVROBUST_THREADS")}, handle)

def test_other():
    pass
'''


@pytest.mark.parametrize("option, env, workers, cores, expected", [
    (None, {}, None, 8, 8),                                  # serial: the usable cores
    (None, {}, 2, 2, 1),                                     # the case: -n 2 on 2 cores
    (None, {}, 4, 16, 4),
    (None, {}, 3, 2, 1),                                     # more workers than cores: still 1
    (None, {"OMP_NUM_THREADS": "3"}, 2, 2, 3),               # the user's setting wins the share
    (None, {"PYTEST_ADVROBUST_THREADS": "2"}, None, 8, 2),   # the override, serial too
    (None, {"PYTEST_ADVROBUST_THREADS": "0"}, 4, 16, None),  # 0: libraries' defaults, even on a worker
    ("5", {"PYTEST_ADVROBUST_THREADS": "2", "OMP_NUM_THREADS": "1"}, 2, 2, 5),  # the option first
])
def test_thread_choice(option, env, workers, cores, expected) -> None:
    assert threads.choose(option, env, workers=workers, cores=cores).threads == expected


@pytest.mark.parametrize("bad", ["two", "-1", "1.5"])
def test_a_bad_thread_count_names_where_it_came_from(bad: str) -> None:
    with pytest.raises(ValueError, match=r"PYTEST_ADVROBUST_THREADS: .* is not a thread count"):
        threads.choose(None, {"PYTEST_ADVROBUST_THREADS": bad}, workers=None, cores=2)


def _clean_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own xdist workers apply their share: keep it from reaching inner runs."""
    for name in ("PYTEST_ADVROBUST_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


def test_each_xdist_worker_runs_torch_with_its_share_of_the_cores(
        pytester: pytest.Pytester, blobs, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    pytester.makepyfile(test_recorder=RECORDER)
    _clean_thread_env(monkeypatch)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                           "test_recorder.py", "pyproject.toml")
    result.assert_outcomes(passed=5)
    # the controller measured the usable cores once and says each worker's share
    (header,) = [line for line in result.stdout.lines if line.startswith("advrobust: threads")]
    match = re.fullmatch(r"advrobust: threads in each xdist worker: (\d+) \((\d+) usable cores? // 2 "
                         r"xdist workers; \d+ CPUs? in this process's affinity.*\)", header)
    assert match, header
    share = int(match.group(1))
    assert share == max(1, int(match.group(2)) // 2) and int(match.group(2)) <= threads.available_cores()
    seen = [json.loads(p.read_text()) for p in sorted(pytester.path.glob("threads-gw*.json"))]
    assert seen and all(s == {"torch": share, "env": str(share)} for s in seen), seen


def test_the_override_sets_torch_threads_in_a_serial_run(
        pytester: pytest.Pytester, blobs, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    pytester.makepyfile(test_recorder=RECORDER.replace("worker_id", "request").replace(
        'f"threads-{request}.json"', '"threads-serial.json"'))
    _clean_thread_env(monkeypatch)
    forced = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist",
                                           "--advrobust-threads=1", "test_recorder.py")
    forced.assert_outcomes(passed=2)
    assert json.loads((pytester.path / "threads-serial.json").read_text()) == {"torch": 1, "env": "1"}


def test_a_serial_run_takes_the_usable_cores_by_default(
        pytester: pytest.Pytester, blobs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the libraries' default (every core torch sees): the cores the process may use."""
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    pytester.makepyfile(test_recorder=RECORDER.replace("worker_id", "request").replace(
        'f"threads-{request}.json"', '"threads-serial.json"'))
    _clean_thread_env(monkeypatch)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "test_recorder.py")
    result.assert_outcomes(passed=2)
    (header,) = [line for line in result.stdout.lines if line.startswith("advrobust: threads")]
    match = re.fullmatch(r"advrobust: threads: (\d+) \(the usable cores: \d+ CPUs? in this "
                         r"process's affinity.*\)", header)
    assert match, header
    count = int(match.group(1))
    assert 1 <= count <= threads.available_cores()
    assert json.loads((pytester.path / "threads-serial.json").read_text()) == {"torch": count, "env": str(count)}


def test_a_bad_thread_count_is_a_usage_error(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-threads=many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--advrobust-threads: 'many' is not a thread count*"])


def test_onnxruntime_sessions_take_the_applied_share(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_advrobust.models.onnx_models import load_onnx

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    path = export_onnx(model, torch.zeros(1, 4), tmp_path / "m.onnx")
    monkeypatch.setenv("PYTEST_ADVROBUST_THREADS", "1")
    shared = load_onnx(path, output=None, device=torch.device("cpu"), name="m",
                       input_range=(0.0, 1.0))
    assert shared.session_.get_session_options().intra_op_num_threads == 1
    monkeypatch.delenv("PYTEST_ADVROBUST_THREADS")
    default = load_onnx(path, output=None, device=torch.device("cpu"), name="m",
                        input_range=(0.0, 1.0))
    assert default.session_.get_session_options().intra_op_num_threads == 0


def test_a_gated_run_without_xdist_shows_no_warning_from_the_plugin(
        pytester: pytest.Pytester, blobs) -> None:
    """Gate items carry xdist_group; without pytest-xdist that mark must not warn (a
    subprocess: in-process runs share the outer run's mark registry, where xdist is)."""
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-W", "error")
    result.assert_outcomes(passed=3)
    assert "warnings summary" not in result.stdout.str()


#: counts model loads per process (controller or xdist worker), then lets the built-in load
LOAD_COUNTER = '''
def pytest_advrobust_load_model(spec, config):
    where = getattr(config, "workerinput", {}).get("workerid", "controller")
    with open(f"loads-{where}.txt", "a") as handle:
        handle.write(spec.name + "\\n")
    return None
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_linearity_plot_reuses_the_runs_classifiers(pytester: pytest.Pytester, blobs,
                                                        workers: list[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No model is loaded again for the plot: serially the session's cached classifier draws
    it; under xdist the worker that ran the gates computes the curves, the controller draws."""
    pytest.importorskip("matplotlib")
    if workers:
        pytest.importorskip("xdist")
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    pytester.makeconftest(LOAD_COUNTER)
    _clean_thread_env(monkeypatch)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers,
                                           "--advrobust-plots=plots", "-v")
    result.assert_outcomes(passed=3)
    assert (pytester.path / "plots" / "blob-linearity.png").stat().st_size > 1000
    assert "plot skipped" not in result.stdout.str()
    loads = {p.name: p.read_text().split() for p in pytester.path.glob("loads-*.txt")}
    if workers:
        assert "loads-controller.txt" not in loads, loads  # the controller loaded nothing
        assert all(names == ["blob"] for names in loads.values()) and loads, loads
    else:
        assert loads == {"loads-controller.txt": ["blob"]}


def test_progress_in_a_log_is_per_pass_unless_every_batch_is_asked_for(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    quiet = pytester.runpytest("-p", "no:cacheprovider")  # not a terminal: a CI log
    quiet.assert_outcomes(passed=3)
    assert "batch 1/4" not in quiet.stdout.str() and "blob: pass started" in quiet.stdout.str()
    asked = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-progress=on")
    asked.assert_outcomes(passed=3)
    asked.stdout.fnmatch_lines(["advrobust blob: batch 1/4 (from sample 0); gates: clean, fgsm 0.01/0.05 "
                                "[[]* s into the pass[]]",
                                "advrobust blob: batch 4/4 (from sample 192); gates: clean, fgsm 0.01/0.05 "
                                "[[]* s into the pass[]]"])


def test_progress_is_one_live_line_on_a_terminal(pytester: pytest.Pytester, blobs,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a pseudo-terminal the line is rewritten in place (carriage returns, no new
    lines) and erased before pytest writes each outcome."""
    import pty
    import subprocess

    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    _clean_thread_env(monkeypatch)
    env = {**os.environ, "COLUMNS": "150", "TERM": "xterm"}
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
                                "no:xdist"], cwd=pytester.path, stdout=follower, stderr=follower,
                               stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    output = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")  # the tty's line ends
    assert "[advrobust blob: batch 4/4 (from sample 192); gates: clean, fgsm 0.01/0.05]" in output
    lines_with_progress = [line for line in output.split("\n") if "[advrobust blob" in line]
    assert len(lines_with_progress) == 1  # one line, rewritten: no line feed between updates
    assert lines_with_progress[0].count("\r") >= 4
    # erased before the outcome: what remains visible on that line is pytest's own
    visible = lines_with_progress[0].rsplit("\r", 1)[-1]
    assert "[advrobust" not in visible and visible.startswith("pyproject.toml ..."), repr(visible)
    assert "3 passed" in output


def test_a_project_without_gates_keeps_its_threads_under_xdist(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Having the plugin installed changes nothing for a project that configures no gates."""
    pytest.importorskip("xdist")
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_plain='''
import json, os

def test_record(worker_id):
    with open(f"env-{worker_id}.json", "w") as handle:
        json.dump([os.environ.get(k) for k in ("PYTEST_ADVROBUST_THREADS", "OMP_NUM_THREADS")], handle)

def test_other():
    pass
''')
    _clean_thread_env(monkeypatch)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)
    (recorded,) = pytester.path.glob("env-gw*.json")
    assert json.loads(recorded.read_text()) == [None, None]
