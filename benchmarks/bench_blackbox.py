"""Square against SPSA at equal query budgets: robust accuracy (lower: stronger) on the
digits MLP (64 flat features) and CNN (1x8x8 images) the tests build, eps 0.1.

    OMP_NUM_THREADS=1 PYTHONPATH=.:tests python benchmarks/bench_blackbox.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from digits_project import digits_split, trained_cnn, trained_mlp  # noqa: E402
from pytest_advrobust.attacks.spsa import spsa  # noqa: E402
from pytest_advrobust.attacks.square import square  # noqa: E402
from pytest_advrobust.models.torch_models import TorchClassifier  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    _, _, x_all, y_all = digits_split()
    y = torch.from_numpy(y_all)
    print(f"{'model':5} {'queries':>7} {'square':>7} {'spsa':>7}   (n={len(y)}, eps 0.1, robust accuracy)")
    for name, net, shape in (("MLP", trained_mlp(), (64,)), ("CNN", trained_cnn(), (1, 8, 8))):
        model = TorchClassifier(net, name=name, input_range=(0.0, 1.0))
        x = torch.from_numpy(x_all).view((-1,) + shape)
        scores = model.scores(x)
        for queries in (200, 1000):
            cells = []
            for attack in (square, spsa):
                adversarial = attack(model, x, y, 0.1, np.random.default_rng(0), scores, {}, queries=queries)
                cells.append(float((model.scores(adversarial).argmax(1) == y).float().mean()))
            print(f"{name:5} {queries:7d} {cells[0]:7.3f} {cells[1]:7.3f}", flush=True)


if __name__ == "__main__":
    main()
