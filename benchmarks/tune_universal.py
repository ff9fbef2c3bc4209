"""The universal fit's default schedule against the previous default and a plain reference,
held-out accuracy (lower: stronger) and forward + backward passes over the fit split.

    OMP_NUM_THREADS=1 PYTHONPATH=.:tests python benchmarks/tune_universal.py

Models: the digits MLP and CNN the tests build (tests/digits_project.py), fitted on the
first 256 test samples (the default ``fit-samples``) and evaluated on the other 284.
- previous default: 40 steps of ``eps / 4``, keeping the delta of lowest fit accuracy;
- plain reference (the issue's): 40 steps of ``eps / 8``, keeping the last delta;
- default: ``fit_universal`` as shipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import torch  # noqa: E402

from digits_project import digits_split, trained_cnn, trained_mlp  # noqa: E402
from pytest_advrobust.attacks.universal import fit_universal  # noqa: E402
from pytest_advrobust.models.torch_models import TorchClassifier  # noqa: E402


class Counting(TorchClassifier):
    passes = 0

    def loss_gradient(self, x, y):
        Counting.passes += 1 if x.shape[0] else 0
        return super().loss_gradient(x, y)


def plain(model, x, y, eps, step, keep):
    """Sign ascent of the summed loss; ``keep`` "last" or "lowest-accuracy"."""
    delta = torch.zeros_like(x[0])
    best, lowest = delta.clone(), None
    for index in range(41):
        moved = x + delta
        inside = ((moved >= 0) & (moved <= 1)).to(x.dtype)
        grad, scores = model.loss_gradient(moved.clamp(0, 1), y)
        correct = int((scores.argmax(1) == y).sum())
        if lowest is None or correct < lowest:
            best, lowest = delta.clone(), correct
        if index == 40 or correct == 0:
            break
        delta = (delta + step * (grad * inside).sum(0).sign()).clamp(-eps, eps)
    return delta if keep == "last" else best


def main() -> None:
    torch.set_num_threads(1)
    _, _, x_all, y_all = digits_split()
    print(f"{'model':5} {'eps':>4}  {'previous':>14} {'plain ref':>14} {'default':>14}   (held-out / passes)")
    for name, net, shape in (("MLP", trained_mlp(), (64,)), ("CNN", trained_cnn(), (1, 8, 8))):
        model = Counting(net, name=name, input_range=(0.0, 1.0))
        x = torch.from_numpy(x_all).view((-1,) + shape)
        y = torch.from_numpy(y_all)
        fit_x, fit_y, test_x, test_y = x[:256], y[:256], x[256:], y[256:]
        for eps in (0.1, 0.2, 0.3):
            cells = []
            for fit in (lambda: plain(model, fit_x, fit_y, eps, eps / 4, "lowest-accuracy"),
                        lambda: plain(model, fit_x, fit_y, eps, eps / 8, "last"),
                        lambda: fit_universal(model, fit_x, fit_y, eps)):
                Counting.passes = 0
                delta = fit()
                held = float((model.scores((test_x + delta).clamp(0, 1)).argmax(1) == test_y).float().mean())
                cells.append(f"{held:.3f} / {Counting.passes:2d}")
            print(f"{name:5} {eps:4.1f}  {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}", flush=True)


if __name__ == "__main__":
    main()
