"""``--advrobust-json PATH``: ``{"version": 1, "results": [...]}``; keys are only ever added."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..results import AttackResult
from .files import atomic_write_text

__all__ = ["SCHEMA_VERSION", "summary", "to_json", "write_json"]

SCHEMA_VERSION = 1


def summary(results: Iterable[AttackResult]) -> dict[str, int]:
    """``{"gates": N, "passed": .., "failed": .., "error": .., "measured": .., "not_run": ..,
    "partial": ..}``: how many gates ended in each status."""
    from .terminal import status_counts

    results = list(results)
    return {"gates": len(results),
            **{key.replace(" ", "_"): n for key, n in status_counts(results).items()}}


def to_json(results: Iterable[AttackResult], **extra: Any) -> str:
    """Deterministic text: results sorted by gate key, keys sorted, no timings; a status
    ``summary`` beside them."""
    ordered = sorted(results, key=lambda r: (r.model, r.check, -1.0 if r.eps is None else r.eps))
    document = {"version": SCHEMA_VERSION, "results": [r.to_dict() for r in ordered],
                "summary": summary(ordered), **extra}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_json(path: Path, results: Iterable[AttackResult], **extra: Any) -> Path:
    return atomic_write_text(path, to_json(results, **extra))
