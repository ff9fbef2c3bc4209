"""The one small interface every model sits behind: raw inputs in, class scores out.

Inputs are torch tensors in raw units (the units of the data, ``eps`` and
``input-range``); normalisation, if any, happens inside. Scores are logits or
probabilities; :meth:`Classifier.loss` picks the right loss for each.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from ..errors import AdvRobustError, AttackError, DataError, ModelLoadError, user_frame

__all__ = ["Classifier", "detect_output_kind", "loss_per_sample", "model_raised", "user_frame"]

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
        limit = torch.finfo(dtype).max if dtype.is_floating_point else float("inf")
        low, high = self.input_range
        if not (abs(low) <= limit and abs(high) <= limit and high - low <= limit):
            raise ModelLoadError(
                f"input-range [{low:g}, {high:g}] does not fit the model's dtype "
                f"{str(dtype).replace('torch.', '')} (largest value {limit:.4g}): eps and the "
                "clipping bounds would overflow. Give input-range in the data's real units.",
                where=self.source)
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
        inputs = self.normalize(x.to(self.device, self.dtype))
        # the engine reuses ``x`` for every gate: a forward that changes it in place would
        # make every later gate run on altered inputs
        version = inputs._version if inputs is x and not x.is_inference() else None
        with torch.inference_mode():
            out = self._run(self._forward, inputs)
        if version is not None and x._version != version:
            raise ModelLoadError(IN_PLACE, where=self.source)
        return self._check_scores(out, x)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the summed per-sample loss with respect to the raw input, and the
        scores of the same forward pass (so a gradient attack's clean pass is free).

        Runs with grad mode on even when called inside ``torch.no_grad()`` or
        ``torch.inference_mode()`` (the input is cloned out of inference mode)."""
        if self.gradient_error is not None:
            raise AttackError(self.gradient_error, where=self.source)
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x.detach().to(self.device, self.dtype)
            leaf = (leaf.clone() if leaf.is_inference() else leaf).requires_grad_(True)
            out = self._run(self._differentiable_forward, self.normalize(leaf))
            self._check_scores(out.detach() if isinstance(out, torch.Tensor) else out, x)
            if int(y.max()) >= out.shape[1]:
                raise DataError(f"a label is {int(y.max())} but the model scores {out.shape[1]} "
                                f"classes, so labels must lie in 0..{out.shape[1] - 1}. Check that "
                                "the labels match the model's class order.")
            if not out.requires_grad:
                raise AttackError(
                    "the model's scores carry no gradient: its forward runs under torch.no_grad() "
                    "or detaches the input or output (.detach(), .numpy(), .item()), so no input "
                    "gradient can be taken. Leave grad mode on in forward and keep the computation "
                    "in torch tensors (the plugin itself switches gradients off where it needs "
                    "none), or gate this model with attacks that need no gradient.",
                    where=self.source)
            y = y.to(self.device)
            loss = loss_per_sample(out, y.clone() if y.is_inference() else y, self.output_kind).sum()
            try:
                (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
            except AdvRobustError:
                raise
            except Exception as exc:  # a custom backward, or tensors made in inference mode
                raise model_raised(exc, self.source, during="the backward pass") from None
            if grad is None:
                raise AttackError(
                    "the model's scores do not depend on its input through autograd: forward "
                    "detaches the input (.detach(), .numpy(), .item() or a copy through another "
                    "library), so no input gradient can be taken. Keep the computation in torch "
                    "tensors, or gate this model with attacks that need no gradient.",
                    where=self.source)
        return grad.detach(), out.detach()

    def _run(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Call the model; anything it raises becomes a model error naming the exception and
        the user's own line (never torch's or the plugin's traceback)."""
        try:
            return forward(x)
        except AdvRobustError:
            raise
        except Exception as exc:  # the user's model: report it as theirs
            raise model_raised(exc, self.source, shape=tuple(x.shape)) from None

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_per_sample(scores, y, self.output_kind)

    def _check_scores(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ModelLoadError(f"the model returned {type(out).__name__}, not a tensor of class "
                                 "scores [batch, classes].", where=self.source)
        if out.layout != torch.strided or out.device.type == "meta":
            raise ModelLoadError(
                f"the model returned scores as a {str(out.layout).replace('torch.', '')} tensor on "
                f"device {out.device.type!r}, which hold no values to compare; return a dense "
                "tensor of class scores (.to_dense(), and keep the model on a real device).",
                where=self.source)
        if not out.is_floating_point():
            raise ModelLoadError(
                f"the model returned scores of dtype {str(out.dtype).replace('torch.', '')}; class "
                "scores must be floating-point logits or probabilities (labels or rounded scores "
                "have no gradient and hide how close a decision is). Return the float scores, "
                "before any argmax or cast.", where=self.source)
        if out.dim() != 2:
            raise ModelLoadError(
                f"the model returned scores of shape {tuple(out.shape)} for inputs of shape "
                f"{tuple(x.shape)}; a classifier must return [batch, classes]. If it has several "
                "outputs, choose one with the output key.", where=self.source)
        if out.shape[0] != x.shape[0] or out.shape[1] == 0:
            raise ModelLoadError(
                f"the model returned scores of shape {tuple(out.shape)} for a batch of "
                f"{x.shape[0]} inputs; a classifier must return one row of class scores per input "
                "([batch, classes], classes >= 1). Check forward for a transpose, a fixed batch "
                "size or rows dropped or added.", where=self.source)
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


#: a forward that writes into the batch it is given
IN_PLACE = ("the model modified its input in place (forward changes the tensor it is given: "
            "x.clamp_(...), x -= mean, x[...] = ...). The plugin reuses each batch for every gate, "
            "so later gates would run on altered inputs. Work on a copy in forward "
            "(x = x.clamp(...), x = x - mean).")


def model_raised(exc: BaseException, source: str, *, shape: tuple[int, ...] | None = None,
                 during: str = "") -> AdvRobustError:
    """A user's model raising anything, as one paragraph: type, first line, the user's frame.

    Weights made under ``torch.inference_mode()`` are the one case that is not the model's
    code: they can be scored but never differentiated, so only gradient attacks fail."""
    text = " ".join(str(exc).strip().split("\n")[0].split())[:400] or "(no message)"
    if "in-place operation" in text:
        frame = user_frame(exc)
        return ModelLoadError(IN_PLACE + (f" (in {frame})" if frame else ""), where=source)
    if "Inference tensors" in text:
        return AttackError(
            "the model's weights were created under torch.inference_mode(), and such tensors "
            "cannot take part in a gradient. Build or load the model outside inference mode "
            "(torch.no_grad() is fine there).", where=source)
    if isinstance(exc, KeyError):
        text = f"key {text}"
    frame = user_frame(exc)
    where = f" in {frame}" if frame else ""
    what = f" on a batch of shape {shape}" if shape is not None else ""
    during = f" during {during}" if during else ""
    return ModelLoadError(f"the model raised {type(exc).__name__}{during}{what}{where}: {text} "
                          "Fix the model code there (run it on one batch of the data outside the "
                          "plugin to reproduce).", where=source)
