"""The install paths: the Makefile's opt-in CPU index reaches pip's command line, the long
install step shows its progress, and CI (.ci/run) never depends on that index.

``make -n`` prints the commands a target would run without running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = [pytest.mark.e2e,  # every test here runs make
              pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")]


def _dry_run(command: list[str], tmp_path: Path, **env: str) -> list[str]:
    """The commands ``command`` would run, for a venv that does not exist yet."""
    environment = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX", "MAKEFLAGS")}
    environment.update({"VENV": str(tmp_path / "venv"), **env})
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip install" in line and '".[dev,docs]"' in line]


def test_the_cpu_index_variable_reaches_pip(tmp_path: Path) -> None:
    (install,) = _installs(_dry_run(["make", "-n", "setup", f"TORCH_INDEX={CPU_INDEX}"], tmp_path))
    assert f"--extra-index-url {CPU_INDEX} " in install
    assert "-c constraints.txt" in install  # still the pinned versions (torch==2.13.0)


def test_the_default_install_names_no_extra_index_and_shows_progress(tmp_path: Path) -> None:
    lines = _dry_run(["make", "-n", "setup"], tmp_path)
    (install,) = _installs(lines)
    assert "index-url" not in " ".join(lines)
    assert "--quiet" not in install and "-q " not in install  # minutes of silence otherwise


def test_ci_never_uses_the_cpu_index_even_when_the_environment_sets_it(tmp_path: Path) -> None:
    """.ci/run runs both README commands, then the docs build; under ``make -n`` (MAKEFLAGS=n)
    they only print."""
    lines = _dry_run(["bash", ".ci/run"], tmp_path, TORCH_INDEX=CPU_INDEX, MAKEFLAGS="n")
    assert len(_installs(lines)) == 3  # make example, test, docs (the venv is never made)
    assert "index-url" not in " ".join(lines)
    test = next(i for i, line in enumerate(lines) if "-m pytest -p no:cacheprovider -n 2 tests" in line)
    docs = next(i for i, line in enumerate(lines) if "-m sphinx" in line)
    assert test < docs and "-W --keep-going" in lines[docs]  # warnings fail the build
