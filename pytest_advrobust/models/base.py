"""The one small interface every model sits behind: raw inputs in, class scores out.

Inputs are torch tensors in raw units (the units of the data, ``eps`` and
``input-range``); normalisation, if any, happens inside. Scores are logits or
probabilities; :meth:`Classifier.loss` picks the right loss for each.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from ..errors import AdvRobustError, AttackError, DataError, ModelLoadError, ScoresNotFinite, user_frame
from .straight_through import smooth_of, with_smooth

__all__ = ["LOSSES", "Classifier", "detect_output_kind", "exact_cross_entropy", "loss_per_sample",
           "model_raised", "user_frame"]

#: added to a label error when the model has a single-score (binary) head
BINARY_LABELS = (" The model has a single-score binary head, so labels must be 0 or 1 "
                 "(map {-1, 1} or {False, True} labels to 0 and 1 in the data loader).")

#: smallest probability whose log is taken: keeps the loss finite for a confident model
PROBABILITY_FLOOR = 1e-30


#: the losses a gradient attack can ascend (``loss`` check key of fgsm, pgd, universal, transfer)
LOSSES = ("ce", "margin", "dlr")


def loss_per_sample(scores: torch.Tensor, y: torch.Tensor, output_kind: str,
                    loss: str = "ce") -> torch.Tensor:
    """The per-sample loss a gradient attack ascends, computed in float64 from the model's
    (float32) scores so that its gradient is exact; see :func:`exact_cross_entropy`.

    ``loss``: ``"ce"`` cross-entropy of the true class (from logits, or ``-log p_y`` from
    probabilities: applying cross-entropy to probabilities as if they were logits is a
    different function, which saturates); ``"margin"`` the Carlini-Wagner margin
    ``max_{j != y} z_j - z_y`` (log-probabilities for a probabilities output), which does not
    saturate; ``"dlr"`` that margin divided by ``z_(1) - z_(3)`` (Croce & Hein, 2020), which
    is also invariant to the scale of the logits (the margin, for fewer than 3 classes).
    """
    if loss == "ce":
        if output_kind == "probabilities":
            return exact_probability_loss(scores, y)
        return exact_cross_entropy(scores, y)
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {', '.join(map(repr, LOSSES))}")
    values = scores.double()
    if output_kind == "probabilities":
        values = values.clamp_min(PROBABILITY_FLOOR).log()
    index = y[:, None].to(values.device)
    true = values.gather(1, index).squeeze(1)
    others = values.scatter(1, index, -float("inf"))
    gap = others.max(1).values - true  # > 0: misclassified
    if loss == "margin" or values.shape[1] < 3:
        return gap
    ranked = values.sort(1, descending=True).values
    return gap / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def exact_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true class with an exact gradient, in float64.

    Written as ``softplus(logsumexp_{j != y} z_j - z_y)``: equal to ``-log softmax(z)_y``, but
    its gradient with respect to the true logit is ``-sigmoid(...)`` (the sum of the other
    classes' probabilities) rather than ``p_y - 1``, which is exactly 0 once ``p_y`` rounds to
    1.0 (at a logit gap of about 17 in float32, 37 in float64). The gradient is then
    ``softmax - onehot`` to full relative precision for as long as the model's own dtype can
    carry it back (float32: logit gaps up to about 87; it is exactly 0 past about 103, a
    masked gradient, which the engine's diagnostics report; margin losses do not saturate).
    """
    values = logits.double()
    if values.shape[1] < 2:  # one class: nothing to be confused with
        return torch.nn.functional.cross_entropy(values, y.to(values.device), reduction="none")
    index = y[:, None].to(values.device)
    true = values.gather(1, index).squeeze(1)
    others = values.scatter(1, index, -float("inf"))
    return torch.nn.functional.softplus(torch.logsumexp(others, 1) - true)


def exact_probability_loss(probabilities: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-log p_y`` for a model that outputs probabilities, with a gradient that keeps the
    true class's term when ``p_y`` rounds to 1.0.

    The model's own softmax backward computes the true logit's term as ``p_y * (g_y - sum g
    p)``; for ``g = grad(-log p_y)`` that is ``p_y - 1``, exactly 0 for a confident sample.
    The gradient taken here is that of ``S * (log S - log p_y)`` with ``S = sum_{j != y} p_j``
    held constant, which through a softmax gives ``p_j`` for the other classes and ``-S`` for
    the true one: ``softmax - onehot`` again, with no cancellation. The value is
    ``log1p(S / p_y)`` (``-log p_y`` for rows summing to 1).
    """
    values = probabilities.double()
    index = y[:, None].to(values.device)
    true = values.gather(1, index).squeeze(1).clamp_min(PROBABILITY_FLOOR)
    rest = values.scatter(1, index, 0.0).sum(1).clamp_min(PROBABILITY_FLOOR)
    value = torch.log1p(rest / true)
    surrogate = rest.detach() * (torch.log(rest) - torch.log(true))
    return value.detach() + surrogate - surrogate.detach()


def detect_output_kind(scores: torch.Tensor) -> str:
    """``probabilities`` when every row lies in [0, 1] and sums to 1, else ``logits``.

    "Sums to 1" allows 1e-3, or, for rounded probabilities (every value a multiple of one
    step of at most 1/16: an INT8 softmax output), half a step per class plus one, up to
    0.5: rounding each of 10 classes to 1/255 moves a row's sum by up to 0.02, and taking
    such an output for logits would attack another, saturating loss."""
    s = scores.detach().double()
    if not (s.numel() and s.min() >= 0 and s.max() <= 1):
        return "logits"
    step = _grid_step(s)
    tolerance = max(1e-3, min(0.5, step * (s.shape[1] / 2 + 1))) if step <= 1 / 16 else 1e-3
    if bool(((s.sum(1) - 1).abs() <= tolerance).all()):
        return "probabilities"
    return "logits"


def _grid_step(values: torch.Tensor) -> float:
    """The step every value is a whole multiple of (the smallest positive value, when it
    divides them all), or 0."""
    positive = values[values > 0]
    if not positive.numel():
        return 0.0
    step = positive.min()
    multiples = values / step
    return float(step) if bool(((multiples - multiples.round()).abs() <= 1e-3).all()) else 0.0


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
        #: the batch size the model accepts and nothing else (an ONNX graph without a dynamic
        #: batch axis, a ``.pt2`` with a static batch guard), or None when any size works
        self.fixed_batch: int | None = None
        #: True once the model has shown a single-score binary head (``[N, 1]`` or ``[N]``)
        self.binary = False
        #: True once a gradient was taken at unrounded scores (a quantised output)
        self.rounded_scores = False
        #: whether forward draws random numbers (scores differ between identical passes):
        #: None until the engine has looked (models/randomised.py); then every figure is
        #: over ``draws`` seeded draws
        self.randomised: bool | None = None
        self.draws = 1

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
        inputs = x.to(self.device, self.dtype)
        # the engine reuses ``x`` for every gate: a forward that changes it in place would
        # make every later gate run on altered inputs (normalize, if any, makes a copy)
        version = inputs._version if inputs is x and self._mean_std is None \
            and not x.is_inference() else None
        with torch.inference_mode():
            outs = [self._chunk_scores(self._forward, chunk, real) for chunk, real in self._chunks(inputs)]
            out = outs[0] if len(outs) == 1 or not all(isinstance(o, torch.Tensor) for o in outs) \
                else torch.cat(outs)
        if version is not None and x._version != version:
            raise ModelLoadError(IN_PLACE, where=self.source)
        return self._check_scores(out, x)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor,
                      loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the summed per-sample ``loss`` (``"ce"``, ``"margin"``, ``"dlr"``; see
        :func:`loss_per_sample`: only the loss is float64, so the gradient is exact) with
        respect to the raw input, and the scores of the same forward pass (so a gradient
        attack's clean pass is free)."""
        y = y.to(self.device)

        def total(out: torch.Tensor) -> torch.Tensor:  # runs with inference mode off
            labels = y.clone() if y.is_inference() else y
            if int(y.max()) >= out.shape[1]:
                raise DataError(f"a label is {int(y.max())} but the model scores {out.shape[1]} "
                                f"classes, so labels must lie in 0..{out.shape[1] - 1}. Check that "
                                "the labels match the model's class order."
                                + (BINARY_LABELS if self.binary else ""))
            return loss_per_sample(out, labels, self.output_kind, loss)

        return self._gradient(x, total)

    def _gradient(self, x: torch.Tensor,
                  per_sample: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of ``per_sample(scores).sum()`` with respect to the raw input, and the
        scores of the same pass. Runs with grad mode on even inside ``torch.no_grad()`` or
        ``torch.inference_mode()`` (the input is cloned out of inference mode). A
        fixed-batch model gets its batch size exactly: the last chunk is padded by repeating
        a row, and the pad rows are left out of the scores and the loss, so the gradient of
        every real row is exact."""
        if self.gradient_error is not None:
            raise AttackError(self.gradient_error, where=self.source)
        with torch.inference_mode(False), torch.enable_grad():
            base = x.detach().to(self.device, self.dtype)
            base = base.clone() if base.is_inference() else base
            leaves, outs = [], []
            for chunk, real in self._chunks(base):
                leaf = chunk.detach().requires_grad_(True)
                leaves.append((leaf, real))
                outs.append(self._chunk_scores(self._differentiable_forward, leaf, real))
            smooths = [smooth_of(o) for o in outs]
            out = outs[0] if len(outs) == 1 or not all(isinstance(o, torch.Tensor) for o in outs) \
                else torch.cat(outs)
            smooth = None if any(s is None for s in smooths) else \
                smooths[0] if len(smooths) == 1 else torch.cat(smooths)
            self._check_scores(out.detach() if isinstance(out, torch.Tensor) else out, x)
            if not out.requires_grad:
                raise AttackError(
                    "the model's scores carry no gradient: its forward runs under torch.no_grad() "
                    "or detaches the input or output (.detach(), .numpy(), .item()), so no input "
                    "gradient can be taken. Leave grad mode on in forward and keep the computation "
                    "in torch tensors (the plugin itself switches gradients off where it needs "
                    "none), or gate this model with attacks that need no gradient.",
                    where=self.source)
            losses = per_sample(out)
            if smooth is not None:
                # rounded scores (a quantised output): the loss's value at the scores that
                # ship, its gradient at the unrounded ones, where a probability rounded to
                # exactly 0 (or a tie) does not zero it (straight-through, like the rounding)
                unrounded = per_sample(smooth)
                losses = losses.detach() + (unrounded - unrounded.detach())
                self.rounded_scores = True
            total = losses.sum()
            try:
                grads = torch.autograd.grad(total, [leaf for leaf, _ in leaves], allow_unused=True)
            except AdvRobustError:
                raise
            except Exception as exc:  # a custom backward, or tensors made in inference mode
                raise model_raised(exc, self.source, during="the backward pass") from None
            if any(grad is None for grad in grads):
                raise AttackError(
                    "the model's scores do not depend on its input through autograd: forward "
                    "detaches the input (.detach(), .numpy(), .item() or a copy through another "
                    "library), so no input gradient can be taken. Keep the computation in torch "
                    "tensors, or gate this model with attacks that need no gradient.",
                    where=self.source)
            parts = [grad[:real].detach() for grad, (_, real) in zip(grads, leaves)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), out.detach()

    def _chunk_scores(self, forward: Callable[[torch.Tensor], torch.Tensor], chunk: torch.Tensor,
                      real: int) -> torch.Tensor:
        """The model's scores for one chunk (normalised inside), as class columns, without
        the pad rows; a score tensor with another number of rows than the chunk is refused
        before the pad is cut (cutting would hide the extra rows)."""
        out = self._run(forward, self.normalize(chunk))
        smooth = smooth_of(out) if isinstance(out, torch.Tensor) else None
        if isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] != len(chunk):
            self._check_scores(out, chunk)  # raises, naming the shape
        classes = self._as_classes(out, chunk)
        if smooth is not None and classes is not out:  # a binary head: its columns alike
            smooth = self._binary_columns(smooth.reshape(len(chunk)), self.output_kind)
        out = classes
        if isinstance(out, torch.Tensor) and real != len(chunk):
            out, smooth = out[:real], None if smooth is None else smooth[:real]
        if smooth is not None and isinstance(out, torch.Tensor) and smooth.shape == out.shape:
            with_smooth(out, smooth)
        return out

    def _run(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Call the model; anything it raises becomes a model error naming the exception and
        the user's own line (never torch's or the plugin's traceback)."""
        try:
            return forward(x)
        except AdvRobustError:
            raise
        except Exception as exc:  # the user's model: report it as theirs
            raise model_raised(exc, self.source, shape=tuple(x.shape)) from None

    def notes(self, gradient: bool = False) -> list[str]:
        """What a reader of a gate's result should know about how this model was run
        (``gradient``: for a gate that uses the model's input gradient)."""
        notes = []
        if self.binary:
            notes.append(f"binary head (one {'probability' if self.output_kind == 'probabilities' else 'logit'}"
                         " per sample, scored as two classes)")
        if self.fixed_batch is not None:
            notes.append(f"fixed batch {self.fixed_batch} (the last chunk padded by repeating a row)")
        if self.randomised and self.draws > 1:
            notes.append(f"randomised: scores differ between identical forward passes, so it was "
                         f"attacked with gradients and scores averaged over {self.draws} draws (EOT), "
                         f"and a sample counts as correct only if it is correct in all {self.draws} "
                         "draws (eot-samples)")
        elif self.randomised:
            notes.append("randomised: scores differ between identical forward passes, and "
                         "eot-samples = 1 judges every sample on one seeded draw: raise it to attack "
                         "the expectation over draws and count only samples right in every draw")
        if gradient and self.rounded_scores:
            notes.append(f"rounded {'probabilities' if self.output_kind == 'probabilities' else 'scores'}"
                         ": the loss's gradient taken at the unrounded ones (straight-through), so a "
                         "probability rounded to 0 does not zero it")
        return notes

    def _chunks(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
        """``(chunk, real rows)`` pieces of ``x`` in the batch size the model accepts: the
        whole of ``x`` when any size works, else chunks of exactly :attr:`fixed_batch`."""
        size = self.fixed_batch
        if size is None or len(x) == size or not len(x):
            yield x, len(x)
            return
        for start in range(0, len(x), size):
            chunk = x[start:start + size]
            real = len(chunk)
            if real < size:
                chunk = torch.cat([chunk, chunk[-1:].expand((size - real,) + tuple(chunk.shape[1:]))])
            yield chunk, real

    def _as_classes(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A single-score binary head as two class columns, so every attack, argmax and
        report works on it unchanged: a logit ``z`` becomes ``[0, z]`` (its softmax is
        ``[1 - sigmoid(z), sigmoid(z)]``, its cross-entropy is BCE-with-logits, its argmax
        is 1 iff ``z > 0``); a probability ``p`` becomes ``[1 - p, p]`` (1 iff ``p > 0.5``).
        Any other output is returned as it is."""
        if not isinstance(out, torch.Tensor) or not len(x):
            return out
        if out.dim() == 2 and out.shape[1] == 1 and out.shape[0] == len(x):
            out = out[:, 0]
        elif not (out.dim() == 1 and out.shape[0] == len(x)):
            return out
        return self._binary_columns(out, self._binary_kind(out))

    @staticmethod
    def _binary_columns(out: torch.Tensor, kind: str) -> torch.Tensor:
        """One score per sample as two class columns (see :meth:`_as_classes`)."""
        if kind == "probabilities":
            return torch.stack([1 - out, out], 1)
        return torch.stack([torch.zeros_like(out), out], 1)

    def _binary_kind(self, out: torch.Tensor) -> str:
        """``logits`` or ``probabilities`` for a single-score head: from ``output-kind``;
        under ``auto`` a score outside [0, 1] proves logits, and scores all inside [0, 1]
        are refused as ambiguous (taking a logit for a probability moves the decision
        threshold from 0 to 0.5 and every figure with it)."""
        if self.output_kind == "logits":
            self.binary = True
            return "logits"
        values = out.detach()
        outside = bool(((values < 0) | (values > 1)).any()) if values.numel() else False
        if self.output_kind == "auto":
            if not outside:
                raise ModelLoadError(
                    f"the model returns one score per sample (a binary head), and on the first "
                    f"{values.numel()} inputs every score lies in [0, 1], so it cannot be told "
                    "whether they are probabilities (after a sigmoid: class 1 when > 0.5) or "
                    "logits (class 1 when > 0). Set output-kind = \"probabilities\" or "
                    "output-kind = \"logits\" for this model.", where=self.source)
            self.output_kind = "logits"
        elif outside:
            raise ModelLoadError(
                f"output-kind = \"probabilities\" but the model's single score reaches "
                f"{float(values.min()):.4g}..{float(values.max()):.4g}, outside [0, 1]: it returns "
                "logits. Set output-kind = \"logits\" (or leave it to auto).", where=self.source)
        self.binary = True
        return self.output_kind

    def loss(self, scores: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
        return loss_per_sample(scores, y, self.output_kind, loss)

    def objective_gradient(self, x: torch.Tensor,
                           objective: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient with respect to the raw input of ``objective(scores).sum()``, and the
        scores of the same pass: for attacks with a loss of their own (APGD's DLR).

        ``objective`` gets the scores in float64 (from the float32 forward, so the loss
        cannot saturate) and returns one loss per sample."""
        return self._gradient(x, lambda out: objective(out.double()))

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
            raise ScoresNotFinite(
                f"the model returned NaN or inf scores for {int((~torch.isfinite(out)).any(1).sum())} "
                f"of {out.shape[0]} inputs. Check the weights (a diverged training run?) and that "
                "the inputs are in the units the model expects (input-range, normalize).",
                where=self.source, bad=int((~torch.isfinite(out)).any(1).sum()),
                total=int(out.shape[0]))
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
