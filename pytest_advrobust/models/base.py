"""The one small interface every model sits behind: raw inputs in, class scores out.

Inputs are torch tensors in raw units (the units of the data, ``eps`` and
``input-range``); normalisation, if any, happens inside. Scores are logits or
probabilities; :meth:`Classifier.loss` picks the right loss for each.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from ..errors import AttackError, DataError, ModelLoadError

__all__ = ["Classifier", "detect_output_kind", "loss_per_sample"]

#: smallest probability whose log is taken: keeps the loss finite for a confident model
PROBABILITY_FLOOR = 1e-30


def loss_per_sample(scores: torch.Tensor, y: torch.Tensor, output_kind: str) -> torch.Tensor:
    """Cross-entropy of the true class: from logits, or ``-log p_y`` from probabilities.

    Applying cross-entropy to probabilities as if they were logits is a different
    function (it saturates), so the two are kept apart.
    """
    if output_kind == "probabilities":
        picked = scores.gather(1, y[:, None]).squeeze(1)
        return -torch.log(picked.clamp_min(PROBABILITY_FLOOR))
    return torch.nn.functional.cross_entropy(scores, y, reduction="none")


def detect_output_kind(scores: torch.Tensor) -> str:
    """``probabilities`` when every row lies in [0, 1] and sums to 1, else ``logits``."""
    s = scores.detach().double()
    if s.numel() and s.min() >= 0 and s.max() <= 1 and torch.allclose(
            s.sum(1), torch.ones(s.shape[0], dtype=s.dtype, device=s.device), atol=1e-3):
        return "probabilities"
    return "logits"


class Classifier:
    """Base adapter. Subclasses implement :meth:`_forward` (and :meth:`_differentiable_forward`
    when gradients are available); the rest is shared."""

    #: a name for messages
    name: str = "model"
    #: why input gradients are unavailable, or None when they are
    gradient_error: str | None = None

    def __init__(self, *, name: str, input_range: Sequence[float], output_kind: str = "auto",
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 source: str = "") -> None:
        self.name = name
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.output_kind = output_kind
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source or name
        self._mean_std = None
        if normalize is not None:
            mean, std = normalize
            self._mean_std = (torch.tensor(mean, dtype=dtype, device=self.device),
                              torch.tensor(std, dtype=dtype, device=self.device))
        self.num_classes: int | None = None

    # -- what subclasses provide ----------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores for a normalised batch, no gradient needed."""
        raise NotImplementedError

    def _differentiable_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores for a normalised batch, differentiable with respect to ``x``."""
        raise AttackError(self.gradient_error or f"model {self.name!r} has no input gradient.")

    # -- shared ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Held while attacks run (torch models switch to eval mode and restore it after)."""
        yield

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw units -> what the model expects; per channel (dimension 1) for images."""
        if self._mean_std is None:
            return x
        mean, std = self._mean_std
        if mean.numel() > 1:
            if x.dim() < 2 or x.shape[1] != mean.numel():
                raise ModelLoadError(
                    f"normalize has {mean.numel()} channels but the inputs have shape "
                    f"{tuple(x.shape)} (channels are dimension 1). Give one mean/std per channel, "
                    "or a single value for all.", where=self.source)
            view = (1, -1) + (1,) * (x.dim() - 2)
            mean, std = mean.view(view), std.view(view)
        return (x - mean) / std

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of raw inputs, without gradient."""
        with torch.inference_mode():
            out = self._forward(self.normalize(x.to(self.device, self.dtype)))
        return self._check_scores(out, x)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the summed per-sample loss with respect to the raw input, and the
        scores of the same forward pass (so a gradient attack's clean pass is free)."""
        if self.gradient_error is not None:
            raise AttackError(self.gradient_error, where=self.source)
        with torch.enable_grad():
            leaf = x.detach().to(self.device, self.dtype).requires_grad_(True)
            out = self._differentiable_forward(self.normalize(leaf))
            self._check_scores(out.detach(), x)
            if int(y.max()) >= out.shape[1]:
                raise DataError(f"a label is {int(y.max())} but the model scores {out.shape[1]} "
                                f"classes, so labels must lie in 0..{out.shape[1] - 1}. Check that "
                                "the labels match the model's class order.")
            loss = loss_per_sample(out, y.to(self.device), self.output_kind).sum()
            (grad,) = torch.autograd.grad(loss, leaf)
        return grad.detach(), out.detach()

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_per_sample(scores, y, self.output_kind)

    def objective_gradient(self, x: torch.Tensor,
                           objective: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient with respect to the raw input of ``objective(scores).sum()``, and the
        scores of the same pass: for attacks with a loss of their own (APGD's DLR).

        ``objective`` gets the scores in float64 (from the float32 forward, so the loss
        cannot saturate) and returns one loss per sample."""
        if self.gradient_error is not None:
            raise AttackError(self.gradient_error, where=self.source)
        with torch.enable_grad():
            leaf = x.detach().to(self.device, self.dtype).requires_grad_(True)
            out = self._differentiable_forward(self.normalize(leaf))
            self._check_scores(out.detach(), x)
            (grad,) = torch.autograd.grad(objective(out.double()).sum(), leaf)
        return grad.detach(), out.detach()

    def _check_scores(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if out.dim() != 2:
            raise ModelLoadError(
                f"the model returned scores of shape {tuple(out.shape)} for inputs of shape "
                f"{tuple(x.shape)}; a classifier must return [batch, classes]. If it has several "
                "outputs, choose one with the output key.", where=self.source)
        if not torch.isfinite(out).all():
            raise ModelLoadError(
                f"the model returned NaN or inf scores for {int((~torch.isfinite(out)).any(1).sum())} "
                f"of {out.shape[0]} inputs. Check the weights (a diverged training run?) and that "
                "the inputs are in the units the model expects (input-range, normalize).",
                where=self.source)
        if self.output_kind == "auto":
            self.output_kind = detect_output_kind(out)
        if self.num_classes is None:
            self.num_classes = int(out.shape[1])
        return out
