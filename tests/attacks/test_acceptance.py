"""Issue 3's acceptance figures on scikit-learn's digits (x / 16, fixed 70/30 split, 540
test samples): PGD beats FGSM on an MLP; on a LogisticRegression exported with skl2onnx
(probabilities, no gradient) transfer and SPSA go far below noise of the same size."""

from __future__ import annotations


import pytest

from digits_project import write_digits_project
from pytest_advrobust.session import RobustnessSession, plugin_manager

CHECKS = '''
[[tool.advrobust.models.mlp.checks]]
attack = "fgsm"
report-only = true
eps = 0.1
[[tool.advrobust.models.mlp.checks]]
attack = "pgd"
report-only = true
eps = 0.1
steps = 20

[tool.advrobust.models.logistic]
model = "logistic.onnx"
[[tool.advrobust.models.logistic.checks]]
attack = "noise"
report-only = true
eps = 0.2
[[tool.advrobust.models.logistic.checks]]
attack = "transfer"
report-only = true
surrogate = "mlp"
eps = 0.2
[[tool.advrobust.models.logistic.checks]]
attack = "transfer"
report-only = true
surrogate = "mlp"
via = "pgd"
eps = 0.2
[[tool.advrobust.models.logistic.checks]]
attack = "spsa"
report-only = true
eps = 0.2
'''


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = write_digits_project(tmp_path_factory.mktemp("digits"), CHECKS, logistic=True)
    session = RobustnessSession(plugin_manager().hook, path)
    out = {}
    for result in session.run_all():
        name = result.attack + (f"-{result.options['via']}" if "via" in result.options else "")
        out[(result.model, name)] = result
        print(f"{result.model:9} {name:13} eps={result.eps:g} accuracy={result.accuracy:.3f} "
              f"clean={result.clean_accuracy:.3f} n={result.n} {result.stats or ''}")  # -s shows it
    return out


def test_pgd_beats_fgsm_on_the_digits_mlp(figures) -> None:
    fgsm, pgd = figures[("mlp", "fgsm")], figures[("mlp", "pgd")]
    assert fgsm.n == pgd.n == 540 and fgsm.clean_accuracy > 0.95
    assert pgd.accuracy < fgsm.accuracy


def test_black_box_attacks_on_logistic_regression_go_far_below_noise(figures) -> None:
    noise = figures[("logistic", "noise")]
    assert noise.clean_accuracy > 0.95 and noise.accuracy > 0.9
    for name in ("transfer", "transfer-pgd", "spsa"):
        attacked = figures[("logistic", name)]
        assert attacked.accuracy < 0.3, name
    spsa = figures[("logistic", "spsa")]
    assert 0 < spsa.stats["queries"] <= 2000 * spsa.n
