"""One evaluation sharded across jobs (``--advrobust-shard=K/N``), merged exactly, gated once
(``python -m pytest_advrobust merge``)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from digits_project import write_digits_project
from pytest_advrobust.merge import main as merge_main
from pytest_advrobust.merge import parse_shard

RUN = ("-p", "no:cacheprovider", "-q")

CHECKS = '''
[[tool.advrobust.models.mlp.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.models.mlp.checks]]
attack = "fgsm"
eps = [0.05, 0.2]
min-accuracy = 0.001

[[tool.advrobust.models.mlp.checks]]
attack = "noise"
eps = 0.2
min-accuracy = 0.5

[[tool.advrobust.models.mlp.checks]]
attack = "universal"
eps = 0.1
fit-samples = 100
steps = 5
min-accuracy = 0.5

[[tool.advrobust.models.mlp.checks]]
attack = "pgd"
eps = 0.05
steps = 5
restarts = 2
min-accuracy = 0.5

[[tool.advrobust.models.mlp.checks]]
attack = "spsa"
eps = 0.1
queries = 170
samples = 8
min-accuracy = 0.5
'''


def digits(root: Path, checks: str = CHECKS, batch_size: int = 64) -> Path:
    """The digits MLP on its 540 held-out samples: 9 batches of 64 (the last one of 28)."""
    path = write_digits_project(root, checks)
    path.write_text(path.read_text().replace("batch-size = 256", f"batch-size = {batch_size}"))
    return path


def merge(*args: object) -> tuple[int, str]:
    out = io.StringIO()
    return merge_main(["merge", *map(str, args)], out=out), out.getvalue()


def test_three_shards_merge_to_exactly_the_unsharded_reports(pytester: pytest.Pytester, capsys) -> None:
    digits(pytester.path)
    pytester.runpytest(*RUN, "--advrobust-json=full.json", "--junitxml=full.xml").assert_outcomes(passed=7)
    for k in (1, 2, 3):
        shard = pytester.runpytest(*RUN, f"--advrobust-shard={k}/3", f"--advrobust-json=shard-{k}.json")
        shard.assert_outcomes(passed=7)  # partial gates neither pass nor fail the job
        shard.stdout.fnmatch_lines([f"*7 gates measured on shard {k}/3: partial, no verdict*"])
        assert "PASS" not in shard.stdout.str() and "PARTIAL" in shard.stdout.str()
    shards = [pytester.path / f"shard-{k}.json" for k in (1, 2, 3)]
    documents = [json.loads(p.read_text()) for p in shards]
    assert [d["shard"] for d in documents] == [{"index": k, "count": 3} for k in (1, 2, 3)]
    assert all(r["status"] == "partial" and r["passed"] is None for d in documents for r in d["results"])
    # every shard measured a real part: 9 batches round-robin, 3 each
    clean_n = [next(r["n"] for r in d["results"] if r["attack"] == "clean") for d in documents]
    assert clean_n == [192, 192, 156]

    code, out = merge(*reversed(shards), "--json", pytester.path / "merged.json",
                      "--junitxml", pytester.path / "merged.xml")
    assert code == 0, out
    full = (pytester.path / "full.json").read_text()
    # the merged report is the unsharded one, byte for byte: every count of clean, fgsm,
    # noise, universal (one delta fitted on the same split), pgd and spsa
    assert (pytester.path / "merged.json").read_text() == full
    attacks = {r["attack"] for r in json.loads(full)["results"]}
    assert attacks == {"clean", "fgsm", "noise", "universal", "pgd", "spsa"}
    assert "all 7 gates passed" in out and "PASS" in out

    # the merge's JUnit has the properties pytest's own JUnit gives the gate items
    def cases(path: Path) -> dict[str, dict[str, str]]:
        root = ElementTree.parse(path).getroot()
        return {f"{c.get('classname')}::{c.get('name')}":
                {p.get("name"): p.get("value") for p in c.iter("property")} for c in root.iter("testcase")}
    assert cases(pytester.path / "merged.xml") == cases(pytester.path / "full.xml")

    # thresholds and gate settings come from the config, never from the shard files: a
    # shard file that says min_accuracy 0.99, report_only or allow_masking changes nothing
    edited = [json.loads(p.read_text()) for p in shards]
    for document in edited[:1]:
        for result in document["results"]:
            result.update(min_accuracy=0.99, report_only=True, max_drop=None,
                          diagnostics={"inputs": {"allow_masking": True}})
    for k, document in enumerate(edited, 1):
        (pytester.path / f"edited-{k}.json").write_text(json.dumps(document))
    code, out = merge(*[pytester.path / f"edited-{k}.json" for k in (1, 2, 3)],
                      "--json", pytester.path / "edited.json")
    assert code == 0 and (pytester.path / "edited.json").read_text() == full

    # shards that do not fit together: exit 2, naming the problem
    code, out = merge(shards[0], shards[2])
    assert code == 2 and "shard 2/3 is missing" in capsys.readouterr().err
    code, out = merge(shards[0], shards[1], shards[1], shards[2])
    assert code == 2 and "shard 2/3 is given twice" in capsys.readouterr().err
    code, out = merge(pytester.path / "full.json")
    assert code == 2 and "unsharded run" in capsys.readouterr().err
    other = json.loads(shards[2].read_text())
    other["config"] = "sha256:0000000000000000"
    (pytester.path / "other.json").write_text(json.dumps(other))
    code, out = merge(shards[0], shards[1], pytester.path / "other.json")
    assert code == 2 and "was run with another config than" in capsys.readouterr().err
    shuffled = json.loads(shards[1].read_text())
    for result in shuffled["results"]:
        result["shard"]["labels"] = "sha256:1111111111111111"
    (pytester.path / "shuffled.json").write_text(json.dumps(shuffled))
    code, out = merge(shards[0], pytester.path / "shuffled.json", shards[2])
    assert code == 2 and "shuffling loader" in capsys.readouterr().err
    short = json.loads(shards[2].read_text())
    for result in short["results"]:
        if result["attack"] == "fgsm":  # every gate's counts must tile the data, not clean's only
            # one sample fewer, right when clean and under attack (its class's counts too)
            row = next(r for r in result["per_class"] if r["correct"] and r["clean_correct"])
            for counts in (result, row):
                counts.update(n=counts["n"] - 1, correct=counts["correct"] - 1,
                              clean_correct=counts["clean_correct"] - 1)
    (pytester.path / "short.json").write_text(json.dumps(short))
    uneven = json.loads(shards[2].read_text())
    uneven["results"][0]["per_class"][0]["correct"] += 1  # per-class counts that do not add up
    (pytester.path / "uneven.json").write_text(json.dumps(uneven))
    code, out = merge(shards[0], shards[1], pytester.path / "uneven.json")
    assert code == 2 and "per-class counts do not add up to its counts" in capsys.readouterr().err
    code, out = merge(shards[0], shards[1], pytester.path / "short.json")
    assert code == 2 and ("counted 155 samples but its part of the data (540 samples in batches "
                          "of 64) holds 156") in capsys.readouterr().err
    fewer = json.loads(shards[2].read_text())
    fewer["results"] = [r for r in fewer["results"] if r["attack"] != "pgd"]
    (pytester.path / "fewer.json").write_text(json.dumps(fewer))
    code, out = merge(shards[0], shards[1], pytester.path / "fewer.json")
    err = capsys.readouterr().err  # a gate that errored in a shard is listed there, without result
    assert code == 2 and "gate 'mlp::pgd[eps=0.05]{restarts=2,steps=5}' has no result in shard 3/3" in err and "errored" in err
    empty_everywhere(shards, "pgd")  # errored in every shard: still caught
    code, out = merge(*[pytester.path / f"gone-{k}.json" for k in (1, 2, 3)])
    assert code == 2 and "has no result in shard 1/3" in capsys.readouterr().err
    fewer["gates"] = [g for g in fewer["gates"] if "pgd" not in g]  # deselected with -k there
    (pytester.path / "fewer.json").write_text(json.dumps(fewer))
    code, out = merge(shards[0], shards[1], pytester.path / "fewer.json")
    assert code == 2 and "selected different gates" in capsys.readouterr().err
    empty = [dict(json.loads(p.read_text()), results=[], gates=[]) for p in shards]
    for k, document in enumerate(empty, 1):
        (pytester.path / f"empty-{k}.json").write_text(json.dumps(document))
    code, out = merge(*[pytester.path / f"empty-{k}.json" for k in (1, 2, 3)])
    assert code == 2 and "no gate results" in capsys.readouterr().err  # never "all 0 gates passed"

    # a gate that fails on the merged figure fails the merge, though no shard failed it
    config = pytester.path / "pyproject.toml"
    config.write_text(config.read_text().replace('eps = [0.05, 0.2]\nmin-accuracy = 0.001',
                                                 'eps = [0.05, 0.2]\nmin-accuracy = 0.5'))
    for k in (1, 2, 3):
        shard = pytester.runpytest(*RUN, f"--advrobust-shard={k}/3", f"--advrobust-json=fail-{k}.json")
        shard.assert_outcomes(passed=7)
    code, out = merge(*[pytester.path / f"fail-{k}.json" for k in (1, 2, 3)],
                      "--junitxml", pytester.path / "fail.xml")
    assert code == 1
    assert "fgsm eps=0.2 on mlp: accuracy 0.00" in out and "< min-accuracy 0.500 (n=540" in out
    assert "7 gates: 6 passed, 1 failed" in out
    assert len(list(ElementTree.parse(pytester.path / "fail.xml").getroot().iter("failure"))) == 1
    code, out = merge(*shards)  # the shards of the old config do not fit the new one
    assert code == 2 and "was run with another config than" in capsys.readouterr().err


def empty_everywhere(shards: list[Path], attack: str) -> list[dict]:
    """The shards' reports as if ``attack``'s gate had errored in each (listed, no result)."""
    out = []
    for k, path in enumerate(shards, 1):
        document = json.loads(path.read_text())
        document["results"] = [r for r in document["results"] if r["attack"] != attack]
        (path.parent / f"gone-{k}.json").write_text(json.dumps(document))
        out.append(document)
    return out


def test_merge_applies_the_baseline_rule_and_saves_a_baseline(pytester: pytest.Pytester, capsys) -> None:
    digits(pytester.path, CHECKS.split("[[tool.advrobust.models.mlp.checks]]\nattack = \"noise\"")[0])
    for k in (1, 2):
        pytester.runpytest(*RUN, f"--advrobust-shard={k}/2", f"--advrobust-json=s{k}.json").assert_outcomes(passed=3)
    shards = [pytester.path / "s1.json", pytester.path / "s2.json"]
    code, out = merge(*shards, "--save-baseline", pytester.path / "base.json")
    assert code == 0
    saved = json.loads((pytester.path / "base.json").read_text())["results"]
    assert saved["mlp::fgsm[eps=0.05]"]["n"] == 540
    saved["mlp::fgsm[eps=0.05]"]["accuracy"] = 0.95  # the model "used to be" much stronger
    saved["mlp::fgsm[eps=0.05]"].pop("correct")
    document = json.loads((pytester.path / "base.json").read_text())
    document["results"] = saved
    (pytester.path / "base.json").write_text(json.dumps(document))
    code, out = merge(*shards, "--baseline", pytester.path / "base.json")
    # 0.744 on the CPU; a GPU's float sums may move a sample or two
    assert code == 1 and re.search(r"regression: accuracy 0\.7\d\d vs baseline 0\.950", out)


def test_shard_option_rejects_bad_values_and_partial_baselines(pytester: pytest.Pytester) -> None:
    assert parse_shard("2/3") == (2, 3) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    digits(pytester.path, CHECKS.split("[[tool.advrobust.models.mlp.checks]]\nattack = \"fgsm\"")[0])
    result = pytester.runpytest(*RUN, "--advrobust-shard=4/3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--advrobust-shard: '4/3': K must be one of 1..N*"])
    result = pytester.runpytest(*RUN, "--advrobust-shard=1/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--advrobust-shard=1/2 needs --advrobust-json=PATH*"])
    result = pytester.runpytest(*RUN, "--advrobust-shard=1/2", "--advrobust-json=s.json",
                                "--advrobust-save-baseline=b.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot be used with --advrobust-shard=1/2*merge*--save-baseline=PATH*"])
    assert not (pytester.path / "b.json").exists()


def test_more_shards_than_batches_give_empty_parts_that_still_merge(tmp_path) -> None:
    """N larger than the number of batches: some shards measure nothing, and say so with
    n = 0 instead of failing; the merge is still the whole."""
    path = digits(tmp_path, CHECKS.split("[[tool.advrobust.models.mlp.checks]]\nattack = \"noise\"")[0],
                  batch_size=256)
    full = sharded_run(path, None)
    parts = [shard_report(tmp_path, path, sharded_run(path, (k, 4)), k, 4) for k in (1, 2, 3, 4)]
    assert [next(iter(p.measurements.values())).n for p in parts] == [256, 256, 28, 0]
    assert [r.to_dict() for r in merged(path, parts)] == [r.to_dict() for r in full]


def sharded_run(path: Path, shard: tuple[int, int] | None, **kwargs) -> list:
    """The judged results of a run of ``path``'s gates (on shard ``(k, n)``), in-process."""
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    session = RobustnessSession(plugin_manager().hook, path, **kwargs)
    session.engine.shard = shard
    return session.run_all()


def shard_report(folder: Path, config: Path, results: list, k: int, n: int):
    """``results`` written as shard k/n's JSON report would be, and read back by the merge."""
    from pytest_advrobust.fingerprint import config_fingerprint
    from pytest_advrobust.merge import load_shard
    from pytest_advrobust.report.json_report import write_json

    target = folder / f"shard-{k}-of-{n}.json"
    write_json(target, results, interrupted=False, complete=True, shard={"index": k, "count": n},
               config=config_fingerprint(config), gates=sorted(r.key for r in results))
    return load_shard(target)


def merged(config: Path, parts: list) -> list:
    from pytest_advrobust.api import open_session
    from pytest_advrobust.fingerprint import config_fingerprint
    from pytest_advrobust.merge import merge_shards

    return merge_shards(parts, open_session(config, conftest=False), config_fingerprint(config))


@pytest.mark.e2e
def test_merge_command_runs_without_torch(tmp_path) -> None:
    """``python -m pytest_advrobust merge`` needs no torch; bad input exits 2 with a message."""
    (tmp_path / "bad.json").write_text("{not json")
    digits(tmp_path)  # the config the merge reads (the model itself is never loaded)
    script = ("import sys; from pytest_advrobust.merge import main; "
              "code = main(['merge', sys.argv[1]]); "
              "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bad.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "bad.json: is not valid JSON" in done.stderr
    done = subprocess.run([sys.executable, "-m", "pytest_advrobust", "merge", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--save-baseline" in done.stdout


def test_xdist_inside_a_shard_job_matches_serial(pytester: pytest.Pytester) -> None:
    digits(pytester.path, CHECKS.split("[[tool.advrobust.models.mlp.checks]]\nattack = \"universal\"")[0])
    pytester.runpytest(*RUN, "--advrobust-shard=2/3", "--advrobust-json=serial.json").assert_outcomes(passed=4)
    spread = pytester.runpytest_subprocess(*RUN, "-n", "2", "--advrobust-shard=2/3",
                                           "--advrobust-json=spread.json")
    spread.assert_outcomes(passed=4)
    assert (pytester.path / "spread.json").read_bytes() == (pytester.path / "serial.json").read_bytes()


def test_hand_written_tests_see_all_the_data_in_a_shard_run(pytester: pytest.Pytester) -> None:
    digits(pytester.path, CHECKS.split("[[tool.advrobust.models.mlp.checks]]\nattack = \"fgsm\"")[0])
    pytester.makepyfile(test_probe='''
        def test_probe(advrobust):
            assert advrobust.clean().n == 540
    ''')
    result = pytester.runpytest(*RUN, "--advrobust-shard=2/3", "--advrobust-json=s.json")
    result.assert_outcomes(passed=2)
    results = json.loads((pytester.path / "s.json").read_text())["results"]
    assert [(r["attack"], r["n"]) for r in results] == [("clean", 192)]  # the gate: its shard


def test_merged_statistics_add_up_and_keep_the_smallest_counterexample() -> None:
    from pytest_advrobust.attacks.search import describe_search
    from pytest_advrobust.merge import _merge_stats

    parts = [{"searched": 3, "flips": 1, "samples": 8, "counterexample_max_delta": 0.2,
              "counterexample_sample": 4, "counterexample_label": 1, "counterexample_new_label": 7},
             {"searched": 2, "flips": 0, "samples": 8},
             {"searched": 4, "flips": 2, "samples": 8, "counterexample_max_delta": 0.1,
              "counterexample_sample": 70, "counterexample_label": 3, "counterexample_new_label": 5}]
    merged_stats = _merge_stats(parts)
    assert merged_stats == {"searched": 9, "flips": 3, "samples": 24, "counterexample_max_delta": 0.1,
                            "counterexample_sample": 70, "counterexample_label": 3,
                            "counterexample_new_label": 5}
    assert describe_search(merged_stats) == (
        "smallest flip found: sample 70, max|delta| 0.1, label 3 -> 5 (3 of 9 correctly "
        "classified samples flipped)")
    assert _merge_stats([{"queries": 100}, {"queries": 50}]) == {"queries": 150}


@pytest.mark.e2e
def test_example_project_three_shards_merge_to_the_unsharded_counts(tmp_path) -> None:
    """The example project as shipped (torch MLP, its ONNX export, a scikit-learn export
    attacked by transfer and spsa): 3 shards merged are the unsharded results, exactly."""
    import os
    import shutil

    from conftest import ROOT

    folder = tmp_path / "example_project"
    shutil.copytree(ROOT / "example_project", folder,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__"))
    subprocess.run([sys.executable, "-m", "digits_demo.train"], cwd=folder, check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    config = folder / "pyproject.toml"
    try:
        whole = [r.to_dict() for r in sharded_run(config, None, artifacts=tmp_path / "art")]
        parts = [shard_report(tmp_path, config, sharded_run(config, (k, 3), artifacts=tmp_path / f"art-{k}"), k, 3)
                 for k in (1, 2, 3)]
        together = merged(config, parts)
    finally:
        sys.modules.pop("digits_demo", None)
        for name in [m for m in sys.modules if m.startswith("digits_demo.")]:
            sys.modules.pop(name)
    counts = [(r["key"], r["correct"], r["clean_correct"], r["n"], r["stats"], r["passed"])
              for r in whole]
    assert sorted((r.key, r.correct, r.clean_correct, r.n, r.stats, r.passed) for r in together) == sorted(counts)
    assert {r["attack"] for r in whole} >= {"clean", "fgsm", "noise", "universal", "pgd", "spsa",
                                            "transfer"}
    clean = whole[0]["key"]
    assert all(0 < p.measurements[clean].n < whole[0]["n"] for p in parts)


def test_a_gate_that_errored_in_a_shard_stops_the_merge_naming_it(tmp_path, capsys) -> None:
    """A shard's JSON lists an errored gate with its error (status "error"): the merge
    says which gate errored where, and exits 2 rather than gating on the other shards."""
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.advrobust]\nname = "m"\nmodel = "m.onnx"\ndata = "d.npz"\n'
                      '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\nmin-accuracy = 0.5\n')
    from pytest_advrobust.fingerprint import config_fingerprint

    document = {"version": 1, "shard": {"index": 1, "count": 2}, "config": config_fingerprint(config),
                "gates": ["m::fgsm[eps=0.1]"], "interrupted": False, "complete": False,
                "results": [{"key": "m::fgsm[eps=0.1]", "status": "error", "correct": 0,
                             "clean_correct": 0, "n": 0, "error": "attack error: NaN on perturbed inputs"}]}
    first = tmp_path / "shard-1.json"
    first.write_text(json.dumps(document))
    second = tmp_path / "shard-2.json"
    second.write_text(json.dumps({**document, "shard": {"index": 2, "count": 2}}))
    code, _ = merge(first, second, "--config", config)
    assert code == 2
    error = capsys.readouterr().err
    assert "gate 'm::fgsm[eps=0.1]' errored in this shard (attack error: NaN on perturbed inputs)" in error


def test_a_shard_with_no_batches_raises_no_narrow_data_warning(tmp_path) -> None:
    """A shard beyond the last batch sees no data: it has no range to warn about."""
    import warnings

    from pytest_advrobust.errors import AdvRobustWarning
    from pytest_advrobust.session import RobustnessSession, plugin_manager

    path = digits(tmp_path, CHECKS.split("[[tool.advrobust.models.mlp.checks]]\nattack = \"fgsm\"")[0],
                  batch_size=256)
    session = RobustnessSession(plugin_manager().hook, path)
    session.engine.shard = (4, 4)  # 540 samples in 3 batches of 256: shard 4 has none
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdvRobustWarning)
        results = session.run_all()
    assert [r.n for r in results] == [0]
