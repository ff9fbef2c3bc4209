"""Projected gradient descent, L-inf (the multi-step attack gates should trust).

Madry, Makelov, Schmidt, Tsipras & Vladu, 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks". Untargeted::

    x_0     = x + U(-eps, eps)                       (random-start, drawn from the seed)
    x_{k+1} = clip(proj_eps(x_k + step-size * sign(grad_x L(x_k, y))), input-range)

``L`` is the ``loss`` key: by default ``"ce+margin"``, the cross-entropy (as FGSM: of the
logits, or ``-log p_y`` for probabilities, exact in float64) and then, on the samples still
standing, the Carlini-Wagner margin ``max_{j != y} z_j - z_y``. Cross-entropy alone is fooled
by saturation: logits multiplied by a large constant (defensive distillation) make its
gradient exactly zero and PGD reports the clean accuracy; the margin's gradient does not
vanish. ``"ce"``, ``"margin"``, ``"dlr"`` (Croce & Hein, 2020) and ``"ce+dlr"`` pick others.

Never weaker than FGSM by construction: the candidates are, in order, the clean input, the
FGSM points (the corner ``clip(x + eps * sign(grad L(x, y)))`` and its interior point, as
``fgsm``), every PGD iterate of every restart, and last the interior point ``x + s * (x' - x)`` of the final point ``x'`` (the last iterate of
the run that reached the highest margin loss), ``s`` uniform in [0.99, 0.999) per sample (see
``interior.py``: most final iterates sit on the corners of the ball, which a model can
recognise); each sample keeps the first candidate the model misclassifies.

Arguments (check keys): ``steps`` (int, 10), ``step-size`` (float, default ``2.5 * eps /
steps``, so a run can cross the ball), ``random-start`` (bool, true), ``restarts`` (int, 1),
``loss`` (``"ce+margin"``). Shapes: ``x`` [N, ...] raw units, ``y`` [N] int64; returns a
tensor shaped like ``x``. Cost per batch: the engine's forward + backward at ``x`` (shared
with FGSM), two forwards for the FGSM points, then per loss and restart ``steps`` forward +
backward passes and one forward, each over the samples not yet misclassified only (the
margin run of the default costs only on the samples cross-entropy left standing), and one
forward for the interior point of the samples still standing.

Example::

    [[tool.advrobust.checks]]
    attack = "pgd"
    eps = 0.1
    steps = 20
    min-accuracy = 0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .interior import corner_then_interior, with_interior
from .spsa import margin

if TYPE_CHECKING:
    import torch

__all__ = ["pgd", "pgd_linf", "loss_sequence"]


def pgd(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
        grad: "torch.Tensor", scores: "torch.Tensor", stats: dict[str, float] | None = None, *,
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        restarts: int = 1, loss: str = "ce+margin") -> "torch.Tensor":
    """L-inf PGD on ``model``'s own loss gradient; see the module docstring."""
    return pgd_linf(model.loss_gradient, model.scores, x, y, eps, model.input_range, rng,
                    grad=grad, scores=scores, steps=steps, step_size=step_size,
                    random_start=random_start, restarts=restarts, losses=loss_sequence(loss),
                    stats=stats)


def loss_sequence(loss: str) -> tuple[str, ...]:
    """``"ce+margin"`` -> ``("ce", "margin")``: the losses run one after the other."""
    return tuple(part.strip() for part in loss.split("+"))


def pgd_linf(loss_gradient: Callable[..., tuple[Any, Any]], score: Callable[[Any], Any],
             x: "torch.Tensor", y: "torch.Tensor", eps: float, bounds: tuple[float, float],
             rng: np.random.Generator, *, grad: "torch.Tensor | None" = None,
             scores: "torch.Tensor | None" = None, steps: int = 10, step_size: float | None = None,
             random_start: bool = True, restarts: int = 1, stop_early: bool = True,
             losses: Sequence[str] = ("ce",), stats: dict[str, float] | None = None) -> "torch.Tensor":
    """PGD on any ``loss_gradient(x, y, loss) -> (grad, scores)`` (one model's, or an
    ensemble's for transfer); ``score(x)`` decides which candidates are misclassified.

    ``grad``/``scores`` at ``x`` (of the cross-entropy), when given, save the first forward +
    backward. ``losses`` run in order, each for ``restarts`` runs, each only on the samples
    still standing. With ``stop_early=False`` every sample runs all steps of one restart of
    the first loss and gets the last iterate (for transfer, where stopping just past the
    surrogate's boundary transfers badly; no interior point either: the caller scores the
    target). ``stats["gradient_free"]`` counts the samples left standing for which every
    gradient the attack took was exactly zero (it never moved them: a masked gradient, not
    robustness); ``stats["interior"]`` the samples only the interior point fooled.
    """
    import torch

    low, high = bounds
    step = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    losses = tuple(losses) or ("ce",)
    if not stop_early:
        current = x.clone()
        if random_start:
            noise = torch.from_numpy(rng.random(size=tuple(x.shape)) * 2.0 - 1.0)
            current = (x + eps * noise.to(device=x.device, dtype=x.dtype)).clamp(low, high)
        for index in range(steps):
            g = grad if index == 0 and not random_start and grad is not None and losses[0] == "ce" \
                else loss_gradient(current, y, losses[0])[0]
            moved = current + step * g.sign().to(current.dtype)
            current = torch.min(torch.max(moved, x - eps), x + eps).clamp(low, high)
        return current
    y_cpu = y.cpu()
    if grad is None or scores is None:
        grad, scores = loss_gradient(x, y, "ce")
    best = x.clone()
    fooled = scores.argmax(1).cpu() != y_cpu  # already wrong: the clean input is the candidate
    if eps == 0:
        return best
    #: samples for which some gradient the attack took was not all zeros
    moving = _nonzero(grad)

    def settle(candidate: "torch.Tensor", wrong: "torch.Tensor", index: "torch.Tensor") -> None:
        """Samples ``index`` whose ``candidate`` rows are misclassified keep them, for good."""
        hit = index[wrong]
        best[hit] = candidate[wrong.to(candidate.device)]
        fooled[hit] = True

    def finish(interior: bool = True) -> "torch.Tensor":
        """The interior point of every sample still standing, then the gradient-free count."""
        out = best
        if interior:
            active = (~fooled).nonzero().squeeze(1)
            out, inside = with_interior(score, x, y, best, rng, active, stats)
            fooled[active[inside]] = True
        if stats is not None:
            stats["gradient_free"] = stats.get("gradient_free", 0) + int((~fooled & ~moving).sum())
        return out

    # the FGSM points (the corner, then its interior point): candidates, so PGD is never
    # weaker than FGSM
    active = (~fooled).nonzero().squeeze(1)
    if len(active):
        point = (x[active] + eps * grad[active.to(grad.device)].sign().to(x.dtype)).clamp(low, high)
        settle(*corner_then_interior(score, x, y, point, active, rng, stats), index=active)
    if steps <= 0 or restarts <= 0:
        active = (~fooled).nonzero().squeeze(1)
        if len(active):  # not fooled anywhere: hand back the FGSM point
            best[active] = (x[active] + eps * grad[active.to(grad.device)].sign().to(x.dtype)).clamp(low, high)
        return finish(interior=False)

    # one draw per sample for every run, so the start of a sample does not depend on batching
    runs = [(loss, restart) for loss in losses for restart in range(restarts)]
    starts = rng.random(size=(len(x), len(runs)) + tuple(x.shape[1:])) if random_start else None
    best_loss = torch.full((len(x),), -float("inf"), dtype=torch.float64)
    for run, (loss, _) in enumerate(runs):
        active = (~fooled).nonzero().squeeze(1)
        if not len(active):
            break
        origin = x[active]
        current = origin.clone()
        if starts is not None:
            noise = torch.from_numpy(starts[active.numpy(), run] * 2.0 - 1.0)
            current = (origin + eps * noise.to(device=x.device, dtype=x.dtype)).clamp(low, high)
        index = active
        for step_index in range(steps):
            if step_index == 0 and starts is None and loss == "ce":  # at x: already known
                g, s = grad[active.to(grad.device)], scores[active.to(scores.device)]
            else:
                g, s = loss_gradient(current, y[index.to(y.device)], loss)
                moving[index] |= _nonzero(g)
            wrong = s.argmax(1).cpu() != y_cpu[index]
            settle(current, wrong, index)
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
            settle(current, wrong, index)
            ranked = -margin(s, y[index.to(y.device)]).cpu()  # rank the not-fooled by margin
            better = (~wrong) & (ranked > best_loss[index])
            best[index[better]] = current[better.to(current.device)]
            best_loss[index[better]] = ranked[better]
    return finish()


def _nonzero(grad: "torch.Tensor") -> "torch.Tensor":
    """Per sample (on the CPU): whether any element of its gradient is not zero."""
    return grad.reshape(len(grad), -1).ne(0).any(1).cpu()
