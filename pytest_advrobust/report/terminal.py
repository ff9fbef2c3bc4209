"""The one summary table printed at the end of a run."""

from __future__ import annotations

from typing import Iterable

from ..results import AttackResult

__all__ = ["summary_rows", "format_table"]

HEADERS = ("model", "attack", "eps", "accuracy", "95% CI", "clean", "threshold", "vs baseline", "status")


def summary_rows(results: Iterable[AttackResult]) -> list[tuple[str, ...]]:
    rows = []
    for r in sorted(results, key=lambda r: (r.model, r.check, -1.0 if r.eps is None else r.eps)):
        low, high = r.interval
        limits = []
        if r.min_accuracy is not None:
            limits.append(f">= {r.min_accuracy:.3f}")
        if r.max_drop is not None:
            limits.append(f"drop <= {r.max_drop:.3f}")
        delta = "" if r.baseline_accuracy is None else f"{r.accuracy - r.baseline_accuracy:+.3f}"
        rows.append((r.model, r.attack, "-" if r.eps is None else f"{r.eps:g}", f"{r.accuracy:.3f}",
                     f"{low:.3f}-{high:.3f}", f"{r.clean_accuracy:.3f}", ", ".join(limits) or "-",
                     delta or "-", "PASS" if r.passed else "FAIL"))
    return rows


def format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...] = HEADERS,
                 markdown: bool = False) -> list[str]:
    """Aligned plain-text columns, or a GitHub-flavoured Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return lines + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
    return [line(headers)] + [line(row) for row in rows]
