"""Issue 20's defences around the digits MLP (clean 0.978), gated at eps 0.1 with
min-accuracy 0.6: rounding inside the model hands fgsm and pgd a zero gradient, so their
figures stay far above what the plain MLP's gradient (BPDA, computed here independently)
leaves. With straight-through gradients (automatic for TorchScript and ONNX, ``bpda =
true`` for a module) they reach that figure. Without them, and for the mirrored-sign
defence (no non-differentiable operation: BPDA changes nothing there), the masking probe
(a black-box square attack on the same samples) fails both gates; ``allow-masking = true``
accepts them. The mirrored defence's ONNX export loses the ``detach`` and with it the
defence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import export_onnx
from defences import DEFENCES, mlp
from digits_project import digits_split, trained_mlp_state
from project import gate_session

EPS, FLOOR = 0.1, 0.6
CHECKS = f'''
[[tool.advrobust.checks]]
attack = "fgsm"
eps = {EPS}
min-accuracy = {FLOOR}
[[tool.advrobust.checks]]
attack = "pgd"
eps = {EPS}
min-accuracy = {FLOOR}
'''


def defended(name: str) -> torch.nn.Module:
    model = DEFENCES[name]()
    model.net.load_state_dict(trained_mlp_state())
    return model.eval()


def bpda_truth(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 20) -> float:
    """Accuracy of ``model`` under L-inf PGD that follows the undefended MLP's
    cross-entropy gradient (BPDA with the defence taken as the identity): the plugin's
    code is not used, so this is an independent figure."""
    plain = mlp()
    plain.load_state_dict(trained_mlp_state())
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    adversarial, fooled = xt.clone(), torch.zeros(len(yt), dtype=torch.bool)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(plain(adversarial), yt, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adversarial)
        adversarial = adversarial.detach() + 2.5 * EPS / steps * grad.sign()
        adversarial = torch.minimum(torch.maximum(adversarial, xt - EPS), xt + EPS).clamp(0, 1)
        with torch.no_grad():
            fooled |= model(adversarial).argmax(1) != yt
    return 1 - float(fooled.float().mean())


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    _, _, x, y = digits_split()
    return x, y


PROBED = "gradient masking suspected: square fooled"


def gates(tmp_path, name: str, form: str, x: np.ndarray, y: np.ndarray, checks: str = CHECKS) -> dict:
    """fgsm and pgd results for the defence ``name`` as a factory module (``module``, or
    ``module-bpda`` with ``bpda = true``), a TorchScript archive or an ONNX export."""
    model = defended(name)
    if form.startswith("module"):
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
        ref = f"defences:{name}"
        extra = f'weights = "{name}.pt"\nbpda = {"true" if form == "module-bpda" else "false"}\n'
    elif form == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model), str(tmp_path / f"{name}.ts.pt"))
        ref, extra = f"{name}.ts.pt", ""
    else:
        export_onnx(model, torch.zeros(1, 64), tmp_path / f"{name}.onnx", opset_version=17)
        ref, extra = f"{name}.onnx", ""
    session = gate_session(tmp_path, ref, x, y, checks=checks, extra=f'name = "{name}"\n' + extra)
    return {result.attack: result for result in session.run_all()}


@pytest.mark.parametrize("name", ["partly_quantised", "rippled"])
def test_rounding_defences_are_attacked_to_their_bpda_figure(tmp_path, digits, name) -> None:
    x, y = digits
    truth = bpda_truth(defended(name), x, y)
    assert truth < FLOOR - 0.3  # the defence is no defence
    plain = gates(tmp_path, name, "module", x, y)
    # the false green: without bpda both figures stay above the floor, and the
    # masking probe fails both gates; the details say what to set
    for result in plain.values():
        assert result.accuracy > FLOOR and not result.passed, result.message
        assert PROBED in result.message and result.diagnostics["fails_gate"] is True
    assert plain["fgsm"].clean_accuracy > 0.97
    assert "set bpda = true" in plain["fgsm"].details
    for form in ("module-bpda", "torchscript", "onnx"):
        results = gates(tmp_path, name, form, x, y)
        fgsm, pgd = results["fgsm"], results["pgd"]
        assert fgsm.clean_accuracy == plain["fgsm"].clean_accuracy  # forward untouched
        assert not fgsm.passed and not pgd.passed, form
        assert fgsm.accuracy <= truth + 0.1, (form, fgsm.accuracy, truth)  # one step vs 20
        assert pgd.accuracy <= truth + 0.05, (form, pgd.accuracy, truth)
        assert "straight-through (BPDA)" in fgsm.details, form


def test_mirrored_gradient_is_not_bpdas_to_fix(tmp_path, digits) -> None:
    """No rounding, nothing to replace: the module's figures are the same with and
    without ``bpda`` (and in TorchScript), all passing far above the BPDA figure. The
    ONNX exporter drops ``detach``, so the export is the plain MLP, and is attacked as
    such."""
    x, y = digits
    truth = bpda_truth(defended("mirrored"), x, y)
    assert truth < FLOOR - 0.3
    figures = {form: gates(tmp_path, "mirrored", form, x, y) for form in
               ("module", "module-bpda", "torchscript", "onnx")}
    for form in ("module", "module-bpda", "torchscript"):
        assert figures[form]["fgsm"].accuracy == figures["module"]["fgsm"].accuracy, form
        assert figures[form]["pgd"].accuracy == figures["module"]["pgd"].accuracy, form
        assert figures[form]["pgd"].accuracy > truth + 0.3, form
        assert "straight-through" not in figures[form]["pgd"].details
        for result in figures[form].values():  # the probe is what catches it
            assert not result.passed and PROBED in result.message, (form, result.message)
    assert not figures["onnx"]["pgd"].passed and figures["onnx"]["pgd"].accuracy <= truth + 0.05


@pytest.mark.parametrize("name", ["partly_quantised", "rippled", "mirrored"])
def test_allow_masking_accepts_what_the_probe_found(tmp_path, digits, name) -> None:
    """The same plain modules pass with allow-masking = true, the probe's words kept; with
    masking-probe = false nothing is cross-checked (the issue's false green, opted into)."""
    x, y = digits
    allowed = gates(tmp_path, name, "module", x, y, checks=CHECKS.replace(
        f"min-accuracy = {FLOOR}", f"min-accuracy = {FLOOR}\nallow-masking = true"))
    for result in allowed.values():
        assert result.passed and PROBED in result.message and result.diagnostics["fails_gate"] is False
        assert result.stats["probe_fooled_only"] >= 10 and result.stats["probe_gate_only"] <= 2
    off = gates(tmp_path, name, "module", x, y, checks=CHECKS.replace(
        f"min-accuracy = {FLOOR}", f"min-accuracy = {FLOOR}\nmasking-probe = false"))
    for result in off.values():
        assert result.passed and "probe_samples" not in result.stats
        assert "black_box_p" not in result.diagnostics
