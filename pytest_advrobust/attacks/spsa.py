"""SPSA: a score-based (black-box) L-inf attack; it needs only the model's output scores.

Uesato, O'Donoghue, van den Oord & Kohli, 2018, "Adversarial Risk and the Dangers of
Evaluating Against Weak Attacks". The margin loss ``f(x) = log-score(y) - max_{j != y}
log-score(j)`` (logits as they are, probabilities through their log, so it works for
scikit-learn exports that output probabilities) is minimised by Adam on the simultaneous-
perturbation estimate of its gradient::

    g = mean_k  (f(x + delta * v_k) - f(x - delta * v_k)) / (2 * delta) * v_k,   v_k in {-1, +1}^d

then projected onto the eps ball and input-range. Each sample keeps the first iterate the
model misclassifies and stops spending queries.

Arguments (check keys): ``queries`` (int, 2000: forward evaluations per sample at most),
``samples`` (int, 32: perturbation pairs per gradient estimate), ``delta`` (float, 0.01: the
finite-difference size, in input units), ``step-size`` (float, default ``eps / 8``: Adam's
learning rate). Randomness comes from the seed, each sample's directions from its own
stream (the engine's ``rng.rows``), so results do not depend on the batch size. Cost:
``queries`` forward passes per sample (never a backward pass), batched: every
perturbation of a batch goes to the model
in as few ``scores`` calls as memory allows, and, when the budget leaves a query after the
last step, one forward for the interior point ``x + s * (x' - x)`` of the final point ``x'``
of each sample still standing (``interior.py``:
Adam's steps end on the corners of the ball, which a model can recognise). The queries
spent are summed into the report's ``stats["queries"]``.

Example::

    [[tool.advrobust.checks]]
    attack = "spsa"
    eps = 0.2
    queries = 2000
    min-accuracy = 0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .interior import with_interior

if TYPE_CHECKING:
    import torch

__all__ = ["spsa", "margin"]

#: input elements per ``scores`` call (about 16 MB of float32)
MAX_ELEMENTS = 1 << 22


def spsa(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
         scores: "torch.Tensor", stats: dict[str, float], *, queries: int = 2000, samples: int = 32,
         delta: float = 0.01, step_size: float | None = None) -> "torch.Tensor":
    """SPSA with Adam on the margin loss, from ``model.scores`` alone; see the module docstring."""
    import torch

    low, high = model.input_range
    lr = eps / 8 if step_size is None else float(step_size)
    probabilities = getattr(model, "output_kind", "logits") == "probabilities"
    samples = max(1, int(samples))
    per_step = 2 * samples + 1
    y_cpu = y.cpu()
    best = x.clone()
    active = (scores.argmax(1).cpu() == y_cpu).nonzero().squeeze(1)
    if eps == 0 or not len(active):
        return best
    shape = tuple(x.shape[1:])
    origin = x[active]
    current = origin.clone()
    first = torch.zeros_like(current)   # Adam's moments, per sample
    second = torch.zeros_like(current)
    spent = 0
    rows = getattr(rng, "rows", None)  # the engine's per-sample streams: draw for the active rows
    for step in range(1, queries // per_step + 1):
        m = len(active)
        draw = rng if rows is None else rows(active)
        signs = torch.from_numpy(np.where(draw.random((m, samples) + shape, dtype=np.float32) < 0.5,
                                          -1.0, 1.0)).to(device=x.device, dtype=x.dtype)
        ends = current[:, None, None] + delta * torch.stack([signs, -signs], 1)  # [m, 2, samples, ...]
        ends = ends.clamp(low, high).reshape((m * 2 * samples,) + shape)
        losses = margin(_scores(model, ends), y[active].repeat_interleave(2 * samples),
                        probabilities).view(m, 2, samples).to(x.dtype)
        slope = (losses[:, 0] - losses[:, 1]) / (2 * delta)  # [m, samples]
        estimate = (slope.view((m, samples) + (1,) * len(shape)) * signs).mean(1)
        first = 0.9 * first + 0.1 * estimate
        second = 0.999 * second + 0.001 * estimate * estimate
        update = (first / (1 - 0.9 ** step)) / ((second / (1 - 0.999 ** step)).sqrt() + 1e-12)
        moved = current - lr * update  # minimise the margin
        current = torch.min(torch.max(moved, origin - eps), origin + eps).clamp(low, high)
        wrong = _scores(model, current).argmax(1).cpu() != y_cpu[active]
        spent += m * per_step
        best[active] = current
        keep = ~wrong
        if not keep.any():
            break
        active, origin, current = active[keep], origin[keep], current[keep]
        first, second = first[keep], second[keep]
    else:  # the steps ran out: the final point, moved strictly inside the ball (interior.py),
        if queries % per_step:  # with a query left of the budget
            best, _ = with_interior(model.scores, x, y, best, rng, active, stats)
            spent += len(active)
    stats["queries"] = stats.get("queries", 0) + spent
    return best


def _scores(model: Any, inputs: "torch.Tensor") -> "torch.Tensor":
    """``model.scores`` in chunks of at most :data:`MAX_ELEMENTS` input elements."""
    import torch

    rows = max(1, MAX_ELEMENTS // max(1, inputs[0].numel()))
    if len(inputs) <= rows:
        return model.scores(inputs)
    return torch.cat([model.scores(inputs[i:i + rows]) for i in range(0, len(inputs), rows)])


def margin(scores: "torch.Tensor", y: "torch.Tensor", probabilities: bool = False) -> "torch.Tensor":
    """Log-score of the true class minus the largest other class's (> 0: correct).

    For probabilities the log is taken, so the margin equals the logit margin of a softmax
    model and does not saturate; logits are used as they are.
    """
    values = scores.double()
    if probabilities:
        values = values.clamp_min(1e-30).log()
    index = y[:, None].to(values.device)
    true = values.gather(1, index).squeeze(1)
    others = values.scatter(1, index, -float("inf"))
    return true - others.max(1).values
