"""The ensemble check ``strongest``: a sample counts as robust only if every member fails on it.

As AutoAttack (Croce & Hein, 2020), members run in order of cost, each only on the samples
still standing: ``fgsm`` (one step), ``apgd-ce`` (APGD on the cross-entropy),
``apgd-t`` (targeted APGD on the scale-invariant DLR loss, ``targets`` classes), then
``square`` (score-based random search: needs no gradient, so a masked gradient cannot hide a
weakness from it). A model without input gradients (a scikit-learn export, a graph the torch
translation does not cover) gets ``square`` alone, and the gate message says so: a black-box
figure is an upper bound that a gradient would likely lower.

Arguments (check keys): ``steps`` (int, 50: per APGD run; the same robust accuracy as 100 on
the digits MLP and CNN, down to 20, for half the backward passes), ``restarts`` (int, 1: APGD runs
per target), ``targets`` (int, 9: classes APGD-T targets), ``square-queries`` (int, 1000:
square's budget per sample after the gradient members, a check against masked gradients;
0 leaves it out), ``queries`` (int: square's budget on a model without gradients, where
it is the only member; default as ``square``'s, 5000 as in AutoAttack, 1000 for inputs of
more than 8,192 values). Shapes: ``x`` [N, ...]
raw units; returns a tensor shaped like ``x``. Cost per batch: one forward + backward (the
FGSM gradient), one forward per member on the samples still standing, and each member's own
cost on them (see ``apgd``, ``square``). ``stats``: ``fooled_by_<member>`` (samples each
member fooled first), ``gradients`` (forward + backward passes), ``queries`` (square's
forward passes), ``no_gradient_batches`` (batches that ran square alone); for the masking diagnostics
(which also compare what square fooled with what the gradient members fooled),
``zero_gradient`` (correctly classified samples whose cross-entropy gradient is exactly
zero) and ``zero_gradient_standing`` (those of them every gradient member left standing).

Example::

    [[tool.advrobust.checks]]
    attack = "strongest"
    eps = 0.1
    min-accuracy = 0.4
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AttackError
from .apgd import apgd_linf
from .square import default_queries, square_linf

if TYPE_CHECKING:
    import torch

__all__ = ["strongest", "describe_strongest", "MEMBERS"]

MEMBERS = ("fgsm", "apgd-ce", "apgd-t", "square")


def strongest(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
              scores: "torch.Tensor", stats: dict[str, float], *, steps: int = 50, restarts: int = 1,
              targets: int = 9, square_queries: int = 1000, queries: int | None = None) -> "torch.Tensor":
    """Every member in order of cost on the samples still standing; see the module docstring."""
    for key, value in (("steps", steps), ("restarts", restarts), ("targets", targets),
                       ("queries", 1 if queries is None else queries)):
        if int(value) < 1:
            raise AttackError(f"strongest: {key} = {value} leaves a member without any work, so the "
                              f"gate would overstate robustness. Set {key} to 1 or more (only "
                              "square-queries may be 0, to leave square out on a model with gradients).")
    for member in MEMBERS:
        stats.setdefault(f"fooled_by_{member}", 0)
    stats.setdefault("gradients", 0)
    stats.setdefault("queries", 0)
    stats.setdefault("no_gradient_batches", 0)
    best = x.clone()
    y_cpu = y.cpu()
    standing = scores.argmax(1).cpu() == y_cpu
    if eps == 0 or not standing.any():
        return best
    low, high = model.input_range

    def count(member: str, adversarial: "torch.Tensor") -> None:
        """Score the standing rows of the member's output on the model itself; those it
        fools are settled (the first member to fool a sample is credited)."""
        rows = standing.nonzero().squeeze(1)
        if not len(rows):
            return
        points = adversarial[rows]
        wrong = model.scores(points).argmax(1).cpu() != y_cpu[rows]
        best[rows] = points  # the latest attempt, for samples nothing fooled
        standing[rows[wrong]] = False
        stats[f"fooled_by_{member}"] += int(wrong.sum())

    grad = None
    if getattr(model, "gradient_error", None) is None:
        try:
            grad, _ = model.loss_gradient(x, y)
        except AttackError:
            grad = None
    if grad is None:
        stats["no_gradient_batches"] += 1
        count("square", square_linf(model, x, y, eps, rng, scores=scores, stats=stats,
                                    queries=default_queries(x) if queries is None else int(queries),
                                    active=standing))
        return best
    stats["gradients"] += len(x)
    zero = ~grad.reshape(len(grad), -1).ne(0).any(1).cpu() & standing  # for the masking diagnostics
    stats["zero_gradient"] = stats.get("zero_gradient", 0) + int(zero.sum())
    stats.setdefault("zero_gradient_standing", 0)
    count("fgsm", (x + eps * grad.sign().to(x.dtype)).clamp(low, high))
    for member, options in (("apgd-ce", {"loss": "ce"}),
                            ("apgd-t", {"loss": "dlr", "targeted": True, "targets": targets})):
        if not standing.any():
            return best
        count(member, apgd_linf(model, x, y, eps, rng, scores=scores, stats=stats, steps=steps,
                                restarts=restarts, fgsm_point=False, active=standing.clone(), **options))
    stats["zero_gradient_standing"] += int((zero & standing).sum())
    if standing.any() and square_queries > 0:
        count("square", square_linf(model, x, y, eps, rng, scores=scores, stats=stats,
                                    queries=square_queries, active=standing.clone()))
    return best


def describe_strongest(stats: dict[str, float]) -> str:
    """Which member fooled how many samples first, and whether gradients were missing."""
    fooled = ", ".join(f"{member} {int(stats.get(f'fooled_by_{member}', 0))}" for member in MEMBERS)
    words = f"fooled first by: {fooled}"
    if stats.get("no_gradient_batches"):
        words += (f"; {int(stats['no_gradient_batches'])} batch(es) had no input gradient, so only "
                  "square (black-box) ran there: a gradient attack would likely find more. Gate a "
                  "differentiable twin of this model, or add a transfer check from one")
    return words
