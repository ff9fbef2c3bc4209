"""Random configs and arrays never produce anything but a clear error or a valid result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_advrobust.config import MODEL_KEYS, AttackOptions, RobustnessConfig, parse_config
from pytest_advrobust.errors import ConfigError, DataError

ATTACKS = {"clean": AttackOptions(uses_eps=False), "fgsm": AttackOptions(),
           "universal": AttackOptions(options={"fit-samples": 256, "step-size": float})}
KEYS = sorted(MODEL_KEYS | {"models", "attack", "eps", "min-accuracy", "max-drop", "fit-samples",
                            "step-size", "mean", "std"})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
                    st.sampled_from(["fgsm", "clean", "universal", "m.onnx", "pkg.mod:f", "d.npz", "auto",
                                     "logits", "", "x"]),
                    st.text(max_size=8))
toml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)),
    max_leaves=20)


def plausible_table():
    check = st.fixed_dictionaries({"attack": st.sampled_from(["clean", "fgsm", "universal", "pgdx"])},
                                  optional={"eps": toml_values, "min-accuracy": toml_values,
                                            "max-drop": toml_values, "fit-samples": toml_values})
    return st.fixed_dictionaries(
        {"model": st.sampled_from(["m.onnx", "pkg.mod:build", "m.pt2", "m.h5", ""]),
         "data": st.sampled_from(["d.npz", "pkg.d:load", "d.csv"])},
        optional={"checks": st.lists(check, max_size=3), "input-range": toml_values,
                  "batch-size": toml_values, "normalize": toml_values, "seed": toml_values,
                  "models": st.dictionaries(st.sampled_from(["a", "b"]), toml_values, max_size=2),
                  "device": toml_values, "weights": toml_values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(toml_values, plausible_table()))
def test_config_parser_gives_a_config_or_a_config_error(table) -> None:
    try:
        config = parse_config(table, path=Path("pyproject.toml"), attacks=ATTACKS)
    except ConfigError as exc:
        assert "pyproject.toml" in str(exc) and len(str(exc)) < 2000
    else:
        assert isinstance(config, RobustnessConfig) and config.models
        for spec in config.models:
            assert spec.checks and spec.input_range[0] < spec.input_range[1]
            for check in spec.checks:
                assert all(0 <= e <= spec.input_range[1] - spec.input_range[0] for e in check.eps)




@pytest.mark.filterwarnings("ignore::pytest_advrobust.errors.AdvRobustWarning")  # constant arrays
@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)),
       y=hnp.arrays(dtype=st.sampled_from([np.int64, np.int32, np.float32, np.bool_]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=5)),
       batch_size=st.integers(1, 4))
def test_data_loader_gives_batches_or_a_data_error(tmp_path_factory, x, y, batch_size) -> None:
    import torch

    from pytest_advrobust.config import ModelSpec
    from pytest_advrobust.data import EvalData

    folder = tmp_path_factory.mktemp("npz")
    np.savez(folder / "d.npz", x=x, y=y)
    spec = ModelSpec(name="m", model="m.onnx", data="d.npz", root=folder, source=folder / "pyproject.toml",
                     batch_size=batch_size)
    try:
        batches = list(EvalData(spec).batches(batch_size, torch.float32))
    except DataError as exc:
        assert "d.npz" in str(exc) or "data" in str(exc)
    else:
        assert sum(len(b.y) for b in batches) == len(y) > 0
        assert all(b.x.dtype == torch.float32 and b.y.dtype == torch.int64 for b in batches)
        # input-range is enforced with a tolerance of 1e-6 of its width, on both sides
        assert all(torch.isfinite(b.x).all() and b.x.min() >= -1e-6 and b.x.max() <= 1 + 1e-6 for b in batches)


# -- the whole path: config text, data arrays and model outputs, through pytest ------------
#: forward bodies that break a model for every gate (odd dtypes, shapes, types, exceptions)
BROKEN_FORWARDS = [
    "return (self.l(x) * 10).long()",
    "return self.l(x) > 0",
    "return self.l(x).to(torch.complex64)",
    "return self.l(x)[:, 0]",
    "return self.l(x)[:, :, None]",
    "return self.l(x)[:, :0]",
    "return self.l(x)[: len(x) // 2]",
    "return self.l(x).t()",
    "return self.l(x).to_sparse()",
    "return self.l(x) * float('nan')",
    "return self.l(x).detach().numpy()",
    "return None",
    "return ()",
    "return {'scores': self.l(x)}['logits']",
    "return 1 / 0",
    "raise RuntimeError('boom\\\\n' * 40)",
    "raise MemoryError()",
    "import no_such_module_fuzz",
    "return self.l(x.reshape(-1))",
    "x.clamp_(0.2, 0.8)\n        return self.l(x)",
]
#: conftest.py files whose hooks are broken in the user's own code
BROKEN_CONFTESTS = [
    "def pytest_advrobust_result(result):\n    raise OSError('dashboard down')\n",
    "def pytest_advrobust_add_attacks(registry):\n    raise RuntimeError('conftest bug')\n",
    "def pytest_advrobust_add_attacks(registry):\n    registry.attack('a/b')(lambda x: x)\n",
    "def pytest_advrobust_load_data(spec, config):\n    return {'inputs': 1}\n",
    "def pytest_advrobust_load_data(spec, config):\n    raise KeyError(spec.data)\n",
    "def pytest_advrobust_load_model(spec, config):\n    return 42\n",
    "def pytest_advrobust_load_model(spec, config):\n    raise ValueError('no model')\n",
]
FACTORY = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = torch.nn.Linear(8, 4)

    def forward(self, x):
        {body}


def build():
    {build}
'''
CHECKS = {
    "clean": 'attack = "clean"\nmin-accuracy = 0.5\n',
    "fgsm": 'attack = "fgsm"\neps = [0.05, 0.1]\nmin-accuracy = 0.5\n',
    "noise": 'attack = "noise"\neps = 0.1\nmax-drop = 0.2\n',
    "pgd": 'attack = "pgd"\neps = 0.1\nsteps = 2\nmin-accuracy = 0.1\n',
    "universal": 'attack = "universal"\neps = 0.1\nfit-samples = 4\nsteps = 1\nmin-accuracy = 0.1\n',
    "spsa": 'attack = "spsa"\neps = 0.1\nqueries = 6\nsamples = 2\nmin-accuracy = 0.1\n',
}
#: model names that try to become paths or break ids
HOSTILE_NAMES = ["../../escaped", "/tmp/abs", "a::b", "x[1]", "a b", "..", "caf\u00e9", "-x", "a/b"]
#: lines that break the model table
HOSTILE_LINES = [
    'input-range = [1, 0]', 'input-range = [0, "1"]', 'batch-size = 0', 'seed = -1', 'device = "tpu"',
    'Batch-Size = 4', 'normalize = { mean = [0.5], std = [0] }', 'allow-pickle = "yes"',
    'max-regression = 2', 'output-kind = "scores"', 'models = 3', 'checks = 1', 'max-samples = 0',
]


def _broken_data(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid data made invalid in one way."""
    return {
        "uint8": lambda: ((x * 255).astype(np.uint8), y),
        "int": lambda: (x.astype(np.int64), y),
        "nan": lambda: (np.where(np.arange(8) == 3, np.nan, x).astype(np.float32), y),
        "range": lambda: (x * 3 - 1, y),
        "float-labels": lambda: (x, y.astype(np.float32)),
        "one-hot": lambda: (x, np.eye(4, dtype=np.int64)[y]),
        "negative": lambda: (x, y - 4),
        "too-many-classes": lambda: (x, y + 4),
        "lengths": lambda: (x, y[:-1]),
        "empty": lambda: (x[:0], y[:0]),
        "features": lambda: (x[:, :5], y),
        "flat": lambda: (x.reshape(-1), np.repeat(y, 8)),
        "object": lambda: (x, y.astype(object)),
    }[kind]()


def _tree(folder):
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.mark.filterwarnings("ignore::pytest_advrobust.errors.AdvRobustWarning")
@settings(max_examples=60, deadline=None, derandomize=True, phases=[Phase.generate], database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fault=st.sampled_from(["config", "data", "model", "conftest"]), conftest=st.sampled_from(BROKEN_CONFTESTS),
       body=st.sampled_from(BROKEN_FORWARDS),
       build=st.sampled_from(["return Net()"] * 4 + ["raise ValueError('no net')", "return 3"]),
       name=st.sampled_from(HOSTILE_NAMES), line=st.sampled_from(HOSTILE_LINES),
       garbage=st.sampled_from([b"", b"# \xff\xfe\n"]),
       checks=st.lists(st.sampled_from(sorted(CHECKS)), min_size=1, max_size=3, unique=True),
       x=hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.just(8)), elements=st.floats(0, 1, width=32)),
       seed=st.integers(0, 2 ** 16), broken=st.sampled_from([
           "uint8", "int", "nan", "range", "float-labels", "one-hot", "negative", "too-many-classes",
           "lengths", "empty", "features", "flat", "object"]))
def test_whole_path_fails_cleanly_and_writes_nowhere_else(pytester, tmp_path_factory, fault, conftest, body, build,
                                                          name, line, garbage, checks, x, seed,
                                                          broken) -> None:
    """Hostile config text, data, model outputs or hooks (one of them per run, the rest valid) through
    a real pytest run: a non-zero exit, no traceback from pytest-advrobust's or torch's
    internals, no file outside the project's report paths."""
    import os

    base = tmp_path_factory.mktemp("whole")
    project = base / "project"
    project.mkdir()
    module = f"fuzzmodel_{base.name.replace('-', '_')}"
    y = np.random.default_rng(seed).integers(0, 4, len(x))
    if fault != "model":
        body, build = "return self.l(x)", "return Net()"
    elif build == "return Net()" and body == "return self.l(x)":  # pragma: no cover
        raise AssertionError("the model fault must break the model")
    if fault == "data":
        x, y = _broken_data(broken, x, y)
    if fault != "config":
        name, line, garbage = "m", "", b""
    elif not line and not garbage:  # pragma: no cover
        raise AssertionError("the config fault must break the config")
    if fault == "conftest":
        (project / "conftest.py").write_text(conftest)
    (project / f"{module}.py").write_text(FACTORY.format(body=body, build=build))
    np.savez(project / "data.npz", x=x, y=y)
    text = (f'[tool.advrobust]\nmodel = "{module}:build"\ndata = "data.npz"\nname = {json.dumps(name)}\n'
            f"{line}\n" + "".join(f"[[tool.advrobust.checks]]\n{CHECKS[c]}\n" for c in checks))
    # not named pyproject.toml: pytest's own config discovery parses that name, and crashes on
    # bytes that are not UTF-8 before any plugin runs
    (project / "advrobust.toml").write_bytes(text.encode() + garbage)
    (project / "pytest.ini").write_text("[pytest]\n")
    before_base, before_project = _tree(base), _tree(project)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--advrobust-config=advrobust.toml",
                                              "--advrobust-json=reports/out.json", "-p", "no:randomly")
    finally:
        os.chdir(cwd)
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0, out
    for internal in ("Traceback", "INTERNALERROR", "site-packages/torch", "/pytest_advrobust/"):
        assert internal not in out, out
    assert _tree(base) - before_base == {p.relative_to(base) for p in project.rglob("*")} - {
        p.relative_to(base) for p in (project / q for q in before_project)}  # only inside project
    allowed = (".advrobust", "reports", "__pycache__")
    new = {p for p in _tree(project) - before_project if p.parts[0] not in allowed}
    assert not new, new
