"""The plugin's own hooks, from a conftest.py, as a new user would write them (pytester)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from project import train_blob_model, write_project

CONFTEST = '''
import json

def pytest_advrobust_add_attacks(registry):
    @registry.attack("shift")
    def shift(model, x, y, eps, rng):
        return x + eps          # x: a batch in the model's input space

    @registry.attack("push", options={"factor": 1.0, "direction": "up"})
    def push(x, eps, factor, direction):
        return x + factor * eps * (1 if direction == "up" else -1)

    @registry.attack("fgsm")
    def not_really_fgsm(x):
        return x

def pytest_advrobust_result(result):
    with open("sink.jsonl", "a") as handle:
        handle.write(json.dumps(result.to_dict()) + "\\n")
'''

CHECKS = '''
[[tool.advrobust.checks]]
attack = "shift"
eps = [0.1, 0.5]
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "push"
report-only = true
eps = 0.5
factor = 3.0
direction = "up"

[[tool.advrobust.checks]]
attack = "fgsm"
eps = 0.3
min-accuracy = 0.99
'''


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.fixture
def trained(blobs):
    x, y = blobs
    return x, y, train_blob_model(x, y)


def test_custom_attack_gates_projects_clips_and_reports(pytester: pytest.Pytester, trained) -> None:
    x, y, model = trained
    write_project(pytester.path, x, y, CHECKS, model=model)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_custom='''
        def test_custom_attack_from_the_fixture(advrobust):
            assert advrobust.attack("push", eps=0.5, factor=3.0).accuracy == 0.5
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "out.json")
    results = json.loads((pytester.path / "out.json").read_text())["results"]
    report = {(r["attack"], r["eps"]): r for r in results if r["key"] != "blob::push[eps=0.5]{factor=3.0}"}
    # the fixture's call (direction left at its declared default "up") is the test's own
    # business: it is asserted there, and stays out of the gate report
    assert [r for r in results if r["key"] == "blob::push[eps=0.5]{factor=3.0}"] == []
    # independent figures: clip(x + eps) for shift; push with factor 3 is projected back onto
    # the eps ball (x + eps), then clipped
    shift = {eps: _accuracy(model, np.clip(x + eps, 0, 1), y) for eps in (0.1, 0.5)}
    unprojected = _accuracy(model, np.clip(x + 1.5, 0, 1), y)
    assert shift[0.5] < 0.9 <= shift[0.1] and unprojected != shift[0.5]
    assert report[("shift", 0.1)]["accuracy"] == pytest.approx(shift[0.1])
    assert report[("shift", 0.5)]["accuracy"] == pytest.approx(shift[0.5])
    assert report[("push", 0.5)]["accuracy"] == pytest.approx(shift[0.5])
    assert report[("push", 0.5)]["options"] == {"factor": 3.0, "direction": "up"}
    # the user's "fgsm" replaced the built-in one (which takes this model below 0.5 at 0.3)
    assert report[("fgsm", 0.3)]["accuracy"] == report[("fgsm", 0.3)]["clean_accuracy"] == 1.0
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([
        f"*shift eps=0.5 on blob: accuracy {shift[0.5]:.3f} < min-accuracy 0.900*",
        "blob*shift*0.1*1.000*PASS",
        "blob*shift*0.5*FAIL",
        "blob*push*0.5*MEASURED",
    ])
    # the result hook saw every gate result (a fixture call is not a gate)
    sink = [json.loads(line) for line in (pytester.path / "sink.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in sink) == sorted(r["key"] for r in results) and len(sink) == 4


@pytest.mark.parametrize("entry, message", [
    ('attack = "push"\neps = 0.1\nspeed = 2', "*checks[[]0[]] speed: unknown key.*push*accepts*direction*factor*"),
    ('attack = "push"\neps = 0.1\nfactor = "big"', "*checks[[]0[]] factor: must be a finite number*"),
    ('attack = "shfit"\neps = 0.1', "*unknown attack 'shfit'. Did you mean 'shift'?*"),
])
def test_custom_attack_options_are_validated(pytester: pytest.Pytester, blobs, entry: str,
                                             message: str) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, f"[[tool.advrobust.checks]]\n{entry}\n")
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


LOADER_CONFTEST = '''
import numpy as np

def pytest_advrobust_load_model(spec, config):
    if not spec.model.startswith("custom://"):
        return None
    import torch
    import blobmodel

    module = blobmodel.build()
    module.load_state_dict(torch.load(spec.resolve("weights.pt"), weights_only=True))
    return module  # a torch module is wrapped with the spec's input-range

def pytest_advrobust_load_data(spec, config):
    if spec.data == "custom://blobs":
        with np.load(spec.resolve("data.npz")) as archive:
            return archive["x"], archive["y"]
'''


def _custom_project(pytester: pytest.Pytester, blobs, model_ref: str) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, "")
    (pytester.path / "pyproject.toml").write_text(textwrap.dedent(f'''
        [tool.advrobust]
        model = "{model_ref}"
        data = "custom://blobs"
        [[tool.advrobust.checks]]
        attack = "clean"
        min-accuracy = 0.99
        [[tool.advrobust.checks]]
        attack = "fgsm"
        report-only = true
        eps = 0.3
        '''))


def test_custom_loaders_claim_unknown_references(pytester: pytest.Pytester, blobs) -> None:
    _custom_project(pytester, blobs, "custom://blob")
    pytester.makeconftest(LOADER_CONFTEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "out.json", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*pyproject.toml::blob::clean PASSED*"])
    report = json.loads((pytester.path / "out.json").read_text())["results"]
    fgsm = next(r for r in report if r["attack"] == "fgsm")
    assert fgsm["n"] == 240 and fgsm["accuracy"] < 0.5
    # the same model and data through the built-in loaders give the same figure
    path = pytester.path / "pyproject.toml"
    path.write_text(path.read_text().replace('"custom://blob"', '"blobmodel:build"\nweights = "weights.pt"')
                    .replace('"custom://blobs"', '"data.npz"'))
    (pytester.path / "conftest.py").unlink()
    builtin = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "builtin.json")
    builtin.assert_outcomes(passed=2)
    again = json.loads((pytester.path / "builtin.json").read_text())["results"]
    assert next(r for r in again if r["attack"] == "fgsm")["accuracy"] == fgsm["accuracy"]


def test_unclaimed_reference_fails_its_gates_clearly(pytester: pytest.Pytester, blobs) -> None:
    _custom_project(pytester, blobs, "other://blob")
    pytester.makeconftest(LOADER_CONFTEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*model error: *model: no loader claimed 'other://blob'*"])
    assert "Traceback" not in result.stdout.str()


def test_without_a_loader_hook_unknown_references_are_config_errors(pytester: pytest.Pytester,
                                                                     blobs) -> None:
    _custom_project(pytester, blobs, "custom://blob")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*model: 'custom://blob' is neither a model file*"])


HYPOTHESIS_CHECKS = '''
[[tool.advrobust.checks]]
attack = "hypothesis"
eps = 0.3
samples = 6
max-examples = 40
min-accuracy = 0.99
'''


def test_hypothesis_attack_reports_the_shrunk_counterexample(pytester: pytest.Pytester, trained) -> None:
    x, y, model = trained
    write_project(pytester.path, x, y, HYPOTHESIS_CHECKS, model=model)
    pytester.makepyfile(test_prop='''
        from hypothesis import given, strategies as st

        @given(st.integers())
        def test_ints(i):
            assert i == i
    ''')
    runs = []
    for args in (["pyproject.toml"], []):  # alone, then beside the user's own @given test
        result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "out.json", *args)
        result.assert_outcomes(passed=len(runs), failed=1)
        if not runs:  # the search wrote no example database into the project
            assert not (pytester.path / ".hypothesis").exists()
        result.stdout.fnmatch_lines([
            "*hypothesis eps=0.3 on blob: accuracy * < min-accuracy 0.990 (n=6, *; smallest flip "
            "found: sample *, max|delta| *, label * -> * (* of 6 correctly classified samples flipped)*"])
        runs.append(json.loads((pytester.path / "out.json").read_text())["results"][0])
    assert runs[0] == runs[1]  # deterministic
    stats = runs[0]["stats"]
    assert runs[0]["n"] == 6 and runs[0]["correct"] == 6 - stats["flips"]
    # the counterexample is real: that sample, moved by at most max|delta|, changes label
    index, size = int(stats["counterexample_sample"]), stats["counterexample_max_delta"]
    assert 0 < size <= 0.3 + 1e-6 and stats["counterexample_label"] == y[index]
    assert "smallest flip found" in runs[0]["details"]


def test_result_hook_sees_every_result_under_xdist(pytester: pytest.Pytester, trained) -> None:
    x, y, model = trained
    write_project(pytester.path, x, y, CHECKS, model=model)
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--advrobust-json", "out.json")
    result.assert_outcomes(passed=3, failed=1)
    report = json.loads((pytester.path / "out.json").read_text())["results"]
    sink = [json.loads(line) for line in (pytester.path / "sink.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in sink) == sorted(r["key"] for r in report)
    assert len(report) == 4
