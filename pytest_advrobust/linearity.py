"""Class scores along a line through an input: the "linearity" view of FGSM's paper.

Goodfellow et al. (2015, fig. 4) move an input along the FGSM direction ``sign(grad)`` and
watch the logits change almost linearly with eps, while a random sign direction of the same
L-inf size barely moves them. This computes those curves; ``report/plots`` draws them.
Inputs are not clipped to ``input-range`` here, so the curves show the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from .config import ModelSpec
    from .engine import Engine
    from .models.base import Classifier

__all__ = ["LinearityCurves", "linearity_curves", "model_curves"]


@dataclass(frozen=True)
class LinearityCurves:
    """``fgsm[i, j, c]`` / ``random[i, j, c]``: score of class ``c`` for sample ``i`` at
    ``eps[j]`` along the FGSM / random sign direction."""

    eps: np.ndarray
    fgsm: np.ndarray
    random: np.ndarray
    labels: np.ndarray
    output_kind: str

    def to_dict(self) -> dict:
        """JSON-able, to travel from an xdist worker to the controller that draws the plot."""
        return {"eps": self.eps.tolist(), "fgsm": self.fgsm.tolist(), "random": self.random.tolist(),
                "labels": self.labels.tolist(), "output_kind": self.output_kind}

    @classmethod
    def from_dict(cls, data: dict) -> "LinearityCurves":
        return cls(eps=np.asarray(data["eps"], dtype=np.float64),
                   fgsm=np.asarray(data["fgsm"], dtype=np.float64),
                   random=np.asarray(data["random"], dtype=np.float64),
                   labels=np.asarray(data["labels"]), output_kind=data["output_kind"])


def linearity_curves(model: "Classifier", x: "torch.Tensor", y: "torch.Tensor", *, eps_max: float,
                     steps: int = 41, seed: int = 0) -> LinearityCurves:
    """Scores of ``x + e * d`` for ``e`` in ``[-eps_max, eps_max]``, ``d`` the FGSM direction
    (sign of the loss gradient) and a random sign direction drawn from ``seed``."""
    import torch

    from .attacks.basic import random_signs

    grad, _ = model.loss_gradient(x, y)
    directions = {"fgsm": grad.sign().to(x.dtype).cpu(),
                  "random": random_signs(x, np.random.default_rng(seed)).cpu()}
    grid = np.linspace(-eps_max, eps_max, steps)
    curves = {}
    for name, direction in directions.items():
        moved = torch.cat([x + float(e) * direction for e in grid])  # [steps * n, ...]
        scores = model.scores(moved).double().cpu().numpy()
        curves[name] = scores.reshape(steps, len(x), -1).transpose(1, 0, 2)
    return LinearityCurves(eps=grid, fgsm=curves["fgsm"], random=curves["random"],
                           labels=y.cpu().numpy(), output_kind=model.output_kind)


def model_curves(engine: "Engine", spec: "ModelSpec", *, samples: int = 3) -> LinearityCurves:
    """The curves for ``samples`` evaluation samples of different classes (the first of
    each, from the first batch), with the engine's cached classifier and data; eps runs to
    twice the largest configured eps."""
    from .errors import AttackError

    model = engine.classifier(spec)
    if model.gradient_error:
        raise AttackError(f"no linearity plot: {model.gradient_error}", where=spec.name)
    low, high = spec.input_range
    largest = max((eps for check in spec.checks for eps in check.eps), default=0.0)
    eps_max = min(2 * largest, high - low) if largest > 0 else 0.1 * (high - low)
    batch = next(iter(engine.data(spec).batches(spec.batch_size, model.dtype)))
    labels = batch.y.tolist()
    chosen = [labels.index(label) for label in dict.fromkeys(labels)][:samples]
    chosen += [i for i in range(len(labels)) if i not in chosen][:samples - len(chosen)]
    with model.session():
        return linearity_curves(model, batch.x[chosen], batch.y[chosen], eps_max=eps_max,
                                seed=spec.seed)
