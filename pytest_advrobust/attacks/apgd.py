"""Auto-PGD, L-inf: APGD-CE, APGD-DLR and the targeted APGD-T (the gradient members of AutoAttack).

Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks". PGD with a step size that needs no tuning: it starts at
``2 * eps``, and at checkpoints ``w_j = ceil(p_j * steps)`` (``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) it is halved, and the iterate moved
back to the best point found so far, when the loss rose in fewer than ``0.75`` of the steps
since the last checkpoint, or when neither the step nor the best loss changed since then.
Steps use momentum 0.75::

    z       = P(x_k + eta * sign(grad L(x_k)))
    x_{k+1} = P(x_k + 0.75 * (z - x_k) + 0.25 * (x_k - x_{k-1}))      (x_1 = z)

``P`` projects onto the eps ball and input-range. Losses: ``ce`` (the model's own loss,
cross-entropy of the logits or ``-log p_y``), ``dlr`` (the difference of logits ratio
``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, invariant to the scale of the logits, so a
model whose logits are multiplied by 1e4 cannot hide behind a vanishing gradient); with
``targeted`` the loss pushes towards one class at a time, the ``targets`` classes the clean
input scores highest after the true one (APGD-T: ``-(z_y - z_t) / (z_pi1 - (z_pi3 +
z_pi4) / 2)``; targeted ``ce`` is ``-CE(z, t)``). Losses are computed in float64 from the
model's scores; for probabilities their log is used (DLR is then the logit DLR). With fewer
than 3 classes DLR has no scale to divide by and is the plain margin.

Each sample keeps the first point that fools the model and stops spending gradients. The
candidates are the clean input, the FGSM points (the corner and its interior point, as
``fgsm``: so ``apgd`` is never weaker than ``fgsm``), every iterate of every run
(``restarts`` runs per target, each from its own random start, or from ``x`` with
``random-start = false``) and the interior point ``x + s * (x' - x)`` of each run's final
point ``x'`` (``s`` uniform in [0.99, 0.999) per sample: see ``interior.py``).

Arguments (check keys): ``loss`` ("ce" | "dlr", "ce"), ``steps`` (int, 100), ``restarts``
(int, 1), ``targeted`` (bool, false), ``targets`` (int, 9: classes targeted, one run each),
``random-start`` (bool, true).
Shapes: ``x`` [N, ...] raw units, ``y`` [N] int64; returns a tensor shaped like ``x``.
Cost per sample still standing: two forwards for the FGSM points, then per run ``steps + 1``
forward + backward passes (``steps`` when the run starts at ``x``) and one forward for the
final interior point; ``targets * restarts`` runs when targeted, ``restarts`` otherwise.
``stats["gradients"]`` sums the forward + backward passes spent (per sample),
``stats["gradient_free"]`` the samples left standing whose every gradient was exactly zero,
``stats["interior"]`` the samples only an interior point fooled.

Example::

    [[tool.advrobust.checks]]
    attack = "apgd"
    loss = "dlr"
    targeted = true
    eps = 0.1
    min-accuracy = 0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import AttackError
from .interior import corner_then_interior, interior_scales, with_interior
from .pgd import _nonzero

if TYPE_CHECKING:
    import torch

__all__ = ["apgd", "apgd_linf", "checkpoints", "dlr_loss"]

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75
RHO = 0.75


def apgd(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
         grad: "torch.Tensor", scores: "torch.Tensor", stats: dict[str, float], *, loss: str = "ce",
         steps: int = 100, restarts: int = 1, targeted: bool = False, targets: int = 9,
         random_start: bool = True) -> "torch.Tensor":
    """APGD on ``model`` (CE, DLR, or targeted); see the module docstring."""
    return apgd_linf(model, x, y, eps, rng, grad=grad, scores=scores, stats=stats, loss=loss,
                     steps=steps, restarts=restarts, targeted=targeted, targets=targets,
                     random_start=random_start)


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j`` after which the step size is reconsidered (the paper's
    ``p``-schedule: the first after 22% of the steps, then ever shorter periods, down to 6%)."""
    out: list[int] = []
    p_prev, p = 0.0, 0.22
    while True:
        w = int(np.ceil(p * steps - 1e-9))
        if w > steps:
            return out
        if w > (out[-1] if out else 0):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)


def dlr_loss(scores: "torch.Tensor", y: "torch.Tensor", target: "torch.Tensor | None" = None,
             probabilities: bool = False) -> "torch.Tensor":
    """Difference of logits ratio per sample (higher: closer to fooled), float64.

    Untargeted ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted ``-(z_y - z_t) /
    (z_pi1 - (z_pi3 + z_pi4) / 2)``, ``pi`` sorting the scores in decreasing order. Fewer
    than 3 classes: the plain margin (nothing to normalise by)."""
    z = scores.double()
    if probabilities:
        z = z.clamp_min(1e-30).log()
    classes = z.shape[1]
    index = y[:, None].to(z.device)
    true = z.gather(1, index).squeeze(1)
    ordered = z.sort(1, descending=True).values
    if target is None:
        other = z.scatter(1, index, -float("inf")).max(1).values
    else:
        other = z.gather(1, target[:, None].to(z.device)).squeeze(1)
    if classes < 3:
        return other - true
    if target is None or classes < 4:
        scale = ordered[:, 0] - ordered[:, 2]
    else:
        scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3])
    return (other - true) / (scale + 1e-12)


def apgd_linf(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator, *,
              grad: "torch.Tensor | None" = None, scores: "torch.Tensor | None" = None,
              stats: dict[str, float] | None = None, loss: str = "ce", steps: int = 100,
              restarts: int = 1, targeted: bool = False, targets: int = 9, random_start: bool = True,
              fgsm_point: bool = True, active: "torch.Tensor | None" = None,
              moving: "torch.Tensor | None" = None, interior: bool = False) -> "torch.Tensor":
    """APGD over the samples of ``x`` still classified right (and in ``active``, a bool
    mask, when given); returns the adversarial batch. ``stats["gradients"]`` counts the
    forward + backward passes per sample. ``moving`` (a CPU bool per row), when given, is
    set for every row that got a gradient with a non-zero element, and the caller counts
    what it needs from it; without it ``stats["gradient_free"]`` counts the samples left
    standing whose every gradient (the engine's at ``x`` included) was exactly zero, as
    ``pgd`` does. Each run's final point of a sample still standing is moved strictly inside
    the ball (``x + s * (x' - x)``, see ``interior.py``, one forward) and tried;
    ``stats["interior"]`` counts the samples only that point fooled. With ``interior`` the
    runs search the ball of radius ``s * eps`` instead (``s`` drawn per sample and run, as
    for the interior point), so no point they try lies on its corners."""
    import torch

    if loss not in LOSSES:
        raise AttackError(f"apgd: loss = {loss!r} is not one of {', '.join(map(repr, LOSSES))}. "
                          "Use \"ce\" (cross-entropy) or \"dlr\" (scale-invariant margin).")
    for key, value in (("steps", steps), ("restarts", restarts)) + ((("targets", targets),) if targeted else ()):
        if int(value) < 1:
            raise AttackError(f"apgd: {key} = {value} runs no attack at all (the gate would report the "
                              f"clean or FGSM accuracy as robust). Set {key} to 1 or more.")
    stats = {} if stats is None else stats
    stats.setdefault("gradients", 0)
    low, high = model.input_range
    y_cpu = y.cpu()
    if scores is None:
        scores = model.scores(x)
    best = x.clone()
    standing = scores.argmax(1).cpu() == y_cpu
    if active is not None:
        standing &= active.cpu()
    if eps == 0 or not standing.any():
        return best
    probabilities = getattr(model, "output_kind", "logits") == "probabilities"
    attacked = standing.clone()
    counting = moving is None
    if moving is None:
        moving = _nonzero(grad) if grad is not None else torch.zeros(len(x), dtype=torch.bool)

    def settle(candidate: "torch.Tensor", rows: "torch.Tensor", wrong: "torch.Tensor") -> None:
        hit = rows[wrong]
        best[hit] = candidate[wrong.to(candidate.device)]
        standing[hit] = False

    if fgsm_point and grad is not None:  # the corner, then its interior point
        rows = standing.nonzero().squeeze(1)
        corner = (x[rows] + eps * grad[rows.to(grad.device)].sign().to(x.dtype)).clamp(low, high)
        point, wrong = corner_then_interior(model.scores, x, y, corner, rows, rng, stats)
        settle(point, rows, wrong)
        best[standing] = corner[standing[rows]]  # the FGSM point until an iterate beats it

    if targeted:
        ranked = scores.detach().double().argsort(1, descending=True).cpu()
        goals = [ranked[:, 1 + t] for t in range(min(int(targets), ranked.shape[1] - 1))]
    else:
        goals = [None]
    schedule = checkpoints(steps)
    for goal in goals:
        for _ in range(int(restarts)):
            # one draw for every row of the batch, so a sample's start does not depend on batching
            draws = rng.random(size=tuple(x.shape)) if random_start else None
            rows = standing.nonzero().squeeze(1)
            if not len(rows):
                break
            start = x[rows]
            radius = None
            if interior:  # the run searches the ball of radius s * eps (interior.py), s per sample
                radius = torch.from_numpy(eps * interior_scales(rng, len(x))[rows.numpy()])
            if draws is not None:
                noise = torch.from_numpy(draws[rows.numpy()] * 2.0 - 1.0).to(device=x.device, dtype=x.dtype)
                size = eps if radius is None else _column(radius, start)
                start = (start + size * noise).clamp(low, high)

            def evaluate(points: "torch.Tensor", at: "torch.Tensor", goal=goal) -> tuple[Any, Any, Any]:
                return _evaluate(model, points, y[at.to(y.device)],
                                 None if goal is None else goal[at], loss, probabilities)

            first = None
            if draws is None and goal is None and loss == "ce" and grad is not None:
                # the run starts at x, whose gradient and scores the engine already has
                at = rows.to(grad.device)
                first = (grad[at], model.loss(scores[at].double(), y[at]).cpu(), scores[at])
            fooled_rows, fooled_points, last = _run(evaluate, x[rows], start, rows, y_cpu, eps,
                                                    (low, high), steps, schedule, stats, first, moving, radius)
            settle(fooled_points, fooled_rows, torch.ones(len(fooled_rows), dtype=torch.bool))
            still = standing[rows]
            best[rows[still]] = last[still.to(last.device)]
            if not interior:  # the run's final point, moved strictly inside the ball
                rows = rows[still]
                best, inside = with_interior(model.scores, x, y, best, rng, rows, stats)
                standing[rows[inside]] = False
    if counting:
        stats["gradient_free"] = stats.get("gradient_free", 0) + int((attacked & standing & ~moving).sum())
    return best


def _column(values: "torch.Tensor", like: "torch.Tensor") -> "torch.Tensor":
    """Per-row ``values`` shaped to broadcast over the rows of ``like``."""
    return values.to(device=like.device, dtype=like.dtype).view((-1,) + (1,) * (like.dim() - 1))


def _evaluate(model: Any, points: "torch.Tensor", y: "torch.Tensor", goal: "torch.Tensor | None",
              loss: str, probabilities: bool) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Gradient of the loss (to ascend), the per-sample loss (float64, CPU) and the scores."""
    import torch

    if loss == "ce" and goal is None:
        g, s = model.loss_gradient(points, y)
        return g, model.loss(s.double(), y.to(s.device)).cpu(), s
    def objective(z: "torch.Tensor") -> "torch.Tensor":
        labels, target = y.to(z.device), None if goal is None else goal.to(z.device)
        if loss == "dlr":
            return dlr_loss(z, labels, target, probabilities)
        ce = -z.clamp_min(1e-30).log() if probabilities else -torch.log_softmax(z, 1)
        return -ce.gather(1, target[:, None]).squeeze(1)  # targeted CE: move towards the target

    g, s = model.objective_gradient(points, objective)
    return g, objective(s.double()).detach().cpu(), s


def _run(evaluate: Callable[..., tuple[Any, Any, Any]], origin: "torch.Tensor", start: "torch.Tensor",
         rows: "torch.Tensor", y_cpu: "torch.Tensor", eps: float, bounds: tuple[float, float],
         steps: int, schedule: list[int], stats: dict[str, float],
         first: tuple[Any, Any, Any] | None = None,
         moving: "torch.Tensor | None" = None,
         radius: "torch.Tensor | None" = None) -> tuple[Any, Any, Any]:
    """One APGD run over ``rows`` (all still standing), from ``start``. Returns the rows
    fooled, the first point that fooled each, and for every row of ``rows`` the point of
    highest loss. ``first``: (gradient, loss, scores) at ``start`` when already known;
    ``moving[row]`` is set for every row that got a non-zero gradient."""
    import torch

    low, high = bounds
    hit_rows: list[Any] = []
    hit_points: list[Any] = []
    last = start.clone()
    index = torch.arange(len(rows))  # position of each active row within ``rows``

    def project(points: "torch.Tensor", centre: "torch.Tensor") -> "torch.Tensor":
        size = eps if radius is None else _column(radius[index], centre)
        return torch.min(torch.max(points, centre - size), centre + size).clamp(low, high)

    current = start
    if first is None:
        first = evaluate(current, rows)
        stats["gradients"] += len(rows)
    g, f, s = first
    if moving is not None:
        moving[rows] |= _nonzero(g)
    history = torch.zeros(len(index), steps + 1, dtype=torch.float64)
    step = torch.full((len(index),), 2.0 * eps, dtype=torch.float64)
    previous = current.clone()
    best_x, best_f, best_g = current.clone(), f.clone(), g.clone()
    checked_best, reduced = best_f.clone(), torch.zeros(len(index), dtype=torch.bool)
    last_check = 0

    def leave(out: "torch.Tensor", fooled: bool) -> None:
        """Active rows ``out`` (a CPU mask) leave the run: fooled ones with their current
        point, the others with their best."""
        nonlocal index, origin, current, previous, g, history, step, best_x, best_f, best_g
        nonlocal checked_best, reduced
        d = out.to(current.device)
        if fooled:
            hit_rows.append(rows[index[out]])
            hit_points.append(current[d].clone())
        else:
            last[index[out]] = best_x[d]
        keep, d = ~out, ~d
        index, history, step, best_f = index[keep], history[keep], step[keep], best_f[keep]
        checked_best, reduced = checked_best[keep], reduced[keep]
        origin, current, previous, g, best_x, best_g = (t[d] for t in (origin, current, previous, g,
                                                                       best_x, best_g))

    def settle(s: "torch.Tensor", f: "torch.Tensor") -> "torch.Tensor":
        """Rows whose ``current`` is misclassified keep it and leave the run; ``f`` less them."""
        wrong = s.argmax(1).cpu() != y_cpu[rows[index]]
        if not wrong.any():
            return f
        leave(wrong, fooled=True)
        return f[~wrong]

    f = settle(s, f)
    # a row whose gradient at its start is exactly zero never moves (every step is zero and
    # there is no momentum yet): it leaves after this one evaluation, losing nothing
    stuck = ~_nonzero(g)
    if stuck.any():
        leave(stuck, fooled=False)
        f = f[~stuck]
    history[:, 0] = f
    for k in range(steps):
        if not len(index):
            break
        eta = step.to(device=current.device, dtype=current.dtype).view((-1,) + (1,) * (current.dim() - 1))
        z = project(current + eta * g.sign().to(current.dtype), origin)
        moved = z if k == 0 else project(current + MOMENTUM * (z - current)
                                         + (1 - MOMENTUM) * (current - previous), origin)
        previous, current = current, moved
        g, f, s = evaluate(current, rows[index])
        stats["gradients"] += len(index)
        if moving is not None:
            moving[rows[index]] |= _nonzero(g)
        f = settle(s, f)
        history[:, k + 1] = f
        better = f > best_f
        if better.any():
            b = better.to(current.device)
            best_x[b], best_g[b], best_f[better] = current[b], g[b], f[better]
        if k + 1 in schedule:
            w = k + 1
            rises = (history[:, last_check + 1:w + 1] > history[:, last_check:w]).sum(1)
            halve = (rises < RHO * (w - last_check)) | (~reduced & (best_f <= checked_best))
            if halve.any():
                h = halve.to(current.device)
                step[halve] /= 2.0
                current[h], g[h] = best_x[h], best_g[h]
            reduced, checked_best, last_check = halve, best_f.clone(), w
    last[index] = best_x
    if hit_rows:
        return torch.cat(hit_rows), torch.cat(hit_points), last
    return rows[:0], start[:0], last
