"""Builds small throwaway projects (model, data, pyproject.toml) for pytester runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

FACTORY = '''
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
'''


def train_blob_model(x: np.ndarray, y: np.ndarray, epochs: int = 150) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    return model.eval()


def write_project(root: Path, x: np.ndarray, y: np.ndarray, checks: str, *, extra: str = "",
                  model: torch.nn.Module | None = None) -> Path:
    """``blobmodel.py`` (factory), ``weights.pt``, ``data.npz`` and a pyproject.toml."""
    (root / "blobmodel.py").write_text(FACTORY)
    model = model if model is not None else train_blob_model(x, y)
    torch.save(model.state_dict(), root / "weights.pt")
    np.savez(root / "data.npz", x=x, y=y)
    (root / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.advrobust]
        model = "blobmodel:build"
        weights = "weights.pt"
        data = "data.npz"
        name = "blob"
        batch-size = 64
        ''') + textwrap.dedent(extra) + textwrap.dedent(checks))
    return root / "pyproject.toml"


def gate_session(root: Path, model_ref: str, x: np.ndarray, y: np.ndarray, *, checks: str = "",
                 extra: str = ""):
    """A :class:`RobustnessSession` (no pytest run) over ``data.npz`` and a model file."""
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    np.savez(root / "data.npz", x=x, y=y)
    if not checks:
        checks = '[[tool.advrobust.checks]]\nattack = "clean"\nreport-only = true\n'
    (root / "pyproject.toml").write_text(
        f'[tool.advrobust]\nmodel = "{model_ref}"\ndata = "data.npz"\nbatch-size = 64\n'
        + textwrap.dedent(extra) + "\n" + textwrap.dedent(checks))
    return RobustnessSession(plugin_manager().hook, root / "pyproject.toml")


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path
