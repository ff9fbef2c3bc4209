"""Robustness curves: each gate's threshold drawn, a check at one eps drawn as a point."""

from __future__ import annotations

import pytest

from pytest_advrobust.results import AttackResult

pytest.importorskip("matplotlib")


def _results() -> list[AttackResult]:
    def gate(attack, eps, correct, **kw):
        return AttackResult(model="m", attack=attack, eps=eps, correct=correct, clean_correct=90,
                            n=100, **kw)
    return [gate("clean", None, 90, min_accuracy=0.8),
            gate("fgsm", 0.05, 60, min_accuracy=0.5, check=1),
            gate("fgsm", 0.1, 40, min_accuracy=0.5, check=1, passed=False),
            gate("pgd", 0.1, 70, max_drop=0.3, check=2),
            gate("noise", 0.1, 85, report_only=True, check=3)]


def _markers(axis, marker: str, gid: str | None = None) -> set[tuple[float, float]]:
    return {(round(float(x), 6), round(float(y), 6)) for line in axis.lines
            if line.get_marker() == marker and line.get_gid() == gid
            for x, y in zip(line.get_xdata(), line.get_ydata())}


def test_thresholds_are_drawn_and_one_eps_is_a_point_not_a_line() -> None:
    from pytest_advrobust.report.plots import curves_figure, pyplot, threshold_floor

    figure = curves_figure("m", _results())
    try:
        (axis,) = figure.axes
        # every judged gate's floor: fgsm min-accuracy 0.5 at both eps; pgd 0.9 - 0.3
        assert _markers(axis, "_", "threshold") == {(0.05, 0.5), (0.1, 0.5), (0.1, 0.6)}
        assert threshold_floor(_results()[4]) is None  # report-only: no threshold to draw
        # fgsm (two eps) is a line from eps 0 (the same samples' clean accuracy)
        fgsm = next(line for line in axis.lines if line.get_label() == "fgsm")
        assert list(fgsm.get_xdata()) == [0.0, 0.05, 0.1] and list(fgsm.get_ydata()) == [0.9, 0.6, 0.4]
        # pgd and noise (one eps each) are points with their interval: no line reaches eps 0
        labels = {container.get_label() for container in axis.containers}
        assert labels == {"pgd (one eps)", "noise (one eps)"}
        assert not any(line.get_label().startswith(("pgd", "noise")) and 0.0 in list(line.get_xdata())
                       for line in axis.lines)
        # the failed gate is crossed out
        assert _markers(axis, "x") == {(0.1, 0.4)}
    finally:
        pyplot().close(figure)


def test_robustness_curves_write_one_png_per_model(tmp_path) -> None:
    from pytest_advrobust.report.plots import robustness_curves

    (path,) = robustness_curves(_results(), tmp_path)
    assert path == tmp_path / "m-robustness.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
