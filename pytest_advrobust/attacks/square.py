"""Square attack, L-inf: a score-based (black-box) random search; it needs only the model's scores.

Andriushchenko, Croce, Flammarion & Hein, 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search" (the score-based member of AutoAttack). It searches
the ball of radius ``r = s * eps``, ``s`` uniform in [0.99, 0.999) per sample from the
sample's own stream (``interior.py``: a model that recognises the corners of the eps ball
cannot hide from it; the smaller ball costs about 0.5% of accuracy on the digits MLP at the
default budget). It starts from vertical stripes of ``+-r`` and, one query per step,
proposes to overwrite a random square window (all channels, one ``+-r`` sign per channel)
of the current perturbation; the proposal is kept when it lowers the margin loss
``log-score(y) - max_{j != y} log-score(j)`` (logits as they are, probabilities through
their log). The window covers a fraction ``p`` of the input, from ``p-init`` (0.8, as
AutoAttack) halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 ten-thousandths of
the budget. Every candidate is a corner of that ball inside input-range, so it stays in the
eps ball by construction. ``strongest`` runs it on the eps ball itself (``interior=False``:
its ``apgd-t-interior`` member already searches inside), and then spends the budget's last
query on the interior point ``x + s * (x' - x)`` of each final point ``x'`` still standing.

Inputs: images ``[C, H, W]`` get square windows; ``[H, W]`` one channel; flat vectors
``[D]`` get windows that are runs of ``p * D`` consecutive features.

Each sample keeps the first point that fools the model and stops spending queries.
Arguments (check keys): ``queries`` (int: forward evaluations per sample at most; default
5000 as in AutoAttack for inputs of up to 8,192 values, 1000 above, so that a 3x48x192
input stays within about 1,000 forwards per sample still standing), ``p-init`` (float,
0.8). Randomness comes from the seed. Cost: at most ``queries`` forward passes per sample
still standing, one ``scores`` call per step for the whole batch, never a backward pass. The queries spent are summed into ``stats["queries"]``.

Example::

    [[tool.advrobust.checks]]
    attack = "square"
    eps = 0.05
    queries = 5000
    min-accuracy = 0.5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AttackError
from .interior import interior_scales, with_interior
from .spsa import _scores, margin

if TYPE_CHECKING:
    import torch

__all__ = ["square", "square_linf", "window_fraction", "default_queries"]

#: inputs with more values than this get 1,000 queries by default instead of 5,000
LARGE_INPUT = 8192
#: budget fractions (ten-thousandths) after which the window fraction is halved again
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator,
           scores: "torch.Tensor", stats: dict[str, float], *, queries: int | None = None,
           p_init: float = 0.8) -> "torch.Tensor":
    """Square attack on ``model.scores`` alone; see the module docstring."""
    return square_linf(model, x, y, eps, rng, scores=scores, stats=stats,
                       queries=default_queries(x) if queries is None else queries, p_init=p_init,
                       interior=True)


def default_queries(x: "torch.Tensor") -> int:
    """AutoAttack's 5,000 queries for inputs of up to :data:`LARGE_INPUT` values, 1,000 above
    (each query of a large input costs a full forward: see the module docstring)."""
    return 5000 if x[0].numel() <= LARGE_INPUT else 1000


def window_fraction(p_init: float, step: int, queries: int) -> float:
    """The paper's piecewise-constant schedule of the fraction of the input a window covers."""
    at = int(step / max(1, queries) * 10000)
    return p_init / 2 ** sum(at > h for h in HALVINGS)


def square_linf(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float, rng: np.random.Generator, *,
                scores: "torch.Tensor | None" = None, stats: dict[str, float] | None = None,
                queries: int = 5000, p_init: float = 0.8,
                active: "torch.Tensor | None" = None, interior: bool = False) -> "torch.Tensor":
    """Square attack over the samples still classified right (and in ``active``, a bool
    mask, when given); returns the adversarial batch. With ``interior`` it searches the ball
    of radius ``s * eps`` (``s`` per sample, see ``interior.py``); without, the eps ball, and
    the last query of a sample still standing goes to the interior point of its final
    point."""
    import torch

    if int(queries) < 1:
        raise AttackError(f"square: queries = {queries} spends no query, so the gate would report the "
                          "clean accuracy as robust. Set queries to 1 or more (5000 is AutoAttack's).")
    stats = {} if stats is None else stats
    low, high = model.input_range
    probabilities = getattr(model, "output_kind", "logits") == "probabilities"
    y_cpu = y.cpu()
    if scores is None:
        scores = model.scores(x)
    best = x.clone()
    standing = scores.argmax(1).cpu() == y_cpu
    if active is not None:
        standing &= active.cpu()
    spent = 0
    if eps == 0 or not standing.any() or queries <= 0:
        stats["queries"] = stats.get("queries", 0) + spent
        return best
    n = len(x)
    shape = tuple(x.shape[1:])
    grid = x.reshape((n,) + _grid(shape))  # [n, c, h, w]; flat inputs as [n, 1, 1, d]
    c, h, w = grid.shape[1:]
    device, dtype = x.device, x.dtype

    # each sample's radius: eps, or with ``interior`` s * eps (s per sample, see interior.py)
    radius = torch.from_numpy(eps * interior_scales(rng, n) if interior else np.full(n, float(eps)))
    # vertical stripes: one +-radius per channel and column
    stripes = rng.random(size=(n, c, 1, w))
    rows = standing.nonzero().squeeze(1)
    origin = grid[rows]
    delta = torch.from_numpy(np.where(stripes[rows.numpy()] < 0.5, -1.0, 1.0)).to(device, dtype)
    delta = delta * radius[rows].to(device, dtype).view(-1, 1, 1, 1)
    delta = delta.expand(-1, -1, h, -1).clone()
    current = (origin + delta).clamp(low, high)
    s = _scores(model, current.reshape((len(rows),) + shape))
    spent += len(rows)
    loss = margin(s, y[rows.to(y.device)], probabilities).cpu()
    wrong = s.argmax(1).cpu() != y_cpu[rows]
    best[rows] = current.reshape((len(rows),) + shape)
    keep = ~wrong
    rows, origin, current, loss = rows[keep], origin[keep.to(device)], current[keep.to(device)], loss[keep]

    line_h = torch.arange(h, device=device)
    line_w = torch.arange(w, device=device)
    # the last query goes to the interior point (unless the search is inside already)
    last_query = 1 if queries >= 2 and not interior else 0
    for step in range(queries - 1 - last_query):
        if not len(rows):
            break
        m = len(rows)
        p = window_fraction(p_init, step, queries)
        if h > 1:
            side = min(max(int(round(np.sqrt(p * h * w))), 1), max(1, min(h, w) - 1))
            size_h, size_w = side, side
        else:  # a flat vector: a run of p * d features
            size_h, size_w = 1, min(max(int(round(p * w)), 1), w - 1 if w > 1 else 1)
        # one draw per step for the rows still standing, each from its own stream (the
        # engine's rng.rows: what a draw for the whole batch would give it), so batching
        # changes nothing: the window's place, one sign per channel, a fallback pattern
        draw = (rng.rows(rows) if hasattr(rng, "rows") else rng).random(size=(m, 3 + c))
        top = torch.from_numpy(np.floor(draw[:, 0] * (h - size_h + 1)).astype(np.int64)).to(device)
        left = torch.from_numpy(np.floor(draw[:, 1] * (w - size_w + 1)).astype(np.int64)).to(device)
        window = (((line_h[None] >= top[:, None]) & (line_h[None] < top[:, None] + size_h))[:, :, None]
                  & ((line_w[None] >= left[:, None]) & (line_w[None] < left[:, None] + size_w))[:, None, :])
        window = window[:, None]  # [m, 1, h, w]
        # one +-eps sign per channel over the window; where that would change nothing (the
        # window already holds it), another pattern drawn uniformly from the rest
        positive = torch.from_numpy(draw[:, 2:2 + c] < 0.5)
        others = 1 + np.floor(draw[:, 2 + c] * (2 ** min(c, 30) - 1)).astype(np.int64)
        delta = current - origin
        proposal = torch.where(window, _signed(positive, radius[rows], h, w, device, dtype), delta)
        unchanged = (((origin + proposal).clamp(low, high) - current).abs() < 1e-7).flatten(1).all(1)
        if unchanged.any():
            bits = (others[:, None] >> np.arange(min(c, 30))) & 1  # which channels flip
            flip = torch.zeros(m, c, dtype=torch.bool)
            flip[:, :min(c, 30)] = torch.from_numpy(bits.astype(bool))
            positive = torch.where(unchanged[:, None].cpu(), positive ^ flip, positive)
            proposal = torch.where(window, _signed(positive, radius[rows], h, w, device, dtype), delta)
        candidate = (origin + proposal).clamp(low, high)
        s = _scores(model, candidate.reshape((m,) + shape))
        spent += m
        new_loss = margin(s, y[rows.to(y.device)], probabilities).cpu()
        better = new_loss < loss
        wrong = s.argmax(1).cpu() != y_cpu[rows]
        take = (better | wrong).to(device)
        current = torch.where(take[:, None, None, None], candidate, current)
        loss = torch.where(better | wrong, new_loss, loss)
        if wrong.any():  # fooled: they keep this point and stop spending queries
            best[rows[wrong]] = current[wrong.to(device)].reshape((int(wrong.sum()),) + shape)
            keep = ~wrong
            rows, origin, loss = rows[keep], origin[keep.to(device)], loss[keep]
            current = current[keep.to(device)]
    best[rows] = current.reshape((len(rows),) + shape)  # the lowest margin found for the rest
    if last_query:
        best, _ = with_interior(model.scores, x, y, best, rng, rows, stats)
        spent += len(rows)
    stats["queries"] = stats.get("queries", 0) + spent
    return best


def _signed(positive: "torch.Tensor", radius: "torch.Tensor", h: int, w: int, device: Any,
            dtype: Any) -> "torch.Tensor":
    """``+radius`` where ``positive`` else ``-radius`` (one radius per sample), per sample and
    channel, as [m, c, h, w]."""
    import torch

    size = radius.to(dtype=dtype)[:, None]
    values = torch.where(positive, size, -size).to(device=device, dtype=dtype)
    return values[:, :, None, None].expand(-1, -1, h, w)


def _grid(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A sample's shape as (channels, height, width) for square windows."""
    if len(shape) == 1:
        return (1, 1, shape[0])
    if len(shape) == 2:
        return (1,) + tuple(shape)  # type: ignore[return-value]
    return (int(np.prod(shape[:-2])), shape[-2], shape[-1])
