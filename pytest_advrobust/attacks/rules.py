"""Config-time rules across a check's options (no torch, no numpy: read with the config).

Each takes the check's options with the attack's declared defaults filled in and returns a
message naming the problem and the fix, or None.
"""

from __future__ import annotations

from typing import Any

__all__ = ["spsa_options", "transfer_options", "universal_options"]

#: how a transfer attack crafts its inputs on the surrogates
TRANSFER_VIA = ("fgsm", "pgd")


def spsa_options(options: dict[str, Any]) -> str | None:
    """The budget must pay for one step (``2 * samples + 1`` queries), or spsa would hand
    back the clean inputs and report clean accuracy as robust accuracy."""
    queries, samples = options.get("queries", 2000), options.get("samples", 32)
    if queries < 2 * samples + 1:
        return (f"spsa with queries = {queries} cannot take one step: each step costs "
                f"2 * samples + 1 = {2 * samples + 1} queries. Raise queries or lower samples.")
    return None


def transfer_options(options: dict[str, Any]) -> str | None:
    """``via`` names a known way of attacking the surrogates."""
    via = options.get("via", "fgsm")
    if via not in TRANSFER_VIA:
        return (f"via = {via!r} is not one of {', '.join(map(repr, TRANSFER_VIA))} (how the "
                "surrogates are attacked).")
    return None


def universal_options(options: dict[str, Any]) -> str | None:
    """Cross-fitting needs two folds at least: with one, the only ``delta`` would be fitted on
    the samples it scores."""
    folds = options.get("folds", 2)
    if folds < 2:
        return (f"universal with folds = {folds}: every sample is scored on a delta fitted "
                "without its fold, which takes 2 folds at least. Set folds = 2 or more.")
    return None
