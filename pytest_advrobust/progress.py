"""Progress of the gates' passes: a live line on a terminal, plain lines in a CI log, and
always the ``pytest_advrobust`` logger (``--log-cli-level=INFO`` shows it).

``--advrobust-progress``:

- ``auto`` (default): on a terminal, one line rewritten in place; elsewhere (a CI log),
  one line when each model's pass starts, one when it ends, and at most one every
  :data:`LOG_INTERVAL` seconds in between, so a long pass never leaves the log silent.
- ``on``: the same on a terminal; elsewhere a plain line for every update (each batch).
- ``off``: nothing (the logger still has it).

An xdist worker has no terminal of its own: its lines go to its standard error, which
pytest-xdist leaves connected to the controller's (the CI log), prefixed with the
worker's id; on a terminal (``auto``) a worker stays quiet, as it always did.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["LOG_INTERVAL", "MODES", "Progress"]

MODES = ("auto", "on", "off")
#: the longest a CI log goes without a line while a pass runs (seconds)
LOG_INTERVAL = 30.0
#: progress of long passes (``--log-cli-level=INFO`` shows it live; captured otherwise)
log = logging.getLogger("pytest_advrobust")


class Progress:
    """Receives the engine's progress messages (and the plugin's pass start and end) for
    one pytest process."""

    def __init__(self, config: Any, *, clock: Callable[[], float] = time.monotonic,
                 interval: float = LOG_INTERVAL) -> None:
        self.config = config
        self.mode = config.getoption("advrobust_progress") or "auto"
        self.clock = clock
        self.interval = interval
        self._shown = False
        self._last = 0.0  # when the last plain line was written
        self._started = 0.0  # when the running pass started (0: none runs)
        self._tty: bool | None = None  # an xdist worker's stderr is a terminal (once known)

    def __call__(self, message: str) -> None:
        """An update from the engine (``MODEL: batch k/n ...``)."""
        log.info("advrobust %s", message)
        style = self._style()
        if style == "live":
            self._rewrite(self._reporter(), message)
        elif style == "every" or (style == "log" and self.clock() - self._last >= self.interval):
            elapsed = f" [{_duration(self.clock() - self._started)} into the pass]" if self._started else ""
            self._line(f"{message}{elapsed}")

    @contextmanager
    def model_pass(self, model: str, gates: str, count: int) -> Iterator[None]:
        """A model's pass over its data, computing ``count`` gates (``gates``: their names
        in words): in a log, a line when it starts and one when it ends, with its time."""
        self._started = self.clock()
        plural = "s" if count != 1 else ""
        log.info("advrobust %s: pass started: %d gate%s (%s)", model, count, plural, gates)
        if self._style() in ("log", "every"):
            self._line(f"{model}: pass started: {count} gate{plural} ({gates})")
        ended = "done"
        try:
            yield
        except BaseException:
            ended = "stopped by an error"
            raise
        finally:
            took = _duration(self.clock() - self._started)
            self._started = 0.0
            log.info("advrobust %s: pass %s after %s", model, ended, took)
            if self._style() in ("log", "every"):
                self._line(f"{model}: pass {ended} in {took} ({count} gate{plural})")

    def clear(self) -> None:
        """Remove the live line (before pytest writes the gate's outcome)."""
        reporter = self._reporter()
        if self._shown and reporter is not None:
            writer = reporter._tw
            line = getattr(writer, "_current_line", "")
            width = shutil.get_terminal_size().columns
            self._write(lambda: _raw(writer, "\r" + " " * (width - 1) + "\r" + line))
            self._shown = False

    # -- helpers --------------------------------------------------------------------------
    def _style(self) -> str:
        """``live`` (a terminal), ``log`` (start, end, every :attr:`interval` s), ``every``
        (each update) or ``off``."""
        if self.mode == "off":
            return "off"
        if self._worker() is not None:  # an xdist worker: its stderr, when that is a log
            return {"on": "every"}.get(self.mode, "off" if self._stderr_is_a_terminal() else "log")
        reporter = self._reporter()
        if reporter is None:
            return "off"
        if _isatty(reporter):
            return "live"
        return "every" if self.mode == "on" else "log"

    def _stderr_is_a_terminal(self) -> bool:
        """Whether this process's real stderr (not pytest's capture of it) is a terminal."""
        if self._tty is None:
            answer: list[bool] = []
            self._write(lambda: answer.append(_isatty(sys.__stderr__)))
            self._tty = answer[0]
        return self._tty

    def _worker(self) -> str | None:
        workerinput = getattr(self.config, "workerinput", None)
        return None if workerinput is None else str(workerinput.get("workerid", "worker"))

    def _reporter(self) -> Any:
        if self._worker() is not None:  # an xdist worker has no terminal of its own
            return None
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def _line(self, text: str) -> None:
        """One plain line: through pytest's terminal, or on a worker to its stderr (one
        write, so lines from several workers do not interleave)."""
        self._last = self.clock()
        worker = self._worker()
        if worker is None:
            reporter = self._reporter()
            self._write(lambda: reporter.write_line(f"advrobust {text}"))
            return
        stream = sys.__stderr__
        if stream is not None:
            self._write(lambda: (stream.write(f"\nadvrobust [{worker}] {text}\n"), stream.flush()))

    def _rewrite(self, reporter: Any, message: str) -> None:
        writer = reporter._tw
        line = getattr(writer, "_current_line", "")
        width = shutil.get_terminal_size().columns
        text = f"{line} [advrobust {message}]"
        text = text[:width - 1] if len(text) >= width else text.ljust(width - 1)
        self._write(lambda: _raw(writer, "\r" + text))
        self._shown = True

    def _write(self, write: Any) -> None:
        """Write past pytest's output capture, as its live logging does."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            write()
            return
        with capture.global_and_fixture_disabled():
            write()


def _duration(seconds: float) -> str:
    """``41.3 s``, ``2 min 09 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def _isatty(target: Any) -> bool:
    isatty = getattr(target, "isatty", False)
    try:
        return bool(isatty() if callable(isatty) else isatty)
    except (ValueError, OSError):  # a closed stream
        return False


def _raw(writer: Any, text: str) -> None:
    """Write without changing what the writer believes the current line holds (pytest uses
    it to place its ``[ 50%]`` column)."""
    line = getattr(writer, "_current_line", None)
    writer.write(text, flush=True)
    if line is not None:
        writer._current_line = line

