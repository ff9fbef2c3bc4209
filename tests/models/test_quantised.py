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
from pytest_advrobust.models.onnx_models import QUANTISED_ROWS, QUANTISED_SPREAD
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


class WithSoftmax(torch.nn.Module):
    """A classifier that outputs probabilities (as many exported image models do)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), 1)


class Scaled(torch.nn.Module):
    """Logits times a constant: a sharper (more confident) classifier."""

    def __init__(self, net: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor


def build_int8_models(folder: Path) -> dict:
    """A briefly trained digits CNN, its float ONNX export and four INT8 versions of it
    (paths under ``folder``), the same with a softmax output (``float-softmax``, and
    ``qdq-softmax``, which onnxruntime runs with a QLinearSoftmax), and the test split."""
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
    export_onnx(WithSoftmax(net).eval(), torch.zeros(1, 1, 8, 8), folder / "float-softmax.onnx",
                opset_version=17)

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
        paths["qdq-softmax"] = folder / "qdq-softmax.onnx"
        quantize_static(folder / "float-softmax.onnx", paths["qdq-softmax"], Calibration(),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        quant_format=QuantFormat.QDQ)
        paths["dynamic"] = folder / "dynamic.onnx"
        quantize_dynamic(folder / "float.onnx", paths["dynamic"], weight_type=QuantType.QInt8)
    return {"folder": folder, "paths": paths, "x": xte, "y": yte, "net": net}


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
    # IR version 8 (onnx 1.10+): readable by older onnxruntime builds too (a GPU image's 1.30)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
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
    # IR version 8 (onnx 1.10+): readable by older onnxruntime builds too (a GPU image's 1.30)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
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
report-only = true
eps = [0.05, 0.1]
[[tool.advrobust.checks]]
attack = "pgd"
report-only = true
eps = 0.1
steps = 10
'''


def test_int8_model_is_attacked_as_hard_as_the_float_model(quantised) -> None:
    """The issue's bar: fgsm / pgd with straight-through gradients take the INT8 export to an
    accuracy close to the float model's at the same eps (no false robustness from rounding)."""
    folder, x, y = quantised["folder"], quantised["x"], quantised["y"]
    figures = {}
    for variant in ("float", "qdq", "dynamic", "float-softmax", "qdq-softmax"):
        session = gate_session(folder, f"{variant}.onnx", x, y, checks=QUANT_CHECKS,
                               extra=f'name = "{variant}"\n')
        for result in session.run_all():
            figures[(variant, result.attack, result.eps)] = result
    for key in [("fgsm", 0.05), ("fgsm", 0.1), ("pgd", 0.1)]:
        for reference, variants in (("float", ("qdq", "dynamic")), ("float-softmax", ("qdq-softmax",))):
            float_result = figures[(reference,) + key]
            assert float_result.clean_accuracy > 0.9
            # the attack bites (so "close" is not two no-ops agreeing)
            assert float_result.accuracy < float_result.clean_accuracy - (0.1 if key[1] < 0.1 else 0.3), key
            for variant in variants:
                result = figures[(variant,) + key]
                assert result.clean_accuracy > 0.9
                # within 0.08: pgd's random starts move the INT8 figure by a few points (0.063 seen)
                assert abs(result.accuracy - float_result.accuracy) <= 0.08, (variant, key, result.accuracy,
                                                                              float_result.accuracy)
                assert "straight-through" in result.details
    assert "straight-through" not in figures[("float", "fgsm", 0.1)].details
    # QLinearSoftmax (a fusion of onnxruntime's) is translated, not a parity error
    assert "as onnxruntime runs it (" in figures[("qdq-softmax", "pgd", 0.1)].details
    assert "QLinearSoftmax" in figures[("qdq-softmax", "pgd", 0.1)].details


@pytest.fixture(scope="module")
def int8_architectures(tmp_path_factory) -> dict:
    return build_int8_architectures(tmp_path_factory.mktemp("int8-architectures"))


def build_int8_architectures(folder: Path) -> dict:
    """Each architecture of the twin's matrix, quantised static QDQ, QOperator and dynamic."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    from architectures import ARCHITECTURES, build

    x = np.random.default_rng(0).uniform(0, 1, (48, 3, 12, 12)).astype(np.float32)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": x[i:i + 16]} for i in range(0, 48, 16)])

        def get_next(self):
            return next(self.batches, None)

    paths = {}
    logging.getLogger().setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(ARCHITECTURES):
            source = export_onnx(build(name), torch.zeros(1, 3, 12, 12), folder / f"{name}.onnx",
                                 opset_version=17)
            for fmt in ("qdq", "qoperator", "dynamic"):
                paths[(name, fmt)] = folder / f"{name}-{fmt}.onnx"
                if fmt == "dynamic":
                    quantize_dynamic(source, paths[(name, fmt)])
                else:
                    quantize_static(source, paths[(name, fmt)], Calibration(), quant_format=(
                        QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator))
    return {"paths": paths, "x": x}


@pytest.mark.parametrize("fmt", ["qdq", "dynamic"])
@pytest.mark.parametrize("name", ["efficientnet", "mobilenet_v2", "mobilenet_v3", "resnet", "vit"])
def test_int8_architectures_twin_matches_onnxruntime(int8_architectures, name, fmt) -> None:
    path, x = int8_architectures["paths"][(name, fmt)], int8_architectures["x"]
    model = onnx.load(str(path))
    assert straight_through_operators(model, ["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    twin = to_torch(model, ["y"])
    noisy = np.clip(x + np.random.default_rng(1).uniform(-0.05, 0.05, x.shape), 0, 1).astype(np.float32)
    for inputs in (x, noisy):
        with torch.no_grad():
            got = twin(torch.from_numpy(inputs))[0].numpy()
        expected = session.run(["y"], {"x": inputs})[0]
        if name == "vit" and fmt == "qdq":
            # float LayerNormalization / Erf between quantisers can round a tie the other way
            # than onnxruntime's kernels: a few rows, one or two output steps
            off = ~np.isclose(got, expected, rtol=1e-3, atol=1e-4)
            assert off.any(1).mean() <= QUANTISED_ROWS
            assert np.abs(got - expected).max() <= QUANTISED_SPREAD * np.ptp(expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    leaf = torch.from_numpy(x[:4]).requires_grad_(True)
    twin(leaf)[0].sum().backward()
    assert float(leaf.grad.abs().sum()) > 0  # straight-through: the rounding does not stop it


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
@pytest.mark.parametrize("name", ["efficientnet", "mobilenet_v2", "mobilenet_v3", "resnet", "vit"])
def test_int8_architectures_as_onnxruntime_runs_them(int8_architectures, name, fmt) -> None:
    """The twin of the graph the session runs (QLinearConv, QGemm, QLinearAdd,
    QLinearGlobalAveragePool, QLinearSigmoid, QLinearMul, QLinearSoftmax, QLinearConcat):
    bit for bit (the ViT's float LayerNormalization between quantisers aside, see above),
    and with a gradient."""
    from pytest_advrobust.models.onnx_models import translate_session

    path, x = int8_architectures["paths"][(name, fmt)], int8_architectures["x"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    translation = translate_session(session, onnx.load(str(path)), ["y"], quantised=True)
    assert translation.runtime_operators and translation.unfused is None
    fused = {op for op in translation.runtime_operators if op.startswith("QLinear") or op == "QGemm"}
    assert fused - {"QLinearConv", "QLinearMatMul"}, translation.runtime_operators  # a com.microsoft fusion
    noisy = np.clip(x + np.random.default_rng(1).uniform(-0.05, 0.05, x.shape), 0, 1).astype(np.float32)
    for inputs in (x, noisy):
        with torch.no_grad():
            got = translation.twin(torch.from_numpy(inputs))[0].numpy()
        expected = session.run(["y"], {"x": inputs})[0]
        if name == "vit" and fmt == "qdq":
            off = ~np.isclose(got, expected, rtol=1e-3, atol=1e-4)
            assert off.any(1).mean() <= QUANTISED_ROWS
        else:
            np.testing.assert_array_equal(got, expected)
    leaf = torch.from_numpy(x[:4]).requires_grad_(True)
    translation.twin(leaf)[0].sum().backward()
    assert float(leaf.grad.abs().sum()) > 0


def test_qoperator_fusions_before_any_optimisation(int8_architectures) -> None:
    """A QOperator-format file holds the QLinear* operators itself: its own nodes translate."""
    path, x = int8_architectures["paths"][("mobilenet_v3", "qoperator")], int8_architectures["x"]
    model = onnx.load(str(path))
    assert {"QLinearAdd", "QLinearGlobalAveragePool", "QLinearMul"} <= {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        got = to_torch(model, ["y"])(torch.from_numpy(x))[0].numpy()
    np.testing.assert_array_equal(got, session.run(["y"], {"x": x})[0])


def test_qlinear_softmax_output_is_reproduced_bit_for_bit(quantised) -> None:
    """The issue's case: onnxruntime runs a QDQ softmax output as com.microsoft
    QLinearSoftmax, which rounds confident rows to 254/255 where the file's own nodes give
    1.0. The twin of the graph the session runs matches it exactly; the twin of the file
    differs by one output step on most rows, and matches exactly a session optimised only
    at the basic level (which does not fuse)."""
    from pytest_advrobust.models.onnx_models import runtime_graph, translate_session

    path = quantised["paths"]["qdq-softmax"]
    proto = onnx.load(str(path))
    x = quantised["x"]
    inputs = [x, np.clip(x + np.random.default_rng(0).uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    optimised, level = runtime_graph(session, proto)
    assert level == int(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)  # onnxruntime's default
    assert "QLinearSoftmax" in {n.op_type for n in optimised.graph.node}
    twin = translate_session(session, proto, ["y"], quantised=True).twin
    file_twin = to_torch(proto, ["y"])
    step = float(next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == "y_scale"))
    for batch in inputs:
        expected = session.run(["y"], {"x": batch})[0]
        with torch.no_grad():
            np.testing.assert_array_equal(twin(torch.from_numpy(batch))[0].numpy(), expected)
            unfused = file_twin(torch.from_numpy(batch))[0].numpy()
        assert np.abs(unfused - expected).max() == pytest.approx(step, rel=1e-4)  # one output step
        assert (np.abs(unfused - expected) > 0).any(1).mean() > 0.5
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    basic = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    translation = translate_session(basic, proto, ["y"], quantised=True)
    assert "QLinearSoftmax" not in translation.runtime_operators
    with torch.no_grad():
        got = translation.twin(torch.from_numpy(x))[0].numpy()
    np.testing.assert_array_equal(got, basic.run(["y"], {"x": x})[0])


def test_rounded_probabilities_keep_their_gradient(quantised, tmp_path) -> None:
    """QLinearSoftmax gives a confident sample other-class probabilities of exactly 0;
    ``-log p_y`` taken at those rounded probabilities has no gradient left for most
    samples of a sharp classifier (its float64 loss floor survives, but the float32
    backward through the softmax underflows). The plugin takes the loss's gradient at the
    unrounded probabilities instead, and says so: then only the samples whose gradient
    underflows in the float model too (float32 cannot carry ``exp(-100)``) are left, which
    the masking diagnostics report."""
    import warnings

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from pytest_advrobust.models.base import exact_probability_loss

    x, y = quantised["x"], quantised["y"]
    train = digits_split()[0].reshape(-1, 1, 8, 8)
    export_onnx(WithSoftmax(Scaled(quantised["net"], 5)).eval(), torch.zeros(1, 1, 8, 8),
                tmp_path / "sharp-float.onnx", opset_version=17)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": train[i:i + 64]} for i in range(0, 320, 64)])

        def get_next(self):
            return next(self.batches, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(tmp_path / "sharp-float.onnx", tmp_path / "sharp.onnx", Calibration(),
                        quant_format=QuantFormat.QDQ)
    labels, n = torch.from_numpy(y), len(y)

    def zero_rows(grad: torch.Tensor) -> int:
        return int((grad.reshape(n, -1).abs().sum(1) == 0).sum())

    float_session = gate_session(tmp_path, "sharp-float.onnx", x, y)
    float_model = float_session.engine.classifier(float_session.spec())
    with float_model.session():
        zero_in_float = zero_rows(float_model.loss_gradient(torch.from_numpy(x), labels)[0])
    session = gate_session(tmp_path, "sharp.onnx", x, y)
    model = session.engine.classifier(session.spec())
    with model.session():
        grad, scores = model.loss_gradient(torch.from_numpy(x), labels)
        leaf = torch.from_numpy(x).requires_grad_(True)
        exact_probability_loss(model.twin()(leaf)[0], labels).sum().backward()
    assert model.output_kind == float_model.output_kind == "probabilities"
    rounded_to_zero = scores.double().scatter(1, labels[:, None], 0).sum(1) == 0
    assert rounded_to_zero.float().mean() > 0.8
    zero_at_rounded, zero_here = zero_rows(leaf.grad), zero_rows(grad)
    assert zero_at_rounded > 0.5 * n
    assert zero_here <= zero_in_float + 0.02 * n, (zero_here, zero_in_float)
    assert zero_at_rounded >= zero_here + 0.3 * n, (zero_at_rounded, zero_here)
    assert any("rounded probabilities" in note for note in model.notes(gradient=True))


def test_int8_vit_is_attacked_through_its_twin(int8_architectures, tmp_path) -> None:
    """The INT8 transformer, whose twin may round a tie differently from onnxruntime, still
    gets gradient gates (the difference is said in the details), and fgsm bites."""
    import shutil

    path, x = int8_architectures["paths"][("vit", "qdq")], int8_architectures["x"]
    shutil.copy(path, tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0].argmax(1)
    result = gate_session(tmp_path, "vit.onnx", x, y).probe().fgsm(eps=0.1)
    assert result.clean_accuracy == 1.0
    assert result.accuracy < 0.8
    assert "straight-through" in result.details


def test_a_wrong_twin_of_a_quantised_graph_is_still_refused(quantised) -> None:
    """The rounding-tie allowance is no loophole: a twin off on every row is an error."""
    from pytest_advrobust.errors import AttackError

    folder, x, y = quantised["folder"], quantised["x"], quantised["y"]
    session = gate_session(folder, "qdq.onnx", x, y)
    model = session.engine.classifier(session.spec())
    real = model.twin()
    model._twin = lambda inputs: (real(inputs)[0] * 1.05,)
    with pytest.raises(AttackError, match="disagrees with onnxruntime"):
        session.probe().fgsm(eps=0.1)


def test_a_fusion_without_translation_falls_back_to_the_file_and_is_named(quantised) -> None:
    """onnxruntime runs a dynamically quantised graph with com.microsoft
    DynamicQuantizeMatMul, which the twin lacks: it translates the file's nodes instead
    (exact here), and should they ever disagree with onnxruntime, the error names the
    fusion and the setting that avoids it."""
    from pytest_advrobust.errors import AttackError

    folder, x, y = quantised["folder"], quantised["x"], quantised["y"]
    session = gate_session(folder, "dynamic.onnx", x, y)
    model = session.engine.classifier(session.spec())
    with model.session():
        model.twin()
    assert model.runtime_operators is None
    assert "DynamicQuantizeMatMul" in {op for op, _, _, _ in model.unfused.problems}
    real = model.twin()
    with torch.no_grad():
        got = real(torch.from_numpy(x))[0].numpy()
    np.testing.assert_array_equal(got, model.scores(torch.from_numpy(x)).numpy())
    model._twin = lambda inputs: (real(inputs)[0] * 1.05,)
    with pytest.raises(AttackError, match=r"fused operators the translation lacks \(DynamicQuantizeMatMul "
                                          r"\(com.microsoft\).*ORT_ENABLE_BASIC"):
        session.probe().fgsm(eps=0.1)
