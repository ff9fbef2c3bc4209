"""Work is never done twice, and nothing is paid when no gate is configured.

Counts calls rather than timing them: the costs themselves are measured by
``benchmarks/bench_sweep.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from project import write_project
from pytest_advrobust.models import load_classifier
from pytest_advrobust.session import RobustnessSession, plugin_manager

ROOT = Path(__file__).resolve().parent.parent

SWEEP = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.001

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.01, 0.02, 0.05, 0.1, 0.2]
min-accuracy = 0.001
masking-probe = false
'''
#: the randomness check: one more forward of up to 32 inputs, once per model (engine.py)
DETECT = 1


class CountingModule(torch.nn.Module):
    """Wraps a module and counts its forwards, with and without autograd recording."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.plain = 0
        self.with_grad = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.with_grad += 1
        else:
            self.plain += 1
        return self.inner(x)


class CountingLoader:
    """A ``pytest_advrobust_load_model`` plugin that counts loads and wraps the module."""

    def __init__(self) -> None:
        self.loads = 0
        self.modules: list[CountingModule] = []

    @pytest.hookimpl
    def pytest_advrobust_load_model(self, spec, config):
        self.loads += 1
        classifier = load_classifier(spec)
        classifier.module = CountingModule(classifier.module)
        self.modules.append(classifier.module)
        return classifier


def _session(pyproject: Path) -> tuple[RobustnessSession, CountingLoader]:
    manager = plugin_manager()
    loader = CountingLoader()
    manager.register(loader, "counting-loader")
    return RobustnessSession(manager.hook, pyproject), loader


def test_fgsm_sweep_costs_one_forward_backward_per_batch_plus_one_forward_per_eps(
        pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    session, loader = _session(write_project(pytester.path, x, y, SWEEP))
    results = session.run_all()
    batches = -(-len(y) // 64)  # batch-size = 64 in write_project
    assert len(results) == 6 and loader.loads == 1
    (module,) = loader.modules
    assert module.with_grad == batches  # the gradient pass also yields the clean scores
    # per eps one forward, and one more over the samples the corner left standing (their
    # interior points, attacks/interior.py) where there are any; no separate clean pass; and
    # the randomness check, once
    assert batches * 5 + DETECT < module.plain <= batches * 5 * 2 + DETECT


def test_two_gates_of_one_model_load_it_once(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    session, loader = _session(write_project(pytester.path, x, y, SWEEP))
    spec = session.spec()
    clean, fgsm = session.requests(spec)[:2]
    session.engine.measure(spec, clean)  # separate passes, as on two xdist items
    session.engine.measure(spec, fgsm)
    session.engine.measure(spec, clean)  # cached: no pass at all
    assert loader.loads == 1
    (module,) = loader.modules
    batches = -(-len(y) // 64)
    # clean: one forward; fgsm: one forward, and one for its interior points where the
    # corner left samples standing; the randomness check, once
    assert module.with_grad == batches and batches * 2 + DETECT < module.plain <= batches * 3 + DETECT


def test_attack_signature_is_read_once_per_function() -> None:
    from pytest_advrobust.attacks import _signature, call_attack

    def perturb(x, eps, fit_samples=0):
        return x + eps + fit_samples

    _signature.cache_clear()
    for _ in range(5):
        assert call_attack(perturb, {"x": lambda: 1.0, "eps": lambda: 2.0, "grad": lambda: 1 / 0},
                           {"fit-samples": 3}) == 6.0
    info = _signature.cache_info()
    assert (info.misses, info.hits) == (1, 4)


def _subprocess_env() -> dict[str, str]:
    """This checkout first on sys.path, whatever the environment's editable install points at."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.e2e
def test_no_gates_configured_imports_no_heavy_library(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "plain"\nversion = "0"\n')
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    script = textwrap.dedent('''
        import json, sys
        import pytest
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "advrobust"])
        loaded = "pytest_advrobust.plugin" in sys.modules
        print(json.dumps([int(code), loaded, sorted(m for m in ("torch", "onnxruntime", "onnx",
              "matplotlib") if m in sys.modules)]))
    ''')
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    code, loaded, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0 and loaded  # the plugin ran ...
    assert heavy == []  # ... and paid for none of them


def test_xdist_gives_the_serial_results_in_one_report(pytester: pytest.Pytester, blobs,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    x, y = blobs
    write_project(pytester.path, x, y, SWEEP + '''
[[tool.advrobust.checks]]
attack = "noise"
eps = [0.05, 0.1]
max-drop = 0.5
''')
    monkeypatch.setenv("PYTHONPATH", _subprocess_env()["PYTHONPATH"])
    serial = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--advrobust-json", "serial.json")
    serial.assert_outcomes(passed=8)
    spread = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-v",
                                           "--advrobust-json", "spread.json")
    spread.assert_outcomes(passed=8)
    output = spread.stdout.str()
    assert "[gw0]" in output and "[gw1]" in output  # the gates really were spread
    assert (pytester.path / "spread.json").read_bytes() == (pytester.path / "serial.json").read_bytes()
    assert len(json.loads((pytester.path / "spread.json").read_text())["results"]) == 8
