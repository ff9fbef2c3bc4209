"""Gates on a model with no gradient (a random forest exported with skl2onnx), run the way
users run them: transfer and spsa gate it; fgsm fails with a one-paragraph reason."""

from __future__ import annotations

import json

import pytest

from digits_project import write_digits_project

FOREST = '''
[[tool.advrobust.models.mlp.checks]]
attack = "clean"
min-accuracy = 0.9

[tool.advrobust.models.forest]
model = "forest.onnx"
[[tool.advrobust.models.forest.checks]]
attack = "clean"
min-accuracy = 0.85
[[tool.advrobust.models.forest.checks]]
attack = "transfer"
surrogate = "mlp"
eps = 0.1
min-accuracy = 0.2
[[tool.advrobust.models.forest.checks]]
attack = "spsa"
eps = 0.1
queries = 300
min-accuracy = 0.2
[[tool.advrobust.models.forest.checks]]
attack = "fgsm"
eps = 0.1
min-accuracy = 0.2
[[tool.advrobust.models.forest.checks]]
attack = "pgd"
eps = 0.1
min-accuracy = 0.2
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_forest_is_gated_by_transfer_and_spsa(pytester: pytest.Pytester, workers) -> None:
    write_digits_project(pytester.path, FOREST, forest=True, max_samples=200)
    result = pytester.runpytest("-p", "no:cacheprovider", "--advrobust-json", "out.json", *workers)
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines([
        "*attack error: forest: fgsm needs input gradients, which this model cannot give: operator "
        "TreeEnsembleClassifier (domain ai.onnx.ml*Attacks that work on this model: noise, "
        "transfer (from a differentiable surrogate), square and spsa (score-based; square is the stronger), and strongest*",
    ])
    result.stdout.fnmatch_lines(["*attack error: forest: pgd needs input gradients*TreeEnsembleClassifier*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    report = {(r["model"], r["attack"]): r for r in
              json.loads((pytester.path / "out.json").read_text())["results"]}
    spsa = report[("forest", "spsa")]
    assert spsa["n"] == 200 and 0 < spsa["stats"]["queries"] <= 300 * 200
    assert spsa["accuracy"] < spsa["clean_accuracy"]
    transfer = report[("forest", "transfer")]
    assert transfer["options"]["surrogate"] == "mlp" and transfer["accuracy"] < transfer["clean_accuracy"]


def test_bad_surrogate_stops_the_run_before_any_model_loads(pytester: pytest.Pytester) -> None:
    write_digits_project(pytester.path, FOREST.replace('surrogate = "mlp"', 'surrogate = "mpl"'))
    (pytester.path / "mlp.pt").write_bytes(b"not a state dict")  # never read
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]tool.advrobust.models.forest[]] checks[[]1[]] surrogate: no model "
                                 "named 'mpl'. Did you mean 'mlp'? Models of this config: forest, mlp."])
