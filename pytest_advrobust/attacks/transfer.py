"""Transfer: adversarial inputs crafted on surrogate models, evaluated on the target.

Papernot, McDaniel & Goodfellow, 2016, "Transferability in Machine Learning"; ensembles as
in Liu, Chen, Liu & Song, 2017, "Delving into Transferable Adversarial Examples". The
target is only scored, so this gates models with no gradient (a tree ensemble or a linear
model exported from scikit-learn) or models whose gradient is masked.

Arguments (check keys): ``surrogate`` (a model name of the same config, or a list of names;
required: a list attacks the sum of their losses, whose gradient is the sum of their input
gradients), ``via`` (``"fgsm"`` or ``"pgd"``, default ``"fgsm"``), and for pgd ``steps``
(10), ``step-size`` (``2.5 * eps / steps``), ``random-start`` (false: start at the input;
a random start transferred up to 0.037 worse on the digits MLP/CNN/logistic pairs, while
from the input 10 steps are within 0.005 of a 40-step ``eps / 8`` ascent), and ``loss`` (the
surrogates' loss: ``"ce"``, ``"margin"`` or ``"dlr"``; a distilled surrogate whose logits
saturate needs a margin loss). Each surrogate must
take the target's raw inputs (same input-range). The crafted point ``x'`` lies on the corners
of the eps ball, which a target can recognise, so its interior point ``x + s * (x' - x)``
(``s`` uniform in [0.99, 0.999) per sample, see ``interior.py``) is tried on the target too:
a sample counts as fooled if either point fools it. Cost: on each surrogate one forward +
backward (fgsm) or ``1 + steps`` of them (pgd); on the target one forward per eps and one
more for the samples the corner leaves standing.

Example::

    [[tool.advrobust.models.forest.checks]]
    attack = "transfer"
    surrogate = ["mlp", "linear"]
    via = "pgd"
    eps = 0.1
    min-accuracy = 0.6
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import AdvRobustError, AttackError
from .interior import interior_point
from .pgd import pgd_linf

if TYPE_CHECKING:
    import torch

__all__ = ["transfer"]

from .rules import TRANSFER_VIA as VIA


def transfer(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
             surrogates: Sequence[Any], *, via: str = "fgsm", steps: int = 10,
             step_size: float | None = None, loss: str = "ce",
             random_start: bool = False) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Craft on ``surrogates`` (their summed loss); the crafted points and their interior
    points go to the target as candidates."""
    if via not in VIA:
        raise AttackError(f"via = {via!r} is not one of {', '.join(map(repr, VIA))} (how the "
                          "surrogate is attacked).", where=f"transfer on {model.name}")
    low, high = model.input_range
    with contextlib.ExitStack() as stack:
        for other in surrogates:
            stack.enter_context(other.session())

        def loss_gradient(inputs: "torch.Tensor", labels: "torch.Tensor",
                          kind: str = loss) -> tuple[Any, Any]:
            return _ensemble_gradient(surrogates, inputs, labels, kind)

        grad, scores = loss_gradient(x, y)
        if via == "fgsm":
            crafted = (x + eps * grad.sign().to(x.dtype)).clamp(low, high)
        else:  # PGD on the ensemble; "misclassified" means by the ensemble
            crafted = pgd_linf(loss_gradient, lambda inputs: _ensemble_scores(surrogates, inputs), x,
                               y, eps, (low, high), rng, grad=grad, scores=scores, steps=steps,
                               step_size=step_size, random_start=random_start, restarts=1,
                               stop_early=False, losses=(loss,))
    # the crafted points sit on the corners of the ball, which a target can recognise: the
    # engine scores their interior points too, where the corners did not fool (interior.py)
    return crafted, interior_point(x, crafted, rng)


def _ensemble_gradient(surrogates: Sequence[Any], x: "torch.Tensor", y: "torch.Tensor",
                       loss: str = "ce") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Sum of the surrogates' input gradients, and their mean log-probabilities as scores."""
    total, scores = None, None
    for other in surrogates:
        try:
            grad, out = other.loss_gradient(x, y, loss)
        except AttackError as exc:
            raise AttackError(f"surrogate {other.name!r} has no usable input gradient, so it "
                              f"cannot craft transfer inputs: {exc} Pick a differentiable "
                              "surrogate (a torch model, or an ONNX export of one).",
                              where=f"surrogate {other.name}") from None
        except Exception as exc:  # noqa: BLE001 - name the surrogate, not the target
            raise _surrogate_failed(other, x, exc) from None
        grad = grad.to(device=x.device, dtype=x.dtype)
        total = grad if total is None else total + grad
        log_p = _log_probabilities(other, out).to(x.device)
        scores = log_p if scores is None else scores + log_p
    return total, scores / len(surrogates)


def _ensemble_scores(surrogates: Sequence[Any], x: "torch.Tensor") -> "torch.Tensor":
    total = None
    for other in surrogates:
        try:
            out = other.scores(x)
        except Exception as exc:  # noqa: BLE001 - name the surrogate, not the target
            raise _surrogate_failed(other, x, exc) from None
        log_p = _log_probabilities(other, out).to(x.device)
        total = log_p if total is None else total + log_p
    return total / len(surrogates)


def _surrogate_failed(other: Any, x: "torch.Tensor", exc: Exception) -> AttackError:
    what = str(exc) if isinstance(exc, AdvRobustError) else f"{type(exc).__name__}: {exc}"
    return AttackError(f"surrogate {other.name!r} failed on the target's inputs (shape "
                       f"{tuple(x.shape)}): {what} A surrogate must take the target's raw inputs "
                       "(same shape and input-range); pick one that does.",
                       where=f"surrogate {other.name}")


def _log_probabilities(model: Any, scores: "torch.Tensor") -> "torch.Tensor":
    if model.output_kind == "probabilities":
        return scores.double().clamp_min(1e-30).log()
    return scores.double().log_softmax(1)
