"""The benchmark's workload, built locally: synthetic 3x32x32 images with class structure,
a small CNN (fixed seed, briefly trained), and throwaway projects gated by the plugin.

Nothing is downloaded; every file is written under a temporary folder.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np

CLASSES = 10
SHAPE = (3, 32, 32)

MODEL_SOURCE = '''
import torch


def build():
    """A small CNN for 3x32x32 inputs, 10 classes."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10))
'''

#: a loader streaming an iterable of batches (never the whole set in memory)
STREAM_SOURCE = '''
import os

import numpy as np


def batches():
    n = int(os.environ["BENCH_SAMPLES"])
    rng = np.random.default_rng(1)
    templates = rng.uniform(0.2, 0.8, size=(10, 3, 32, 32)).astype(np.float32)
    for start in range(0, n, 500):
        size = min(500, n - start)
        y = np.arange(start, start + size) % 10
        x = templates[y] + rng.normal(0, 0.15, size=(size, 3, 32, 32)).astype(np.float32)
        yield np.clip(x, 0, 1), y.astype(np.int64)


def batches_loader():
    return batches()
'''


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images in [0, 1]: a per-class template plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.2, 0.8, size=(CLASSES,) + SHAPE).astype(np.float32)
    y = (np.arange(n) % CLASSES).astype(np.int64)
    x = templates[y] + rng.normal(0, 0.15, size=(n,) + SHAPE).astype(np.float32)
    return np.clip(x, 0, 1), y


def write_model(root: Path, x: np.ndarray, y: np.ndarray, train_steps: int = 30) -> None:
    """``benchmodel.py`` (factory), ``weights.pt`` after a few Adam steps, ``model.onnx``."""
    import torch

    (root / "benchmodel.py").write_text(MODEL_SOURCE)
    namespace: dict = {}
    exec(MODEL_SOURCE, namespace)
    torch.manual_seed(0)
    model = namespace["build"]()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[:512]), torch.from_numpy(y[:512])
    for _ in range(train_steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    model.eval()
    torch.save(model.state_dict(), root / "weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xt[:2],), str(root / "model.onnx"), dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})


def sweep_project(root: Path, x: np.ndarray, y: np.ndarray, *, model: str, eps: list[float],
                  batch_size: int, probe: bool = True) -> Path:
    """A project gating ``model`` with a clean check and an FGSM sweep (``probe``: with the
    masking probe, the default; off, the engine does the plain loop's work plus the
    interior points)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchmodel.py").write_text(MODEL_SOURCE)
    np.savez(root / "data.npz", x=x, y=y)
    weights = 'weights = "../weights.pt"\n' if model.endswith(":build") else ""
    (root / "pyproject.toml").write_text(textwrap.dedent(f'''
        [tool.advrobust]
        model = "{model}"
        {weights}data = "data.npz"
        name = "cnn"
        batch-size = {batch_size}
        device = "cpu"
        masking-probe = {str(probe).lower()}

        [[tool.advrobust.checks]]
        attack = "clean"
        min-accuracy = 0.0

        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = {eps!r}
        min-accuracy = 0.0
        '''))
    return root


def stream_project(root: Path, *, batch_size: int) -> Path:
    """A project whose data comes from a loader yielding batches (``BENCH_SAMPLES`` of them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchmodel.py").write_text(MODEL_SOURCE)
    (root / "streamdata.py").write_text(STREAM_SOURCE)
    (root / "pyproject.toml").write_text(textwrap.dedent(f'''
        [tool.advrobust]
        model = "benchmodel:build"
        weights = "../weights.pt"
        data = "streamdata:batches_loader"
        name = "cnn"
        batch-size = {batch_size}
        device = "cpu"

        [[tool.advrobust.checks]]
        attack = "clean"
        min-accuracy = 0.0

        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = [0.01, 0.03]
        min-accuracy = 0.0
        '''))
    return root


def empty_project(root: Path) -> Path:
    """A project with the plugin installed and no gates: one trivial test."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text('[project]\nname = "nogates"\nversion = "0"\n')
    (root / "test_trivial.py").write_text("def test_trivial():\n    assert 1 + 1 == 2\n")
    return root
