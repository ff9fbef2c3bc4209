"""The plugin as users run it: pytester end-to-end runs."""

from __future__ import annotations

import json

import pytest

from project import write_project

CHECKS = '''
[[tool.advrobust.checks]]
attack = "clean"
min-accuracy = 0.9

[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.01, 0.3]
min-accuracy = 0.5

[[tool.advrobust.checks]]
attack = "noise"
eps = 0.05
max-drop = 0.2
'''


@pytest.fixture
def project(pytester: pytest.Pytester, blobs):
    x, y = blobs
    return write_project(pytester.path, x, y, CHECKS)


def test_gates_pass_and_fail_with_readable_message(pytester: pytest.Pytester, project) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "out.json")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*fgsm eps=0.3 on blob: accuracy 0.* < min-accuracy 0.500 (n=240, clean 1.000*",
    ])
    report = json.loads((pytester.path / "out.json").read_text())
    assert report["version"] == 1
    by_key = {(r["attack"], r["eps"]): r for r in report["results"]}
    assert set(by_key) == {("clean", None), ("fgsm", 0.01), ("fgsm", 0.3), ("noise", 0.05)}
    fgsm = by_key[("fgsm", 0.3)]
    assert fgsm["passed"] is False and fgsm["n"] == 240 and fgsm["min_accuracy"] == 0.5
    assert fgsm["accuracy"] < 0.5 and fgsm["clean_accuracy"] == 1.0
    assert by_key[("fgsm", 0.01)]["passed"] is True


def test_ids_are_readable_and_stable(pytester: pytest.Pytester, project) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "pyproject.toml::blob::clean",
        "pyproject.toml::blob::fgsm[[]eps=0.01[]]",
        "pyproject.toml::blob::fgsm[[]eps=0.3[]]",
        "pyproject.toml::blob::noise[[]eps=0.05[]]",
    ])


def test_marker_selects_and_deselects_gates(pytester: pytest.Pytester, project) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    only_gates = pytester.runpytest("-p", "no:cacheprovider", "-m", "advrobust")
    only_gates.assert_outcomes(passed=3, failed=1, deselected=1)
    no_gates = pytester.runpytest("-p", "no:cacheprovider", "-m", "not advrobust")
    no_gates.assert_outcomes(passed=1, deselected=4)
    named = pytester.runpytest("-p", "no:cacheprovider", "test_plain.py")
    named.assert_outcomes(passed=1)
    off = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:advrobust")
    off.assert_outcomes(passed=1)


def test_gates_collected_despite_testpaths(pytester: pytest.Pytester, project) -> None:
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_a.py").write_text("def test_a():\n    pass\n")
    with project.open("a") as handle:
        handle.write('\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "clean or test_a")
    result.assert_outcomes(passed=2, deselected=3)
    explicit = pytester.runpytest("-p", "no:cacheprovider", "pyproject.toml", "-k", "clean")
    explicit.assert_outcomes(passed=1, deselected=3)


def test_config_error_is_a_usage_error_naming_the_key(pytester: pytest.Pytester, blobs) -> None:
    x, y = blobs
    write_project(pytester.path, x, y, '[[tool.advrobust.checks]]\nattack = "fgsm"\neps = 0.1\nmin-acuracy = 0.5\n')
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*checks[[]0[]] min-acuracy: unknown key. Did you mean 'min-accuracy'?*"])
    assert "Traceback" not in result.stderr.str()


def test_fixture_serves_hand_written_tests(pytester: pytest.Pytester, project) -> None:
    pytester.makepyfile(test_custom='''
        import pytest

        def test_custom(advrobust):
            strong = advrobust.fgsm(eps=0.3)
            weak = advrobust.noise(eps=0.3)
            assert strong.n == 240
            assert strong.accuracy < weak.accuracy
            assert advrobust.clean().accuracy == 1.0

        @pytest.mark.advrobust(model="nope")
        def test_unknown_model(advrobust):
            pass
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider", "test_custom.py")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*no model named 'nope'; the config has blob*"])


def test_missing_model_file_fails_gates_with_clear_message(pytester: pytest.Pytester, project) -> None:
    (pytester.path / "weights.pt").unlink()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["*model error: *weights.pt: weights file not found*"])
    assert "Traceback" not in result.stdout.str()
