"""The ensemble check ``strongest``: a sample counts as robust only if every member fails on it.

As AutoAttack (Croce & Hein, 2020), members run in order of cost, each only on the samples
still standing: ``fgsm`` (one step, and its interior point), ``apgd-ce`` (APGD on the
cross-entropy), ``apgd-t`` (targeted APGD on the scale-invariant DLR loss, ``targets``
classes), ``apgd-t-interior`` (the same on the :data:`INTERIOR_TARGETS` classes scored
highest after the true one, searching only the ball of radius ``s * eps``, ``s`` uniform in
[0.99, 0.999) per sample and run: a model that recognises the corners of the eps ball, where
the other searches end, cannot hide from it), then ``square`` (score-based random search:
needs no gradient, so a masked gradient cannot hide a weakness from it). Every APGD run and
square also try the interior point of their final point (see ``interior.py``). A model
without input gradients (a scikit-learn export, a graph the torch translation does not
cover) gets ``square`` alone, and the gate message says so: a black-box figure is an upper
bound that a gradient would likely lower.

Arguments (check keys): ``steps`` (int, 15: per APGD run; torchattacks' AutoAttack takes
10), ``restarts`` (int, 1: APGD runs per target), ``targets`` (int, 9: classes APGD-T
targets), ``square-queries`` (int, 1000: square's budget per sample after the gradient
members, a check against masked gradients; 0 leaves it out), ``queries`` (int: square's
budget on a model without gradients, where it is the only member; default as ``square``'s,
5000 as in AutoAttack, 1000 for inputs of more than 8,192 values). Shapes: ``x`` [N, ...]
raw units; returns a tensor shaped like ``x``. Cost per batch: the engine's forward +
backward (the FGSM gradient, shared with every gradient gate of the pass), one forward for
FGSM's interior point and one per member on the samples still standing, and each member's
own cost on them (see ``apgd``, ``square``): at most ``steps + 1`` forward + backward
passes per run, ``1 + targets + INTERIOR_TARGETS`` runs per sample that no member fools.
``stats``: ``fooled_by_<member>`` (samples each member fooled first; a member's interior
points count as its own), ``gradients`` (forward + backward passes, the shared one
included), ``queries`` (square's forward passes), ``interior`` (samples only an interior
point fooled: the corner it came from did not), ``gradient_free`` (samples the gradient
members left standing whose every input gradient they took was exactly zero: a masked
gradient, not robustness; square may still fool them), ``no_gradient_batches`` (batches
that ran square alone);
for the masking diagnostics (which also compare what square fooled with what the gradient
members fooled), ``zero_gradient`` (correctly classified samples whose cross-entropy
gradient is exactly zero) and ``zero_gradient_standing`` (those of them every gradient
member left standing).

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
from .basic import fgsm_step
from .interior import with_interior
from .pgd import _nonzero
from .square import default_queries, square_linf

if TYPE_CHECKING:
    import torch

__all__ = ["strongest", "describe_strongest", "MEMBERS"]

MEMBERS = ("fgsm", "apgd-ce", "apgd-t", "apgd-t-interior", "square")
#: classes ``apgd-t-interior`` targets (the highest scored after the true class)
INTERIOR_TARGETS = 3


def strongest(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
              scores: "torch.Tensor", stats: dict[str, float], grad: "torch.Tensor | None" = None, *,
              steps: int = 15, restarts: int = 1, targets: int = 9, square_queries: int = 1000,
              queries: int | None = None) -> "torch.Tensor":
    """Every member in order of cost on the samples still standing; see the module docstring."""
    for key, value in (("steps", steps), ("restarts", restarts), ("targets", targets),
                       ("queries", 1 if queries is None else queries)):
        if int(value) < 1:
            raise AttackError(f"strongest: {key} = {value} leaves a member without any work, so the "
                              f"gate would overstate robustness. Set {key} to 1 or more (only "
                              "square-queries may be 0, to leave square out on a model with gradients).")
    for member in MEMBERS:
        stats.setdefault(f"fooled_by_{member}", 0)
    for key in ("gradients", "queries", "no_gradient_batches", "gradient_free", "interior"):
        stats.setdefault(key, 0)
    best = x.clone()
    y_cpu = y.cpu()
    standing = scores.argmax(1).cpu() == y_cpu
    if eps == 0 or not standing.any():
        return best

    def count(member: str, adversarial: "torch.Tensor") -> None:
        """Score the standing rows of the member's output on the model itself; those it
        fools are settled (the first member to fool a sample is credited)."""
        rows = standing.nonzero().squeeze(1)
        if not len(rows):
            return
        points = adversarial[rows.to(adversarial.device)]
        wrong = model.scores(points).argmax(1).cpu() != y_cpu[rows]
        best[rows.to(best.device)] = points  # the latest attempt, for samples nothing fooled
        standing[rows[wrong]] = False
        stats[f"fooled_by_{member}"] += int(wrong.sum())

    if grad is None and getattr(model, "gradient_error", None) is None:
        try:  # called without the engine's shared gradient
            grad, _ = model.loss_gradient(x, y)
        except AttackError:
            grad = None
    if grad is None:
        stats["no_gradient_batches"] += 1
        count("square", square_linf(model, x, y, eps, rng, scores=scores, stats=stats,
                                    queries=default_queries(x) if queries is None else int(queries),
                                    active=standing, interior=True))
        return best
    stats["gradients"] += len(x)
    attacked = standing.clone()
    moving = _nonzero(grad)  # rows some gradient of the gradient members was not all zeros for
    zero = ~grad.reshape(len(grad), -1).ne(0).any(1).cpu() & standing  # for the masking diagnostics
    stats["zero_gradient"] = stats.get("zero_gradient", 0) + int(zero.sum())
    stats.setdefault("zero_gradient_standing", 0)
    count("fgsm", fgsm_step(x, eps, grad, model.input_range))
    rows = standing.nonzero().squeeze(1)
    best, inside = with_interior(model.scores, x, y, best, rng, rows, stats)
    standing[rows[inside]] = False
    stats["fooled_by_fgsm"] += int(inside.sum())
    apgd = {"scores": scores, "stats": stats, "steps": steps, "restarts": restarts,
            "fgsm_point": False, "moving": moving}
    for member, options in (("apgd-ce", {"loss": "ce"}),
                            ("apgd-t", {"loss": "dlr", "targeted": True, "targets": targets}),
                            ("apgd-t-interior", {"loss": "dlr", "targeted": True,
                                                 "targets": min(targets, INTERIOR_TARGETS),
                                                 "interior": True})):
        if not standing.any():
            break
        count(member, apgd_linf(model, x, y, eps, rng, active=standing.clone(), **apgd, **options))
    stats["gradient_free"] += int((attacked & standing & ~moving).sum())
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
