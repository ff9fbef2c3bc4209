"""``--advrobust-markdown PATH`` and ``$GITHUB_STEP_SUMMARY``: the summary as Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..gate import masking_words
from ..results import AttackResult
from .files import atomic_write_text
from .terminal import format_table, headers, ordered, summary_rows, verdict_line

if TYPE_CHECKING:
    from .baseline import Comparison

__all__ = ["to_markdown", "write_markdown", "append_markdown"]


def to_markdown(results: Iterable[AttackResult], comparison: "Comparison | None" = None, *,
                interrupted: bool = False) -> str:
    """A one-line verdict, the full table (with 95% intervals), the messages of gates that
    failed, errored or did not run, and, with a baseline, what was and was not compared."""
    results = ordered(results)
    line = verdict_line(results, interrupted=interrupted)
    if line.startswith("all "):
        mark = ":white_check_mark:"
    elif any(r.status in ("failed", "error") for r in results):
        mark = ":x:"
    else:
        mark = ":hourglass:" if any(r.status == "partial" for r in results) else ":warning:"
    lines = [f"### {mark} advrobust: {line}", ""]
    lines += format_table(summary_rows(results, verbose=True, comparison=comparison),
                          headers(True, comparison is not None), markdown=True)
    for title, status in (("Failing gates", "failed"), ("Gates that errored", "error"),
                          ("Gates not run", "not run")):
        chosen = [r for r in results if r.status == status]
        if chosen:
            lines += ["", f"**{title}**", ""]
            lines += [f"- `{(r.message or r.not_run).replace('`', chr(39))}`" for r in chosen]
    masked = [r for r in results if masking_words(r)]
    if masked:  # also on gates that passed: the statistical diagnostics inform, never fail
        lines += ["", "**Gradient masking suspected**", ""]
        lines += [f"- {r.label}: {masking_words(r).split(': ', 1)[1]}"
                  + ("" if r.diagnostics.get("fails_gate") else " (informative: the gate's verdict stands)")
                  for r in masked]
    if comparison is not None:
        from .baseline import comparison_lines

        lines += ["", "**Baseline**", ""]
        lines += [f"- {line}" for line in comparison_lines(comparison, results)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def append_markdown(path: Path, text: str) -> None:
    """Append to a file another process owns (GitHub's step summary): no rename, one write."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if handle.tell() else "") + text)
