"""A throwaway digits project: a torch MLP (factory + state_dict), its ONNX export, and
scikit-learn models exported with skl2onnx (probabilities output, no gradient)."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import numpy as np
import torch

FACTORY = '''
import torch

def build():
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
'''

HEADER = '''
[tool.advrobust]
data = "digits.npz"
batch-size = 256
seed = 0

[tool.advrobust.models.mlp]
model = "digitsmodel:build"
weights = "mlp.pt"
'''


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, x / 16 as float32, a fixed 70/30 split (train x, y, test x, y)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(len(y) * 0.7)
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def build_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


@functools.lru_cache(maxsize=1)
def trained_mlp_state() -> dict:
    x, y, _, _ = digits_split()
    torch.manual_seed(0)
    model = build_mlp()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_mlp() -> torch.nn.Module:
    model = build_mlp()
    model.load_state_dict(trained_mlp_state())
    return model.eval()


def build_cnn() -> torch.nn.Module:
    """A small CNN for digits as 1x8x8 images."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))


@functools.lru_cache(maxsize=1)
def trained_cnn_state() -> dict:
    x, y, _, _ = digits_split()
    torch.manual_seed(0)
    model = build_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x).view(-1, 1, 8, 8), torch.from_numpy(y)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_cnn() -> torch.nn.Module:
    """The CNN trained on the train split (inputs [N, 1, 8, 8])."""
    model = build_cnn()
    model.load_state_dict(trained_cnn_state())
    return model.eval()


def export_sklearn(clf, x: np.ndarray, path: Path) -> Path:
    """skl2onnx export with a float [N, C] probabilities output (no ZipMap)."""
    from skl2onnx import to_onnx

    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def write_digits_project(root: Path, models: str, *, mlp_onnx: bool = False,
                         logistic: bool = False, forest: bool = False, max_samples: int | None = None) -> Path:
    """Write data, the MLP (and the asked-for exports) and a pyproject.toml with ``models``
    (TOML text of model tables and checks) after the shared header."""
    from conftest import export_onnx

    xtr, ytr, xte, yte = digits_split()
    np.savez(root / "digits.npz", x=xte, y=yte)
    (root / "digitsmodel.py").write_text(FACTORY)
    torch.save(trained_mlp_state(), root / "mlp.pt")
    if mlp_onnx:
        export_onnx(trained_mlp(), torch.zeros(1, 64), root / "mlp.onnx")
    if logistic:
        from sklearn.linear_model import LogisticRegression

        export_sklearn(LogisticRegression(max_iter=1000).fit(xtr, ytr), xtr, root / "logistic.onnx")
    if forest:
        from sklearn.ensemble import RandomForestClassifier

        clf = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0).fit(xtr, ytr)
        export_sklearn(clf, xtr, root / "forest.onnx")
    extra = f"max-samples = {max_samples}\n" if max_samples else ""
    text = HEADER.replace("seed = 0\n", "seed = 0\n" + extra)
    (root / "pyproject.toml").write_text(textwrap.dedent(text) + textwrap.dedent(models))
    return root / "pyproject.toml"


def build_flat_cnn() -> torch.nn.Module:
    """A small CNN over the 8x8 digits (flat 64-vectors in, 10 logits out)."""
    return torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 8, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 16, 10))


@functools.lru_cache(maxsize=1)
def trained_flat_cnn_state() -> dict:
    """Trained briefly (150 full-batch Adam steps, about 2 s of CPU): confident enough that
    float32 cross-entropy saturates on many samples."""
    x, y, _, _ = digits_split()
    torch.manual_seed(0)
    model = build_flat_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_flat_cnn() -> torch.nn.Module:
    model = build_flat_cnn()
    model.load_state_dict(trained_flat_cnn_state())
    return model.eval()
