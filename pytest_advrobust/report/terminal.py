"""The one summary table printed at the end of a run (and reused by the Markdown report)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from ..results import STATUSES, AttackResult, format_eps

if TYPE_CHECKING:
    from .baseline import Comparison

__all__ = ["summary_rows", "format_table", "headers", "ordered", "status_counts", "threshold_text",
           "verdict_line"]

#: every column, in order; the compact table keeps the ones in COMPACT
COLUMNS = ("model", "attack", "eps", "accuracy", "95% CI", "clean", "n", "threshold",
           "vs baseline", "status")
#: the status column's words
STATUS_CELLS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "measured": "MEASURED",
                "not run": "NOT RUN", "partial": "PARTIAL"}
COMPACT = ("model", "attack", "eps", "accuracy", "95% CI", "threshold", "status")
HEADERS = COLUMNS


def ordered(results: Iterable[AttackResult]) -> list[AttackResult]:
    """Results in config order: model, check, eps."""
    return sorted(results, key=lambda r: (r.model, r.check, -1.0 if r.eps is None else r.eps))


def threshold_text(r: AttackResult) -> str:
    limits = []
    if r.min_accuracy is not None:
        limits.append(f">= {r.min_accuracy:.3f}")
    if r.max_drop is not None:
        limits.append(f"drop <= {r.max_drop:.3f}")
    return ", ".join(limits) or "-"


def headers(verbose: bool = False, with_baseline: bool = False, early: bool = False) -> tuple[str, ...]:
    """The columns shown: compact by default (plus "vs baseline" when one was given, and
    "n" when decide-early stopped a gate: it says after how many samples)."""
    if verbose:
        return COLUMNS
    return tuple(c for c in COLUMNS if c in COMPACT or (with_baseline and c == "vs baseline")
                 or (early and c == "n"))


def decided_early(results: Iterable[AttackResult]) -> bool:
    """Whether decide-early stopped any of ``results`` before the end of its data."""
    return any(r.decided_early for r in results)


#: the line under a table with gates decide-early stopped
EARLY_LEGEND = ("decided after N of M: decide-early stopped the gate on N of its M samples once "
                "its verdict was settled; its interval is the one that decided it (at most "
                "decide-early-error chance that all the data would give another verdict)")


def summary_rows(results: Iterable[AttackResult], *, verbose: bool = True,
                 comparison: "Comparison | None" = None) -> list[tuple[str, ...]]:
    """One row of cells per gate, for the columns :func:`headers` names."""
    results = list(results)
    shown = headers(verbose, comparison is not None, decided_early(results))
    rows = []
    for r in ordered(results):
        low, high = r.interval
        if r.baseline_accuracy is not None:
            change = round(r.accuracy - r.baseline_accuracy, 4) + 0.0  # no "-0.000"
            delta = f"{change:+.3f} (was {r.baseline_accuracy:.3f})"
        else:
            delta = (comparison.note(r.key) if comparison is not None else "") or "-"
        figures = r.measured and r.n > 0  # n = 0: a shard whose part held none of its samples
        cells = {"model": r.model, "attack": r.attack,
                 "eps": "-" if r.eps is None else format_eps(r.eps),
                 "accuracy": f"{r.accuracy:.3f}" if figures else "-",
                 "95% CI": f"{low:.3f}-{high:.3f}" if figures else "-",
                 "clean": f"{r.clean_accuracy:.3f}" if figures else "-",
                 "n": (r.decided_after or str(r.n)) if r.measured else "-",
                 "threshold": threshold_text(r),
                 "vs baseline": delta, "status": STATUS_CELLS[r.status]}
        rows.append(tuple(cells[c] for c in shown))
    return rows


def status_counts(results: Iterable[AttackResult]) -> dict[str, int]:
    """How many gates ended in each status, in :data:`STATUSES` order."""
    counts = {status: 0 for status in STATUSES}
    for r in results:
        counts[r.status] += 1
    return counts


def verdict_line(results: Iterable[AttackResult], *, interrupted: bool = False) -> str:
    """``50 gates: 47 passed, 1 failed, 2 errors`` (``all 12 gates passed`` only when that
    is the whole truth: every selected gate ran and passed). A shard run's gates are
    ``partial``: no verdict until the shards are merged."""
    results = list(results)
    counts = status_counts(results)
    prefix = "run interrupted: " if interrupted else ""
    if results and counts["passed"] == len(results) and not interrupted:
        return f"all {len(results)} gates passed"
    partial = [r for r in results if r.status == "partial"]
    shard = (partial[0].shard or {}) if partial else {}
    merge = (f"shard {shard.get('index')}/{shard.get('count')}: partial, no verdict until the "
             "shards are merged (python -m pytest_advrobust merge shard-*.json)")
    if partial and len(partial) == len(results) and not interrupted:
        return f"{len(partial)} gates measured on {merge}"
    parts = []
    for status, count in counts.items():
        if count:
            parts.append(f"{count} {status}" + ("s" if status == "error" and count > 1 else ""))
    noun = "gate" if len(results) == 1 else "gates"
    line = f"{prefix}{len(results)} {noun}: {', '.join(parts) or 'none ran'}"
    return f"{line} ({merge})" if partial else line


def format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...] = HEADERS,
                 markdown: bool = False) -> list[str]:
    """Aligned plain-text columns, or a GitHub-flavoured Markdown table."""
    if markdown:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
    return [line(headers)] + [line(row) for row in rows]
