"""Universal adversarial perturbation: one ``delta`` shared by every input.

Moosavi-Dezfooli et al., 2017, "Universal adversarial perturbations". The figure is the
accuracy of the model on inputs ``clip(x + delta, input-range)``, each scored on a ``delta``
fitted without it (cross-fitting), so it neither depends on which samples happened to be
fitted nor flatters the fit.

Cross-fitting: the samples are dealt into ``folds`` folds by position (sample ``p`` is in
fold ``p mod folds``, :func:`fold_of`). Fold ``j``'s ``delta`` is fitted on the samples of the fit
split (the first ``fit-samples``) *outside* fold ``j``, and every sample of fold ``j`` (the fit split
included) is scored on it. Every sample is evaluated; reordering the data changes only
which fold a sample falls in, not which samples are scored. The fitted state is the stack
of the ``folds`` deltas, ``[folds, *input shape]``, and all of them are saved.

One fold's fit is a small portfolio of sign-gradient ascents, kept to the one of lowest fit
accuracy (a universal perturbation's optimum is non-convex, and its basins are mostly "send
every input to class t"; one ascent from zero lands in one of them by chance):

- candidates: the untargeted ascent of the ``loss`` key from ``delta = 0``, and for each of
  ``targets`` classes ``t`` the ascent towards ``t`` (``-loss(x + delta, t)``, summed over
  the fit samples not of class ``t``). With more classes than ``targets``, the classes most
  often runner-up on the clean fit samples are tried.
- each candidate takes :data:`SCREEN_STEPS` steps ``delta <- clip(delta + step *
  sign(sum_i grad), -eps, eps)`` (the gradient is zero where clipping to input-range is
  active); the :data:`FINALISTS` of lowest fit accuracy go on to ``steps`` steps. A candidate
  stops early (full-batch fits) once its fit accuracy has not reached a new low for
  ``patience`` steps, or at 0.
- each candidate's ``delta`` of lowest fit accuracy (ties: highest fit loss) is its result;
  the lowest of those wins.

Measured on the digits MLP (eps 0.2) and CNN (eps 0.3) over 6 orders of the same data
(``benchmarks/bench_universal.py``): see docs: "Attacks", section "`universal`".

Bounded work: a full step costs one forward + backward over the fold's fit samples, and a
fold's fit at most ``passes = (1 + targets) x (SCREEN_STEPS + 1) + FINALISTS x (steps -
SCREEN_STEPS)`` of them (211 by default). When ``folds x passes x fit samples x input
elements`` exceeds :data:`FIT_ELEMENTS` (2^25), each step of every candidate uses the next
``FIT_ELEMENTS / (folds x passes x input elements)`` fit samples in turn (every candidate the
same rows at the same step, so they compare fairly), with fewer targets if that would leave
fewer than :data:`MIN_ROWS` (16) samples a step, and at least 16 (so an input so large that
the untargeted ascent alone cannot have 16 costs ``folds x (steps + 1) x 16`` samples' forward
+ backward, as the single fit it replaces cost ``(steps + 1) x 16``). Such a minibatch fit
keeps each candidate's last ``delta``, ranks candidates by their fit accuracy over their last
:data:`SCREEN_STEPS` minibatches, and runs all its steps.

Determinism: the fit pushes fixed chunks (:data:`FIT_CHUNK` input values) through the model,
whatever ``batch-size`` says, and draws no random numbers, so its ``delta`` does not depend
on the batch size, the shard or the seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from . import fold_of

if TYPE_CHECKING:
    import torch

__all__ = ["fit_universal", "apply_universal", "fold_of", "describe_universal", "FIT_ELEMENTS"]


#: input elements one fit (all folds, all candidates, all steps) may push through forward + backward
FIT_ELEMENTS = 1 << 25
#: input elements per forward + backward chunk of the fit (not ``batch-size``: see Determinism)
FIT_CHUNK = 1 << 21
#: steps every candidate takes before the portfolio is cut to the finalists
SCREEN_STEPS = 10
#: candidates that go on past the screening steps
FINALISTS = 3
#: fewest fit samples a minibatch step uses
MIN_ROWS = 16


def fit_universal(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, *,
                  positions: "torch.Tensor | None" = None, folds: int = 2, targets: int = 10,
                  steps: int = 40, step_size: float | None = None, patience: int = 10,
                  loss: str = "ce", progress: Callable[[str], None] | None = None) -> "torch.Tensor":
    """Fit ``folds`` deltas (``[folds, *input shape]``, ``max|delta| <= eps``) on ``x, y``,
    the samples at ``positions`` (default ``0..len(x)-1``): ``delta[j]`` never sees a sample
    of fold ``j``."""
    import torch

    if len(x) < 2 * folds:
        from ..errors import DataError

        raise DataError(f"universal cross-fits over folds = {folds} folds, so it needs at least "
                        f"{2 * folds} samples (it got {len(x)}). Give more data or lower folds.")
    where = torch.arange(len(x)) if positions is None else positions.cpu()
    plans = []
    for j in range(folds):
        plans.append(torch.nonzero(fold_of(where, folds) != j).flatten())
    classes = getattr(model, "num_classes", None)  # known once the model has run (the engine runs it)
    targets, per_step = _plan(max(len(rows) for rows in plans), max(1, x[0].numel()), folds,
                              min(targets, classes) if classes else targets, steps)
    deltas = []
    for j, rows in enumerate(plans):
        index = rows.to(x.device)
        tell = None if progress is None else (lambda text, j=j: progress(f"fold {j + 1}/{folds}, {text}"))
        deltas.append(_fit_fold(model, x[index], y[index], eps, targets=targets, steps=steps,
                                step_size=step_size, patience=patience, loss=loss,
                                per_step=per_step, progress=tell))
    return torch.stack(deltas)


def _plan(n: int, elements: int, folds: int, targets: int, steps: int) -> tuple[int, int]:
    """``(targets, fit samples per step)`` within :data:`FIT_ELEMENTS`: every step on all
    ``n`` fit samples when that fits; else minibatches, with as many targets as still leave
    :data:`MIN_ROWS` samples a step (down to none)."""
    def passes(count: int) -> int:
        return ((1 + count) * (min(steps, SCREEN_STEPS) + 1)
                + min(FINALISTS, 1 + count) * max(0, steps - SCREEN_STEPS))

    targets = max(0, targets)
    if folds * passes(targets) * n * elements <= FIT_ELEMENTS:
        return targets, max(1, n)
    while targets > 0 and FIT_ELEMENTS // (folds * passes(targets) * elements) < MIN_ROWS:
        targets -= 1
    return targets, min(max(1, n), max(MIN_ROWS, FIT_ELEMENTS // (folds * passes(targets) * elements)))


def apply_universal(x: "torch.Tensor", state: "torch.Tensor",
                    positions: "torch.Tensor") -> "torch.Tensor":
    """Add to each input the ``delta`` of its fold (the engine clips to input-range)."""
    deltas = state.to(device=x.device, dtype=x.dtype)
    return x + deltas[fold_of(positions.to(x.device), len(deltas))]


def describe_universal(stats: dict[str, Any]) -> str:
    """The held-out accuracy of each fold's ``delta`` (the engine counts ``fold<j>_correct``
    and ``fold<j>_n``): how much the figure owes to the fit."""
    folds = sorted(int(key[4:-2]) for key in stats if key.startswith("fold") and key.endswith("_n"))
    shown = [f"{stats.get(f'fold{j}_correct', 0) / stats[f'fold{j}_n']:.3f}" for j in folds
             if stats.get(f"fold{j}_n")]
    if not shown:
        return ""
    return (f"cross-fitted over {len(folds)} folds (sample p scored on the delta of fold "
            f"p mod {len(folds)}, fitted without that fold; all {len(folds)} saved): accuracy per "
            f"fold {' / '.join(shown)}")


class _Candidate:
    """One sign ascent of the portfolio: towards ``target`` (None: untargeted)."""

    def __init__(self, target: int | None, delta: "torch.Tensor") -> None:
        self.target, self.delta = target, delta
        self.best, self.key = delta.clone(), None  # key: (fit correct, -fit loss), lower wins
        self.lowest, self.since, self.done = None, 0, False
        self.recent: list[int] = []  # minibatch fits: correct counts of the last steps


def _fit_fold(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, *, targets: int,
              steps: int, step_size: float | None, patience: int, loss: str, per_step: int,
              progress: Callable[[str], None] | None) -> "torch.Tensor":
    """One fold's ``delta``: the portfolio of the module docstring on ``x, y``."""
    import torch

    n = len(x)
    if n == 0 or eps == 0:
        return torch.zeros_like(x[0]) if len(x) else torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
    step = step_size if step_size is not None else eps / 8
    whole = per_step >= n
    zero = torch.zeros_like(x[0])
    candidates = [_Candidate(None, zero.clone())]
    for index in range(steps + 1):
        rows = None if whole else torch.arange(index * per_step, (index + 1) * per_step) % n
        xs, ys = (x, y) if rows is None else (x[rows.to(x.device)], y[rows.to(y.device)])
        if index == 0 and targets > 0:  # the untargeted start's clean pass also ranks the targets
            grad, correct, value, runner_up = _pass(model, xs, ys, zero, None, loss, rank=True)
            chosen = _targets(runner_up, targets)
            candidates += [_Candidate(t, zero.clone()) for t in chosen]
            _advance(candidates[0], grad, correct, value, index, steps, step, eps, patience, whole)
            live = candidates[1:]
        else:
            live = candidates
        for candidate in live:
            if candidate.done:
                continue
            grad, correct, value, _ = _pass(model, xs, ys, candidate.delta, candidate.target, loss)
            _advance(candidate, grad, correct, value, index, steps, step, eps, patience, whole)
        if index == SCREEN_STEPS - 1 or (index < SCREEN_STEPS - 1 and all(c.done for c in candidates)):
            ranked = sorted(candidates, key=lambda c: _rank(c, whole))
            for candidate in ranked[FINALISTS:]:
                candidate.done = True
        if progress is not None:
            best = min(candidates, key=lambda c: _rank(c, whole))
            progress(f"step {index}/{steps}, fit accuracy {_accuracy(best, whole, len(xs)):.3f} "
                     f"({'untargeted' if best.target is None else f'towards class {best.target}'})")
        if all(c.done for c in candidates):
            break
    winner = min(candidates, key=lambda c: _rank(c, whole))
    return winner.best if whole else winner.delta


def _rank(candidate: _Candidate, whole: bool) -> tuple:
    if whole:
        return candidate.key if candidate.key is not None else (float("inf"),)
    return (sum(candidate.recent), 0) if candidate.recent else (float("inf"),)


def _accuracy(candidate: _Candidate, whole: bool, size: int) -> float:
    if whole:
        return candidate.key[0] / max(1, size) if candidate.key is not None else 1.0
    return sum(candidate.recent) / max(1, size * len(candidate.recent)) if candidate.recent else 1.0


def _advance(candidate: _Candidate, grad: "torch.Tensor", correct: int, value: float, index: int,
             steps: int, step: float, eps: float, patience: int, whole: bool) -> None:
    """Book the fit accuracy of the candidate's current ``delta``, then take its step."""
    if whole:
        key = (correct, -value)
        if candidate.key is None or key < candidate.key:
            candidate.best, candidate.key = candidate.delta.clone(), key
    else:
        candidate.recent = (candidate.recent + [correct])[-SCREEN_STEPS:]
    if candidate.lowest is None or correct < candidate.lowest:
        candidate.lowest, candidate.since = correct, 0
    else:
        candidate.since += 1
    if index == steps or (whole and (correct == 0 or 0 < patience <= candidate.since)):
        candidate.done = True
        return
    candidate.delta = (candidate.delta + step * grad.sign()).clamp(-eps, eps)


def _targets(runner_up: "torch.Tensor", count: int) -> list[int]:
    """The ``count`` classes most often runner-up on the clean fit samples (all classes,
    when there are no more than ``count``), in class order for ties."""
    import torch

    order = torch.argsort(-runner_up.double() + torch.arange(len(runner_up)) * 1e-9)
    return sorted(int(t) for t in order[:count])


def _pass(model: Any, x: "torch.Tensor", y: "torch.Tensor", delta: "torch.Tensor", target: int | None,
          loss: str, rank: bool = False) -> tuple["torch.Tensor", int, float, "torch.Tensor | None"]:
    """One forward + backward at ``x + delta`` in fixed chunks: the summed gradient of the
    candidate's objective (zero where clipping to input-range is active), the fit samples
    still classified right, their summed ``loss``, and (``rank``) how often each class is
    runner-up."""
    import torch

    low, high = model.input_range
    rows = max(1, FIT_CHUNK // max(1, x[0].numel()))
    total = torch.zeros_like(delta)
    correct, value, runner_up = 0, 0.0, None
    for start in range(0, len(x), rows):
        moved = x[start:start + rows] + delta
        inside = ((moved >= low) & (moved <= high)).to(x.dtype)
        xb, yb = moved.clamp(low, high), y[start:start + rows]
        if target is None:
            grad, scores = model.loss_gradient(xb, yb, loss)
        else:
            grad, scores = model.objective_gradient(xb, _towards(model, yb, target, loss))
        labels = yb.to(scores.device)
        correct += int((scores.argmax(1) == labels).sum())
        value += float(model.loss(scores.double(), labels, loss).sum())
        total += (grad.to(x.device) * inside).sum(0)
        if rank:
            others = scores.double().scatter(1, labels[:, None], -float("inf"))
            counts = torch.bincount(others.argmax(1).cpu(), minlength=scores.shape[1])
            runner_up = counts if runner_up is None else runner_up + counts
    return total, correct, value, runner_up


def _towards(model: Any, y: "torch.Tensor", target: int, loss: str) -> Callable[["torch.Tensor"], "torch.Tensor"]:
    """The targeted objective: minus the ``loss`` of class ``target``, on the samples not of it."""
    import torch

    def objective(scores: "torch.Tensor") -> "torch.Tensor":
        labels = y.to(scores.device)
        wanted = torch.full_like(labels, target)
        return -model.loss(scores, wanted, loss) * (labels != target).to(scores.dtype)

    return objective
