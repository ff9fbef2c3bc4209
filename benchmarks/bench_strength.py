"""How strong are our attacks next to AutoAttack, and at what cost: robust accuracy, forward
and backward passes, wall time, on the digits MLP and CNN the tests build.

torchattacks is installed in the benchmark's own environment only, never as a dependency
(its metadata pulls torchvision and a CUDA torch)::

    python3 -m venv /tmp/venv-bench
    /tmp/venv-bench/bin/pip install torch==2.13.0 numpy scipy scikit-learn pluggy
    /tmp/venv-bench/bin/pip install --no-deps torchattacks
    OMP_NUM_THREADS=1 PYTHONPATH=.:tests /tmp/venv-bench/bin/python benchmarks/bench_strength.py
    ... --quick      # one repeat, 200 samples

Every attack sees the same samples (the digits test split, 540, as 1x8x8 images so
torchattacks' Square can place its windows), the same model, eps 0.1 in [0, 1]. Robust
accuracy is measured on the returned inputs by the model itself; cost is counted by a
wrapper around the model (rows through forward, rows through backward) and timed (median
of the repeats, one thread). Ratios are ours / AutoAttack's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from digits_project import digits_split, trained_cnn, trained_mlp  # noqa: E402

EPS = 0.1


class Counted(torch.nn.Module):
    """Counts the rows that go through forward and through backward (to the input)."""

    def __init__(self, inner: torch.nn.Module, flat: bool) -> None:
        super().__init__()
        self.inner, self.flat = inner, flat
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_rows += len(x)
        if x.requires_grad:
            x.register_hook(self._backward)
        return self.inner(x.flatten(1) if self.flat else x)

    def _backward(self, grad: torch.Tensor) -> None:
        self.backward_rows += len(grad)

    def reset(self) -> None:
        self.forward_rows = self.backward_rows = 0


def ours(name: str, **options: Any) -> Callable[[Counted, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(net: Counted, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pytest_advrobust.attacks import apgd, pgd, square, strongest
        from pytest_advrobust.models.torch_models import TorchClassifier

        model = TorchClassifier(net, name="bench", input_range=(0.0, 1.0))
        rng = np.random.default_rng(0)
        grad, scores = model.loss_gradient(x, y)  # the engine's shared pass (counted)
        if name == "pgd":
            return pgd.pgd(model, x, y, EPS, rng, grad, scores, **options)
        if name == "apgd":
            return apgd.apgd(model, x, y, EPS, rng, grad, scores, {}, **options)
        if name == "square":
            return square.square(model, x, y, EPS, rng, scores, {}, **options)
        return strongest.strongest(model, x, y, EPS, rng, scores, {}, **options)
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


def measure(net: Counted, attack: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor,
            repeats: int) -> dict[str, float]:
    times, out = [], {}
    for _ in range(repeats):
        net.reset()
        started = time.perf_counter()
        adversarial = attack(net, x, y)
        times.append(time.perf_counter() - started)
        with torch.no_grad():
            fwd, bwd = net.forward_rows, net.backward_rows
            assert float((adversarial - x).abs().max()) <= EPS + 1e-5, "left the eps ball"
            robust = float((net(adversarial).argmax(1) == y).float().mean())
        out = {"robust": robust, "forward": fwd / len(x), "backward": bwd / len(x)}
    out["seconds"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat on 200 samples")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    _, _, x_all, y_all = digits_split()
    n = 200 if args.quick else len(y_all)
    x = torch.from_numpy(x_all[:n]).view(-1, 1, 8, 8)
    y = torch.from_numpy(y_all[:n])
    attacks: list[tuple[str, Callable[..., torch.Tensor]]] = [
        ("ours pgd (defaults, 10 steps)", ours("pgd")),
        ("ours pgd steps=20", ours("pgd", steps=20)),
        ("ours apgd (ce, 100 steps)", ours("apgd")),
        ("ours apgd dlr targeted (9 x 100)", ours("apgd", loss="dlr", targeted=True)),
        ("ours strongest (defaults)", ours("strongest")),
        ("ours strongest square-queries=0", ours("strongest", square_queries=0)),
        ("ours square (5000 queries)", ours("square")),
    ]
    try:
        import torchattacks  # noqa: F401

        attacks += [("torchattacks PGD steps=20", torchattacks_attack("PGD", alpha=2.5 * EPS / 20, steps=20,
                                                                      random_start=True)),
                    ("torchattacks Square (5000 queries)", torchattacks_attack("Square", n_queries=5000, seed=0)),
                    ("torchattacks AutoAttack (standard)", autoattack())]
    except ImportError as exc:
        print(f"torchattacks cannot be imported ({exc}); AutoAttack is left out of the table")
    for model_name, module, flat in (("MLP", trained_mlp(), True), ("CNN", trained_cnn(), False)):
        net = Counted(module.eval(), flat).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            clean = float((net(x).argmax(1) == y).float().mean())
        print(f"\n{model_name}: n={n}, eps={EPS}, clean accuracy {clean:.3f}, median of {repeats} repeat(s)")
        print(f"{'attack':40} {'robust':>7} {'fwd/sample':>11} {'bwd/sample':>11} {'seconds':>8} "
              f"{'time vs AA':>10}")
        rows = [(label, measure(net, attack, x, y, repeats)) for label, attack in attacks]
        reference = dict(rows).get("torchattacks AutoAttack (standard)")
        for label, row in rows:
            ratio = f"{row['seconds'] / reference['seconds']:.2f}x" if reference else "-"
            print(f"{label:40} {row['robust']:7.3f} {row['forward']:11.1f} {row['backward']:11.1f} "
                  f"{row['seconds']:8.2f} {ratio:>10}")


if __name__ == "__main__":
    main()
