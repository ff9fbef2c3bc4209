"""The shipped CI recipes, run here the way a runner would run them (no runner is
available): the GitHub Actions workflow of ``example_project/.github/workflows/`` on a copy
of the example project, for a push to main and for pull requests, with and without the
baseline main left behind; and the GitLab CI snippet's JUnit report wiring.

The install step is the one step not run (it downloads torch): the test's own environment
stands in for the cached venv, and its command is checked instead.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import ROOT
from workflow import GitHubRun, parse_yaml

WORKFLOW = ROOT / "example_project" / ".github" / "workflows" / "robustness.yml"
GITLAB = ROOT / "example_project" / ".gitlab-ci.yml"
GATES = "Tests and robustness gates"
SAVE = "Keep this run's results as the baseline for pull requests"
RESTORE = "Restore the baseline of the last run on main"
BUILD = "Build the model"
REPORTS = ["reports/junit.xml", "reports/robustness.json", "reports/robustness.md", "reports/plots"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GITHUB_") and k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER",
                                                         "PYTEST_XDIST_WORKER_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _workspace(where: Path, models: Path | None) -> Path:
    """A fresh checkout of the example project, with a ``.venv`` that is this test's Python
    (the cached venv of every run after the first), and ``models`` when given."""
    workspace = where / "workspace"
    shutil.copytree(ROOT / "example_project", workspace,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__", "reports"))
    bin_dir = workspace / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    if models is not None:
        shutil.copytree(models, workspace / "models")
    return workspace


def _run(where: Path, *, event: str, ref: str, caches: dict, models: Path | None = None,
         **env: str) -> GitHubRun:
    """The workflow's job for ``event`` on ``ref``. With ``models``, the model-building step is
    not repeated (the first run's files are copied in: training is seeded, so it would give
    the same files, and saves a minute on a loaded machine)."""
    where.mkdir(parents=True)
    (where / "cache").mkdir()
    run = GitHubRun(parse_yaml(WORKFLOW.read_text()), _workspace(where, models), event=event,
                    ref=ref, env={**_env(), **env}, caches=caches, cache_root=where / "cache",
                    skip={BUILD} if models is not None else set())
    run.succeeded = run.run("robustness")  # type: ignore[attr-defined]
    return run


def _assert_reports(run: GitHubRun) -> dict:
    """Every promised report exists, and says what it should."""
    assert [str(p.relative_to(run.workspace)) for p in run.uploaded["robustness-reports"]] == REPORTS
    assert all(p.exists() for p in run.uploaded["robustness-reports"])
    plots = sorted(p.name for p in (run.workspace / "reports" / "plots").glob("*.png"))
    assert any("linearity" in name for name in plots), plots
    cases = ElementTree.parse(run.workspace / "reports" / "junit.xml").getroot().iter("testcase")
    properties = {p.get("name") for case in cases for p in case.iter("property")}
    assert {"advrobust_accuracy", "advrobust_model", "advrobust_threshold"} <= properties
    assert "| model |" in run.summary or "model |" in run.summary  # the table on the run's page
    return json.loads((run.workspace / "reports" / "robustness.json").read_text())


def test_the_workflow_installs_cpu_torch_and_the_plugin() -> None:
    steps = parse_yaml(WORKFLOW.read_text())["jobs"]["robustness"]["steps"]
    install = next(s for s in steps if s.get("name") == "Install")
    assert install["if"] == "steps.venv.outputs.cache-hit != 'true'"  # skipped on a cache hit
    assert '--extra-index-url "$TORCH_INDEX"' in install["run"] and '"$PLUGIN"' in install["run"]
    env = parse_yaml(WORKFLOW.read_text())["env"]
    assert env["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert env["PLUGIN"].startswith("pytest-advrobust[plots]")
    cache = next(s for s in steps if s.get("id") == "venv")
    assert cache["with"]["path"] == ".venv" and "hashFiles(" in cache["with"]["key"]


@pytest.mark.e2e
def test_the_workflow_on_main_and_on_pull_requests(tmp_path: Path) -> None:
    """main saves its baseline; a pull request before any main run is judged on thresholds;
    one that falls below main's baseline fails on exactly that gate."""
    pytest.importorskip("matplotlib")
    caches: dict = {}
    main = _run(tmp_path / "main", event="push", ref="refs/heads/main", caches=caches)
    assert main.succeeded, main.step(GATES).output[-3000:]
    assert main.step(BUILD).ran and not main.step(RESTORE).ran and main.step(SAVE).ran
    report = _assert_reports(main)
    assert len(report["results"]) == 17 and all(r["passed"] for r in report["results"])
    (saved,) = caches.values()
    models = main.workspace / "models"

    # (only the clean gates, through pytest's own variable: this run is about the baseline step)
    first = _run(tmp_path / "pr-no-baseline", event="pull_request", ref="refs/pull/1/merge",
                 caches={}, models=models, PYTEST_ADDOPTS="-k clean")
    assert first.succeeded, first.step(GATES).output[-3000:]
    assert "No baseline from main yet" in first.summary and not first.step(SAVE).ran
    assert {r["attack"] for r in _assert_reports(first)["results"]} == {"clean"}

    path = saved / "robustness-baseline.json"
    path.write_text(json.dumps(_raise_accuracy(json.loads(path.read_text()),
                                               "mlp-torch::fgsm[eps=0.1]", 0.95)))
    pr = _run(tmp_path / "pr", event="pull_request", ref="refs/pull/2/merge", caches=caches,
              models=models)  # as if main's model had been far more robust against fgsm 0.1
    assert pr.step(RESTORE).ran and not pr.succeeded and pr.step(GATES).returncode == 1
    assert "advrobust baseline" in pr.step(GATES).output and "regression" in pr.step(GATES).output
    assert pr.step("Upload the reports").ran and not pr.step(SAVE).ran
    report = _assert_reports(pr)  # the reports of a failing run are kept too
    # the other 16 gates were compared with main's figures and passed
    assert [r["key"] for r in report["results"] if not r["passed"]] == ["mlp-torch::fgsm[eps=0.1]"]


def _raise_accuracy(baseline: dict, key: str, accuracy: float) -> dict:
    """The baseline (``{"results": {key: {"accuracy": ...}}}``) with one gate's figure raised."""
    assert baseline["results"][key]["accuracy"] < accuracy
    baseline["results"][key]["accuracy"] = accuracy
    return baseline


def test_the_gitlab_snippet_reports_junit_from_the_same_gate_command() -> None:
    gitlab = parse_yaml(GITLAB.read_text())
    job = gitlab["robustness"]
    script = "\n".join(job["script"])
    junit = job["artifacts"]["reports"]["junit"]
    assert f"--junitxml={junit}" in script
    assert job["artifacts"]["when"] == "always"  # a failing gate's report is the useful one
    assert "--extra-index-url" in " ".join(job.get("before_script", [])) or "$TORCH_INDEX" in script
    gates = next(s for s in parse_yaml(WORKFLOW.read_text())["jobs"]["robustness"]["steps"]
                 if s.get("name") == GATES)["run"]
    for option in ("--advrobust-json=reports/robustness.json", "--advrobust-plots=reports/plots",
                   "--advrobust-markdown=reports/robustness.md"):
        assert option in script and option in gates
    for path in ("reports/robustness.json", "reports/plots"):
        assert path in job["artifacts"]["paths"]


def test_readme_shows_the_workflow_as_shipped() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```yaml\n" + WORKFLOW.read_text() + "```" in readme
