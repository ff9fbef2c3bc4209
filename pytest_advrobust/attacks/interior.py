"""Points strictly inside the eps ball, for attacks whose points end on its corners.

FGSM, noise, square, and most of PGD's and APGD's final iterates put every perturbed value
at exactly ``x +- eps`` (or on the edge of input-range). A model can recognise such points,
say by snapping every value that lies exactly eps off its data grid back onto the grid, and
pass every gate while a step of ``0.999 * eps`` fools it. So these attacks also try points
that are not corners:

- the interior point of a corner ``x'``: ``x + s * (x' - x)``, tried for the samples the
  corner did not fool: fgsm, noise and transfer hand both to the engine as candidates;
  pgd and apgd try it for their FGSM point and each run's final point, spsa for its final
  point, strongest for each member's. A sample counts as fooled if either point fools it,
  so accuracy can only go down. One forward per sample still standing.
- a search inside the ball of radius ``s * eps``: the ``square`` attack's (every candidate
  is a corner of that smaller ball) and ``strongest``'s ``apgd-t-interior`` member. No
  extra cost; a smaller ball is a weaker attack by a hair on a model that does not
  recognise corners (measured: docs: "Attacks", section "How strong is each attack").

``s`` is drawn uniformly from :data:`INTERIOR_SCALE` per sample (and point, or run) from the
sample's position-keyed stream (see :mod:`pytest_advrobust.randomness`): no defence knows it
in advance, and a figure depends neither on the batch size nor on sharding. At least 0.1%
of eps inside, the point is far from the corner in float32 (for eps = 1/255 about 30 units
of the last place at 1.0); a defence that treats a band of inputs within 1% of eps from the
corners as clean is not recognising attack outputs but changing its decisions there, which
a larger eps exposes. On a model that is linear along the segment from ``x`` to ``x'`` the
interior point never fools a sample the corner does not (the margin is linear along it), so
closed-form references of FGSM on linear models hold exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["INTERIOR_SCALE", "corner_then_interior", "interior_point", "interior_scales",
           "with_interior"]

#: the range the per-sample scale ``s`` of the interior point is drawn from
INTERIOR_SCALE = (0.99, 0.999)


def interior_scales(rng: Any, n: int) -> np.ndarray:
    """One scale per row of the batch, from each row's own stream (one float each)."""
    low, high = INTERIOR_SCALE
    return low + (high - low) * rng.random(size=n)


def interior_point(x: "torch.Tensor", corner: "torch.Tensor", rng: Any) -> "torch.Tensor":
    """``x + s * (corner - x)`` for every row (one scale per row, drawn from its stream)."""
    import torch

    scales = torch.from_numpy(interior_scales(rng, len(x))).to(device=corner.device, dtype=corner.dtype)
    return x + scales.view((-1,) + (1,) * (corner.dim() - 1)) * (corner - x)


def with_interior(score: Callable[["torch.Tensor"], "torch.Tensor"], x: "torch.Tensor",
                  y: "torch.Tensor", points: "torch.Tensor", rng: Any,
                  rows: "torch.Tensor | None" = None,
                  stats: dict[str, float] | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``points`` with row ``i`` (of ``rows``: CPU indices, default all) replaced by its
    interior point ``x + s * (points - x)`` where that point is misclassified by ``score``.
    The scales are drawn for every row of the batch, so a row's draw does not depend on
    which others are in ``rows``. ``stats["interior"]``, when given (with ``rows`` the
    samples ``points`` did not fool), counts the samples only the interior point fooled.
    Returns the points (a new tensor where a row changed) and, per row of ``rows``, whether
    its interior point fooled the model (a CPU bool tensor)."""
    import torch

    everywhere = interior_point(x, points, rng)  # drawn for every row, whichever are tried
    if rows is None:
        rows = torch.arange(len(x))
    if not len(rows):
        return points, torch.zeros(0, dtype=torch.bool)
    at = rows.to(points.device)
    inside = everywhere[at]
    wrong = score(inside).argmax(1).cpu() != y[rows.to(y.device)].cpu()
    if stats is not None:
        stats["interior"] = stats.get("interior", 0) + int(wrong.sum())
    if not wrong.any():
        return points, wrong
    out = points.clone()
    out[at[wrong.to(at.device)]] = inside[wrong.to(inside.device)]
    return out, wrong


def corner_then_interior(score: Callable[["torch.Tensor"], "torch.Tensor"], x: "torch.Tensor",
                         y: "torch.Tensor", corner: "torch.Tensor", rows: "torch.Tensor", rng: Any,
                         stats: dict[str, float] | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Score ``corner`` (the points of batch rows ``rows``, CPU indices), then the interior
    point of each row it did not fool. Returns, per row of ``rows``, the point to keep (the
    interior one where only that fooled) and whether either fooled the model."""
    wrong = score(corner).argmax(1).cpu() != y[rows.to(y.device)].cpu()
    full = x.clone()
    full[rows.to(x.device)] = corner
    full, inside = with_interior(score, x, y, full, rng, rows[~wrong], stats)
    wrong[(~wrong).nonzero().squeeze(1)[inside]] = True
    return full[rows.to(x.device)], wrong
