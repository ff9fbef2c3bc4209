"""Terminal and Markdown tables: compact/full columns, intervals, baseline cells."""

from __future__ import annotations

from pytest_advrobust.report.baseline import Comparison
from pytest_advrobust.report.markdown import append_markdown, to_markdown
from pytest_advrobust.report.pipeline import RunRecord
from pytest_advrobust.report.terminal import format_table, headers, summary_rows
from pytest_advrobust.results import AttackResult


def _results() -> list[AttackResult]:
    passed = AttackResult(model="m", attack="fgsm", eps=0.1, correct=50, clean_correct=90, n=100,
                          min_accuracy=0.4, baseline_accuracy=0.55, message="ok")
    failed = AttackResult(model="m", attack="noise", eps=0.1, correct=30, clean_correct=90, n=100,
                          max_drop=0.2, passed=False, check=1, message="noise eps=0.1 on m: drop 0.600 ...")
    return [failed, passed]


def test_compact_and_verbose_columns() -> None:
    assert headers() == ("model", "attack", "eps", "accuracy", "95% CI", "threshold", "status")
    assert "vs baseline" in headers(with_baseline=True)
    assert headers(verbose=True)[-5:] == ("clean", "n", "threshold", "vs baseline", "status")
    rows = summary_rows(_results(), verbose=False)
    assert rows[0] == ("m", "fgsm", "0.1", "0.500", "0.404-0.596", ">= 0.400", "PASS")
    assert rows[1][-2:] == ("drop <= 0.200", "FAIL")
    full = summary_rows(_results(), verbose=True, comparison=Comparison(new=["m::noise[eps=0.1]"]))
    assert full[0][-2] == "-0.050 (was 0.550)" and full[1][-2] == "new"
    lines = format_table(rows, headers())
    assert lines[0].split() == ["model", "attack", "eps", "accuracy", "95%", "CI", "threshold", "status"]
    assert len({line.index("PASS") if "PASS" in line else line.index("FAIL") for line in lines[1:]}) == 1


def test_markdown_has_verdict_table_and_failures(tmp_path) -> None:
    text = to_markdown(RunRecord(_results()))
    lines = text.splitlines()
    assert lines[0] == "### :x: advrobust: 2 gates: 1 passed, 1 failed"
    assert lines[2].startswith("| model | attack | eps | accuracy | 95% CI |")
    assert lines[4] == "| m | fgsm | 0.1 | 0.500 | 0.404-0.596 | 0.900 | 100 | >= 0.400 | -0.050 (was 0.550) | PASS |"
    assert "- `noise eps=0.1 on m: drop 0.600 ...`" in lines
    target = tmp_path / "summary.md"
    target.write_text("# before\n")
    append_markdown(target, text)
    assert target.read_text() == "# before\n\n" + text


def test_no_negative_zero_delta() -> None:
    same = AttackResult(model="m", attack="fgsm", eps=0.1, correct=223, clean_correct=525, n=540,
                        baseline_accuracy=0.412963)
    assert summary_rows([same], verbose=True)[0][-2] == "+0.000 (was 0.413)"


def test_the_markdown_links_the_plots_from_its_folder_and_the_step_summary_names_them(tmp_path,
                                                                                        monkeypatch) -> None:
    import pytest

    pytest.importorskip("matplotlib")
    from pytest_advrobust.report.pipeline import ReportTargets, write_reports

    monkeypatch.chdir(tmp_path)
    written = write_reports(RunRecord(_results()), ReportTargets(
        markdown=tmp_path / "out" / "summary.md", step_summary=tmp_path / "step.md",
        plots=tmp_path / "my plots"))
    assert written.problems == [] and written.plots == [tmp_path / "my plots" / "m-robustness.png"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "**Files**\n\n- [m-robustness.png](../my%20plots/m-robustness.png)\n" in markdown
    step = (tmp_path / "step.md").read_text()  # a page: a relative link would lead nowhere
    assert "- `my plots/m-robustness.png`\n" in step and "](" not in step
