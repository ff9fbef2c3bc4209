"""How strong are our attacks next to AutoAttack, and at what cost: robust accuracy, forward
and backward rows, wall time, on the models the tests build.

torchattacks is installed in the benchmark's own environment only, never as a dependency
(its metadata pulls torchvision and a CUDA torch)::

    python3 -m venv /tmp/venv-bench
    /tmp/venv-bench/bin/pip install torch==2.13.0 numpy scipy scikit-learn pluggy pytest
    /tmp/venv-bench/bin/pip install --no-deps torchattacks
    OMP_NUM_THREADS=1 PYTHONPATH=.:tests /tmp/venv-bench/bin/python benchmarks/bench_strength.py
    ... --quick           # one round, 200 samples, the MLP and CNN only
    ... --versus          # strongest against AutoAttack only, on every model below

Every attack sees the same samples (the digits test split, 540, as 1x8x8 images so
torchattacks' Square can place its windows), the same model, eps 0.1 in [0, 1]. Models: the
digits MLP and CNN of the tests; the MLP with logits x 1e4 (a saturated head); a CNN over
the digits as 3x8x8 RGB images with per-channel normalisation inside the model; and the
MLP inside the corner detector of tests/attacks/test_corners.py (on the digits rounded to
quarters, beside the plain MLP on the same data: the detector's true robust accuracy).
Our attacks get the engine's arguments (the shared gradient pass, counted; position-keyed
random streams). Robust accuracy is measured on the returned inputs by the model itself;
cost is counted by a wrapper around the model (rows through forward, rows through
backward) and timed on one thread; the attacks of a model run in interleaved rounds (each
round runs every attack once) and the table gives the median time of the rounds and its
ratio to AutoAttack's in the same round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "attacks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from digits_project import digits_split, trained_cnn, trained_mlp  # noqa: E402

EPS = 0.1
AUTOATTACK = "torchattacks AutoAttack (standard)"


class Counted(torch.nn.Module):
    """Counts the rows that go through forward and through backward (to the input)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_rows += len(x)
        if x.requires_grad:
            x.register_hook(self._backward)
        return self.inner(x)

    def _backward(self, grad: torch.Tensor) -> None:
        self.backward_rows += len(grad)

    def reset(self) -> None:
        self.forward_rows = self.backward_rows = 0


class Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


class Normalised(torch.nn.Module):
    """``inner((x - mean) / std)``, per channel."""

    def __init__(self, inner: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor(mean)[:, None, None])
        self.register_buffer("std", torch.tensor(std)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.mean) / self.std)


def rgb(x: torch.Tensor) -> torch.Tensor:
    """Digits [N, 1, 8, 8] as 3-channel images, each channel a different tint."""
    return torch.cat([x, 0.2 + 0.8 * x, 1 - x], 1)


def rgb_cnn() -> torch.nn.Module:
    """A CNN trained (100 Adam steps) on the RGB digits, normalising per channel inside."""
    x, y, _, _ = digits_split()
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))
    net = Normalised(inner, [0.3, 0.45, 0.7], [0.4, 0.3, 0.4])
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    images, labels = rgb(torch.from_numpy(x).view(-1, 1, 8, 8)), torch.from_numpy(y)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimiser.step()
    return net.eval()


def corner_detector(inner: torch.nn.Module) -> torch.nn.Module:
    """The corner detector of tests/attacks/test_corners.py around ``inner``."""
    import test_corners

    namespace: dict[str, Any] = {}
    exec(test_corners.DETECTOR, namespace)  # noqa: S102 - the test's own model source
    return namespace["CornerDetector"](inner, eps=EPS, levels=test_corners.LEVELS)


def models(quick: bool, versus: bool) -> list[tuple[str, torch.nn.Module, torch.Tensor, torch.Tensor]]:
    _, _, x_all, y_all = digits_split()
    n = 200 if quick else len(y_all)
    x = torch.from_numpy(x_all[:n]).view(-1, 1, 8, 8)
    y = torch.from_numpy(y_all[:n])
    flat = torch.nn.Flatten()
    out = [("MLP", torch.nn.Sequential(flat, trained_mlp()), x, y), ("CNN", trained_cnn(), x, y)]
    if versus:
        quarters = torch.round(x * 4) / 4
        out += [("MLP, logits x 1e4", torch.nn.Sequential(flat, Scaled(trained_mlp(), 1e4)), x, y),
                ("RGB CNN, per-channel normalised", rgb_cnn(), rgb(x), y),
                ("MLP, digits in quarters", torch.nn.Sequential(flat, trained_mlp()), quarters, y),
                ("corner detector around it", corner_detector(torch.nn.Sequential(flat, trained_mlp())),
                 quarters, y)]
    return out


def ours(name: str, **options: Any) -> Callable[[Counted, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(net: Counted, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pytest_advrobust.attacks import apgd, pgd, square, strongest
        from pytest_advrobust.models.torch_models import TorchClassifier
        from pytest_advrobust.randomness import SampleRandom, sample_key

        model = TorchClassifier(net, name="bench", input_range=(0.0, 1.0))
        rng = SampleRandom(sample_key(0, "bench", 0, EPS), np.arange(len(y)))  # as the engine's
        grad, scores = model.loss_gradient(x, y)  # the engine's shared pass (counted)
        if name == "pgd":
            return pgd.pgd(model, x, y, EPS, rng, grad, scores, {}, **options)
        if name == "apgd":
            return apgd.apgd(model, x, y, EPS, rng, grad, scores, {}, **options)
        if name == "square":
            return square.square(model, x, y, EPS, rng, scores, {}, **options)
        return strongest.strongest(model, x, y, EPS, rng, scores, {}, grad=grad, **options)
    return run


def autoattack(**options: Any) -> Callable[[Counted, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(net: Counted, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        return torchattacks.AutoAttack(net, norm="Linf", eps=EPS, n_classes=10, seed=0, **options)(x, y)
    return run


def torchattacks_attack(cls: str, **options: Any) -> Callable[[Counted, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(net: Counted, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        return getattr(torchattacks, cls)(net, eps=EPS, **options)(x, y)
    return run


def measure(net: Counted, attack: Callable[..., torch.Tensor], x: torch.Tensor,
            y: torch.Tensor) -> dict[str, float]:
    """One run: robust accuracy, forward and backward rows per sample, seconds."""
    net.reset()
    started = time.perf_counter()
    adversarial = attack(net, x, y)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        fwd, bwd = net.forward_rows, net.backward_rows
        assert float((adversarial - x).abs().max()) <= EPS + 1e-5, "left the eps ball"
        robust = float((net(adversarial).argmax(1) == y).float().mean())
    return {"robust": robust, "forward": fwd / len(x), "backward": bwd / len(x), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round on 200 samples, MLP and CNN")
    parser.add_argument("--versus", action="store_true",
                        help="strongest against AutoAttack only, on every model")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 1 if args.quick else args.rounds
    attacks: list[tuple[str, Callable[..., torch.Tensor]]] = [("ours strongest (defaults)", ours("strongest"))]
    if not args.versus:
        attacks = [
            ("ours pgd (defaults, 10 steps)", ours("pgd")),
            ("ours pgd steps=20", ours("pgd", steps=20)),
            ("ours apgd (ce, 100 steps)", ours("apgd")),
            ("ours apgd dlr targeted (9 x 100)", ours("apgd", loss="dlr", targeted=True)),
            *attacks,
            ("ours strongest square-queries=0", ours("strongest", square_queries=0)),
            ("ours square (5000 queries)", ours("square")),
        ]
    try:
        import torchattacks  # noqa: F401

        if not args.versus:
            attacks += [("torchattacks PGD steps=20",
                         torchattacks_attack("PGD", alpha=2.5 * EPS / 20, steps=20, random_start=True)),
                        ("torchattacks Square (5000 queries)",
                         torchattacks_attack("Square", n_queries=5000, seed=0))]
        attacks.append((AUTOATTACK, autoattack()))
    except ImportError as exc:
        print(f"torchattacks cannot be imported ({exc}); AutoAttack is left out of the table")
    for model_name, module, x, y in models(args.quick, args.versus):
        net = Counted(module.eval()).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            clean = float((net(x).argmax(1) == y).float().mean())
        print(f"\n{model_name}: n={len(y)}, eps={EPS}, clean accuracy {clean:.3f}, "
              f"{rounds} interleaved round(s), one thread")
        print(f"{'attack':40} {'robust':>7} {'fwd/sample':>11} {'bwd/sample':>11} {'seconds':>8} "
              f"{'time vs AA':>10} {'bwd vs AA':>10}")
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in attacks}
        for _ in range(rounds):  # every attack once per round, so load hits all alike
            for label, attack in attacks:
                runs[label].append(measure(net, attack, x, y))
        reference = runs.get(AUTOATTACK)
        for label, rows in runs.items():
            row = rows[-1]  # counts and accuracy do not change between rounds
            seconds = statistics.median(r["seconds"] for r in rows)
            if reference:
                ratio = statistics.median(r["seconds"] / a["seconds"] for r, a in zip(rows, reference))
                times, backward = f"{ratio:.2f}x", f"{row['backward'] / reference[-1]['backward']:.2f}x"
            else:
                times = backward = "-"
            print(f"{label:40} {row['robust']:7.3f} {row['forward']:11.1f} {row['backward']:11.1f} "
                  f"{seconds:8.2f} {times:>10} {backward:>10}", flush=True)


if __name__ == "__main__":
    main()
