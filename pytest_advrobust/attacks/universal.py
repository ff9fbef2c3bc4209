"""Universal adversarial perturbation: one ``delta`` shared by every input.

Moosavi-Dezfooli et al., 2017, "Universal adversarial perturbations", fitted here by
projected sign-gradient ascent: ``delta <- clip(delta + step * sign(mean_i grad L(x_i +
delta, y_i)), -eps, eps)`` over the fit samples (the gradient is zero where clipping to
input-range is active), keeping the ``delta`` with the lowest fit accuracy. Ascending the
mean loss of all samples beat ascending only over the not-yet-fooled ones on a digits MLP
(held-out accuracy 0.24 against 0.33-0.49 at eps 0.2). Fitted on the first ``fit-samples`` samples and
evaluated on the rest, so the reported accuracy is on inputs ``delta`` never saw.

The loss is the ``loss`` check key (``"ce"``, ``"margin"`` or ``"dlr"``; exact, see
``models/base.py``). Cost: ``steps`` forward + backward passes over the fit split, then one forward per
evaluated batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["fit_universal", "apply_universal"]


def fit_universal(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, *,
                  steps: int = 40, step_size: float | None = None, batch_size: int = 256,
                  loss: str = "ce") -> "torch.Tensor":
    """Fit ``delta`` (shape of one input, ``max|delta| <= eps``) on the fit split ``x, y``."""
    import torch

    low, high = model.input_range
    step = step_size if step_size is not None else eps / 4
    delta = torch.zeros_like(x[0])
    best, best_correct = delta.clone(), None
    for _ in range(steps + 1):
        moved = x + delta
        inside = ((moved >= low) & (moved <= high)).to(x.dtype)
        total = torch.zeros_like(delta)
        correct = 0
        for start in range(0, len(x), batch_size):
            xb, yb = moved[start:start + batch_size].clamp(low, high), y[start:start + batch_size]
            grad, scores = model.loss_gradient(xb, yb, loss)
            correct += int((scores.argmax(1).cpu() == yb.cpu()).sum())
            total += (grad.to(x.device) * inside[start:start + batch_size]).sum(0)
        if best_correct is None or correct < best_correct:
            best, best_correct = delta.clone(), correct
        if correct == 0 or eps == 0:
            break
        delta = (delta + step * total.sign()).clamp(-eps, eps)
    return best


def apply_universal(x: "torch.Tensor", state: "torch.Tensor") -> "torch.Tensor":
    """Add the fitted ``delta`` to every input (the engine clips to input-range)."""
    return x + state.to(device=x.device, dtype=x.dtype)
