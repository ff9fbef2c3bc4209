"""``hypothesis``: a property-based search for a perturbation that flips a prediction.

For each of the first ``samples`` inputs that the model classifies correctly, hypothesis
draws up to ``max-examples`` L-inf perturbations (``max|delta| <= eps``, corners included,
see :func:`pytest_advrobust.strategies.linf_perturbations`) and stops at the first that
changes the predicted label; it then shrinks it, and the step is scaled down as far as the
flip holds. The gate's accuracy is the share of samples with no flip found (an upper bound
on robust accuracy, like every attack's); the result carries the smallest counterexample.
Deterministic: each sample's search is seeded from the check's ``rng``; no example
database is written. Cost: up to ``max-examples`` single-input forwards per sample, plus
shrinking, so keep ``samples`` small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["hypothesis_search", "describe_search"]


def hypothesis_search(model: Any, x: "torch.Tensor", y: "torch.Tensor", eps: float,
                      rng: np.random.Generator, scores: "torch.Tensor", stats: dict[str, float], *,
                      max_examples: int = 100, samples: int = 16) -> "torch.Tensor":
    """Per sample, the flip hypothesis found (or the sample unchanged)."""
    import torch

    from ..errors import AttackError
    from ..strategies import find_flip

    if max_examples < 1:
        raise AttackError(f"max-examples = {max_examples}: hypothesis needs at least 1 example "
                          "per sample. Raise it (default 100).", where="hypothesis")
    def predict(point: np.ndarray) -> int:
        return int(model.scores(torch.from_numpy(point[None])).argmax(1)[0])

    out = x.clone()
    first = int(stats.get("samples", 0))
    # the samples' positions in the data (the engine's rng knows them; counted otherwise)
    positions = getattr(rng, "positions", None)
    if positions is None or len(positions) != len(x):
        positions = np.arange(first, first + len(x))
    seeds = rng.integers(0, 2**32, size=len(x))  # one per sample, whether searched or not
    found: dict[int, Any] = {}
    for i in range(len(x)):
        if int(scores[i].argmax()) != int(y[i]):
            continue  # already misclassified: nothing to search
        center = x[i].detach().cpu().numpy()
        flip = find_flip(predict, center, int(y[i]), eps, model.input_range,
                         max_examples=max_examples, seed=int(seeds[i]))
        stats["searched"] = stats.get("searched", 0) + 1
        if flip is not None:
            found[i] = flip
            out[i] = x[i] + torch.from_numpy(flip.delta).to(x)
    stats["samples"] = first + len(x)
    if not found:
        return out
    # the engine scores the whole batch; a step scaled down to the boundary may not flip in a
    # batched forward, so keep hypothesis' own (larger) step where it does not
    still = model.scores(out).argmax(1).cpu() != y.cpu()
    for i, flip in found.items():
        if not still[i] and flip.found is not None:
            out[i] = x[i] + torch.from_numpy(flip.found).to(x)
    still = model.scores(out).argmax(1).cpu() != y.cpu()
    for i, flip in found.items():
        if not still[i]:
            continue
        stats["flips"] = stats.get("flips", 0) + 1
        size = float((out[i] - x[i]).abs().max())
        if "counterexample_max_delta" not in stats or size < stats["counterexample_max_delta"]:
            stats.update(counterexample_sample=int(positions[i]), counterexample_max_delta=size,
                         counterexample_label=int(y[i]),
                         counterexample_new_label=int(model.scores(out[i:i + 1]).argmax(1)[0]))
    return out


def describe_search(stats: dict[str, float]) -> str:
    """The shrunk counterexample in words, for the gate message."""
    searched = int(stats.get("searched", 0))
    if not stats.get("flips"):
        return f"hypothesis found no flip for {searched} correctly classified samples"
    return (f"smallest flip found: sample {int(stats['counterexample_sample'])}, "
            f"max|delta| {stats['counterexample_max_delta']:.4g}, label "
            f"{int(stats['counterexample_label'])} -> {int(stats['counterexample_new_label'])} "
            f"({int(stats['flips'])} of {searched} correctly classified samples flipped)")
