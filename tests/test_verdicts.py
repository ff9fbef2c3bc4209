"""CI verdicts a reviewer can trust (issue 11): no report says "passed" when it should not,
no baseline is lost or silently skipped, and each threshold's boundary is exact.

The boundary tests use a ``swap`` attack (below) that makes exactly ``count`` samples wrong
on a model that is right on all of them, so accuracy and drop are known fractions."""

from __future__ import annotations

import json
import os
import stat
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from project import FACTORY, train_blob_model
from pytest_advrobust.gate import judge
from pytest_advrobust.results import AttackResult, wilson_interval

RUN = ("-p", "no:cacheprovider")

SWAP = '''
def pytest_advrobust_add_attacks(registry):
    @registry.attack("swap", options={"count": 0})
    def swap(x, y, count):
        """Give the first ``count`` samples the input of a sample of another class."""
        out = x.clone()
        for i in range(min(count, len(x))):
            j = int((y != y[i]).nonzero()[0])
            out[i] = x[j]
        return out

    @registry.attack("interrupt")
    def interrupt(x):
        raise KeyboardInterrupt
'''

NAN_FACTORY = '''
import torch

class NanOffData(torch.nn.Module):
    """The blob classifier, but NaN scores for any input with an element above 0.95 (never
    in the data; reached by a large enough perturbation)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def forward(self, x):
        out = self.net(x)
        return torch.where((x > 0.95).any(1, keepdim=True), out * float("nan"), out)

def build():
    return NanOffData()
'''


def _project(root: Path, x: np.ndarray, y: np.ndarray, checks: str, *, model: torch.nn.Module | None = None,
             factory: str = FACTORY, prefix: str = "", extra: str = "") -> Path:
    """A blob project with batch-size 256 (one batch), so ``swap`` sees every sample."""
    (root / "blobmodel.py").write_text(factory)
    model = model if model is not None else train_blob_model(x, y)
    state = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save(state, root / "weights.pt")
    np.savez(root / "data.npz", x=x, y=y)
    (root / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.advrobust]
        model = "blobmodel:build"
        weights = "weights.pt"
        data = "data.npz"
        name = "blob"
        batch-size = 256
        ''') + textwrap.dedent(extra) + textwrap.dedent(checks))
    return root / "pyproject.toml"


def _swap_checks(count: int, **thresholds: float) -> str:
    lines = [f"{key.replace('_', '-')} = {value!r}" for key, value in thresholds.items()]
    return "\n".join(['[[tool.advrobust.checks]]', 'attack = "swap"', "eps = 1.0",
                      f"count = {count}", *lines]) + "\n"


@pytest.fixture
def blob_model(blobs):
    x, y = blobs
    model = train_blob_model(x, y)
    with torch.no_grad():
        assert (model(torch.from_numpy(x)).argmax(1).numpy() == y).all()  # the swaps are exact
    return model


# -- 1. errored gates are in every report ------------------------------------------------
MIXED = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "noise"
eps = [0.01, 0.6]
min-accuracy = 0.001
'''


def test_an_errored_gate_is_in_every_report_and_nothing_says_all_passed(
        pytester: pytest.Pytester, blobs, monkeypatch) -> None:
    x, y = blobs
    _project(pytester.path, x, y, MIXED, model=train_blob_model(x, y), factory=NAN_FACTORY, prefix="net.")
    summary = pytester.path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest(*RUN, "--junitxml=junit.xml", "--advrobust-json=r.json",
                                "--advrobust-markdown=s.md")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # the NaN on perturbed inputs errors that gate only: clean and the small eps pass
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*noise at eps=0.6: NaN on perturbed inputs: the model returned NaN or inf scores for * of 240 perturbed inputs*",
        "*= advrobust =*", "blob*noise*0.6*-*ERROR*", "3 gates: 2 passed, 1 error"])
    assert "all 3 gates passed" not in result.stdout.str()
    report = json.loads((pytester.path / "r.json").read_text())
    statuses = {r["key"]: r["status"] for r in report["results"]}
    assert statuses == {"blob::clean": "passed", "blob::noise[eps=0.01]": "passed",
                        "blob::noise[eps=0.6]": "error"}
    errored = next(r for r in report["results"] if r["status"] == "error")
    assert errored["accuracy"] is None and "NaN" in errored["error"] and errored["passed"] is False
    assert report["summary"] == {"gates": 3, "passed": 2, "failed": 0, "error": 1, "measured": 0,
                                 "not_run": 0, "partial": 0}
    assert report["complete"] is False and report["interrupted"] is False
    for text in ((pytester.path / "s.md").read_text(), summary.read_text()):
        assert text.startswith("### :x: advrobust: 3 gates: 2 passed, 1 error")
        assert "**Gates that errored**" in text and "| ERROR |" in text
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    assert cases["noise[eps=0.6]"]["advrobust_status"] == "error"
    assert "NaN" in cases["noise[eps=0.6]"]["advrobust_error"]
    assert cases["clean"]["advrobust_status"] == "passed"


def test_when_every_gate_errors_the_section_still_says_so(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, MIXED)
    (pytester.path / "data.npz").unlink()
    np.savez(pytester.path / "data.npz", x=x[:, :3], y=y)  # the model takes 8 features
    result = pytester.runpytest(*RUN, "--advrobust-json=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*= advrobust =*", "3 gates: 3 errors"])
    report = json.loads((pytester.path / "r.json").read_text())
    assert [r["status"] for r in report["results"]] == ["error"] * 3


# -- 2. a config path that is wrong is a usage error --------------------------------------
@pytest.mark.parametrize("target, words", [
    ("ci/robustnes.toml", "does not exist"),
    ("ci", "is a directory"),
    ("ci/other.toml", "has no [tool.advrobust] table"),
    ("ci/mentions.toml", "has no [tool.advrobust] table"),
])
def test_a_wrong_config_path_is_a_usage_error(pytester: pytest.Pytester, target: str, words: str) -> None:
    (pytester.path / "ci").mkdir()
    (pytester.path / "ci" / "other.toml").write_text("[tool.black]\nline-length = 99\n")
    (pytester.path / "ci" / "mentions.toml").write_text("# advrobust lives elsewhere\n[tool.x]\na = 1\n")
    pytester.makepyfile(test_plain="def test_ok():\n    pass\n")
    result = pytester.runpytest(*RUN, f"--advrobust-config={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str() and "--advrobust-config" in result.stderr.str()


# -- 3. a retrained model is compared; changed data is not ---------------------------------
def test_a_retrained_model_is_compared_with_the_baseline(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    checks = '''
    [[tool.advrobust.checks]]
    attack = "fgsm"
    eps = [0.05, 0.15]
    min-accuracy = 0.001
    max-regression = 0.05
    '''
    strong = train_blob_model(x, y)
    _project(pytester.path, x, y, checks, model=strong)
    assert pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json").ret == 0

    # the same function in other weights (hidden units permuted): a new file, equal robustness
    same = train_blob_model(x, y)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        same[0].weight.copy_(strong[0].weight[order])
        same[0].bias.copy_(strong[0].bias[order])
        same[2].weight.copy_(strong[2].weight[:, order])
    torch.save(same.state_dict(), pytester.path / "weights.pt")
    equal = pytester.runpytest(*RUN, "-v", "--advrobust-baseline=base.json")
    assert equal.ret == 0, equal.stdout.str()
    equal.stdout.fnmatch_lines(["*2 compared, 0 regressed*",
                                "*model changed since baseline (compared all the same)*"])

    weak = train_blob_model(x, y, epochs=5)  # a worse retraining
    torch.save(weak.state_dict(), pytester.path / "weights.pt")
    fell = pytester.runpytest(*RUN, "--advrobust-baseline=base.json")
    assert fell.ret == pytest.ExitCode.TESTS_FAILED
    fell.stdout.fnmatch_lines(["*regression: accuracy * vs baseline *, a fall of * > max-regression 0.050*"])


def test_changed_data_behind_the_same_source_is_not_compared(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, _swap_checks(0, min_accuracy=0.0))
    pytester.makeconftest(SWAP)
    assert pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json").ret == 0
    np.savez(pytester.path / "data.npz", x=x[::-1].copy(), y=y[::-1].copy())  # same n, other order
    result = pytester.runpytest(*RUN, "-v", "--advrobust-baseline=base.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*changed data, not compared: swap eps=1 on blob*"])


# -- 4. partial runs never shrink the baseline -------------------------------------------
THREE = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "swap"
eps = 1.0
count = 30
min-accuracy = 0.95

[[tool.advrobust.checks]]
attack = "noise"
eps = 0.05
min-accuracy = 0.5
'''


def _baseline_keys(path: Path) -> dict[str, float]:
    return {k: v["accuracy"] for k, v in json.loads(path.read_text())["results"].items()}


def test_partial_runs_merge_into_the_baseline_and_say_what_did_not_run(
        pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, THREE)
    pytester.makeconftest(SWAP)
    red = pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json")
    assert red.ret == pytest.ExitCode.TESTS_FAILED  # swap fails its floor: no baseline from it
    assert not (pytester.path / "base.json").exists()
    red.stdout.fnmatch_lines(["ERROR: baseline not saved to base.json: 1 gate failed (swap eps=1 on "
                              "blob)*--advrobust-accept=blob::swap[[]eps=1[]]{count=30} (or all)."])
    full = pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json", "--advrobust-accept=all")
    assert full.ret == pytest.ExitCode.TESTS_FAILED  # accepted into the baseline, still red
    assert set(_baseline_keys(pytester.path / "base.json")) == {
        "blob::clean", "blob::swap[eps=1]{count=30}", "blob::noise[eps=0.05]"}

    # -k: one gate; the other two keep their entries
    one = pytester.runpytest(*RUN, "-k", "noise", "--advrobust-save-baseline=base.json")
    assert one.ret == 0
    assert len(_baseline_keys(pytester.path / "base.json")) == 3

    # -x: the run stops at the first failure; a gate it never reached (another model's, so
    # not computed in the same pass) is "not run", never passed
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace("count = 30", "count = 31") + textwrap.dedent('''
        [tool.advrobust.models.other]
        model = "blobmodel:build"
        weights = "weights.pt"
        [[tool.advrobust.models.other.checks]]
        attack = "noise"
        eps = 0.05
        min-accuracy = 0.5
        '''))
    stopped = pytester.runpytest(*RUN, "-x", "--advrobust-json=r.json", "--advrobust-accept=all",
                                 "--advrobust-markdown=s.md", "--advrobust-save-baseline=base.json")
    assert stopped.ret == pytest.ExitCode.TESTS_FAILED
    stopped.stdout.fnmatch_lines(["*other*noise*0.05*NOT RUN*", "4 gates: 2 passed, 1 failed, 1 not run"])
    statuses = {r["key"]: r["status"] for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    assert statuses["other::noise[eps=0.05]"] == "not run"
    markdown = (pytester.path / "s.md").read_text()
    assert markdown.startswith("### :x: advrobust: 4 gates: 2 passed, 1 failed, 1 not run")
    assert "**Gates not run**" in markdown
    entries = _baseline_keys(pytester.path / "base.json")
    assert set(entries) == {"blob::clean", "blob::swap[eps=1]{count=30}", "blob::swap[eps=1]{count=31}",
                            "blob::noise[eps=0.05]"}  # merged: nothing lost, nothing unmeasured added


def test_an_interrupted_run_saves_no_baseline_and_says_it_was_interrupted(
        pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, THREE + '\n[[tool.advrobust.checks]]\nattack = "interrupt"\n'
                                          'eps = 0.1\nmin-accuracy = 0.0\n')
    pytester.makeconftest(SWAP)
    (pytester.path / "base.json").write_text("keep me\n")
    # a subprocess: in-process pytester re-raises the inner run's KeyboardInterrupt
    result = pytester.runpytest_subprocess(*RUN, "--advrobust-save-baseline=base.json",
                                           "--advrobust-json=r.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert (pytester.path / "base.json").read_text() == "keep me\n"
    result.stdout.fnmatch_lines(["*baseline not saved to *base.json: the run was interrupted*"])
    assert json.loads((pytester.path / "r.json").read_text())["interrupted"] is True


# -- 5. and 6. report paths and permissions ----------------------------------------------
@pytest.mark.parametrize("option", ["--advrobust-json={dir}", "--advrobust-markdown={file}/s.md",
                                    "--advrobust-save-baseline={dir}", "--advrobust-plots={file}"])
def test_an_unwritable_report_path_is_a_usage_error_before_any_model_loads(
        pytester: pytest.Pytester, blobs, option: str) -> None:
    x, y = blobs
    _project(pytester.path, x, y, MIXED)
    (pytester.path / "weights.pt").write_bytes(b"not loaded: the run stops before")
    (pytester.path / "adir").mkdir()
    (pytester.path / "afile").write_text("x")
    result = pytester.runpytest(*RUN, option.format(dir="adir", file="afile"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pytest-advrobust: --advrobust-" in result.stderr.str()
    assert "weights.pt" not in result.stderr.str() + result.stdout.str()


def test_a_bad_step_summary_is_a_usage_error(pytester: pytest.Pytester, blobs, monkeypatch) -> None:
    x, y = blobs
    _project(pytester.path, x, y, MIXED)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path))
    result = pytester.runpytest(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "$GITHUB_STEP_SUMMARY" in result.stderr.str()


def test_reports_keep_the_permissions_of_the_umask_or_the_existing_file(tmp_path: Path) -> None:
    from pytest_advrobust.report.files import atomic_write_text

    old = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        existing = tmp_path / "old.json"
        existing.write_text("x")
        existing.chmod(0o640)
        atomic_write_text(existing, "{}")
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    finally:
        os.umask(old)


# -- 7. and 8. ids: unique, and round-trip through --lf ------------------------------------
def test_eps_values_that_print_alike_stay_apart(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, '[[tool.advrobust.checks]]\nattack = "noise"\n'
                                  'eps = [0.1, 0.1000001]\nmin-accuracy = 0.0\n')
    result = pytester.runpytest(*RUN, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::noise[[]eps=0.1[]]", "*::noise[[]eps=0.1000001[]]"])
    assert "advrobust" not in result.stdout.str().split("eps=0.1000001]")[-1]  # nothing ran: no table
    run = pytester.runpytest(*RUN, "--advrobust-json=r.json")
    assert run.ret == 0
    keys = [r["key"] for r in json.loads((pytester.path / "r.json").read_text())["results"]]
    assert keys == ["blob::noise[eps=0.1]", "blob::noise[eps=0.1000001]"]


def test_last_failed_reruns_only_the_failed_gate(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, _swap_checks(30, min_accuracy=0.95) + '''
[[tool.advrobust.checks]]
attack = "noise"
eps = [0.01, 0.02]
min-accuracy = 0.5
''')
    pytester.makeconftest(SWAP)
    first = pytester.runpytest()
    first.assert_outcomes(passed=2, failed=1)
    again = pytester.runpytest("--lf")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*rerun previous 1 failure*"])
    deselect = pytester.runpytest("--deselect", "pyproject.toml::blob::noise[eps=0.01]")
    deselect.assert_outcomes(passed=1, failed=1, deselected=1)


# -- 10. meaningless gates are refused ---------------------------------------------------
@pytest.mark.parametrize("check, words", [
    ('attack = "fgsm"\neps = 0.1', "fgsm has no threshold, so it could never fail"),
    ('attack = "pgd"\neps = 0.1\nsteps = 0\nmin-accuracy = 0.5', "steps: must be > 0, not 0"),
    ('attack = "pgd"\neps = 0.1\nrestarts = 0\nmin-accuracy = 0.5', "restarts: must be > 0, not 0"),
    ('attack = "universal"\neps = 0.1\nfit-samples = 0\nmin-accuracy = 0.5', "fit-samples: must be > 0"),
    ('attack = "spsa"\neps = 0.1\ndelta = 0.0\nmin-accuracy = 0.5', "delta: must be > 0"),
    ('attack = "spsa"\neps = 0.1\nqueries = 10\nmin-accuracy = 0.5', "cannot take one step"),
    ('attack = "fgsm"\neps = 0.1\nreport-only = true\nmin-accuracy = 0.5', "report-only: is true but"),
])
def test_checks_that_could_not_mean_anything_are_refused(pytester: pytest.Pytester, blobs,
                                                          check: str, words: str) -> None:
    x, y = blobs
    _project(pytester.path, x, y, f"[[tool.advrobust.checks]]\n{check}\n")
    result = pytester.runpytest(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str()


# -- 11. both sides of every threshold -----------------------------------------------------
# 240 samples, all right when clean: 24 swapped is accuracy 0.9 and drop 0.1 exactly
@pytest.mark.parametrize("count, thresholds, passes", [
    (24, {"min_accuracy": 0.9}, True), (25, {"min_accuracy": 0.9}, False),
    (24, {"max_drop": 0.1}, True), (25, {"max_drop": 0.1}, False),
])
def test_threshold_boundaries_end_to_end(pytester: pytest.Pytester, blobs, blob_model, count: int,
                                         thresholds: dict, passes: bool) -> None:
    x, y = blobs
    _project(pytester.path, x, y, _swap_checks(count, **thresholds), model=blob_model)
    pytester.makeconftest(SWAP)
    result = pytester.runpytest(*RUN, "--advrobust-json=r.json")
    entry = json.loads((pytester.path / "r.json").read_text())["results"][0]
    assert (entry["correct"], entry["clean_correct"], entry["n"]) == (240 - count, 240, 240)
    assert entry["status"] == ("passed" if passes else "failed")
    assert result.ret == (0 if passes else pytest.ExitCode.TESTS_FAILED)


@pytest.mark.parametrize("count, passes", [(24, True), (25, False)])
def test_max_regression_boundary_end_to_end(pytester: pytest.Pytester, blobs, blob_model, count: int,
                                            passes: bool) -> None:
    x, y = blobs
    _project(pytester.path, x, y, _swap_checks(0, min_accuracy=0.0, max_regression=0.1), model=blob_model)
    pytester.makeconftest(SWAP)
    assert pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json").ret == 0
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace("count = 0", f"count = {count}"))
    baseline = json.loads((pytester.path / "base.json").read_text())
    entry = baseline["results"].pop("blob::swap[eps=1]{count=0}")  # the key holds count: rename
    baseline["results"][f"blob::swap[eps=1]{{count={count}}}"] = entry
    entry["fingerprint"]["options"]["count"] = count
    (pytester.path / "base.json").write_text(json.dumps(baseline))
    result = pytester.runpytest(*RUN, "--advrobust-baseline=base.json")
    assert result.ret == (0 if passes else pytest.ExitCode.TESTS_FAILED), result.stdout.str()


def _result(correct: int, n: int = 240, **kwargs) -> AttackResult:
    return AttackResult(model="m", attack="fgsm", eps=0.1, correct=correct, clean_correct=n, n=n, **kwargs)


def test_the_interval_rule_boundary() -> None:
    _, high = wilson_interval(200, 240)
    assert judge(_result(200, baseline_accuracy=high)).passed  # at the interval's edge: noise
    assert not judge(_result(200, baseline_accuracy=high + 1e-9)).passed
    assert "baseline above the 95% interval" in judge(_result(200, baseline_accuracy=high + 1e-9)).message


def test_unit_boundaries_of_every_threshold() -> None:
    assert judge(_result(216, min_accuracy=0.9)).passed
    assert not judge(_result(215, min_accuracy=0.9)).passed
    assert judge(_result(216, max_drop=0.1)).passed
    assert not judge(_result(215, max_drop=0.1)).passed
    assert judge(_result(216, baseline_accuracy=1.0, max_regression=0.1)).passed
    assert not judge(_result(215, baseline_accuracy=1.0, max_regression=0.1)).passed
    measured = judge(_result(0, report_only=True, min_accuracy=None))
    assert measured.passed and "measured (report-only, no verdict)" in measured.message


def test_a_surrogate_that_rejects_the_inputs_errors_the_transfer_gate_only(
        pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    _project(pytester.path, x, y, MIXED + textwrap.dedent('''
        [[tool.advrobust.checks]]
        attack = "transfer"
        surrogate = "narrow"
        eps = 0.1
        min-accuracy = 0.001

        [tool.advrobust.models.narrow]
        model = "narrowmodel:build"
        [[tool.advrobust.models.narrow.checks]]
        attack = "noise"
        eps = 0.1
        report-only = true
        '''))
    (pytester.path / "narrowmodel.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Linear(3, 4)\n")
    result = pytester.runpytest(*RUN, "-k", "blob")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*surrogate 'narrow' failed on the target's inputs (shape (240, 8))*",
                                 "4 gates: 3 passed, 1 error"])
