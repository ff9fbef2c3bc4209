"""Randomised models: detection, reproducible draws, and expectation over transformation.

A model that adds noise (or picks a random transformation) inside ``forward`` scores an
input differently on every call. Judged on one draw, a gate's figure is a coin flip, and
a gradient attack follows one draw's noise: Athalye, Carlini & Wagner, 2018 ("Obfuscated
gradients give a false sense of security", section 4.2: expectation over transformation,
EOT) and Athalye, Engstrom, Ilyas & Kwok, 2018. The engine checks every model once, on
the first inputs it sees: a second forward pass of a few of them under a seed of its own,
compared with the first (:func:`differs`). A randomised model is then

- attacked through :class:`Expectation`: its scores are the mean probabilities over
  ``draws`` draws (as log-probabilities, so they stay logits), its loss gradients the
  mean of the draws' gradients (EOT);
- evaluated over ``draws`` draws (:func:`correct_in_draws`): a sample counts as correct
  only if it is correct in every draw, which is what gates; the mean over draws is
  reported beside it.

Reproducibility: torch's global generator is not keyed by sample position, so every
draw runs under :func:`seeded`, which seeds torch (the CPU and the model's device) from a
key derived from the gate's position-keyed streams (seed, model, check, eps), the batch's
first sample, the call's number and the draw's, and restores the caller's generator state
afterwards. A run is so reproducible for a given seed and batch-size; shards keep the
batch boundaries, so sharded runs merge to the unsharded figures exactly; another
batch-size (or another ``eot-samples``) draws other noise, and the fingerprint says so. A
model that draws from a generator of its own, or from numpy, is reproducible only if it
seeds that itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch

__all__ = ["Expectation", "correct_in_draws", "differs", "seed_for", "seeded"]

#: scores of two identical passes that differ by more than this, relative to the largest
#: score, come from a randomised model (float reductions that vary by call on a GPU
#: differ by about 1e-6 of it)
DIFFERENCE = 1e-4


def seed_for(key: Sequence[Any], *parts: Any) -> int:
    """A 63-bit torch seed hashed from ``key`` and ``parts`` (ints or short words)."""
    text = ",".join(str(k) for k in (*key, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, device: Any = "cpu") -> Iterator[None]:
    """Run with torch's generators (the CPU's and a CUDA ``device``'s) seeded by ``seed``;
    the caller's generator states are restored afterwards. (``torch.manual_seed`` would
    also queue a seed for every CUDA device, recording a stack trace each time: 3 ms.)"""
    device = torch.device(device)
    cuda = device.type == "cuda"
    saved = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state(device) if cuda else None
    torch.default_generator.manual_seed(seed)
    if cuda:
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved)
        if saved_cuda is not None:
            torch.cuda.set_rng_state(saved_cuda, device)


def differs(model: Any, x: torch.Tensor, key: Sequence[Any],
            first: torch.Tensor | None = None) -> bool:
    """Whether ``model`` scores ``x`` differently in two passes: it draws random numbers in
    ``forward``. ``first``: its scores of ``x`` from a pass already made (so one more pass
    is enough; the second always runs under a seed of its own)."""
    if first is None:
        with seeded(seed_for(key, "detect", 0), model.device):
            first = model.scores(x)
    with seeded(seed_for(key, "detect", 1), model.device):
        second = model.scores(x)
    if not first.numel():
        return False
    scale = float(first.abs().max())
    return bool((first.to(second.device) - second).abs().max() > DIFFERENCE * max(scale, 1e-12))


def correct_in_draws(model: Any, x: torch.Tensor, y: torch.Tensor, draws: int,
                     key: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: whether ``model`` classifies it right in all of ``draws`` seeded draws,
    and in how many of them."""
    count = torch.zeros(len(y), dtype=torch.int64, device=y.device)
    for draw in range(draws):
        with seeded(seed_for(key, draw), model.device):
            count += (model.scores(x).argmax(1).to(y.device) == y).long()
    return count == draws, count


class Expectation:
    """A classifier seen through ``draws`` seeded draws of a randomised one: what attacks
    get (see the module docstring). Every call draws anew, from seeds keyed by ``key`` and
    the call's number, so an attack's run is reproducible. Anything else is the model's.

    ``last`` holds the per-draw scores of the latest call (so the clean pass gets each
    draw's decisions without another forward)."""

    def __init__(self, model: Any, draws: int, key: Sequence[Any]) -> None:
        self.model = model
        self.draws = int(draws)
        self.key = tuple(key)
        self.calls = 0
        self.last: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _each(self, call: Callable[[], Any]) -> list[Any]:
        """``call()`` once per draw, each under its own seed."""
        self.calls += 1
        out = []
        for draw in range(self.draws):
            with seeded(seed_for(self.key, self.calls, draw), self.model.device):
                out.append(call())
        return out

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The mean prediction over the draws (log-probabilities for a logits model)."""
        self.last = self._each(lambda: self.model.scores(x))
        return self.mean(self.last)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor,
                      loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
        """The draws' mean loss gradient (EOT) and their mean prediction."""
        pairs = self._each(lambda: self.model.loss_gradient(x, y, loss))
        self.last = [scores for _, scores in pairs]
        return torch.stack([grad for grad, _ in pairs]).mean(0), self.mean(self.last)

    def objective_gradient(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The draws' mean gradient of ``objective`` (APGD's DLR) and their mean prediction."""
        pairs = self._each(lambda: self.model.objective_gradient(x, objective))
        self.last = [scores for _, scores in pairs]
        return torch.stack([grad for grad, _ in pairs]).mean(0), self.mean(self.last)

    def mean(self, scores: list[torch.Tensor]) -> torch.Tensor:
        """Probabilities averaged; logits as the log of their averaged softmax (a logit
        vector whose softmax is the mean prediction), computed in float64. One draw's
        scores are returned as they are."""
        if len(scores) == 1:
            return scores[0]
        if getattr(self.model, "output_kind", "logits") == "probabilities":
            return torch.stack(scores).mean(0)
        logs = torch.stack([s.double().log_softmax(1) for s in scores])
        return (logs.logsumexp(0) - math.log(len(scores))).to(scores[0].dtype)
