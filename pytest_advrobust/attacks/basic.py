"""The one-step attacks: ``clean``, ``fgsm`` and the ``noise`` baseline.

FGSM (Goodfellow, Shlens & Szegedy, 2015, "Explaining and Harnessing Adversarial
Examples"), L-inf: the corner point ``x_c = clip(x + eps * sign(grad_x L(x, y)), input-range)``,
with ``L`` the cross-entropy of the logits (or ``-log p_y`` for a model that outputs
probabilities), computed in float64 from the model's scores so its gradient keeps the true
class's term (float32 rounds ``p_y`` to 1.0 on confident samples and loses it; this is the
exact FGSM of the paper, stronger than float32 implementations), and the interior point
``x + s * (x_c - x)`` on the same segment, ``s`` uniform in [0.99, 0.999) per sample (see
:mod:`.interior`: a model that recognises corner points cannot pass). Both go to the engine
as candidates: a sample counts as fooled if either point fools it, and the interior point is
scored only on the samples the corner did not fool. Cost: one forward + one backward per
batch, shared by every eps of a sweep, plus per eps one forward and one more for the samples
the corner leaves standing.

Noise: ``x_c = clip(x + eps * s, input-range)`` with ``s`` uniform in {-1, +1} per element,
drawn from the seed, and its interior point as for FGSM. Same L-inf size as FGSM: the gap
between the two is the point the attack makes (adversarial directions are not random).
Cost: per eps one forward and one more for the samples the corner leaves standing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .interior import interior_point

if TYPE_CHECKING:
    import torch

__all__ = ["clean", "fgsm", "fgsm_step", "noise", "random_signs"]


def clean(x: "torch.Tensor") -> "torch.Tensor":
    """Accuracy on the unperturbed inputs."""
    return x


def fgsm(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
         grad: "torch.Tensor", scores: "torch.Tensor | None" = None,
         stats: dict[str, float] | None = None, *,
         loss: str = "ce") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Fast gradient sign method: the corner one step of size eps along the sign of the loss
    gradient, and the interior point on the way there (the engine scores the interior point
    on the samples the corner did not fool).

    Args: ``x`` a batch in raw input units, ``eps`` the L-inf size, ``grad`` the input
    gradient of the cross-entropy at ``x`` (computed once per batch by the engine, exact:
    the loss is taken in float64), ``rng`` the per-sample streams the interior scales come
    from, ``loss`` the loss to ascend (``"ce"``; ``"margin"`` or ``"dlr"`` cost one more
    forward + backward per batch and eps, and count in ``stats["gradient_free"]`` the
    correctly classified samples whose gradient of that loss is exactly zero: FGSM leaves
    them where they are).
    """
    if loss != "ce":
        grad = model.loss_gradient(x, y, loss)[0]
        if stats is not None and scores is not None:
            still = ~grad.reshape(len(grad), -1).ne(0).any(1)
            correct = scores.argmax(1).to(still.device) == y.to(still.device)
            stats["gradient_free"] = stats.get("gradient_free", 0) + int((still & correct).sum())
    corner = fgsm_step(x, eps, grad, model.input_range)
    return corner, interior_point(x, corner, rng)


def fgsm_step(x: "torch.Tensor", eps: float, grad: "torch.Tensor",
              bounds: tuple[float, float]) -> "torch.Tensor":
    """FGSM's corner point: ``clip(x + eps * sign(grad), bounds)``."""
    return (x + eps * grad.sign().to(x.dtype)).clamp(*bounds)


def noise(model: Any, x: "torch.Tensor", eps: float,
          rng: np.random.Generator) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Random signs of the same L-inf size as FGSM (the baseline that is not adversarial),
    and the interior point on the way there, as candidates for the engine."""
    corner = (x + eps * random_signs(x, rng)).clamp(*model.input_range)
    return corner, interior_point(x, corner, rng)


def random_signs(x: "torch.Tensor", rng: np.random.Generator) -> "torch.Tensor":
    """Uniform {-1, +1} per element of ``x``, drawn in sample order from ``rng``.

    One float64 per element consumed in order, so cutting the data into other batch sizes
    gives the same signs for every sample.
    """
    import torch

    draws = rng.random(size=tuple(x.shape))
    return torch.from_numpy(np.where(draws < 0.5, -1.0, 1.0)).to(device=x.device, dtype=x.dtype)
