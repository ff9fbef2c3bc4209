"""The split between unit and end-to-end tests (``make test-unit`` = ``-m "not e2e"``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from pytest_advrobust.config import tomllib


def test_the_e2e_marker_is_registered_and_make_has_a_unit_target() -> None:
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(marker.startswith("e2e:") for marker in markers)
    makefile = (ROOT / "Makefile").read_text()
    assert "test-unit:" in makefile and '-m "not e2e"' in makefile


def test_a_unit_test_that_starts_a_process_is_told_to_mark_it() -> None:
    with pytest.raises(AssertionError, match=r"test_markers.py::.* starts a subprocess .* not marked e2e"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.e2e
def test_a_marked_test_may_start_a_process() -> None:
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True,
                          text=True, check=True).stdout.strip() == "42"


def test_a_test_using_pytester_is_marked_e2e(request: pytest.FixtureRequest, pytester: pytest.Pytester) -> None:
    assert request.node.get_closest_marker("e2e") is not None
