"""The baseline file: written atomically, read back, compared; bad files named."""

from __future__ import annotations

import json

import pytest

from pytest_advrobust.report.baseline import (BaselineError, compare, comparison_lines,
                                              load_baseline, write_baseline)
from pytest_advrobust.results import AttackResult


def _result(attack: str, eps: float | None, correct: int, **fp) -> AttackResult:
    return AttackResult(model="m", attack=attack, eps=eps, correct=correct, clean_correct=90, n=100,
                        fingerprint={"model": "sha256:a", "n": 100, **fp})


def test_round_trip_and_compare(tmp_path) -> None:
    old = [_result("clean", None, 90), _result("fgsm", 0.1, 40), _result("noise", 0.1, 80, seed=0)]
    path = write_baseline(tmp_path / "sub" / "base.json", old)
    assert [p.name for p in path.parent.iterdir()] == ["base.json"]  # no temp file left behind
    entries = load_baseline(path)
    assert entries["m::fgsm[eps=0.1]"].accuracy == 0.4
    assert json.loads(path.read_text())["results"]["m::fgsm[eps=0.1]"]["ci_high"] > 0.4

    new = [_result("clean", None, 90), _result("noise", 0.1, 80, seed=1), _result("fgsm", 0.2, 20)]
    comparison = compare(entries, new)
    assert comparison.compared == ["m::clean"]
    assert comparison.changed == {"m::noise[eps=0.1]": ["seed"]}
    assert comparison.new == ["m::fgsm[eps=0.2]"]
    assert comparison.not_run == ["m::fgsm[eps=0.1]"]
    lines = comparison_lines(comparison, new)
    assert lines[0] == "1 compared, 0 regressed, 1 new, 1 changed config, 1 in the baseline but not run"
    assert "changed config, not compared: noise eps=0.1 on m (differs in seed)" in lines


@pytest.mark.parametrize("text, words", [
    (None, "does not exist"),
    ("{", "not valid JSON"),
    ('{"format": "pytest-advrobust-baseline", "version": 9, "results": {}}', "version 9"),
    ('{"format": "pytest-advrobust-baseline", "version": 1, "results": {"k": {"accuracy": 2}}}',
     "'k' has no valid"),
])
def test_bad_files_name_themselves(tmp_path, text, words) -> None:
    path = tmp_path / "base.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(BaselineError, match=words) as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def test_rounded_figures_read_back_exactly(tmp_path) -> None:
    """A strict max-regression = 0.0 must not fail on the file's 6-digit rounding."""
    from pytest_advrobust.gate import judge

    result = AttackResult(model="m", attack="fgsm", eps=0.1, correct=223, clean_correct=525, n=540,
                          max_regression=0.0)
    entries = load_baseline(write_baseline(tmp_path / "b.json", [result]))
    assert entries[result.key].accuracy == 223 / 540
    result.baseline_accuracy = entries[result.key].accuracy
    assert judge(result).passed
