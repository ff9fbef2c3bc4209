"""``--advrobust-markdown PATH`` and ``$GITHUB_STEP_SUMMARY``: the summary as Markdown.

GitHub renders headings, tables, images, links and some HTML even in a step summary, so
every piece of text that does not come from this module (messages, which may quote an
exception from a loader or a model; details; a custom attack's words; keys) goes through
:mod:`pytest_advrobust.report.escape`: it can never add a heading, a row, HTML, an image or
a link.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import quote

from ..gate import masking_words
from ..results import AttackResult, class_accuracy, format_eps
from .escape import md_cell, md_code
from .files import atomic_write_text
from .terminal import EARLY_LEGEND, decided_early, format_table, headers, ordered, summary_rows, verdict_line

if TYPE_CHECKING:
    from .pipeline import RunRecord

__all__ = ["to_markdown", "write_markdown", "append_markdown"]


def to_markdown(run: "RunRecord", *, files: Sequence[Path] = (), links_from: Path | None = None) -> str:
    """A one-line verdict, the full table (with 95% intervals), the messages of gates that
    failed, errored or did not run, masking signs, accepted falls, the classes that fall
    most and each model's per-class table, the files written (``files``: plots, examples;
    relative links from the folder ``links_from``, or their paths where a link could not
    work, as in a step summary) and, with a baseline, what was and was not compared."""
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
    lines += falling_classes(results) + class_tables(results)
    lines += file_links([*files, *(Path(a) for r in results for a in r.artifacts
                                   if a.endswith("-examples.png"))], links_from)
    if run.remarks:
        lines += [""] + [f"- {md_code(remark)}" for remark in run.remarks]
    if run.comparison is not None:
        from .baseline import comparison_lines

        lines += ["", "**Baseline**", ""]
        lines += [f"- {md_code(line)}" for line in comparison_lines(run.comparison, results)]
    return "\n".join(lines) + "\n"


#: how many classes "the classes that fall most" names per gate, and a per-class table shows
FALLING = 3
MAX_CLASSES = 20


def _attacked(results: Sequence[AttackResult]) -> list[AttackResult]:
    """Gates with per-class figures whose inputs were attacked (not ``clean``)."""
    return [r for r in results if r.measured and r.per_class and r.attack != "clean"
            and r.status != "partial"]


def falling_classes(results: Sequence[AttackResult]) -> list[str]:
    """Per attacked gate, the classes whose accuracy falls most from clean to attacked."""
    lines: list[str] = []
    for r in _attacked(results):
        falls = sorted(r.per_class, key=lambda row: (-(row["clean_correct"] - row["correct"]) / row["n"],
                                                     row["label"]))
        shown = [f"class {row['label']} {clean:.3f} -> {attacked:.3f} (n={row['n']})"
                 for row in falls[:FALLING] for clean, attacked in [class_accuracy(row)]
                 if row["clean_correct"] > row["correct"]]
        if shown:
            lines.append(f"- {md_code(r.label)}: {'; '.join(shown)}")
    return (["", "**Classes that fall most** (accuracy on the class's samples, clean -> attacked)", ""]
            + lines) if lines else []


def class_tables(results: Sequence[AttackResult]) -> list[str]:
    """Per model, a collapsed table: one row per class (its samples and clean accuracy from
    the model's clean gate, or its first attacked one), one column per attacked gate."""
    lines: list[str] = []
    by_model: dict[str, list[AttackResult]] = {}
    for r in _attacked(results):
        by_model.setdefault(r.model, []).append(r)
    for model, gates in by_model.items():
        reference = next((r for r in results if r.model == model and r.attack == "clean"
                          and r.measured and r.per_class), gates[0])
        rows = {row["label"]: row for row in reference.per_class}
        cells = {r.key: {row["label"]: class_accuracy(row)[1] for row in r.per_class} for r in gates}
        labels = sorted(rows, key=lambda label: (min(c.get(label, 1.0) for c in cells.values()), label))
        hidden = len(labels) - MAX_CLASSES
        labels = sorted(labels[:MAX_CLASSES])
        header = ("class", "n", "clean", *(f"{r.attack}{'' if r.eps is None else f' eps={format_eps(r.eps)}'}"
                                           f"{f' #{r.check}' if _shared(gates, r) else ''}" for r in gates))
        table = [(str(label), str(rows[label]["n"]), f"{class_accuracy(rows[label])[0]:.3f}",
                  *(f"{cells[r.key][label]:.3f}" if label in cells[r.key] else "-" for r in gates))
                 for label in labels]
        more = (f"\n\n{hidden} more classes (the {MAX_CLASSES} with the lowest attacked accuracy are "
                "shown); every class is in the JSON report (per_class)." if hidden > 0 else "")
        lines += ["", f"<details><summary>Per-class accuracy under attack: {md_cell(model)}</summary>", ""]
        lines += format_table([tuple(md_cell(c) for c in row) for row in table],
                              tuple(md_cell(h) for h in header), markdown=True)
        lines += [more.strip("\n")] if more else []
        lines += ["", "</details>"]
    return lines


def _shared(gates: Sequence[AttackResult], r: AttackResult) -> bool:
    """Another check of the model runs the same attack at the same eps (name them apart)."""
    return sum(g.attack == r.attack and g.eps == r.eps for g in gates) > 1


def file_links(files: Sequence[Path], links_from: Path | None) -> list[str]:
    """The files a run wrote (plots, example grids), as relative links from ``links_from``
    (a Markdown file's folder: they work wherever the folder goes with it, such as a CI
    artifact), or as paths where no link can work (a step summary)."""
    if not files:
        return []
    lines = ["", "**Files**", ""]
    for path in sorted(dict.fromkeys(Path(f) for f in files), key=str):
        name = re.sub(r"[^A-Za-z0-9._ -]", "_", path.name)
        try:
            where = os.path.relpath(path.resolve(), Path(links_from or ".").resolve())
        except ValueError:  # another drive (Windows): no relative path exists
            where = str(path.resolve())
        if links_from is None:
            lines.append(f"- {md_code(where)}")
        else:
            lines.append(f"- [{name}]({quote(where.replace(os.sep, '/'), safe='/.-_')})")
    return lines


def write_markdown(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def append_markdown(path: Path, text: str) -> Path:
    """Append to a file another process owns (GitHub's step summary): no rename, one write."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if handle.tell() else "") + text)
    return path
