"""``--advrobust-markdown PATH`` and ``$GITHUB_STEP_SUMMARY``: the summary as Markdown.

GitHub renders headings, tables, images, links and some HTML even in a step summary, so
every piece of text that does not come from this module (messages, which may quote an
exception from a loader or a model; details; a custom attack's words; keys) goes through
:mod:`pytest_advrobust.report.escape`: it can never add a heading, a row, HTML, an image or
a link.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..gate import masking_words
from .escape import md_cell, md_code
from .files import atomic_write_text
from .terminal import EARLY_LEGEND, decided_early, format_table, headers, ordered, summary_rows, verdict_line

if TYPE_CHECKING:
    from .pipeline import RunRecord

__all__ = ["to_markdown", "write_markdown", "append_markdown"]


def to_markdown(run: "RunRecord", *, plots: Path | None = None) -> str:
    """A one-line verdict, the full table (with 95% intervals), the messages of gates that
    failed, errored or did not run, masking signs, accepted falls and, with a baseline,
    what was and was not compared."""
    results = ordered(run.results)
    if run.empty and not results:
        return f"### :warning: advrobust: {md_code(run.empty)}\n"
    line = verdict_line(results, interrupted=run.interrupted)
    if line.startswith("all "):
        mark = ":white_check_mark:"
    elif any(r.status in ("failed", "error") for r in results):
        mark = ":x:"
    else:
        mark = ":hourglass:" if any(r.status == "partial" for r in results) else ":warning:"
    lines = [f"### {mark} advrobust: {md_cell(line)}", ""]
    rows = summary_rows(results, verbose=True, comparison=run.comparison)
    lines += format_table([tuple(md_cell(c) for c in row) for row in rows],
                          headers(True, run.comparison is not None), markdown=True)
    if decided_early(results):
        lines += ["", f"_{EARLY_LEGEND}._"]
    for title, status in (("Failing gates", "failed"), ("Gates that errored", "error"),
                          ("Gates not run", "not run")):
        chosen = [r for r in results if r.status == status]
        if chosen:
            lines += ["", f"**{title}**", ""]
            lines += [f"- {md_code(r.message or r.not_run)}" for r in chosen]
    if run.accepted:
        lines += ["", "**Accepted into the baseline** (`--advrobust-accept`)", ""]
        lines += [f"- {md_code(r.label)}: {md_code(r.status)}" for r in run.accepted]
    noted = [r for r in results if r.note]
    if noted:
        lines += ["", "**Measured, not judged**", ""]
        lines += [f"- {md_code(r.label)}: {md_code(r.note)}" for r in noted]
    masked = [r for r in results if masking_words(r)]
    if masked:  # also on gates that passed: the statistical diagnostics inform, never fail
        lines += ["", "**Gradient masking suspected**", ""]
        lines += [f"- {md_code(r.label)}: {md_code(masking_words(r).split(': ', 1)[1])}"
                  + ("" if r.diagnostics.get("fails_gate") else " (informative: the gate's verdict stands)")
                  for r in masked]
    if run.remarks:
        lines += [""] + [f"- {md_code(remark)}" for remark in run.remarks]
    if run.comparison is not None:
        from .baseline import comparison_lines

        lines += ["", "**Baseline**", ""]
        lines += [f"- {md_code(line)}" for line in comparison_lines(run.comparison, results)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def append_markdown(path: Path, text: str) -> Path:
    """Append to a file another process owns (GitHub's step summary): no rename, one write."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if handle.tell() else "") + text)
    return path
