"""Progress of the gates' passes: a live line on a terminal, plain lines when asked, and
always the ``pytest_advrobust`` logger (``--log-cli-level=INFO`` shows it).

``--advrobust-progress``: ``auto`` (default) rewrites one line in place when the output
is a terminal and says nothing otherwise (a CI log stays clean); ``on`` does the same on
a terminal and writes one plain line per update elsewhere; ``off`` says nothing.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

__all__ = ["MODES", "Progress"]

MODES = ("auto", "on", "off")
#: progress of long passes (``--log-cli-level=INFO`` shows it live; captured otherwise)
log = logging.getLogger("pytest_advrobust")


class Progress:
    """Receives the engine's progress messages for one pytest process."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.mode = config.getoption("advrobust_progress") or "auto"
        self._shown = False

    def __call__(self, message: str) -> None:
        log.info("advrobust %s", message)
        reporter = self._reporter()
        if reporter is None or self.mode == "off":
            return
        if _isatty(reporter):
            self._rewrite(reporter, message)
        elif self.mode == "on":
            self._write(reporter, lambda: reporter.write_line(f"advrobust {message}"))

    def clear(self) -> None:
        """Remove the live line (before pytest writes the gate's outcome)."""
        reporter = self._reporter()
        if self._shown and reporter is not None:
            writer = reporter._tw
            line = getattr(writer, "_current_line", "")
            width = shutil.get_terminal_size().columns
            self._write(reporter, lambda: _raw(writer, "\r" + " " * (width - 1) + "\r" + line))
            self._shown = False

    # -- helpers --------------------------------------------------------------------------
    def _reporter(self) -> Any:
        if hasattr(self.config, "workerinput"):  # an xdist worker has no terminal of its own
            return None
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def _rewrite(self, reporter: Any, message: str) -> None:
        writer = reporter._tw
        line = getattr(writer, "_current_line", "")
        width = shutil.get_terminal_size().columns
        text = f"{line} [advrobust {message}]"
        text = text[:width - 1] if len(text) >= width else text.ljust(width - 1)
        self._write(reporter, lambda: _raw(writer, "\r" + text))
        self._shown = True

    def _write(self, reporter: Any, write: Any) -> None:
        """Write past pytest's output capture, as its live logging does."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            write()
            return
        with capture.global_and_fixture_disabled():
            write()


def _isatty(reporter: Any) -> bool:
    isatty = getattr(reporter, "isatty", False)
    return bool(isatty() if callable(isatty) else isatty)


def _raw(writer: Any, text: str) -> None:
    """Write without changing what the writer believes the current line holds (pytest uses
    it to place its ``[ 50%]`` column)."""
    line = getattr(writer, "_current_line", None)
    writer.write(text, flush=True)
    if line is not None:
        writer._current_line = line
