"""Exact gradients and saturation, measured: FGSM with the float32 cross-entropy gradient
(what peer libraries take) against ours (the loss in float64), and PGD's losses on models
whose logits are multiplied by 1e4 (the same decisions, a masked cross-entropy gradient).

Models: the tests' digits MLP (300 Adam steps) and a small digits CNN (150 steps), on
scikit-learn's bundled digits (30% held out, 540 samples). Also counts the per-sample
gradient evaluations of the default pgd (cross-entropy, then the margin on the survivors)
against cross-entropy alone: the cost of not being fooled.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_masking.py
"""

from __future__ import annotations

import numpy as np
import torch

from pytest_advrobust.attacks.pgd import loss_sequence, pgd_linf
from pytest_advrobust.models.torch_models import TorchClassifier


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(len(y) * 0.7)
    return [torch.from_numpy(a) for a in (x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])]


def train(model: torch.nn.Module, x, y, steps: int, lr: float) -> torch.nn.Module:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


class Scaled(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.factor


def main() -> None:
    xtr, ytr, x, y = digits()
    torch.manual_seed(0)
    mlp = train(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)),
                xtr, ytr, 300, 0.01)
    torch.manual_seed(0)
    cnn = train(torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 8, 3, padding=1),
                                    torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 16, 10)), xtr, ytr, 150, 0.03)
    for name, net in (("mlp", mlp), ("cnn", cnn)):
        model = TorchClassifier(net, name=name, input_range=(0, 1))
        exact, scores = model.loss_gradient(x, y)
        leaf = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(net(leaf), y, reduction="sum").backward()
        with torch.no_grad():
            row = []
            for eps in (0.05, 0.1, 0.2, 0.3):
                f32 = float((net((x + eps * leaf.grad.sign()).clamp(0, 1)).argmax(1) == y).float().mean())
                ours = float((net((x + eps * exact.sign()).clamp(0, 1)).argmax(1) == y).float().mean())
                row.append(f"eps {eps:g}: {f32:.3f} -> {ours:.3f}")
        print(f"FGSM {name} (clean {float((scores.argmax(1) == y).float().mean()):.3f}), float32 CE -> exact: "
              + "; ".join(row))
    cost({"mlp": mlp, "cnn": cnn}, x, y)
    for name, net in (("mlp", mlp), ("cnn", cnn)):
        for factor in (1.0, 1e4):
            model = TorchClassifier(Scaled(net, factor), name=name, input_range=(0, 1))
            calls = {"n": 0}

            def counted(inputs, labels, loss="ce", model=model):
                calls["n"] += len(inputs)
                return model.loss_gradient(inputs, labels, loss)

            grad, scores = model.loss_gradient(x, y)
            correct = scores.argmax(1) == y
            zero = int((grad.reshape(len(x), -1).ne(0).any(1).logical_not() & correct).sum())
            row = []
            for loss in ("ce", "margin", "dlr", "ce+margin"):
                calls["n"] = 0
                adversarial = pgd_linf(counted, model.scores, x, y, 0.1, (0, 1), np.random.default_rng(0),
                                       grad=grad, scores=scores, losses=loss_sequence(loss))
                accuracy = float((model.scores(adversarial).argmax(1) == y).float().mean())
                row.append(f"{loss} {accuracy:.3f} ({calls['n'] / len(x):.1f} grads/sample)")
            print(f"PGD-10 eps 0.1, {name} x{factor:g} (zero CE gradient on {zero / int(correct.sum()):.1%} "
                  f"of correct): " + "; ".join(row))


def cost(nets: dict, x: torch.Tensor, y: torch.Tensor, repeats: int = 21) -> None:
    """Seconds of ``loss_gradient`` with the exact loss against the same call with float32
    cross-entropy in its place (the old loss), alternated, medians: the cost of exactness."""
    import statistics
    import time

    from pytest_advrobust.models import base

    exact = base.loss_per_sample

    def float32(scores, labels, output_kind, loss="ce"):
        return torch.nn.functional.cross_entropy(scores, labels, reduction="none")

    for name, net in nets.items():
        model = TorchClassifier(net, name=name, input_range=(0, 1))
        times = {"exact": [], "float32": []}
        for _ in range(repeats):
            for label, function in (("exact", exact), ("float32", float32)):
                base.loss_per_sample = function
                started = time.perf_counter()
                model.loss_gradient(x, y)
                times[label].append(time.perf_counter() - started)
        base.loss_per_sample = exact
        ours, old = statistics.median(times["exact"]), statistics.median(times["float32"])
        print(f"loss_gradient on {len(x)} samples, {name}: exact {ours * 1e3:.2f} ms, float32 CE "
              f"{old * 1e3:.2f} ms, ratio {ours / old:.3f} (medians of {repeats})")
    # the loss alone, forward + backward on [samples, 10] scores: what exactness adds
    scores = torch.randn(len(x), 10, requires_grad=True)
    times = {"exact": [], "float32": []}
    for _ in range(10 * repeats):
        for label, function in (("exact", exact), ("float32", float32)):
            started = time.perf_counter()
            torch.autograd.grad(function(scores, y, "logits").sum(), scores)
            times[label].append(time.perf_counter() - started)
    print(f"the loss alone on [{len(x)}, 10] scores, forward + backward: exact "
          f"{statistics.median(times['exact']) * 1e6:.0f} us, float32 CE "
          f"{statistics.median(times['float32']) * 1e6:.0f} us (medians of {10 * repeats})")


if __name__ == "__main__":
    main()
