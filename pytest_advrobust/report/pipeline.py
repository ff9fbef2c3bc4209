"""One report pipeline: everything a run or a shard merge writes, from one record.

The pytest plugin and ``python -m pytest_advrobust merge`` both build a :class:`RunRecord`
(the judged results of every selected gate, and how the run went) and call
:func:`write_reports` and :func:`summary_lines`; neither writes a report itself. Adding a
format is one stage function and one entry in :data:`STAGES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import AdvRobustError
from ..results import AttackResult

if TYPE_CHECKING:
    from .baseline import Comparison

__all__ = ["ReportTargets", "RunRecord", "Written", "STAGES", "summary_lines", "write_reports",
           "NO_GATE"]

#: what a run that selected no gate says (its JSON report says it too, and is not complete)
NO_GATE = ("no gate was selected (the command-line paths, -k/-m or --lf left out every gate of "
           "[tool.advrobust]), so nothing was measured")


@dataclass
class RunRecord:
    """What one run (or one merge) has to report."""

    #: the judged results of every selected gate, once each
    results: list[AttackResult]
    interrupted: bool = False
    #: every gate of the config ran to a figure (nothing deselected, errored, not run)
    complete: bool = False
    #: ``--advrobust-baseline``'s comparison (None without one)
    comparison: "Comparison | None" = None
    #: a shard run's extra JSON fields (``shard``, ``config``, ``gates``)
    extra: dict[str, Any] = field(default_factory=dict)
    #: why the run measured nothing (empty when it measured something)
    empty: str = ""
    #: lines the summary adds (a crashed xdist worker, say)
    remarks: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[AttackResult]:
        return [r for r in self.results if r.accepted]


@dataclass
class ReportTargets:
    """Where each report goes (None: not asked for)."""

    json: Path | None = None
    junitxml: Path | None = None
    markdown: Path | None = None
    step_summary: Path | None = None
    save_baseline: Path | None = None
    plots: Path | None = None
    #: model name -> its linearity curves, for the plots (None: no linearity plot)
    linearity: Callable[[str], Any] | None = None


@dataclass
class Written:
    """What the pipeline did: files written (notes) and what failed (problems: the run
    fails on them, and the other reports are still written)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: the plots written (the Markdown summary links them)
    plots: list[Path] = field(default_factory=list)


def _write(out: Written, what: str, target: Path | None, write: Callable[[Path], Any]) -> None:
    if target is None:
        return
    try:
        written = write(Path(target))
    except (OSError, AdvRobustError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        out.problems.append(f"could not write the {what} to {target}: {reason}")
        return
    if written:
        out.notes.append(f"{what}: {written}")


def _json(run: RunRecord, targets: ReportTargets, out: Written) -> None:
    from .json_report import write_json

    extra = dict(run.extra)
    if run.empty:
        extra["note"] = run.empty
    _write(out, "JSON report", targets.json,
           lambda path: write_json(path, run.results, interrupted=run.interrupted,
                                   complete=run.complete and not run.empty, **extra))


def _junit(run: RunRecord, targets: ReportTargets, out: Written) -> None:
    from .junit import write_junit

    _write(out, "JUnit XML", targets.junitxml, lambda path: write_junit(path, run.results))


def _markdown(run: RunRecord, targets: ReportTargets, out: Written) -> None:
    if targets.markdown is None and targets.step_summary is None:
        return
    from .markdown import append_markdown, to_markdown, write_markdown

    if targets.markdown is not None:  # links to the plots from the file's folder
        text = to_markdown(run, files=out.plots, links_from=Path(targets.markdown).resolve().parent)
        _write(out, "markdown", targets.markdown, lambda path: write_markdown(path, text))
    if targets.step_summary is not None:  # a step summary is a page: no relative link works there
        summary = to_markdown(run, files=out.plots)
        _write(out, "step summary", targets.step_summary, lambda path: append_markdown(path, summary))


def _baseline(run: RunRecord, targets: ReportTargets, out: Written) -> None:
    """A complete green run replaces the baseline; a partial one (deselected, errored or
    not run gates) merges its measured gates into it. A run that failed saves nothing
    unless its failures are accepted (``--advrobust-accept``); an interrupted run, or one
    that measured nothing, saves nothing. Each refusal says why and what to do."""
    path = targets.save_baseline
    if path is None:
        return
    from .baseline import write_baseline

    if run.interrupted:
        out.problems.append(f"baseline not saved to {path}: the run was interrupted, and a "
                            "partial run must not replace it. Rerun to completion.")
        return
    measured = [r for r in run.results if r.measured and r.status != "partial"]
    if not measured:
        out.problems.append(f"baseline not saved to {path}: no gate was measured in this run "
                            f"({run.empty or 'every selected gate errored or did not run'}).")
        return
    early = [r for r in measured if r.decided_early]
    if early:  # the plugin measures fully when saving; anything else must not slip through
        out.problems.append(
            f"baseline not saved to {path}: {len(early)} gate{'s were' if len(early) > 1 else ' was'} "
            f"decided early on part of the data ({', '.join(r.label for r in early[:3])}"
            f"{', ...' if len(early) > 3 else ''}), and a baseline holds figures measured on all "
            "of it. Save from a run with --advrobust-no-decide-early.")
        return
    red = [r for r in run.results if r.status in ("failed", "error") and not r.accepted]
    if red:
        keys = ",".join(r.key for r in red)
        out.problems.append(
            f"baseline not saved to {path}: {len(red)} gate{'s' if len(red) > 1 else ''} "
            f"{'failed or errored' if any(r.error for r in red) else 'failed'} "
            f"({', '.join(r.label for r in red[:3])}{', ...' if len(red) > 3 else ''}); a baseline "
            "saved from a red run would become the figure later runs must keep. Fix them, or "
            f"accept the fall on purpose: --advrobust-accept={keys} (or all).")
        return
    merge = not run.complete
    _write(out, "baseline saved" + (" (merged: this run's measured gates replaced, the others "
                                     "kept)" if merge else ""), path,
           lambda target: write_baseline(target, measured, merge=merge))


def _plots(run: RunRecord, targets: ReportTargets, out: Written) -> None:
    if targets.plots is None or not any(r.measured for r in run.results):
        return
    from .plots import write_plots

    try:
        written, problems = write_plots([r for r in run.results if r.measured], targets.plots,
                                        linearity=targets.linearity)
    except (OSError, AdvRobustError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        out.problems.append(f"could not write the plots to {targets.plots}: {reason}")
        return
    out.plots = list(written)
    out.notes.append(f"plots: {len(written)} PNGs in {targets.plots}")
    out.notes.extend(f"plot skipped: {problem}" for problem in problems)


#: every report, in the order they are written: (name, stage); the plots before the
#: Markdown, which links them
STAGES: tuple[tuple[str, Callable[[RunRecord, ReportTargets, Written], None]], ...] = (
    ("json", _json), ("junitxml", _junit), ("plots", _plots), ("markdown", _markdown),
    ("baseline", _baseline),
)


def write_reports(run: RunRecord, targets: ReportTargets) -> Written:
    """Write every report ``targets`` asks for; a report that cannot be written is a
    problem (the run fails on it) and the others are still written."""
    out = Written()
    for _, stage in STAGES:
        stage(run, targets, out)
    return out


def summary_lines(run: RunRecord, written: Written, *, verbose: bool) -> list[tuple[str, dict[str, bool]]]:
    """The terminal summary: the table, the verdict line, accepted falls, remarks, notes,
    problems (red) and the baseline comparison; ``(text, markup)`` per line."""
    from .escape import one_line
    from .terminal import (EARLY_LEGEND, decided_early, format_table, headers, ordered, summary_rows,
                           verdict_line)

    lines: list[tuple[str, dict[str, bool]]] = []
    if run.empty and not run.results:
        lines.append((f"advrobust: {run.empty}.", {"yellow": True}))
    else:
        rows = summary_rows(run.results, verbose=verbose, comparison=run.comparison)
        early = decided_early(run.results)
        lines += [(line, {}) for line in format_table(rows, headers(verbose, run.comparison is not None,
                                                                    early))]
        if early:
            lines.append((EARLY_LEGEND, {}))
        lines.append((verdict_line(run.results, interrupted=run.interrupted), {}))
    if run.accepted:
        lines.append((f"accepted into the baseline (--advrobust-accept): "
                      f"{', '.join(r.label for r in run.accepted)}", {"yellow": True}))
    lines += [(one_line(remark), {"yellow": True}) for remark in run.remarks]
    if verbose:  # how each model was run and what the attacks found, in words
        lines += [(one_line(f"{r.label}: {r.details}"), {}) for r in ordered(run.results) if r.details]
    for r in ordered(run.results):
        if r.note:
            lines.append((one_line(f"{r.label}: {r.note}"), {}))
    lines += [(note, {}) for note in written.notes if verbose or note.startswith("plot skipped")]
    lines += [(one_line(f"ERROR: {problem}"), {"red": True}) for problem in written.problems]
    return lines


def comparison_section(run: RunRecord) -> list[str]:
    """The "advrobust baseline" section's lines (empty without a baseline)."""
    if run.comparison is None:
        return []
    from .baseline import comparison_lines
    from .escape import one_line

    return [one_line(line) for line in comparison_lines(run.comparison, run.results)]


def step_summary_path() -> Path | None:
    """``$GITHUB_STEP_SUMMARY`` when it is set (GitHub Actions): the Markdown goes there too."""
    value = os.environ.get("GITHUB_STEP_SUMMARY")
    return Path(value) if value else None
