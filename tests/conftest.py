"""Shared fixtures. torch and onnxruntime are imported once here: pytester's in-process runs
unload modules first imported during an inner run, and re-importing torch breaks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (imported once, see above)
import pytest
import torch

torch.set_num_threads(1)


def _import_lazily_loaded_torch_modules() -> None:
    """Touch every torch feature the tests and inner runs use, so its lazily imported
    modules load here, outside any pytester snapshot (which would unload them)."""
    import io
    import tempfile

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    optimiser = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 2)).sum().backward()
    optimiser.step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), f"{folder}/m.pt")
        torch.jit.load(f"{folder}/m.pt")
        torch.export.save(torch.export.export(model, (torch.zeros(1, 2),)), f"{folder}/m.pt2")
        torch.export.load(f"{folder}/m.pt2").module()(torch.zeros(1, 2))
        export_onnx(model, torch.zeros(1, 2), Path(folder) / "m.onnx")
    try:  # plots and perturbation PNGs: matplotlib's classes must not be reloaded either
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.close(plt.subplots()[0])
    except ImportError:
        pass

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


class LinearNet(torch.nn.Module):
    """``x @ W.T + b`` on flat inputs: FGSM has a closed form on it."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, **kwargs) -> Path:
    """Legacy exporter (no onnxscript needed), dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, **kwargs)
    return path


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Four separable Gaussian blobs in [0, 1]^8: a quick, real classification task."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.25, 0.75, size=(4, 8))
    y = np.repeat(np.arange(4), 60)
    x = np.clip(centres[y] + rng.normal(0, 0.05, size=(240, 8)), 0, 1).astype(np.float32)
    return x, y.astype(np.int64)



# -- unit and end-to-end tests ------------------------------------------------------------
#: fixtures that run pytest itself (in-process or in a subprocess): a test using one is e2e
E2E_FIXTURES = ("pytester", "testdir")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before the first pytester run (none in a unit-only run, which so starts ~3 s sooner
    in each process), load what the inner runs use, outside their module snapshots."""
    if any(item.get_closest_marker("e2e") for item in session.items):
        _import_lazily_loaded_torch_modules()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that drives pytest through ``pytester`` as ``e2e``; tests that start
    a subprocess carry the mark themselves (the guard below fails them when they do not),
    so ``pytest -m "not e2e"`` (``make test-unit``) is the fast unit loop."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in E2E_FIXTURES):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the ``e2e`` mark that starts a process fails, saying to mark it: the
    unit loop must stay fast, and the mark must be on every test that needs one."""
    if request.node.get_closest_marker("e2e") is not None:
        return
    import subprocess

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a subprocess ({str(args[:1])[:120]}) but "
                             "is not marked e2e; add @pytest.mark.e2e (unit tests run in-process).")

    monkeypatch.setattr(subprocess, "Popen", refuse)
