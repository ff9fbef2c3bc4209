"""What square's random draws cost: the share of its wall time spent in the position-keyed
streams, with the counter-based streams of randomness.py against one generator object per
sample (how they were drawn before), and torchattacks' Square beside it when installed.

    OMP_NUM_THREADS=1 PYTHONPATH=.:tests .venv/bin/python benchmarks/bench_square.py
    ... --quick        # one round, 200 samples, the MLP only

The digits MLP and CNN of the tests, the 540 test samples as 1x8x8 images, eps 0.1, the
default budget (5,000 queries). Rounds are interleaved (each runs every variant once); the
table gives medians. "draws" is the time inside the random stream's methods, measured by
a wrapper around them in the same run; "per-sample generators" replays the same attack
the way the previous code drew: one PCG64 state per sample, swapped into a shared
generator row by row for every draw.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from digits_project import digits_split, trained_cnn, trained_mlp  # noqa: E402

EPS = 0.1


class Timed:
    """Wraps a stream (and the row views it hands out), summing the seconds spent in it."""

    def __init__(self, inner: Any, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def rows(self, index: Any) -> "Timed":
        started = time.perf_counter()
        view = Timed(self.inner.rows(index), self.clock)
        self.clock[0] += time.perf_counter() - started
        return view

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.clock[0] += time.perf_counter() - started
        return timed


class PerSampleGenerators:
    """The previous scheme, for comparison: each sample's stream a PCG64 state (hashed from
    the key and its position), swapped into one shared generator row by row for every draw."""

    def __init__(self, key: tuple[int, ...], positions: np.ndarray,
                 shared: tuple[dict, np.random.Generator] | None = None) -> None:
        self.key, self.positions = key, positions
        self.shared = shared or ({}, np.random.Generator(np.random.PCG64(0)))

    def _state(self, position: int) -> dict[str, Any]:
        import hashlib

        digest = hashlib.blake2b(repr(self.key).encode() + b"|%d" % position, digest_size=32).digest()
        return {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                "state": {"state": int.from_bytes(digest[:16], "little"),
                          "inc": int.from_bytes(digest[16:], "little") | 1}}

    def rows(self, index: Any) -> "PerSampleGenerators":
        index = index.numpy() if hasattr(index, "numpy") else np.asarray(index)
        return PerSampleGenerators(self.key, self.positions[index], self.shared)

    def random(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        shape = (size,) if np.ndim(size) == 0 else tuple(size)
        states, generator = self.shared
        out = np.empty(shape, dtype)
        rows = out.reshape(shape[0], -1)
        for i, position in enumerate(self.positions):
            position = int(position)
            generator.bit_generator.state = states.get(position) or self._state(position)
            generator.random(dtype=dtype, out=rows[i])
            states[position] = generator.bit_generator.state
        return out


def run_square(model: Any, x: torch.Tensor, y: torch.Tensor, rng: Any) -> tuple[float, float, float]:
    """Seconds in all, seconds in the draws, robust accuracy."""
    from pytest_advrobust.attacks.square import square

    clock = [0.0]
    started = time.perf_counter()
    adversarial = square(model, x, y, EPS, Timed(rng, clock), model.scores(x), {})
    seconds = time.perf_counter() - started
    robust = float((model.scores(adversarial).argmax(1) == y).float().mean())
    return seconds, clock[0], robust


def main() -> None:
    from pytest_advrobust.models.torch_models import TorchClassifier
    from pytest_advrobust.randomness import SampleRandom, sample_key

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, 200 samples, the MLP only")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 1 if args.quick else args.rounds
    _, _, x_all, y_all = digits_split()
    n = 200 if args.quick else len(y_all)
    x = torch.from_numpy(x_all[:n]).view(-1, 1, 8, 8)
    y = torch.from_numpy(y_all[:n])
    key = sample_key(0, "bench", 0, EPS)
    nets = [("MLP", torch.nn.Sequential(torch.nn.Flatten(), trained_mlp()))]
    if not args.quick:
        nets.append(("CNN", trained_cnn()))
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    for name, net in nets:
        model = TorchClassifier(net.eval(), name=name, input_range=(0.0, 1.0))
        variants = {
            "counter-based streams (now)": lambda: run_square(model, x, y, SampleRandom(key, np.arange(n))),
            "per-sample generators (before)":
                lambda: run_square(model, x, y, PerSampleGenerators(key, np.arange(n))),
        }
        if torchattacks is not None:
            def theirs() -> tuple[float, float, float]:
                attack = torchattacks.Square(net, eps=EPS, n_queries=5000, seed=0)
                started = time.perf_counter()
                adversarial = attack(x, y)
                seconds = time.perf_counter() - started
                with torch.no_grad():
                    return seconds, float("nan"), float((net(adversarial).argmax(1) == y).float().mean())
            variants["torchattacks Square (5000 queries)"] = theirs
        results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in variants}
        for _ in range(rounds):
            for label, variant in variants.items():
                results[label].append(variant())
        now = statistics.median(r[0] for r in results["counter-based streams (now)"])
        print(f"\n{name}: square, {n} samples, eps {EPS}, 5000 queries, medians of {rounds} "
              "interleaved round(s), one thread")
        print(f"{'variant':38} {'robust':>7} {'seconds':>8} {'draws (s)':>10} {'draws share':>12} "
              f"{'time vs now':>12}")
        for label, rows in results.items():
            seconds = statistics.median(r[0] for r in rows)
            draws = statistics.median(r[1] for r in rows)
            share = statistics.median(r[1] / r[0] for r in rows)
            print(f"{label:38} {rows[-1][2]:7.3f} {seconds:8.2f} {draws:10.2f} {share:12.1%} "
                  f"{seconds / now:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
