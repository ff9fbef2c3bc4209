"""The ONNX twin on graphs real exporters emit for common architectures: per architecture
and exporter, the twin's scores match onnxruntime and its input gradient matches central
finite differences taken through onnxruntime itself."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from architectures import ARCHITECTURES, build
from pytest_advrobust.models.onnx_torch import UnsupportedOperator, find_untranslatable, to_torch

OPSETS = (13, 17, 20)


def export(net: torch.nn.Module, opset: int, *, fold: bool = True) -> onnx.ModelProto:
    """torch.onnx's TorchScript exporter, dynamic batch; ``fold=False`` keeps BatchNormalization
    nodes (the default folds them into the convolutions)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 3, 12, 12),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], do_constant_folding=fold,
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def check_twin(model: onnx.ModelProto, x: np.ndarray, output: str, *, rtol: float, atol: float,
               grad_rtol: float, h: float, directions: int = 2) -> dict[str, float]:
    """Scores: twin vs onnxruntime. Gradient of ``L = sum(c * scores)`` (``c`` fixed random):
    the twin's ``g`` against central differences ``(L(x + h v) - L(x - h v)) / 2h`` that
    onnxruntime computes, along ``v = sign(g)`` (where ``g . v = |g|_1``: a wrong ``g`` points
    elsewhere and the two disagree) and along random sign directions (error relative to
    ``|g|_1``, so float32 noise and ReLU kinks do not dominate). Returns the worst errors."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    expected = sess.run([output], {name: x})[0]
    twin = to_torch(model, [output])
    got = twin(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    rng = np.random.default_rng(0)
    c = rng.standard_normal(expected.shape)
    leaf = torch.from_numpy(x).requires_grad_(True)
    (twin(leaf)[0].double() * torch.from_numpy(c)).sum().backward()
    grad = leaf.grad.double().numpy()
    scale = float(np.abs(grad).sum())
    assert scale > 0

    def numeric(v: np.ndarray) -> float:
        plus = sess.run([output], {name: (x + h * v).astype(x.dtype)})[0].astype(np.float64)
        minus = sess.run([output], {name: (x - h * v).astype(x.dtype)})[0].astype(np.float64)
        return float(((plus - minus) * c).sum() / (2 * h))

    along = numeric(np.sign(grad))
    worst = abs(along - scale) / scale
    assert worst <= grad_rtol, (along, scale)
    for _ in range(directions):
        v = np.where(rng.random(x.shape) < 0.5, -1.0, 1.0)
        error = abs(numeric(v) - float((grad * v).sum())) / scale
        assert error <= grad_rtol, error
        worst = max(worst, error)
    return {"score_diff": float(np.abs(got - expected).max()), "grad_rel_err": worst}


def check_against_torch(model: onnx.ModelProto, net: torch.nn.Module, x: np.ndarray) -> float:
    """The twin's input gradient against autograd through the torch module it was exported
    from (both in float64): the exact reference, where there is one."""
    twin = to_torch(model, ["y"]).double()
    c = torch.from_numpy(np.random.default_rng(2).standard_normal((len(x), 5)))
    leaves = [torch.from_numpy(x.astype(np.float64)).requires_grad_(True) for _ in range(2)]
    (twin(leaves[0])[0] * c).sum().backward()
    (net.double()(leaves[1]) * c).sum().backward()
    net.float()
    a, b = leaves[0].grad.numpy(), leaves[1].grad.numpy()
    # the export stores float32 weights (BatchNorm folded in float32): agreement to ~1e-6 of the scale
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    return float(np.abs(a - b).max() / np.abs(b).max())


@functools.lru_cache(maxsize=None)
def _exported(name: str, opset: int) -> onnx.ModelProto:
    # opset 17 keeps BatchNormalization in the graph, 13 and 20 fold it (the exporter default)
    return export(build(name), opset, fold=opset != 17)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (4, 3, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_torchscript_exports_twin_matches_onnxruntime(name: str, opset: int, images) -> None:
    model = _exported(name, opset)
    assert find_untranslatable(model) == []
    ops = {n.op_type for n in model.graph.node}
    if opset == 17 and name != "vit":
        assert "BatchNormalization" in ops  # the unfolded export really exercises it
    # float32 onnxruntime differences with h = 3e-4 (smaller: float32 noise; larger: ReLU kinks
    # crossed); the worst architecture stays under 2e-3, while a wrong gradient (a missed BatchNorm
    # scale, a transposed weight) is off by far more than the 1% allowed
    check_twin(model, images, "y", rtol=1e-4, atol=2e-5, grad_rtol=1e-2, h=3e-4)
    check_against_torch(model, build(name), images)


def test_matrix_covers_the_operators_the_issue_names() -> None:
    """The architectures above really emit the operators the twin is claimed to cover."""
    seen: set[str] = set()
    for name in ARCHITECTURES:
        for opset in OPSETS:
            seen |= {n.op_type for n in _exported(name, opset).graph.node}
    assert {"Conv", "BatchNormalization", "HardSwish", "HardSigmoid", "GlobalAveragePool", "Flatten",
            "Gemm", "LayerNormalization", "MatMul", "Softmax", "Erf", "Gelu", "Where", "Expand",
            "Range", "Clip", "Sigmoid", "ReduceMean"} <= seen
    groups = {attr.i for name in ARCHITECTURES for n in _exported(name, 13).graph.node
              if n.op_type == "Conv" for attr in n.attribute if attr.name == "group"}
    assert len(groups - {1}) >= 2  # depthwise and grouped convolutions


def export_dynamo(net: torch.nn.Module) -> onnx.ModelProto:
    """torch.onnx's dynamo (torch.export-based) exporter, dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.rand(2, 3, 12, 12),), dynamo=True, verbose=False,
                                    input_names=["x"], output_names=["y"],
                                    dynamic_shapes=({0: torch.export.Dim("n")},))
    return program.model_proto


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_dynamo_exporter(name: str, images) -> None:
    pytest.importorskip("onnxscript", reason="torch.onnx's dynamo exporter needs onnxscript, "
                                             "which is not installed here")
    model = export_dynamo(build(name))
    assert find_untranslatable(model) == []
    check_twin(model, images, "y", rtol=1e-4, atol=2e-5, grad_rtol=1e-2, h=3e-4)
    check_against_torch(model, build(name), images)


# --------------------------------------------------------------------------
# scikit-learn exports (skl2onnx), in float64 end to end
# --------------------------------------------------------------------------


def _sklearn(kind: str, classes: int, dtype=np.float64) -> tuple[onnx.ModelProto, np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 5)).astype(dtype)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    if classes == 3:
        y = y + (x[:, 2] > 0.8)
    estimator = {"logistic": lambda: LogisticRegression(),
                 "scaled-logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression()),
                 "mlp": lambda: MLPClassifier(hidden_layer_sizes=(7,), max_iter=300, random_state=0)}[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(x, y)
    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    return to_onnx(estimator, x[:1], options={id(last): {"zipmap": False}}), x[:20]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("kind", ["logistic", "scaled-logistic", "mlp"])
def test_sklearn_exports_twin_matches_onnxruntime(kind: str, classes: int, dtype) -> None:
    model, x = _sklearn(kind, classes, dtype)
    if dtype == np.float64:
        check_twin(model, x, "probabilities", rtol=1e-10, atol=1e-12, grad_rtol=1e-5, h=1e-5)
    else:  # float32 exports use the ai.onnx.ml operators (LinearClassifier, Normalizer, Scaler)
        ops = {n.op_type for n in model.graph.node}
        assert kind == "mlp" or "LinearClassifier" in ops
        check_twin(model, x, "probabilities", rtol=1e-5, atol=1e-6, grad_rtol=1e-2, h=1e-3)


def test_unused_label_branch_needs_no_translation() -> None:
    """skl2onnx's label output goes through ArrayFeatureExtractor (no gradient); the score
    output does not, so the twin of the score output builds."""
    model, x = _sklearn("mlp", 3)
    everything = find_untranslatable(model)
    assert ("ArrayFeatureExtractor", "ai.onnx.ml") in [(o, d) for o, d, _ in everything]
    assert find_untranslatable(model, ["probabilities"]) == []
    with pytest.raises(UnsupportedOperator):
        to_torch(model)
    assert to_torch(model, ["probabilities"])(torch.from_numpy(x))[0].shape == (20, 3)


# --------------------------------------------------------------------------
# what cannot be translated is named, all of it at once
# --------------------------------------------------------------------------


def test_every_untranslatable_operator_is_named_at_once(tmp_path) -> None:
    from onnx import TensorProto, helper

    from project import gate_session
    from pytest_advrobust.errors import AttackError

    nodes = [helper.make_node("Reshape", ["x", "square"], ["sq"]),
             helper.make_node("Det", ["sq"], ["d"], name="det_a"),
             helper.make_node("Unsqueeze", ["d", "one"], ["du"]),
             helper.make_node("Trilu", ["sq"], ["lower"], upper=0, name="tril_a"),
             helper.make_node("Trilu", ["sq"], ["upper"], upper=1, name="triu_b"),
             helper.make_node("Add", ["lower", "upper"], ["both"]),
             helper.make_node("Reshape", ["both", "flat"], ["f"]),
             helper.make_node("Add", ["f", "du"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[onnx.numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "square"),
                     onnx.numpy_helper.from_array(np.array([-1, 4], np.int64), "flat"),
                     onnx.numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOperator) as info:
        to_torch(model)
    message = str(info.value)
    assert "'det_a'" in message and "'tril_a'" in message and "'triu_b'" in message
    assert len(info.value.problems) == 3 and message.startswith("2 operator kinds in 3 nodes")
    # as a user meets it: the gate's error names them all, and the attacks that still work
    onnx.save(model, tmp_path / "odd.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (30, 4)).astype(np.float32)
    probe = gate_session(tmp_path, "odd.onnx", x, np.zeros(30, np.int64)).probe()
    assert probe.clean().n == 30  # onnxruntime scores it
    with pytest.raises(AttackError) as error:
        probe.fgsm(eps=0.1)
    text = str(error.value)
    assert "Det" in text and "Trilu" in text and "spsa" in text and "transfer" in text


def test_a_twin_that_fails_at_run_time_is_a_gate_error_not_a_traceback(tmp_path) -> None:
    from conftest import LinearNet, export_onnx
    from project import gate_session
    from pytest_advrobust.errors import AttackError

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), np.zeros(3, np.float32)
    export_onnx(LinearNet(w, b).eval(), torch.zeros(1, 4), tmp_path / "lin.onnx")
    x = rng.uniform(0, 1, (20, 4)).astype(np.float32)
    session = gate_session(tmp_path, "lin.onnx", x, (x @ w.T).argmax(1))
    model = session.engine.classifier(session.spec())

    def broken(inputs: torch.Tensor):
        raise RuntimeError("shape mismatch inside the twin")

    model._twin = broken
    with pytest.raises(AttackError, match="translation of this graph.*failed.*shape mismatch.*spsa"):
        session.probe().fgsm(eps=0.1)
    assert session.probe().noise(eps=0.1).n == 20  # the model still serves other gates
