"""One judge and one report pipeline (issue 19): the merge is as strict as a run and takes
every gate setting from the config; reports escape text nobody checked; a run that measured
nothing claims nothing; never-fail checks are not passes; a red run saves no baseline unless
the fall is accepted; a crashed xdist worker loses nothing that finished; serial, ``-n 2``
and merged shards write the same JSON. One test (or one parametrised family) per item."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from project import train_blob_model, write_project
from pytest_advrobust.merge import main as merge_main

RUN = ("-p", "no:cacheprovider")

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = 0.05
min-accuracy = 0.5

[[tool.advrobust.checks]]
attack = "noise"
eps = [0.05, 0.1]
min-accuracy = 0.5
'''


def merge(*args: object) -> tuple[int, str]:
    out = io.StringIO()
    return merge_main(["merge", *map(str, args)], out=out), out.getvalue()


def shards(pytester: pytest.Pytester, count: int = 2, *extra: str, prefix: str = "s") -> list[Path]:
    paths = []
    for k in range(1, count + 1):
        result = pytester.runpytest(*RUN, *extra, f"--advrobust-shard={k}/{count}",
                                    f"--advrobust-json={prefix}{k}.json")
        assert result.ret == 0, result.stdout.str()
        paths.append(pytester.path / f"{prefix}{k}.json")
    return paths


@pytest.fixture
def project(pytester: pytest.Pytester, blobs) -> Path:
    x, y = blobs
    return write_project(pytester.path, x, y, CHECKS)


# -- 1. a merge of partial shards is partial: it never shrinks a baseline -------------------
def test_a_merge_of_partial_shards_merges_into_the_baseline_and_is_not_complete(
        pytester: pytest.Pytester, project, capsys) -> None:
    pytester.runpytest(*RUN, "--advrobust-save-baseline=base.json").assert_outcomes(passed=4)
    assert len(json.loads((pytester.path / "base.json").read_text())["results"]) == 4
    parts = shards(pytester, 2, "-k", "noise")
    assert all(json.loads(p.read_text())["complete"] is False for p in parts)  # -k deselected
    code, out = merge(*parts, "--baseline", "base.json", "--save-baseline", "base.json",
                      "--json", "merged.json")
    assert code == 0, out + capsys.readouterr().err
    assert len(json.loads((pytester.path / "base.json").read_text())["results"]) == 4
    merged = json.loads((pytester.path / "merged.json").read_text())
    assert merged["complete"] is False and len(merged["results"]) == 2
    assert "baseline saved (merged: this run's measured gates replaced, the others kept)" in out


# -- 2 and 4. thresholds and gate settings come from the config, never from shard files ----
@pytest.mark.parametrize("edit", [
    {"report_only": True}, {"min_accuracy": 0.1}, {"min_accuracy": -5}, {"min_accuracy": None},
    {"max_drop": 1.0}, {"diagnostics": {"inputs": {"allow_masking": True, "needs_gradient": False}}},
], ids=lambda e: next(iter(e)))
def test_shard_files_cannot_change_a_verdict(pytester: pytest.Pytester, blobs, edit) -> None:
    """A saturated model (logits x 1e4: a zero cross-entropy gradient) fails its fgsm gate
    as masked; no field of shard 1 (or of every shard) turns the merge green."""
    x, y = blobs
    model = train_blob_model(x, y)
    with torch.no_grad():
        model[2].weight.mul_(1e4)
        model[2].bias.mul_(1e4)
    write_project(pytester.path, x, y, CHECKS, model=model)
    whole = pytester.runpytest(*RUN, "--advrobust-json=whole.json")
    assert whole.ret == pytest.ExitCode.TESTS_FAILED
    parts = shards(pytester, 2)
    for index, path in enumerate(parts):
        document = json.loads(path.read_text())
        for result in document["results"]:
            result.update(edit)
        path.write_text(json.dumps(document))
        code, out = merge(*parts, "--json", "merged.json")
        assert code == 1, (index, out)
        assert (pytester.path / "merged.json").read_text() == (pytester.path / "whole.json").read_text()


# -- 3 and 4. impossible counts, wrong types, relabelled files: exit 2 naming file and field -
def _set(path: str, value: object):
    def edit(document: dict) -> None:
        target = document["results"][0]
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return edit


def _relabel(document: dict) -> None:  # shard 1's file passed off as shard 2's
    document["shard"]["index"] = 2
    for result in document["results"]:
        result["shard"]["index"] = 2


def _one_of_one(document: dict) -> None:  # shard 1 of 2 passed off as the whole run
    document["shard"]["count"] = 1
    for result in document["results"]:
        result["shard"].update(count=1)


BROKEN = {
    "negative n": (_set("n", -5), "'n' is -5; it must be a whole number >= 0"),
    "true as a count": (_set("correct", True), "'correct' is true; it must be a whole number"),
    "huge count": (_set("n", 10**30), "is more than the"),
    "correct above n": (_set("correct", 10**4), "correct = 10000 is more than n"),
    "string count": (_set("clean_correct", "7"), "'clean_correct' is '7'"),
    "string eps": (_set("eps", "0.1"), "'eps' is '0.1'"),
    "bool check": (_set("check", True), "'check' is true"),
    "list options": (_set("options", []), "'options' is []"),
    "string stats": (_set("stats", "x"), "'stats' is 'x'"),
    "null fingerprint": (_set("fingerprint", None), "'fingerprint' is null"),
    "string artifacts": (_set("artifacts", "a.npy"), "'artifacts' is 'a.npy'"),
    "negative zero gradients": (_set("shard.zero_gradient", -1), "'shard.zero_gradient' is -1"),
    "float samples": (_set("shard.samples", 240.0), "'shard.samples' is 240.0"),
    "key of another gate": (_set("key", "blob::noise[eps=0.3]"), "its key does not match"),
    "missing field": (lambda d: d["results"][0].pop("clean_correct"), "has no 'clean_correct' field"),
    "relabelled as another shard": (_relabel, "measured on the part of the data of another shard"),
    "one shard passed off as the whole": (_one_of_one, "holds 240 for this gate"),
    "interrupted": (lambda d: d.update(interrupted=True), "was interrupted"),
    "not a list of results": (lambda d: d.update(results={}), "no \"results\" list"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_shard_file_is_refused_with_exit_2_never_a_traceback(
        pytester: pytest.Pytester, project, capsys, name) -> None:
    edit, words = BROKEN[name]
    parts = shards(pytester, 2)
    document = json.loads(parts[0].read_text())
    edit(document)
    broken = pytester.path / "broken.json"
    broken.write_text(json.dumps(document))
    given = [broken] if name == "one shard passed off as the whole" else [broken, parts[1]]
    code, out = merge(*given)
    err = capsys.readouterr().err
    assert code == 2, out
    assert err.startswith("pytest-advrobust merge: merge error: ") and "Traceback" not in err
    assert words in err, err


def test_a_shard_copied_under_another_index_is_refused(pytester: pytest.Pytester, project, capsys) -> None:
    """Both files claim shard 1 and 2 of 2, but the second one measured shard 1's samples."""
    parts = shards(pytester, 2)
    document = json.loads(parts[0].read_text())
    _relabel(document)
    (pytester.path / "copy.json").write_text(json.dumps(document))
    code, _ = merge(parts[0], pytester.path / "copy.json")
    err = capsys.readouterr().err
    assert code == 2 and "measured on the part of the data of another shard than 2/2" in err


def test_report_paths_are_checked_before_the_shards(pytester: pytest.Pytester, project, capsys) -> None:
    (pytester.path / "out").mkdir()
    code, _ = merge("missing-1.json", "missing-2.json", "--json", "out")
    err = capsys.readouterr().err
    assert code == 2 and "--json=out" in err and "is a folder, not a file" in err


def test_the_merge_needs_the_config_the_shards_ran(pytester: pytest.Pytester, project, capsys,
                                                   tmp_path) -> None:
    parts = shards(pytester, 2)
    code, _ = merge(*parts, "--config", tmp_path / "nowhere.toml")
    assert code == 2 and "does not exist" in capsys.readouterr().err
    (pytester.path / "pyproject.toml").write_text(project.read_text().replace("min-accuracy = 0.9",
                                                                              "min-accuracy = 0.95"))
    code, _ = merge(*parts)
    assert code == 2 and "was run with another config than" in capsys.readouterr().err


def test_shard_file_fuzz_never_gives_a_traceback(pytester: pytest.Pytester, project, capsys) -> None:
    """Any single field of any result set to any JSON value: the merge exits 0, 1 or 2 and
    says so in words, never with a traceback."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    parts = shards(pytester, 2)
    original = json.loads(parts[0].read_text())
    fields = sorted({(i, key) for i, r in enumerate(original["results"]) for key in r})
    values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                          | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(field=st.sampled_from(fields), value=values)
    def check(field, value) -> None:
        document = json.loads(json.dumps(original))
        document["results"][field[0]][field[1]] = value
        target = pytester.path / "fuzzed.json"
        target.write_text(json.dumps(document))
        code, _ = merge(target, parts[1])
        err = capsys.readouterr().err
        assert code in (0, 1, 2) and "Traceback" not in err
        assert code == 0 or err.startswith("pytest-advrobust merge: ") or code == 1

    check()


# -- 5 and 6. text nobody checked cannot forge Markdown or break XML ------------------------
PAYLOAD = ("x` \n\n### :white_check_mark: advrobust: all 4 gates passed\n\n"
           "| blob | fgsm | 0.05 | 1.000 | PASS |\n<img src=x onerror=alert(1)>\n"
           "![p](https://example.invalid/x.png) [c](javascript:alert(1)) ``` \x1b[31mred\x00")


def _outside_code_spans(line: str) -> str:
    """``line`` with its inline code spans removed (CommonMark: a run of n backticks closes
    at the next run of exactly n)."""
    out, i = [], 0
    while i < len(line):
        if line[i] == "`":
            run = len(re.match(r"`+", line[i:]).group())
            close = re.search(rf"(?<!`)`{{{run}}}(?!`)", line[i + run:])
            if close:
                i += run + close.end()
                continue
            out.append(line[i:i + run])
            i += run
            continue
        out.append(line[i])
        i += 1
    return "".join(out)


def test_an_exception_text_cannot_forge_the_markdown_summary(pytester: pytest.Pytester, blobs,
                                                             monkeypatch) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS)
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace('data = "data.npz"', 'data = "loader:load"'))
    (pytester.path / "loader.py").write_text(f"def load():\n    raise ValueError({PAYLOAD!r})\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "step.md"))
    result = pytester.runpytest(*RUN, "--advrobust-markdown=s.md", "--junitxml=j.xml")
    result.assert_outcomes(failed=4)
    text = (pytester.path / "s.md").read_text()
    assert (pytester.path / "step.md").read_text() == text
    lines = text.splitlines()
    assert lines[0] == "### :x: advrobust: 4 gates: 4 errors"
    assert "```" in text or "``" in text  # the payload is there, inside code spans
    visible = [_outside_code_spans(line) for line in lines]
    assert sum(v.startswith("#") for v in visible) == 1  # one heading: the real verdict
    assert sum(v.startswith("|") for v in visible) == 2 + 4  # header, rule, one row per gate
    for v in visible:
        assert "<" not in v and "](" not in v and "![" not in v, v
    assert all(line.strip() for line in lines[lines.index("**Gates that errored**") + 2:][:4])
    ET.parse(pytester.path / "j.xml")  # pytest's own JUnit stays valid


def test_control_characters_in_a_shard_keep_the_merged_junit_and_markdown_valid(
        pytester: pytest.Pytester, project) -> None:
    """A shard's model notes (words a custom loader's classifier may give) reach the merged
    failure messages: NUL and ANSI codes must not make the JUnit unparseable or colour the
    summary."""
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace("eps = [0.05, 0.1]\nmin-accuracy = 0.5",
                                                 "eps = [0.05, 0.12]\nmin-accuracy = 1.0"))
    parts = shards(pytester, 2)
    for path in parts:
        document = json.loads(path.read_text())
        for result in document["results"]:
            result["shard"]["notes"] = ["\x1b[31mred\x00 note\nwith a line"]
        path.write_text(json.dumps(document))
    code, out = merge(*parts, "--junitxml", "m.xml", "--markdown", "m.md")
    assert code == 1, out  # noise at eps 0.12 (0.983) is below min-accuracy 1.0
    root = ET.parse(pytester.path / "m.xml").getroot()
    failures = [f.get("message") for f in root.iter("failure")]
    assert len(failures) == 1 and "red\\x00 note" in failures[0] and "\x1b" not in failures[0]
    markdown = (pytester.path / "m.md").read_text()
    assert "\x00" not in markdown and "\x1b" not in markdown and "red  note with a line" in markdown
    assert "\x00" not in out and "\x1b" not in out


# -- 7. a run that measured nothing claims nothing -----------------------------------------
def test_a_run_that_selects_no_gate_does_not_claim_a_complete_report(pytester: pytest.Pytester,
                                                                      project) -> None:
    pytester.makepyfile(test_unit="def test_unit():\n    assert True\n")
    full = pytester.runpytest(*RUN, "--advrobust-json=r.json")
    full.assert_outcomes(passed=5)
    before = (pytester.path / "r.json").read_text()
    assert json.loads(before)["complete"] is True
    listed = pytester.runpytest(*RUN, "--co", "--advrobust-json=r.json")
    assert listed.ret == 0 and (pytester.path / "r.json").read_text() == before  # --co writes nothing
    unit = pytester.runpytest(*RUN, "test_unit.py", "--advrobust-json=r.json")
    unit.assert_outcomes(passed=1)
    unit.stdout.fnmatch_lines(["advrobust: no gate was selected*so nothing was measured."])
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["complete"] is False and report["results"] == [] and report["summary"]["gates"] == 0
    assert "no gate was selected" in report["note"]
    saved = pytester.runpytest(*RUN, "test_unit.py", "--advrobust-save-baseline=base.json")
    assert saved.ret == pytest.ExitCode.TESTS_FAILED and not (pytester.path / "base.json").exists()


# -- 8. checks that can never fail are measured, not passed ---------------------------------
def test_never_fail_checks_are_measured_with_a_note(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, '''
        [[tool.advrobust.checks]]
        attack = "noise"
        eps = 0.05
        min-accuracy = 0

        [[tool.advrobust.checks]]
        attack = "noise"
        eps = 0.1
        min-accuracy = -0.0

        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.05
        max-drop = 1

        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = [-0.0, 0.1]
        min-accuracy = 0.5
        ''')
    result = pytester.runpytest(*RUN, "--advrobust-json=r.json", "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*::blob::fgsm[[]eps=0[]] PASSED*"])  # -0.0 is 0, in ids too
    report = {(r["attack"], r["eps"], r["check"]): r for r in
              json.loads((pytester.path / "r.json").read_text())["results"]}
    for key in [("noise", 0.05, 0), ("noise", 0.1, 1), ("fgsm", 0.05, 2), ("fgsm", 0.0, 3)]:
        assert report[key]["status"] == "measured" and report[key]["note"], key
    assert "can never fail" in report[("noise", 0.05, 0)]["note"]
    assert "eps = 0 leaves the inputs unperturbed" in report[("fgsm", 0.0, 3)]["note"]
    assert report[("fgsm", 0.1, 3)]["status"] in ("passed", "failed")  # the real gate is judged
    result.stdout.fnmatch_lines(["5 gates: 1 passed, 4 measured"])


def test_a_never_fail_check_is_judged_when_a_baseline_can_fail_it(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, '''
        [[tool.advrobust.checks]]
        attack = "fgsm"
        eps = 0.15
        min-accuracy = 0
        max-regression = 0.01
        ''')
    pytester.runpytest(*RUN, "--advrobust-save-baseline=b.json").assert_outcomes(passed=1)
    document = json.loads((pytester.path / "b.json").read_text())
    entry = document["results"]["blob::fgsm[eps=0.15]"]
    entry["accuracy"], entry["correct"] = 0.9, 216
    (pytester.path / "b.json").write_text(json.dumps(document))
    worse = pytester.runpytest(*RUN, "--advrobust-baseline=b.json")
    worse.assert_outcomes(failed=1)
    worse.stdout.fnmatch_lines(["*regression: accuracy * vs baseline 0.900*"])


@pytest.mark.parametrize("eps, words", [
    (1e-320, "is below the float32 resolution of input-range [[]0, 1[]]"),
    (-0.1, "is negative"),
])
def test_eps_too_small_to_move_an_input_is_a_config_error(pytester: pytest.Pytester, blobs, eps, words) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, f'[[tool.advrobust.checks]]\nattack = "fgsm"\neps = {eps!r}\n'
                                        'min-accuracy = 0.5\n')
    result = pytester.runpytest(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*checks[[]0[]] eps: *{words}*"])


@pytest.mark.parametrize("eps", [True, "0.1", -0.1, 1e-320, float("nan")])
def test_the_python_api_validates_eps_as_the_config_does(blobs, eps) -> None:
    from pytest_advrobust import ConfigError, attack

    x, y = blobs
    with pytest.raises(ConfigError, match=r"eps"):
        attack(train_blob_model(x, y, epochs=5), x, y, "fgsm", eps=eps)


def test_the_python_api_validates_thresholds_as_the_config_does(blobs) -> None:
    from pytest_advrobust import ConfigError, attack

    x, y = blobs
    with pytest.raises(ConfigError, match=r"min-accuracy: 1.5 is outside \[0, 1\]"):
        attack(train_blob_model(x, y, epochs=5), x, y, "fgsm", eps=0.1, min_accuracy=1.5)
    with pytest.raises(ConfigError, match=r"max-drop: must be a finite number, not True"):
        attack(train_blob_model(x, y, epochs=5), x, y, "fgsm", eps=0.1, max_drop=True)


def test_the_fixture_validates_eps_as_the_config_does(pytester: pytest.Pytester, project) -> None:
    pytester.makepyfile(test_probe='''
        import pytest
        from pytest_advrobust import ConfigError

        @pytest.mark.parametrize("eps", [True, "0.1", -1.0])
        def test_probe(advrobust, eps):
            with pytest.raises(ConfigError, match="eps"):
                advrobust.fgsm(eps)
            assert advrobust.fgsm(0.1).eps == 0.1
    ''')
    pytester.runpytest(*RUN, "test_probe.py").assert_outcomes(passed=3)


# -- 9. a crashed xdist worker loses nothing that finished ----------------------------------
CRASH = '''
import os

def pytest_advrobust_add_attacks(registry):
    @registry.attack("crash")
    def crash(x, eps):
        os._exit(3)  # a segfault, an OOM kill: the worker process is gone
'''


def test_a_crashed_worker_keeps_finished_gates_and_names_the_crash(pytester: pytest.Pytester, blobs) -> None:
    pytest.importorskip("xdist")
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS + '''
        [[tool.advrobust.checks]]
        attack = "crash"
        eps = 0.2
        min-accuracy = 0.5
        ''')
    pytester.makeconftest(CRASH)
    result = pytester.runpytest_subprocess(*RUN, "-n", "1", "--advrobust-json=r.json",
                                           "--advrobust-markdown=s.md")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    statuses = {r["key"]: r for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    # the four gates that finished on the worker before it died keep their figures
    for key in ("blob::clean", "blob::fgsm[eps=0.05]", "blob::noise[eps=0.05]", "blob::noise[eps=0.1]"):
        assert statuses[key]["status"] == "passed" and statuses[key]["accuracy"] is not None, key
    crashed = statuses["blob::crash[eps=0.2]"]
    assert crashed["status"] == "error" and "worker running this gate crashed" in crashed["error"]
    assert "the run stopped early" not in (pytester.path / "s.md").read_text()
    result.stdout.fnmatch_lines(["*5 gates: 4 passed, 1 error*"])


# -- 11. a red run saves no baseline unless the fall is accepted ----------------------------
def test_accepting_a_fall_saves_the_baseline_and_says_so(pytester: pytest.Pytester, project) -> None:
    pytester.runpytest(*RUN, "--advrobust-save-baseline=b.json").assert_outcomes(passed=4)
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace("eps = [0.05, 0.1]\nmin-accuracy = 0.5",
                                                 "eps = [0.05, 0.12]\nmin-accuracy = 1.0"))
    (pytester.path / "b.json").unlink()
    unknown = pytester.runpytest(*RUN, "--advrobust-save-baseline=b.json", "--advrobust-accept=blob::fgsm")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--advrobust-accept: 'blob::fgsm' is not a gate of the config*"
                                  "did you mean 'blob::fgsm[[]eps=0.05[]]'*"])
    red = pytester.runpytest(*RUN, "--advrobust-save-baseline=b.json", "--advrobust-json=r.json")
    assert red.ret == pytest.ExitCode.TESTS_FAILED and not (pytester.path / "b.json").exists()
    red.stdout.fnmatch_lines(["ERROR: baseline not saved to b.json: 1 gate failed (noise eps=0.12 on "
                              "blob)*--advrobust-accept=blob::noise[[]eps=0.12[]] (or all)."])
    accepted = pytester.runpytest(*RUN, "--advrobust-save-baseline=b.json", "--advrobust-json=r.json",
                                  "--advrobust-accept=blob::noise[eps=0.12]")
    assert accepted.ret == pytest.ExitCode.TESTS_FAILED  # still red: accepting saves, it does not pass
    accepted.stdout.fnmatch_lines(["accepted into the baseline (--advrobust-accept): noise eps=0.12 on blob"])
    assert len(json.loads((pytester.path / "b.json").read_text())["results"]) == 4
    report = json.loads((pytester.path / "r.json").read_text())
    assert [r["key"] for r in report["results"] if r["accepted"]] == ["blob::noise[eps=0.12]"]


# -- 12. serial, -n 2 and merged shards write the same JSON ----------------------------------
def test_serial_xdist_and_merged_shards_write_byte_identical_json(pytester: pytest.Pytester, blobs) -> None:
    pytest.importorskip("xdist")
    x, y = blobs
    write_project(pytester.path, x, y, CHECKS + '''
        [[tool.advrobust.checks]]
        attack = "universal"
        eps = 0.2
        fit-samples = 64
        steps = 3
        min-accuracy = 0.1
        ''')
    pytester.runpytest(*RUN, "--advrobust-json=serial.json").assert_outcomes(passed=5)
    spread = pytester.runpytest_subprocess(*RUN, "-n", "2", "--advrobust-json=spread.json")
    spread.assert_outcomes(passed=5)
    serial = (pytester.path / "serial.json").read_text()
    assert (pytester.path / "spread.json").read_text() == serial
    universal = next(r for r in json.loads(serial)["results"] if r["attack"] == "universal")
    assert "zero_gradient" in universal["diagnostics"]  # measured whichever gates share its pass
    # per-class counts too (summed across shards): every gate's add up to its own counts
    for r in json.loads(serial)["results"]:
        assert [sum(c[f] for c in r["per_class"]) for f in ("n", "clean_correct", "correct")] == \
            [r["n"], r["clean_correct"], r["correct"]] and len(r["per_class"]) == 4, r["key"]
    code, out = merge(*shards(pytester, 2), "--json", "merged.json")
    assert code == 0, out
    assert (pytester.path / "merged.json").read_text() == serial


def test_the_engine_measures_and_knows_no_thresholds() -> None:
    """The engine module neither reads a threshold nor writes a file: those live in the
    judge and the report pipeline (one home for each rule)."""
    source = (Path(__file__).parents[1] / "pytest_advrobust" / "engine.py").read_text()
    for word in ("min_accuracy", "max_drop", "max_regression", "baseline", "report_only",
                 "allow_masking", "save_perturbation", "artifacts", '"fit-samples"', '"loss"',
                 '"surrogate"'):
        assert word not in source, word
