"""The shipped CI recipes, run here the way a runner would run them (no runner is
available): the GitHub Actions workflows of ``example_project/.github/workflows/`` (the
single job, and the sharded matrix with its merge job) on copies of the example project,
for pushes to main and pull requests, with and without a committed baseline; and the
GitLab CI snippet's JUnit report wiring.

The install step is the one step not run (it downloads torch): the test's own environment
stands in for the cached venv, and what every recipe installs is checked instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import ROOT
from workflow import GitHubRun, parse_yaml

PROJECT = ROOT / "example_project"
WORKFLOW = PROJECT / ".github" / "workflows" / "robustness.yml"
SHARDED = PROJECT / ".github" / "workflows" / "robustness-sharded.yml"
GITLAB = PROJECT / ".gitlab-ci.yml"
REQUIREMENTS = PROJECT / "ci-requirements.txt"
GATES = "Tests and robustness gates"
BUILD = "Build the model"
INSTALL = "Install"
REPORTS = ["reports/junit.xml", "reports/robustness.json", "reports/robustness.md", "reports/plots",
           "reports/robustness-baseline.json"]
FALLEN = "mlp-torch::fgsm[eps=0.1]"


def _jobs() -> list[tuple[str, dict]]:
    """Every GitHub Actions job the recipes ship."""
    single = parse_yaml(WORKFLOW.read_text())["jobs"]
    sharded = parse_yaml(SHARDED.read_text())["jobs"]
    return [("robustness", single["robustness"]), ("shard", sharded["shard"]), ("gate", sharded["gate"])]


def _step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name") == name)


# -- what the recipes install, and how they cache it -------------------------------------
def test_every_recipe_installs_the_same_requirements_file() -> None:
    for name, job in _jobs():
        install = _step(job, INSTALL)
        assert install["if"] == "steps.venv.outputs.cache-hit != 'true'", name  # skipped on a hit
        assert ".venv/bin/python -m pip install -r ci-requirements.txt" in install["run"], name
        key = next(s for s in job["steps"] if s.get("id") == "venv")["with"]["key"]
        # only the install inputs: a threshold edit in pyproject.toml must not reinstall torch
        assert re.findall(r"hashFiles\(([^)]*)\)", key) == ["'ci-requirements.txt'"], (name, key)
    gitlab = parse_yaml(GITLAB.read_text())["robustness"]
    assert gitlab["cache"]["key"]["files"] == ["ci-requirements.txt"]
    assert any("pip install -r ci-requirements.txt" in line for line in gitlab["before_script"])


def test_the_requirements_take_cpu_torch_and_the_plugin_from_its_repository() -> None:
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    pinned = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    assert pinned in lines  # the torch the project's own toolchain is tested with
    (plugin,) = [line for line in lines if line.startswith("pytest-advrobust")]
    assert " @ git+https://" in plugin  # no release on PyPI: a bare name would not install


def test_every_gate_job_builds_its_model_first() -> None:
    for name, job in _jobs():
        names = [s.get("name") for s in job["steps"]]
        gate = next(i for i, s in enumerate(job["steps"]) if "pytest" in s.get("run", ""))
        if name != "gate":  # the merge needs no model: it reads the shards' counts
            assert BUILD in names and names.index(BUILD) < gate, name


# -- running them ---------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GITHUB_") and k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER",
                                                         "PYTEST_XDIST_WORKER_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _workspace(where: Path, models: Path | None, baseline: dict | None) -> Path:
    """A fresh checkout of the example project, with a ``.venv`` that is this test's Python
    (the cached venv of every run after the first), ``models`` when given, and a committed
    ``robustness-baseline.json`` when ``baseline`` is given."""
    workspace = where / "workspace"
    shutil.copytree(PROJECT, workspace,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__", "reports"))
    bin_dir = workspace / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    if models is not None:
        shutil.copytree(models, workspace / "models")
    if baseline is not None:
        (workspace / "robustness-baseline.json").write_text(json.dumps(baseline))
    return workspace


def _run(where: Path, *, event: str, ref: str, workflow: Path = WORKFLOW, job: str = "robustness",
         models: Path | None = None, baseline: dict | None = None, matrix: dict | None = None,
         artifacts: Path | None = None, **env: str) -> GitHubRun:
    """``job`` of ``workflow`` for ``event`` on ``ref``. With ``models``, the model-building
    step is not repeated (the first run's files are copied in: training is seeded, so it
    would give the same files, and saves a minute on a loaded machine)."""
    where.mkdir(parents=True)
    (where / "cache").mkdir()
    run = GitHubRun(parse_yaml(workflow.read_text()), _workspace(where, models, baseline), event=event,
                    ref=ref, env={**_env(), **env}, caches={}, cache_root=where / "cache",
                    skip={BUILD} if models is not None else set(), matrix=matrix or {},
                    artifacts=artifacts)
    run.succeeded = run.run(job)  # type: ignore[attr-defined]
    return run


def _assert_reports(run: GitHubRun, expected: list[str] = REPORTS) -> dict:
    """Every promised report exists, and says what it should."""
    assert [str(p.relative_to(run.workspace)) for p in run.uploaded["robustness-reports"]] == expected
    # every report exists, the baseline file only after a green run (a red one saves none)
    assert all(p.exists() or p.name == "robustness-baseline.json" for p in run.uploaded["robustness-reports"])
    if "reports/plots" in expected:
        plots = sorted(p.name for p in (run.workspace / "reports" / "plots").glob("*.png"))
        assert any("linearity" in name for name in plots), plots
    cases = ElementTree.parse(run.workspace / "reports" / "junit.xml").getroot().iter("testcase")
    properties = {p.get("name") for case in cases for p in case.iter("property")}
    assert {"advrobust_accuracy", "advrobust_model", "advrobust_threshold"} <= properties
    assert "| model |" in run.summary or "model |" in run.summary  # the table on the run's page
    return json.loads((run.workspace / "reports" / "robustness.json").read_text())


def _raised(baseline: dict, key: str, accuracy: float) -> dict:
    """The baseline (``{"results": {key: {"accuracy": ...}}}``) with one gate's figure raised:
    as if the committed model had been far more robust there."""
    baseline = json.loads(json.dumps(baseline))
    assert baseline["results"][key]["accuracy"] < accuracy
    baseline["results"][key]["accuracy"] = accuracy
    return baseline


def _failed(report: dict) -> list[str]:
    return [r["key"] for r in report["results"] if not r["passed"]]


@pytest.fixture(scope="module")
def first_main_run(tmp_path_factory: pytest.TempPathFactory) -> GitHubRun:
    """The first push to main: no committed baseline yet; it builds the models."""
    pytest.importorskip("matplotlib")
    return _run(tmp_path_factory.mktemp("ci") / "main", event="push", ref="refs/heads/main")


@pytest.mark.e2e
def test_the_workflow_compares_with_the_committed_baseline_on_main_and_pull_requests(
        first_main_run: GitHubRun, tmp_path: Path) -> None:
    """The first main run is judged on thresholds and hands out its figures as a baseline; a
    pull request, and main itself, fail on exactly the gate that fell below the committed
    baseline; the documented accept step writes the baseline that makes the pull request pass."""
    main = first_main_run
    assert main.succeeded, main.step(GATES).output[-3000:]
    assert main.step(BUILD).ran and "No committed baseline" in main.summary
    report = _assert_reports(main)
    assert len(report["results"]) == 17 and not _failed(report)
    produced = json.loads((main.workspace / "reports" / "robustness-baseline.json").read_text())
    assert sorted(produced["results"]) == sorted(r["key"] for r in report["results"])
    models = main.workspace / "models"
    committed = _raised(produced, FALLEN, 0.95)

    pr = _run(tmp_path / "pr", event="pull_request", ref="refs/pull/2/merge", models=models,
              baseline=committed)
    assert not pr.succeeded and pr.step(GATES).returncode == 1
    assert "advrobust baseline" in pr.step(GATES).output and "regression" in pr.step(GATES).output
    assert "No committed baseline" not in pr.summary and pr.step("Upload the reports").ran
    report = _assert_reports(pr)
    assert _failed(report) == [FALLEN]  # the other 16 were compared with the baseline and passed
    assert not (pr.workspace / "reports" / "robustness-baseline.json").exists()  # a red run saves none

    # main compares with the committed baseline before it saves (only the fgsm gates here:
    # this run is about the comparison)
    again = _run(tmp_path / "main-again", event="push", ref="refs/heads/main", models=models,
                 baseline=committed, PYTEST_ADDOPTS="-k fgsm")
    assert not again.succeeded and _failed(json.loads(
        (again.workspace / "reports" / "robustness.json").read_text())) == [FALLEN]

    # the pull request accepts the fall as the workflow's header says, and commits the file
    accept = _accept_command()
    workspace = pr.workspace
    done = subprocess.run([sys.executable, "-m", "pytest", *accept[1:], "-p", "no:cacheprovider", "-k", "fgsm"],
                          cwd=workspace, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:]  # the run that accepts stays red
    accepted = json.loads((workspace / "robustness-baseline.json").read_text())
    assert accepted["results"][FALLEN]["accuracy"] == produced["results"][FALLEN]["accuracy"]
    assert accepted["results"]["mlp-torch::clean"] == committed["results"]["mlp-torch::clean"]
    fixed = _run(tmp_path / "pr-accepted", event="pull_request", ref="refs/pull/2/merge",
                 models=models, baseline=accepted, PYTEST_ADDOPTS="-k fgsm")
    assert fixed.succeeded, fixed.step(GATES).output[-3000:]


def _accept_command() -> list[str]:
    """The accept step of the workflow's header comment, with the gate that fell."""
    header = [line[2:] for line in WORKFLOW.read_text().splitlines() if line.startswith("#   ")]
    command = shlex.split(" ".join(line.rstrip("\\ ") for line in header))
    assert command[0] == "pytest" and "--advrobust-accept=GATE[,GATE...]" in command, command
    return [FALLEN if arg == "GATE[,GATE...]" else arg.replace("GATE[,GATE...]", FALLEN) for arg in command]


@pytest.mark.e2e
def test_the_sharded_recipe_merges_its_shards_into_one_verdict(first_main_run: GitHubRun,
                                                               tmp_path: Path) -> None:
    """Three shard jobs and the merge job, as the matrix runs them: the merged verdict is the
    single job's, and a fall below the committed baseline fails the merge job."""
    single = json.loads((first_main_run.workspace / "reports" / "robustness.json").read_text())
    models = first_main_run.workspace / "models"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shards = parse_yaml(SHARDED.read_text())["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    for shard in shards:
        run = _run(tmp_path / f"shard-{shard}", event="pull_request", ref="refs/pull/3/merge",
                   workflow=SHARDED, job="shard", models=models, matrix={"shard": shard},
                   artifacts=artifacts)
        assert run.succeeded, run.steps[-2].output[-3000:]
        assert (artifacts / f"advrobust-shard-{shard}" / f"shard-{shard}.json").exists()

    gate = _run(tmp_path / "gate", event="pull_request", ref="refs/pull/3/merge", workflow=SHARDED,
                job="gate", artifacts=artifacts)
    merged = _assert_reports(gate, ["reports/junit.xml", "reports/robustness.json",
                                    "reports/robustness.md", "reports/robustness-baseline.json"])
    assert gate.succeeded and "No committed baseline" in gate.summary
    figures = {r["key"]: (r["correct"], r["n"], r["passed"]) for r in merged["results"]}
    assert figures == {r["key"]: (r["correct"], r["n"], r["passed"]) for r in single["results"]}

    produced = json.loads((gate.workspace / "reports" / "robustness-baseline.json").read_text())
    fallen = _run(tmp_path / "gate-fallen", event="pull_request", ref="refs/pull/3/merge",
                  workflow=SHARDED, job="gate", artifacts=artifacts,
                  baseline=_raised(produced, FALLEN, 0.95))
    assert not fallen.succeeded and "regression" in fallen.step("Merge and gate").output
    assert _failed(json.loads((fallen.workspace / "reports" / "robustness.json").read_text())) == [FALLEN]


def test_the_gitlab_snippet_reports_junit_from_the_same_gate_command() -> None:
    gitlab = parse_yaml(GITLAB.read_text())
    job = gitlab["robustness"]
    script = "\n".join(job["script"])
    junit = job["artifacts"]["reports"]["junit"]
    assert f"--junitxml={junit}" in script
    assert job["artifacts"]["when"] == "always"  # a failing gate's report is the useful one
    gates = _step(parse_yaml(WORKFLOW.read_text())["jobs"]["robustness"], GATES)["run"]
    for option in ("--advrobust-json=reports/robustness.json", "--advrobust-plots=reports/plots",
                   "--advrobust-markdown=reports/robustness.md"):
        assert option in script and option in gates
    for path in ("reports/robustness.json", "reports/plots"):
        assert path in job["artifacts"]["paths"]


def test_the_docs_show_the_recipes_as_shipped() -> None:
    """docs/ci.md includes the files themselves (one source); README's snippet is their core:
    every command and option it shows is in the shipped workflow."""
    ci = (ROOT / "docs" / "ci.md").read_text()
    for path in (WORKFLOW, SHARDED, GITLAB, REQUIREMENTS):
        assert f"../{path.relative_to(ROOT)}\n" in ci, path
    readme = (ROOT / "README.md").read_text()
    snippet = readme[readme.index("```yaml\n"):]
    snippet = snippet[:snippet.index("\n```\n")]
    workflow = WORKFLOW.read_text().replace(".venv/bin/python", "python")
    commands = [line.split("#")[0].strip()[len("- run: "):] for line in snippet.splitlines()
                if line.strip().startswith("- run: ")]
    assert len(commands) == 3  # install, build the model, the gates
    for command in commands:
        words = shlex.split(command)
        assert " ".join(words[:3]) in workflow, command
        assert all(word in workflow for word in words[3:]), command
