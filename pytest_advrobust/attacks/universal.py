"""Universal adversarial perturbation: one ``delta`` shared by every input.

Moosavi-Dezfooli et al., 2017, "Universal adversarial perturbations", fitted here by
projected sign-gradient ascent on the mean loss of the fit samples: ``delta <- clip(delta +
step * sign(sum_i grad L(x_i + delta, y_i)), -eps, eps)`` (the gradient is zero where
clipping to input-range is active). Fitted on the first ``fit-samples`` samples and
evaluated on the rest, so the reported accuracy is on inputs ``delta`` never saw.

The loss is the ``loss`` check key (``"ce"``, ``"margin"`` or ``"dlr"``; exact, see
``models/base.py``).

Defaults, tuned on the digits MLP and CNN the tests build (eps 0.1, 0.2, 0.3; fit 256,
held-out 284; ``benchmarks/tune_universal.py``): step ``eps / 8``, at most ``steps`` = 40
steps, and the ``delta`` of highest fit loss is kept (the quantity being ascended: it tied
a plain 40-step ascent on all six model/eps pairs, where keeping the lowest fit accuracy
was up to 0.011 weaker held-out). The fit stops early once its fit accuracy has not
reached a new low for ``patience`` (10) steps, and reports each step through the progress
line.

Bounded work: a full step costs one forward + backward over every fit sample. When
``fit-samples x steps x input elements`` exceeds :data:`FIT_ELEMENTS` (2^25, about 256
samples x 40 steps of 3x32x32 images), each step uses the next ``FIT_ELEMENTS / (steps x
input elements)`` fit samples in turn (at least 16), so a 3x48x192 input costs about 30
samples per step (1,200 forward + backward passes in all, instead of 10,240); such a
minibatch fit keeps its last ``delta`` and runs all its steps (one minibatch's accuracy is
too noisy to stop on).

Cost: at most ``steps + 1`` forward + backward passes over the fit split (or the minibatches
above), then one forward per evaluated batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

__all__ = ["fit_universal", "apply_universal"]


#: input elements one fit may push through forward + backward, over all its steps
FIT_ELEMENTS = 1 << 25


def fit_universal(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, *,
                  steps: int = 40, step_size: float | None = None, patience: int = 10,
                  batch_size: int = 256, loss: str = "ce",
                  progress: Callable[[str], None] | None = None) -> "torch.Tensor":
    """Fit ``delta`` (shape of one input, ``max|delta| <= eps``) on the fit split ``x, y``."""
    import torch

    low, high = model.input_range
    step = step_size if step_size is not None else eps / 8
    n, elements = len(x), max(1, x[0].numel())
    per_step = n if n * max(1, steps) * elements <= FIT_ELEMENTS else \
        min(n, max(16, FIT_ELEMENTS // (max(1, steps) * elements)))
    delta = torch.zeros_like(x[0])
    best, best_loss, lowest, since = delta.clone(), -float("inf"), None, 0
    for index in range(steps + 1):
        rows = torch.arange(index * per_step, (index + 1) * per_step) % n if per_step < n else None
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        moved = xs + delta
        inside = ((moved >= low) & (moved <= high)).to(x.dtype)
        total = torch.zeros_like(delta)
        correct, fit_loss = 0, 0.0
        for start in range(0, len(xs), batch_size):
            xb, yb = moved[start:start + batch_size].clamp(low, high), ys[start:start + batch_size]
            grad, scores = model.loss_gradient(xb, yb, loss)
            correct += int((scores.argmax(1).cpu() == yb.cpu()).sum())
            fit_loss += float(model.loss(scores.double(), yb.to(scores.device), loss).sum())
            total += (grad.to(x.device) * inside[start:start + batch_size]).sum(0)
        if progress is not None:
            progress(f"step {index}/{steps}, fit accuracy {correct / len(xs):.3f}")
        if rows is None and (fit_loss > best_loss or correct == 0):
            best, best_loss = delta.clone(), fit_loss
        if lowest is None or correct < lowest:
            lowest, since = correct, 0
        else:
            since += 1
        if correct == 0 or eps == 0 or index == steps:
            break
        if rows is None and patience > 0 and since >= patience:
            break
        delta = (delta + step * total.sign()).clamp(-eps, eps)
    return best if per_step >= n else delta


def apply_universal(x: "torch.Tensor", state: "torch.Tensor") -> "torch.Tensor":
    """Add the fitted ``delta`` to every input (the engine clips to input-range)."""
    return x + state.to(device=x.device, dtype=x.dtype)
