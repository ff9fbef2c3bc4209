"""The main job: the example project trains, exports and passes its own gates; its
commented-out check fails with the documented message when switched on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e  # every test here runs pytest on the example project


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("example") / "example_project"
    shutil.copytree(ROOT / "example_project", folder,
                    ignore=shutil.ignore_patterns("models", ".advrobust", "__pycache__"))
    subprocess.run([sys.executable, "-m", "digits_demo.train"], cwd=folder, check=True,
                   capture_output=True, text=True, env=_env())
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=folder, capture_output=True, text=True, env=_env())


@pytest.fixture(scope="module")
def gate_run(example: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """The example's run, once: ``make example``'s command, with a JSON report."""
    run = _pytest(example, "--advrobust-json", "report.json")
    results = {r["key"]: r for r in json.loads((example / "report.json").read_text())["results"]}
    return run, results


def test_example_gates_pass_and_show_the_seed(example: Path, gate_run) -> None:
    run, results = gate_run
    assert run.returncode == 0, run.stdout[-3000:]
    assert all(r["passed"] for r in results.values())
    assert {r["model"] for r in results.values()} == {"mlp-torch", "mlp-onnx", "logreg-onnx"}
    fgsm, noise = results["mlp-torch::fgsm[eps=0.1]"], results["mlp-torch::noise[eps=0.1]"]
    assert noise["accuracy"] - fgsm["accuracy"] > 0.3  # adversarial directions are not noise
    # the ONNX export, run in onnxruntime, is attacked through its torch twin: same numbers
    assert results["mlp-onnx::fgsm[eps=0.1]"]["correct"] == fgsm["correct"]
    assert results["mlp-torch::pgd[eps=0.05]{steps=20}"]["accuracy"] <= \
        results["mlp-torch::fgsm[eps=0.05]"]["accuracy"]
    assert list((example / ".advrobust" / "universal").glob("mlp-torch-universal-eps0.1-fold1.npy"))


def test_uncommented_check_fails_with_the_documented_message(example: Path) -> None:
    config = example / "pyproject.toml"
    text = config.read_text()
    switched = text.replace('# [[tool.advrobust.models.mlp-torch.checks]]\n# attack = "fgsm"\n'
                            '# eps = 0.2\n# min-accuracy = 0.5',
                            '[[tool.advrobust.models.mlp-torch.checks]]\nattack = "fgsm"\n'
                            'eps = 0.2\nmin-accuracy = 0.5')
    assert switched != text, "the example's commented-out check moved; update this test"
    config.write_text(switched)
    try:
        run = _pytest(example, "-m", "advrobust", "-k", "mlp-torch and fgsm")
    finally:
        config.write_text(text)
    assert run.returncode == 1
    assert "1 failed, 3 passed" in run.stdout
    assert "fgsm eps=0.2 on mlp-torch: accuracy 0.0" in run.stdout
    assert "< min-accuracy 0.500 (n=540, clean 0.972" in run.stdout


def _figure(results: dict, model: str, attack: str, eps: float | None = None) -> dict:
    (found,) = [r for r in results.values()
                if r["model"] == model and r["attack"] == attack and r["eps"] == eps]
    return found


def test_readme_quotes_the_examples_own_figures(gate_run) -> None:
    """The figures README and the attacks page quote are what ``make example`` prints
    (rounded as printed)."""
    _, results = gate_run
    readme = (ROOT / "README.md").read_text()
    attacks = (ROOT / "docs" / "attacks.md").read_text()
    f3 = "{:.3f}".format

    fgsm = _figure(results, "mlp-torch", "fgsm", 0.1)
    match = re.search(r"fgsm eps=0\.1 on mlp-torch: accuracy (\S+) < min-accuracy 0\.600 "
                      r"\(n=(\d+), clean (\S+), 95% CI (\S+)-(\S+)\)", readme)
    assert match, "README's opening message moved; update this test"
    assert match.groups() == (f3(fgsm["accuracy"]), str(fgsm["n"]), f3(fgsm["clean_accuracy"]),
                              f3(fgsm["ci_low"]), f3(fgsm["ci_high"]))

    pgd, fgsm05 = _figure(results, "mlp-torch", "pgd", 0.05), _figure(results, "mlp-torch", "fgsm", 0.05)
    match = re.search(r"On the example's digits MLP at eps 0\.05, 20 steps take accuracy from\s+"
                      r"FGSM's (\S+) to (\S+)\.", attacks)
    assert match, "docs/attacks.md's PGD sentence moved; update this test"
    assert match.groups() == (f3(fgsm05["accuracy"]), f3(pgd["accuracy"]))

    clean = _figure(results, "logreg-onnx", "clean")
    spsa, noise = _figure(results, "logreg-onnx", "spsa", 0.1), _figure(results, "logreg-onnx", "noise", 0.2)
    match = re.search(r"at eps 0\.1 with 1000 queries it\s+takes accuracy from (\S+) to (\S+), "
                      r"while noise at\s+eps 0\.2 leaves (\S+)\)", attacks)
    assert match, "docs/attacks.md's SPSA sentence moved; update this test"
    assert match.groups() == (f3(clean["accuracy"]), f3(spsa["accuracy"]), f3(noise["accuracy"]))
