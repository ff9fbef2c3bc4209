"""INT8 models as onnxruntime's quantiser writes them: the twin's forward pass is exact
(rounding included) and its gradient straight-through (BPDA), so gradient attacks work."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import export_onnx
from digits_project import digits_split
from project import gate_session
from pytest_advrobust.models.onnx_torch import straight_through_operators, to_torch


class DigitsCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(16 * 4 * 4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_int8_models(folder: Path) -> dict:
    """A briefly trained digits CNN, its float ONNX export and four INT8 versions of it
    (paths under ``folder``), and the test split."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    xtr, ytr, xte, yte = digits_split()
    xtr, xte = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
    net = DigitsCnn()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(25):
        for i in range(0, len(xt), 128):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i:i + 128]), yt[i:i + 128]).backward()
            optimiser.step()
    net.eval()
    export_onnx(net, torch.zeros(1, 1, 8, 8), folder / "float.onnx", opset_version=17)

    class Calibration(CalibrationDataReader):  # calibration on training data, as users do
        def __init__(self) -> None:
            self.batches = iter([{"x": xtr[i:i + 64]} for i in range(0, 320, 64)])

        def get_next(self):
            return next(self.batches, None)

    paths = {}
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's "consider pre-processing" advice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, options in {"qdq": dict(quant_format=QuantFormat.QDQ),
                              "qdq-per-channel": dict(quant_format=QuantFormat.QDQ, per_channel=True),
                              "qoperator": dict(quant_format=QuantFormat.QOperator)}.items():
            paths[name] = folder / f"{name}.onnx"
            quantize_static(folder / "float.onnx", paths[name], Calibration(),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options)
        paths["dynamic"] = folder / "dynamic.onnx"
        quantize_dynamic(folder / "float.onnx", paths["dynamic"], weight_type=QuantType.QInt8)
    return {"folder": folder, "paths": paths, "x": xte, "y": yte}


@pytest.fixture(scope="module")
def quantised(tmp_path_factory) -> dict:
    return build_int8_models(tmp_path_factory.mktemp("int8"))


EXPECTED_OPS = {"qdq": {"QuantizeLinear", "DequantizeLinear"},
                "qdq-per-channel": {"QuantizeLinear", "DequantizeLinear"},
                "qoperator": {"QLinearConv", "QGemm"},
                "dynamic": {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}}


@pytest.mark.parametrize("variant", sorted(EXPECTED_OPS))
def test_twin_of_int8_graph_matches_onnxruntime_exactly(quantised, variant) -> None:
    path = quantised["paths"][variant]
    model = onnx.load(str(path))
    assert EXPECTED_OPS[variant] <= set(straight_through_operators(model, ["y"]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    twin = to_torch(model, ["y"])
    rng = np.random.default_rng(0)
    x = quantised["x"][:200]
    # the clean inputs, and the perturbed ones attacks send (other quantisation bins)
    for inputs in (x, np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)):
        expected = session.run(["y"], {"x": inputs})[0]
        with torch.no_grad():
            got = twin(torch.from_numpy(inputs))[0].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_straight_through_gradient_closed_form() -> None:
    """x -> QuantizeLinear -> DequantizeLinear -> MatMul W: the forward pass rounds, the
    gradient of sum(c * y) is c W^T (the quantiser's derivative taken as identity)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    scale, zero = np.float32(0.02), np.uint8(100)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              initializer=[numpy_helper.from_array(np.array(scale), "s"),
                                           numpy_helper.from_array(np.array(zero), "z"),
                                           numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.uniform(-2, 3, (5, 6)).astype(np.float32)  # some values saturate at 0 and 255
    q = np.clip(np.round(x / scale) + 100, 0, 255)
    expected = ((q - 100) * scale) @ w
    leaf = torch.from_numpy(x).requires_grad_(True)
    y = to_torch(model)(leaf)[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    c = rng.standard_normal((5, 3)).astype(np.float32)
    (y * torch.from_numpy(c)).sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), c @ w.T, rtol=1e-5, atol=1e-6)


def test_dynamic_quantisation_gradient_closed_form() -> None:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale): gradient c Wd^T
    with Wd the dequantised weights; the forward pass equals numpy's integer arithmetic."""
    rng = np.random.default_rng(1)
    wq = rng.integers(-127, 128, (6, 3)).astype(np.int8)
    w_scale = np.float32(0.01)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              initializer=[numpy_helper.from_array(wq, "wq"),
                                           numpy_helper.from_array(np.array(w_scale), "ws")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.uniform(-1, 2, (5, 6)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(["y"], {"x": x})[0]
    leaf = torch.from_numpy(x).requires_grad_(True)
    y = to_torch(model)(leaf)[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=0, atol=1e-6)
    c = rng.standard_normal((5, 3)).astype(np.float32)
    (y * torch.from_numpy(c)).sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), c @ (wq.astype(np.float32) * w_scale).T, rtol=1e-4, atol=1e-6)


QUANT_CHECKS = '''
[[tool.advrobust.checks]]
attack = "fgsm"
eps = [0.05, 0.1]
[[tool.advrobust.checks]]
attack = "pgd"
eps = 0.1
steps = 10
'''


def test_int8_model_is_attacked_as_hard_as_the_float_model(quantised) -> None:
    """The issue's bar: fgsm / pgd with straight-through gradients take the INT8 export to an
    accuracy close to the float model's at the same eps (no false robustness from rounding)."""
    folder, x, y = quantised["folder"], quantised["x"], quantised["y"]
    figures = {}
    for variant in ("float", "qdq", "dynamic"):
        session = gate_session(folder, f"{variant}.onnx", x, y, checks=QUANT_CHECKS,
                               extra=f'name = "{variant}"\n')
        for result in session.run_all():
            figures[(variant, result.attack, result.eps)] = result
    for key in [("fgsm", 0.05), ("fgsm", 0.1), ("pgd", 0.1)]:
        float_result = figures[("float",) + key]
        assert float_result.clean_accuracy > 0.9
        # the attack bites (so "close" is not two no-ops agreeing)
        assert float_result.accuracy < float_result.clean_accuracy - (0.1 if key[1] < 0.1 else 0.3), key
        for variant in ("qdq", "dynamic"):
            result = figures[(variant,) + key]
            assert result.clean_accuracy > 0.9
            assert abs(result.accuracy - float_result.accuracy) <= 0.06, (variant, key, result.accuracy,
                                                                          float_result.accuracy)
            assert "straight-through" in result.details
    assert "straight-through" not in figures[("float", "fgsm", 0.1)].details
