"""GPU code paths give the CPU's figures (run where torch sees a GPU; skipped elsewhere, as
in CI). Every built-in attack, on a torch factory model and its ONNX export, with
``device = "cuda"`` against ``device = "cpu"`` on the same data and seed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import export_onnx
from project import FACTORY, train_blob_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (torch sees none)")

CHECKS = '''
[[tool.advrobust.models.{name}.checks]]
attack = "clean"
min-accuracy = 0.001
[[tool.advrobust.models.{name}.checks]]
attack = "fgsm"
eps = [0.05, 0.2]
min-accuracy = 0.001
[[tool.advrobust.models.{name}.checks]]
attack = "noise"
eps = 0.2
min-accuracy = 0.001
[[tool.advrobust.models.{name}.checks]]
attack = "pgd"
eps = 0.1
min-accuracy = 0.001
[[tool.advrobust.models.{name}.checks]]
attack = "universal"
eps = 0.2
fit-samples = 80
steps = 10
min-accuracy = 0.001
[[tool.advrobust.models.{name}.checks]]
attack = "spsa"
eps = 0.1
queries = 330
min-accuracy = 0.001
'''


def _project(root: Path, blobs, device: str) -> Path:
    """The same models under the same names (every random draw is keyed by the model's
    name), on ``device``."""
    x, y = blobs
    root.mkdir()
    model = train_blob_model(x, y)
    (root / "blobmodel.py").write_text(FACTORY)
    torch.save(model.state_dict(), root / "weights.pt")
    export_onnx(model, torch.from_numpy(x[:2]), root / "blob.onnx")
    np.savez(root / "data.npz", x=x, y=y)
    text = f'[tool.advrobust]\ndata = "data.npz"\nbatch-size = 64\ndevice = "{device}"\n'
    for kind, ref in (("torch", 'model = "blobmodel:build"\nweights = "weights.pt"'),
                      ("onnx", 'model = "blob.onnx"')):
        text += f'\n[tool.advrobust.models.{kind}]\n{ref}\n' + textwrap.dedent(CHECKS.format(name=kind))
    (root / "pyproject.toml").write_text(text)
    return root / "pyproject.toml"


def test_every_attack_gives_the_cpu_figures_on_the_gpu(tmp_path: Path, blobs) -> None:
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    figures = {}
    for device in ("cpu", "cuda"):
        session = RobustnessSession(plugin_manager().hook, _project(tmp_path / device, blobs, device))
        results = session.run_all()
        assert all(r.measured for r in results), [r.error for r in results if not r.measured]
        figures[device] = {(r.model, r.attack, r.eps): r for r in results}
        assert session.engine.classifier(session.spec("torch")).device.type == device
    assert len(figures["cpu"]) == len(figures["cuda"]) == 14
    for key, cpu in figures["cpu"].items():
        gpu = figures["cuda"][key]
        # float sums in another order may flip a sample at a decision boundary, no more
        assert abs(gpu.correct - cpu.correct) <= 2, (key, cpu.correct, gpu.correct)
        assert gpu.n == cpu.n and gpu.clean_correct == cpu.clean_correct
