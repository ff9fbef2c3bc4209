"""Projected gradient descent, L-inf (the multi-step attack gates should trust).

Madry, Makelov, Schmidt, Tsipras & Vladu, 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks". Untargeted, on the same loss as FGSM (cross-entropy of the logits, or
``-log p_y`` for probabilities)::

    x_0     = x + U(-eps, eps)                       (random-start, drawn from the seed)
    x_{k+1} = clip(proj_eps(x_k + step-size * sign(grad_x L(x_k, y))), input-range)

Never weaker than FGSM by construction: the candidates are, in order, the clean input, the
FGSM point ``clip(x + eps * sign(grad L(x, y)))`` and every PGD iterate of every restart; each
sample keeps the first candidate the model misclassifies (or, if none, the last iterate of
the restart that reached the highest loss).

Arguments (check keys): ``steps`` (int, 10), ``step-size`` (float, default ``2.5 * eps /
steps``, so a run can cross the ball), ``random-start`` (bool, true), ``restarts`` (int, 1).
Shapes: ``x`` [N, ...] raw units, ``y`` [N] int64; returns a tensor shaped like ``x``.
Cost per batch: the engine's forward + backward at ``x`` (shared with FGSM), one forward for
the FGSM point, then per restart ``steps`` forward + backward passes and one forward, each
over the samples not yet misclassified only.

Example::

    [[tool.advrobust.checks]]
    attack = "pgd"
    eps = 0.1
    steps = 20
    min-accuracy = 0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .spsa import margin

if TYPE_CHECKING:
    import torch

__all__ = ["pgd", "pgd_linf"]


def pgd(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
        grad: "torch.Tensor", scores: "torch.Tensor", *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, restarts: int = 1) -> "torch.Tensor":
    """L-inf PGD on ``model``'s own loss gradient; see the module docstring."""
    return pgd_linf(model.loss_gradient, model.scores, x, y, eps, model.input_range, rng,
                    grad=grad, scores=scores, steps=steps, step_size=step_size,
                    random_start=random_start, restarts=restarts)


def pgd_linf(loss_gradient: Callable[[Any, Any], tuple[Any, Any]], score: Callable[[Any], Any],
             x: "torch.Tensor", y: "torch.Tensor", eps: float, bounds: tuple[float, float],
             rng: np.random.Generator, *, grad: "torch.Tensor | None" = None,
             scores: "torch.Tensor | None" = None, steps: int = 10, step_size: float | None = None,
             random_start: bool = True, restarts: int = 1, stop_early: bool = True) -> "torch.Tensor":
    """PGD on any ``loss_gradient(x, y) -> (grad, scores)`` (one model's, or an ensemble's
    for transfer); ``score(x)`` decides which candidates are misclassified.

    ``grad``/``scores`` at ``x``, when given, save the first forward + backward. With
    ``stop_early=False`` every sample runs all steps of one restart and gets the last
    iterate (for transfer, where stopping just past the surrogate's boundary transfers badly).
    """
    import torch

    low, high = bounds
    step = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    if not stop_early:
        current = x.clone()
        if random_start:
            noise = torch.from_numpy(rng.random(size=tuple(x.shape)) * 2.0 - 1.0)
            current = (x + eps * noise.to(device=x.device, dtype=x.dtype)).clamp(low, high)
        for index in range(steps):
            g = grad if index == 0 and not random_start and grad is not None else \
                loss_gradient(current, y)[0]
            moved = current + step * g.sign().to(current.dtype)
            current = torch.min(torch.max(moved, x - eps), x + eps).clamp(low, high)
        return current
    y_cpu = y.cpu()
    if grad is None or scores is None:
        grad, scores = loss_gradient(x, y)
    best = x.clone()
    fooled = scores.argmax(1).cpu() != y_cpu  # already wrong: the clean input is the candidate
    if eps == 0:
        return best

    def settle(candidate: "torch.Tensor", index: "torch.Tensor", wrong: "torch.Tensor") -> None:
        """Samples ``index`` whose ``candidate`` rows are misclassified keep them, for good."""
        hit = index[wrong]
        best[hit] = candidate[wrong.to(candidate.device)]
        fooled[hit] = True

    # the FGSM point: a candidate, so PGD is never weaker than FGSM
    active = (~fooled).nonzero().squeeze(1)
    if len(active):
        point = (x[active] + eps * grad[active.to(grad.device)].sign().to(x.dtype)).clamp(low, high)
        settle(point, active, score(point).argmax(1).cpu() != y_cpu[active])
    if steps <= 0 or restarts <= 0:
        active = (~fooled).nonzero().squeeze(1)
        if len(active):  # not fooled anywhere: hand back the FGSM point
            best[active] = (x[active] + eps * grad[active.to(grad.device)].sign().to(x.dtype)).clamp(low, high)
        return best

    # one draw per sample for every restart, so the start of a sample does not depend on batching
    starts = rng.random(size=(len(x), restarts) + tuple(x.shape[1:])) if random_start else None
    best_loss = torch.full((len(x),), -float("inf"), dtype=torch.float64)
    for restart in range(restarts):
        active = (~fooled).nonzero().squeeze(1)
        if not len(active):
            break
        origin = x[active]
        current = origin.clone()
        if starts is not None:
            noise = torch.from_numpy(starts[active.numpy(), restart] * 2.0 - 1.0)
            current = (origin + eps * noise.to(device=x.device, dtype=x.dtype)).clamp(low, high)
        index = active
        for step_index in range(steps):
            if step_index == 0 and starts is None:  # at x itself: the gradient is already known
                g, s = grad[active.to(grad.device)], scores[active.to(scores.device)]
            else:
                g, s = loss_gradient(current, y[index.to(y.device)])
            wrong = s.argmax(1).cpu() != y_cpu[index]
            settle(current, index, wrong)
            keep = ~wrong
            if not keep.any():
                break
            index, origin, current, g = index[keep], origin[keep.to(origin.device)], \
                current[keep.to(current.device)], g[keep.to(g.device)]
            moved = current + step * g.sign().to(current.dtype)
            current = torch.min(torch.max(moved, origin - eps), origin + eps).clamp(low, high)
        else:
            s = score(current)
            wrong = s.argmax(1).cpu() != y_cpu[index]
            settle(current, index, wrong)
            loss = -margin(s, y[index.to(y.device)]).cpu()  # rank the not-fooled by margin
            better = (~wrong) & (loss > best_loss[index])
            best[index[better]] = current[better.to(current.device)]
            best_loss[index[better]] = loss[better]
    return best
