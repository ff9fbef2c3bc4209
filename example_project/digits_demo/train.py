"""Train the digits MLP with a fixed seed, save its state_dict and export its ONNX twin;
fit a scikit-learn logistic regression and export it with skl2onnx (a model with no
torch graph, gated by black-box attacks).

    python -m digits_demo.train          # writes models/mlp.pt, mlp.onnx, logreg.onnx

Takes a few seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import test_set, train_set
from .model import seeded_build

HERE = Path(__file__).resolve().parent.parent


def train(epochs: int = 60, seed: int = 0) -> nn.Module:
    x, y = (torch.from_numpy(a) for a in train_set())
    model = seeded_build(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start:start + 64]
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
    return model.eval()


def export(model: nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "mlp.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 64),), str(folder / "mlp.onnx"), dynamo=False,
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})


def export_logistic_regression(folder: Path) -> float:
    """A scikit-learn model as it ships: ONNX with ai.onnx.ml operators, probabilities out."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = train_set()
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x, y)
    onnx_model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    (folder / "logreg.onnx").write_bytes(onnx_model.SerializeToString())
    x_test, y_test = test_set()
    return float(clf.score(x_test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "models")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = train(args.epochs)
    export(model, args.out)
    logreg_accuracy = export_logistic_regression(args.out)
    x, y = test_set()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    print(f"trained digits MLP: test accuracy {accuracy:.3f}; logistic regression "
          f"{logreg_accuracy:.3f}; wrote mlp.pt, mlp.onnx, logreg.onnx to {args.out}")
    np.testing.assert_array_less(0.9, accuracy)


if __name__ == "__main__":
    main()
