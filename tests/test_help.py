"""What a user reads first: ``--help`` texts and ``python -m pytest_advrobust --version``."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import pytest_advrobust
from pytest_advrobust import plugin

#: a reference to a file of the repository that an installed wheel does not contain
REPOSITORY_FILE = re.compile(r"\bdocs/|\b[\w./-]+\.md\b")


class _Options:
    """Records the plugin's options as pytest's parser would receive them."""

    def __init__(self) -> None:
        self.helps: dict[str, str] = {}

    def getgroup(self, *args: object, **kwargs: object) -> "_Options":
        return self

    def addoption(self, *names: str, **attrs: object) -> None:
        self.helps[names[0]] = str(attrs.get("help", ""))


def _option_helps() -> dict[str, str]:
    options = _Options()
    plugin.pytest_addoption(options)  # type: ignore[arg-type]
    return options.helps


def test_every_option_has_a_help_text_naming_no_file_the_wheel_lacks() -> None:
    helps = _option_helps()
    assert "--advrobust-baseline" in helps and "--advrobust-examples" in helps
    for name, text in helps.items():
        assert text.strip(), name
        assert not REPOSITORY_FILE.search(text), f"{name}: {text}"


@pytest.mark.parametrize("argv", [["--help"], ["merge", "--help"]])
def test_the_command_line_help_names_no_file_the_wheel_lacks(argv, capsys) -> None:
    from pytest_advrobust.merge import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: python -m pytest_advrobust" in text
    assert not REPOSITORY_FILE.search(text), text


@pytest.mark.e2e
def test_python_dash_m_version_prints_the_version() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_advrobust", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"pytest-advrobust {pytest_advrobust.__version__}\n")
