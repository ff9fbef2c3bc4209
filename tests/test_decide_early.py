"""decide-early through the engine, the API and pytest, the way users meet it: a clear gate
stops after a stage, a borderline one runs to the end, the reports say which, and the
figures depend neither on the batch size nor on xdist."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from digits_project import digits_split, trained_mlp, write_digits_project
from project import gate_session, save_torchscript
from pytest_advrobust import evaluate
from pytest_advrobust.errors import AdvRobustWarning

RUN = ("-p", "no:cacheprovider", "-q")

#: the digits MLP on its 540 held-out samples: clean 0.978, fgsm 0.746 at eps 0.05 and 0.270
#: at eps 0.1; noise at 0.1 drops 0.031
CHECKS = '''
[[tool.advrobust.models.mlp.checks]]
attack = "clean"
min-accuracy = 0.5

[[tool.advrobust.models.mlp.checks]]
attack = "fgsm"
eps = [0.05, 0.1]
min-accuracy = 0.3

[[tool.advrobust.models.mlp.checks]]
attack = "noise"
eps = 0.1
max-drop = 0.1
'''


def digits(root: Path, checks: str = CHECKS, *, early: str = "decide-early = true\n",
           batch_size: int = 256) -> Path:
    path = write_digits_project(root, checks)
    text = path.read_text().replace("batch-size = 256", f"batch-size = {batch_size}\n{early}")
    path.write_text(text)
    return path


def by_label(results) -> dict:
    return {r.label: r for r in results}


def test_a_clear_gate_stops_early_and_a_borderline_one_runs_to_the_end(pytester: pytest.Pytester) -> None:
    digits(pytester.path)
    result = pytester.runpytest(*RUN, "--advrobust-json=out.json", "--advrobust-markdown=out.md")
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*model*attack*eps*accuracy*95% CI*n*threshold*status*",
                                 "*mlp*clean*decided after 128 of 540*PASS*",
                                 "*mlp*fgsm*0.1*0.270*540*FAIL*",
                                 "decided after N of M: decide-early stopped the gate*"])
    # the borderline gate's failure reads as always: its figure is that of all the data
    assert "fgsm eps=0.1 on mlp: accuracy 0.270 < min-accuracy 0.300 (n=540, clean 0.978" in out
    report = {(r["attack"], r["eps"]): r for r in json.loads((pytester.path / "out.json").read_text())["results"]}
    clean = report[("clean", None)]
    assert (clean["n"], clean["samples"], clean["decided_early"], clean["status"]) == (128, 540, True, "passed")
    # the interval in the JSON is the one the decision used, and it lies above the threshold
    low, high = clean["decision"]["intervals"]["accuracy"]
    assert (clean["ci_low"], clean["ci_high"]) == (low, high) and low >= 0.5
    assert clean["decision"]["error"] == 1e-3 and clean["decision"]["stage"] == 1
    assert clean["fingerprint"]["n"] == 540  # compares with a baseline measured on all the data
    borderline = report[("fgsm", 0.1)]
    assert (borderline["n"], borderline["samples"], borderline["decided_early"]) == (540, 540, False)
    assert borderline["decision"] is None
    markdown = (pytester.path / "out.md").read_text()
    assert "| decided after 128 of 540 |" in markdown and "_decided after N of M:" in markdown


def test_serial_and_xdist_write_the_same_report(pytester: pytest.Pytester) -> None:
    digits(pytester.path, batch_size=64)
    pytester.runpytest(*RUN, "--advrobust-json=serial.json").assert_outcomes(passed=3, failed=1)
    pytester.runpytest(*RUN, "-n", "2", "--advrobust-json=xdist.json").assert_outcomes(passed=3, failed=1)
    serial = (pytester.path / "serial.json").read_text()
    assert serial == (pytester.path / "xdist.json").read_text()
    assert '"decided_early": true' in serial


RANDOM_CHECKS = CHECKS + '''
[[tool.advrobust.models.mlp.checks]]
attack = "pgd"
eps = 0.05
steps = 3
min-accuracy = 0.2

[[tool.advrobust.models.mlp.checks]]
attack = "universal"
eps = 0.1
fit-samples = 100
steps = 5
min-accuracy = 0.3

[[tool.advrobust.models.mlp.checks]]
attack = "hypothesis"
eps = 0.05
samples = 12
max-examples = 10
report-only = true
'''


def test_the_figures_do_not_depend_on_the_batch_size(tmp_path) -> None:
    """Stages are cut in samples, random draws keyed by the sample's position: batches of
    37, 64 and 512 stop the same gates at the same stage with the same counts."""
    reports = []
    for size in (37, 64, 512):
        root = tmp_path / str(size)
        root.mkdir()
        digits(root, RANDOM_CHECKS, batch_size=size)
        results = evaluate(root / "pyproject.toml", conftest=False)
        reports.append([{**r.to_dict(), "artifacts": None} for r in results])  # saved in root
    assert reports[0] == reports[1] == reports[2]
    early = {r["attack"]: (r["n"], r["samples"]) for r in reports[0] if r["decided_early"]}
    assert early["clean"] == (128, 540) and "universal" in early
    hypothesis = next(r for r in reports[0] if r["attack"] == "hypothesis")
    assert hypothesis["samples"] == 12  # its cap, whatever order the pass reads in


def test_gates_run_to_the_end_measure_what_a_full_run_measures(tmp_path) -> None:
    """Only the order of the pass changes: a gate decide-early did not stop has the figures
    (and report entry) of a run without decide-early; one it stopped has the same verdict."""
    (tmp_path / "early").mkdir()
    (tmp_path / "full").mkdir()
    digits(tmp_path / "early", RANDOM_CHECKS)
    digits(tmp_path / "full", RANDOM_CHECKS, early="")
    early = {r.key: r for r in evaluate(tmp_path / "early" / "pyproject.toml", conftest=False)}
    full = {r.key: r for r in evaluate(tmp_path / "full" / "pyproject.toml", conftest=False)}
    stopped = [key for key, r in early.items() if r.decided_early]
    assert stopped and len(stopped) < len(early)
    for key, r in early.items():
        assert r.status == full[key].status, key
        if not r.decided_early:
            expected = full[key].to_dict()
            assert r.to_dict() == {**expected, "message": r.message}, key
            assert r.message == full[key].message


def test_early_verdicts_agree_with_the_full_data_over_many_orders(tmp_path) -> None:
    """End to end, 12 seeds (12 sample orders): every verdict decided early is the verdict
    of all the data, with thresholds at middling distances so gates stop at 256 or 512."""
    checks = '''
    [[tool.advrobust.models.mlp.checks]]
    attack = "clean"
    min-accuracy = 0.93
    [[tool.advrobust.models.mlp.checks]]
    attack = "fgsm"
    eps = [0.05, 0.1]
    min-accuracy = 0.66
    [[tool.advrobust.models.mlp.checks]]
    attack = "fgsm"
    eps = [0.04]
    max-drop = 0.15
    '''
    full_root = tmp_path / "full"
    full_root.mkdir()
    digits(full_root, checks, early="")
    full = {r.key: r.status for r in evaluate(full_root / "pyproject.toml", conftest=False)}
    decided = 0
    for seed in range(12):
        root = tmp_path / f"seed{seed}"
        root.mkdir()
        path = digits(root, checks)
        path.write_text(path.read_text().replace("seed = 0", f"seed = {seed}"))
        for r in evaluate(path, conftest=False):
            assert r.status == full[r.key], (seed, r.message)
            decided += r.decided_early and r.n >= 256
    assert decided >= 12


class Saturated(torch.nn.Module):
    """Logits x 1e4: the same decisions, a cross-entropy gradient of exactly zero."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * 1e4


def test_a_masked_gradient_still_fails_when_deciding_early(tmp_path) -> None:
    _, _, x, y = digits_split()
    save_torchscript(Saturated(trained_mlp()), tmp_path / "saturated.pt")
    checks = '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\nmin-accuracy = 0.5\n'
    session = gate_session(tmp_path, "saturated.pt", x, y, checks=checks, extra="decide-early = true\n")
    (fgsm,) = session.run_all()
    assert fgsm.accuracy > 0.9  # FGSM cannot move a sample: accuracy alone would pass at once
    assert fgsm.status == "failed" and fgsm.decided_early and fgsm.decision["failing"][0] == "masking"
    assert "gradient masking suspected" in fgsm.message and "decided after" in fgsm.message
    low, _ = fgsm.decision["intervals"]["masking"]
    assert low > 0.05


def test_report_only_gates_have_nothing_to_decide_and_stop_at_the_first_stage(tmp_path) -> None:
    checks = CHECKS + '''
    [[tool.advrobust.models.mlp.checks]]
    attack = "noise"
    eps = 0.05
    report-only = true
    [[tool.advrobust.models.mlp.checks]]
    attack = "noise"
    eps = 0.02
    report-only = true
    decide-early = false
    '''
    digits(tmp_path, textwrap.dedent(checks))
    results = by_label(evaluate(tmp_path / "pyproject.toml", conftest=False))
    stopped = results["noise eps=0.05 on mlp"]
    assert (stopped.status, stopped.n, stopped.decided_early) == ("measured", 128, True)
    assert "nothing to decide" in stopped.message
    kept = results["noise eps=0.02 on mlp"]  # the check keeps its figure on all the data
    assert (kept.status, kept.n, kept.decided_early) == ("measured", 540, False)


# -- loaders that yield batches in their own order ----------------------------------------
LOADER = '''
import numpy as np

def batches():
    data = np.load("digits.npz")
    x, y = data["x"], data["y"]
    order = {order}
    for start in range(0, len(y), 50):
        yield x[order[start:start + 50]], y[order[start:start + 50]]
'''


def _stream_project(root: Path, order: str, module: str) -> Path:
    """The digits as a loader ``module:batches`` yielding batches of 50 in ``order`` (a
    module name of its own per test: an imported loader stays in ``sys.modules``)."""
    path = digits(root)
    (root / f"{module}.py").write_text(LOADER.format(order=order))
    path.write_text(path.read_text().replace('data = "digits.npz"', f'data = "{module}:batches"'))
    return path


def test_a_class_sorted_stream_is_measured_in_full_with_a_warning(pytester: pytest.Pytester) -> None:
    _stream_project(pytester.path, "np.argsort(y, kind='stable')", "sorted_stream")
    result = pytester.runpytest(*RUN, "--advrobust-json=out.json", "-W", "always::pytest_advrobust.errors.AdvRobustWarning")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*decide-early: the first 128 labels of the data's own order look sorted*"])
    report = json.loads((pytester.path / "out.json").read_text())["results"]
    assert all(r["n"] == r["samples"] and not r["decided_early"] for r in report)


def test_a_shuffled_stream_decides_once_it_has_shown_every_class(tmp_path, monkeypatch) -> None:
    path = _stream_project(tmp_path, "np.random.default_rng(7).permutation(len(y))", "shuffled_stream")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdvRobustWarning)  # no sortedness warning here
        results = by_label(evaluate(path, conftest=False))
    clean = results["clean on mlp"]
    assert clean.decided_early and clean.n == 128 and clean.samples == 540  # read to its end
    assert clean.fingerprint["n"] == 540
    assert results["fgsm eps=0.1 on mlp"].n == 540


def test_a_stream_that_has_not_shown_every_class_does_not_stop(tmp_path, monkeypatch) -> None:
    """Labels 0-8 shuffled first (486 samples), every 9 after them: no stage counts before
    the 9s come, so the clean gate, settled at 128 in a shuffled order, stops at 512."""
    order = ("np.concatenate([np.random.default_rng(1).permutation(np.flatnonzero(y != 9)), "
             "np.flatnonzero(y == 9)])")
    path = _stream_project(tmp_path, order, "nines_last_stream")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    results = by_label(evaluate(path, conftest=False))
    assert all(r.decision is None or r.decision["stage"] == 3 for r in results.values())
    assert results["clean on mlp"].n == 512


# -- shards and baselines -----------------------------------------------------------------
def test_shards_are_refused_with_decide_early(pytester: pytest.Pytester) -> None:
    digits(pytester.path)
    result = pytester.runpytest(*RUN, "--advrobust-shard=1/2", "--advrobust-json=s.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--advrobust-shard=1/2 cannot be used with decide-early*"
                                 "--advrobust-no-decide-early*"])
    ok = pytester.runpytest(*RUN, "--advrobust-shard=1/2", "--advrobust-json=s.json",
                            "--advrobust-no-decide-early")
    assert ok.ret == pytest.ExitCode.OK


def test_a_baseline_is_saved_from_figures_on_all_the_data(pytester: pytest.Pytester) -> None:
    """Saving measures every gate in full (said in the summary); a later run decides early
    against it, compared like with like, and a fall below it is decided too."""
    digits(pytester.path)
    saved = pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json", "--advrobust-accept=all")
    saved.assert_outcomes(passed=3, failed=1)
    saved.stdout.fnmatch_lines(["*decide-early set aside for this run*--advrobust-save-baseline "
                                "measures every gate on all its data*"])
    entries = json.loads((pytester.path / "base.json").read_text())["results"]
    assert all(entry["n"] == 540 for entry in entries.values())
    # the default baseline rule (a fall beyond the 95% interval of all the data) is as tight
    # as the data: a gate at its baseline figure runs to the end. With max-regression, a
    # gate clearly above baseline - max-regression stops early, compared like with like
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace("decide-early = true", "decide-early = true\nmax-regression = 0.1"))
    compared = pytester.runpytest(*RUN, "--advrobust-baseline=base.json", "--advrobust-json=out.json")
    compared.assert_outcomes(passed=3, failed=1)
    compared.stdout.fnmatch_lines(["*4 compared, 0 regressed, 0 new, 0 changed config*"])
    report = json.loads((pytester.path / "out.json").read_text())["results"]
    assert any(r["decided_early"] and r["baseline_accuracy"] is not None for r in report)
    # a baseline the clean accuracy cannot reach: the regression is decided after 128
    config.write_text(config.read_text().replace("max-regression = 0.1", ""))
    key = next(k for k in entries if k.endswith("::clean"))
    entries[key].update(accuracy=1.0, correct=540)
    (pytester.path / "high.json").write_text(json.dumps({"format": "pytest-advrobust-baseline",
                                                         "version": 1, "results": entries}))
    fell = pytester.runpytest(*RUN, "--advrobust-baseline=high.json", "--advrobust-json=fell.json")
    fell.assert_outcomes(passed=2, failed=2)
    clean = next(r for r in json.loads((pytester.path / "fell.json").read_text())["results"]
                 if r["attack"] == "clean")
    assert clean["decided_early"] and clean["decision"]["failing"] == ["regression"]
    assert "regression: accuracy" in clean["message"]


def test_the_report_pipeline_never_saves_a_figure_decided_early(tmp_path) -> None:
    from pytest_advrobust.report.pipeline import ReportTargets, RunRecord, write_reports
    from pytest_advrobust.results import AttackResult

    early = AttackResult(model="m", attack="clean", eps=None, correct=120, clean_correct=120, n=128,
                         samples=540, decided_early=True, min_accuracy=0.5)
    written = write_reports(RunRecord(results=[early], complete=True),
                            ReportTargets(save_baseline=tmp_path / "base.json"))
    assert not (tmp_path / "base.json").exists()
    assert "1 gate was decided early on part of the data (clean on m)" in written.problems[0]


def test_config_keys_are_checked(tmp_path) -> None:
    from pytest_advrobust.errors import ConfigError
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    for bad, words in (('decide-early = "yes"', "decide-early: must be true or false"),
                       ("decide-early-error = 0.5", "decide-early-error: 0.5 is outside (0, 0.1]"),
                       ("decide-early-error = 0", "is outside (0, 0.1]")):
        (tmp_path / "pyproject.toml").write_text(
            f'[tool.advrobust]\nmodel = "m.onnx"\ndata = "d.npz"\n{bad}\n'
            '[[tool.advrobust.checks]]\nattack = "clean"\nmin-accuracy = 0.5\n')
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            RobustnessSession(plugin_manager().hook, tmp_path / "pyproject.toml")


def test_the_command_line_turns_it_on_and_off(pytester: pytest.Pytester) -> None:
    digits(pytester.path, early="")  # the config says nothing
    assert "decided after" not in pytester.runpytest(*RUN).stdout.str()
    on = pytester.runpytest(*RUN, "--advrobust-decide-early")
    on.assert_outcomes(passed=3, failed=1)
    on.stdout.fnmatch_lines(["*clean*decided after 128 of 540*PASS*"])
    digits(pytester.path)  # now the config says decide-early = true
    off = pytester.runpytest(*RUN, "--advrobust-no-decide-early")
    off.assert_outcomes(passed=3, failed=1)
    assert "decided after" not in off.stdout.str()
