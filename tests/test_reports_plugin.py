"""Reports as a user meets them: one pytester run with every output, then baselines."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

import pytest

from project import write_project

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.05, 0.15]
min-accuracy = 0.1

[[tool.advrobust.checks]]
attack = "noise"
eps = [0.05, 0.3]
max-drop = 0.5

[[tool.advrobust.checks]]
attack = "universal"
report-only = true
eps = 0.2
fit-samples = 120
steps = 5
'''
RUN = ("-p", "no:cacheprovider")


@pytest.fixture
def project(pytester: pytest.Pytester, blobs):
    x, y = blobs
    return write_project(pytester.path, x, y, CHECKS)


def _gate_properties(xml_path) -> dict[str, dict[str, str]]:
    cases = ET.parse(xml_path).getroot().iter("testcase")
    return {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
            for case in cases}


def test_one_run_writes_every_report(pytester: pytest.Pytester, project, monkeypatch) -> None:
    from matplotlib.image import imread

    summary = pytester.path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    with project.open("a") as handle:  # one failing gate, to check failures carry figures too
        handle.write('\n[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.2\nmin-accuracy = 0.99\n')
    result = pytester.runpytest(*RUN, "--junitxml", "out/junit.xml", "--advrobust-json", "out/r.json",
                                "--advrobust-markdown", "out/summary.md", "--advrobust-plots", "out/plots",
                                "--advrobust-save-baseline", "out/baseline.json",
                                "--advrobust-accept", "blob::fgsm[eps=0.2]")
    result.assert_outcomes(passed=6, failed=1)
    # a red run saves its baseline only because the failing gate's fall is accepted, and says so
    result.stdout.fnmatch_lines(["accepted into the baseline (--advrobust-accept): fgsm eps=0.2 on blob"])
    out = pytester.path / "out"

    properties = _gate_properties(out / "junit.xml")
    assert set(properties) == {"clean", "fgsm[eps=0.05]", "fgsm[eps=0.15]", "noise[eps=0.05]",
                               "noise[eps=0.3]", "universal[eps=0.2]", "fgsm[eps=0.2]"}
    report = {(r["attack"], r["eps"]): r for r in json.loads((out / "r.json").read_text())["results"]}
    for name, props in properties.items():
        for key in ("accuracy", "eps", "attack", "model", "threshold", "ci_low", "ci_high"):
            assert f"advrobust_{key}" in props, (name, key)
        eps = float(props["advrobust_eps"]) if props["advrobust_eps"] else None
        entry = report[(props["advrobust_attack"], eps)]
        assert float(props["advrobust_accuracy"]) == pytest.approx(entry["accuracy"], abs=1e-6)
        assert props["advrobust_model"] == "blob"
    failing = properties["fgsm[eps=0.2]"]
    assert failing["advrobust_threshold"] == ">= 0.990"
    assert float(failing["advrobust_accuracy"]) < 0.99

    for entry in report.values():
        assert entry["ci_low"] <= entry["accuracy"] <= entry["ci_high"]
        assert entry["fingerprint"]["n"] == entry["n"]
        # fgsm draws its interior points' scales, noise its signs too
        assert entry["fingerprint"]["seed"] == (0 if entry["attack"] in ("noise", "fgsm") else None)

    markdown = (out / "summary.md").read_text()
    lines = markdown.splitlines()
    assert lines[0] == "### :x: advrobust: 7 gates: 5 passed, 1 failed, 1 measured"
    rows = [line for line in lines if line.startswith("| blob |")]
    assert len(rows) == 7
    fgsm = next(r for r in rows if "| fgsm | 0.15 |" in r)
    entry = report[("fgsm", 0.15)]
    assert f"| {entry['accuracy']:.3f} | {entry['ci_low']:.3f}-{entry['ci_high']:.3f} |" in fgsm
    assert "- `fgsm eps=0.2 on blob: accuracy" in markdown and "< min-accuracy 0.990" in markdown
    assert "**Accepted into the baseline**" in markdown
    assert report[("fgsm", 0.2)]["accepted"] is True and not report[("fgsm", 0.15)]["accepted"]
    # the step summary is the same text, but names the plots where the file links them (a
    # relative link leads nowhere from a GitHub run page)
    head, files = markdown.split("**Files**\n\n", 1)
    assert files.splitlines()[0] == "- [blob-linearity.png](plots/blob-linearity.png)"
    assert summary.read_text() == "earlier step\n\n" + head + "**Files**\n\n" + "".join(
        f"- `out/plots/{line.split('](plots/')[1][:-1]}`\n" for line in files.splitlines())

    baseline = json.loads((out / "baseline.json").read_text())
    assert baseline["format"] == "pytest-advrobust-baseline" and baseline["version"] == 1
    assert len(baseline["results"]) == 7

    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["blob-linearity.png", "blob-robustness.png", "blob-universal-eps0.2-fold1.png",
                    "blob-universal-eps0.2-fold2.png"]
    for name in pngs:
        image = imread(out / "plots" / name)
        assert image.shape[0] >= 150 and image.shape[1] >= 300, (name, image.shape)
        assert image[..., :3].std() > 0.05, name  # not a blank canvas


def test_same_baseline_passes_and_a_better_one_fails_one_gate(pytester: pytest.Pytester, project) -> None:
    first = pytester.runpytest(*RUN, "--advrobust-save-baseline", "base.json")
    first.assert_outcomes(passed=6)
    same = pytester.runpytest(*RUN, "--advrobust-baseline", "base.json")
    same.assert_outcomes(passed=6)
    same.stdout.fnmatch_lines(["*advrobust baseline*", "6 compared, 0 regressed, 0 new, 0 changed config, "
                               "0 in the baseline but not run"])

    document = json.loads((pytester.path / "base.json").read_text())
    key = "blob::fgsm[eps=0.15]"
    old = document["results"][key]["accuracy"]
    document["results"][key]["accuracy"] = round(old + 0.1, 6)
    (pytester.path / "better.json").write_text(json.dumps(document))
    worse = pytester.runpytest(*RUN, "--advrobust-baseline", "better.json", "-v")
    worse.assert_outcomes(passed=5, failed=1)
    worse.stdout.fnmatch_lines([f"*FAILED pyproject.toml::blob::fgsm[[]eps=0.15[]]*"])
    worse.stdout.fnmatch_lines([f"fgsm eps=0.15 on blob: regression: accuracy {old:.3f} vs baseline "
                                f"{old + 0.1:.3f} (baseline above the 95% interval)*"])
    worse.stdout.fnmatch_lines(["*-0.100 (was *", "regression: fgsm eps=0.15 on blob"])


def test_changed_config_is_reported_not_compared(pytester: pytest.Pytester, project) -> None:
    pytester.runpytest(*RUN, "--advrobust-save-baseline", "base.json").assert_outcomes(passed=6)
    text = project.read_text().replace("seed = 0\n", "").replace("eps = [0.05, 0.3]\nmax-drop",
                                                                   "eps = [0.05, 0.25]\nmax-drop")
    project.write_text(text.replace('batch-size = 64\n', 'batch-size = 64\nseed = 3\n'))
    result = pytester.runpytest(*RUN, "--advrobust-baseline", "base.json")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines([
        "*changed config, not compared: noise eps=0.05 on blob (differs in seed)",
        "*new gate (not in the baseline): noise eps=0.25 on blob",
        "*not run (removed or deselected): blob::noise[[]eps=0.3[]]",
    ])
    # clean and universal draw no random numbers: the seed does not change them (fgsm draws
    # its interior points' scales)
    result.stdout.fnmatch_lines(["*changed config, not compared: fgsm eps=0.05 on blob (differs in seed)"])
    result.stdout.fnmatch_lines(["2 compared, 0 regressed, 1 new, 3 changed config, 1 in the "
                                 "baseline but not run"])


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"), ("{not json", "not valid JSON"),
    ('{"version": 1, "results": []}', "not a pytest-advrobust baseline"),
])
def test_bad_baseline_is_a_usage_error_naming_the_file(pytester: pytest.Pytester, project,
                                                       content, words) -> None:
    if content is not None:
        (pytester.path / "base.json").write_text(content)
    result = pytester.runpytest(*RUN, "--advrobust-baseline", "base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--advrobust-baseline: *base.json: *{words}*"])


def test_summary_compact_quiet_verbose_and_xdist(pytester: pytest.Pytester, project) -> None:
    quiet = pytester.runpytest(*RUN, "-q")
    quiet.stdout.fnmatch_lines(["*= advrobust =*", "model*attack*eps*accuracy*95% CI*threshold*status",
                                "6 gates: 5 passed, 1 measured"])
    assert "clean " not in quiet.stdout.lines[quiet.stdout.lines.index(
        next(l for l in quiet.stdout.lines if l.startswith("model")))].replace("attack", "")
    verbose = pytester.runpytest(*RUN, "-v")
    verbose.stdout.fnmatch_lines(["model*attack*eps*accuracy*95% CI*clean*n*threshold*vs baseline*status"])
    spread = pytester.runpytest(*RUN, "-n", "2", "-q")
    spread.assert_outcomes(passed=6)
    spread.stdout.fnmatch_lines(["*= advrobust =*", "blob*universal*0.2*", "6 gates: 5 passed, 1 measured"])


def test_progress_goes_through_logging(pytester: pytest.Pytester, project) -> None:
    """Each line names the model and every gate its pass computes (not only the first)."""
    live = pytester.runpytest(*RUN, "--log-cli-level=INFO", "-k", "clean or fgsm")
    live.stdout.fnmatch_lines(["*advrobust blob: batch 1/4 (from sample 0); gates: clean, fgsm 0.05/0.15*",
                               "*advrobust blob: batch 4/4 (from sample 192); gates: clean, fgsm 0.05/0.15*"])
    quiet = pytester.runpytest(*RUN, "-q", "-k", "clean")
    assert not [line for line in quiet.stdout.lines if "batch 1" in line]


def test_plots_without_matplotlib_is_a_clear_usage_error(pytester: pytest.Pytester, project,
                                                         monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = pytester.runpytest(*RUN, "--advrobust-plots", "plots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pip install pytest-advrobust[[]plots[]]*"])
