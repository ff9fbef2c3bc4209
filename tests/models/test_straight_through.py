"""Straight-through (BPDA) gradients through rounding, integer casts and quantisation:
the forward pass is the model's to the bit, the backward pass takes each such operation as
the identity. Checked against closed forms (a rounding inside a linear model has the
linear model's gradient) in ONNX graphs, TorchScript, torch.export and plain modules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from project import gate_session
from pytest_advrobust.config import AttackOptions, parse_config
from pytest_advrobust.errors import ConfigError
from pytest_advrobust.models.base import detect_output_kind
from pytest_advrobust.models.onnx_torch import to_torch
from pytest_advrobust.models.straight_through import (script_straight_through, straight_through,
                                                      straight_through_mode)
from pytest_advrobust.models.torch_models import TorchClassifier

torch.manual_seed(0)
W = torch.randn(4, 3)


class Rounding(torch.nn.Module):
    """``(round(255 x) / 255 + floor(x) + float(uint8(3 x)) + sign(x) + ceil(x)) @ W``:
    every operation straight-through, the input gradient of ``sum(c * y)`` is
    ``(1 + 1 + 3 + 1 + 1) c W^T``; autograd's is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(W.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounded = torch.round(x * 255) / 255 + x.floor() + (x * 3).to(torch.uint8).float()
        return (rounded + torch.sign(x) + torch.ceil(x)) @ self.weight


#: the closed-form straight-through gradient of sum(c * Rounding()(x)) is FACTOR * c W^T
FACTOR = 1 + 1 + 3 + 1 + 1


def test_straight_through_is_the_exact_value_and_the_identitys_gradient() -> None:
    """Bit for bit the rounded value (signed zeros and huge values included), the
    gradient of the smooth one."""
    x = torch.tensor([-0.3, 0.3, 2.5, -2.5, 1e30, -1e-40, 0.0, 7.49999952], requires_grad=True)
    for op in (torch.round, torch.floor, torch.ceil, torch.sign, torch.trunc):
        out = straight_through(op(x), x)
        assert torch.equal(out, op(x)) and torch.equal(out.signbit(), op(x).signbit()), op
        c = torch.arange(1.0, 9.0)
        (grad,) = torch.autograd.grad((out * c).sum(), x)
        assert torch.equal(grad, c)


def test_onnx_rounding_and_integer_casts_are_straight_through() -> None:
    """``MatMul(Round(4x)/4 + Floor(x) + Cast<float>(Cast<uint8>(3x)) + Sign(x), W)``: the
    twin's forward equals onnxruntime's exactly; its gradient is ``(1 + 1 + 3 + 1) c W^T``
    (autograd alone would give 0 through each)."""
    w = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "four"], ["x4"]), helper.make_node("Round", ["x4"], ["r"]),
             helper.make_node("Div", ["r", "four"], ["q"]), helper.make_node("Floor", ["x"], ["f"]),
             helper.make_node("Mul", ["x", "three"], ["x3"]),
             helper.make_node("Cast", ["x3"], ["u"], to=TensorProto.UINT8),
             helper.make_node("Cast", ["u"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Sign", ["x"], ["s"]),
             helper.make_node("Sum", ["q", "f", "c", "s"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", 6]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              initializer=[numpy_helper.from_array(np.float32(4), "four"),
                                           numpy_helper.from_array(np.float32(3), "three"),
                                           numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.random.default_rng(1).uniform(0, 2, (5, 6)).astype(np.float32)
    rounded, expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    twin = to_torch(model)
    leaf = torch.from_numpy(x).requires_grad_(True)
    t, y = twin(leaf)
    np.testing.assert_array_equal(t.detach().numpy(), rounded)  # the rounding itself: exact
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-6, atol=1e-5)
    c = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    (y * torch.from_numpy(c)).sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), (1 + 1 + 3 + 1) * c @ w.T, rtol=1e-5, atol=1e-5)
    assert {"Floor", "Round", "Sign", "Cast"} <= {n.op_type for n in model.graph.node}
    assert twin.rounded == {"Round", "Floor", "Cast", "Sign"}


def test_onnx_export_of_a_rounding_model_says_so(tmp_path) -> None:
    from conftest import export_onnx

    export_onnx(Rounding().eval(), torch.zeros(1, 4), tmp_path / "rounding.onnx", opset_version=17)
    x = np.random.default_rng(3).uniform(0, 1, (50, 4)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 3, 50)
    session = gate_session(tmp_path, "rounding.onnx", x, y)
    model = session.engine.classifier(session.spec())
    with model.session():
        grad, _ = model.loss_gradient(torch.from_numpy(x), torch.from_numpy(y))
    assert float(grad.abs().min()) > 0  # every input element moves
    notes = model.notes(gradient=True)
    assert any(note.startswith("input gradient straight-through (BPDA)") and "Round" in note
               and "Cast to an integer type and back" in note for note in notes), notes


def _closed_form(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return FACTOR * c @ W.T


def test_torchscript_graph_is_rewritten_and_the_module_left_alone(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Rounding().eval()), str(tmp_path / "r.pt"))
        module = torch.jit.load(str(tmp_path / "r.pt"))
    forward, seen = script_straight_through(module)
    assert seen == {"round": 1, "floor": 1, "sign": 1, "ceil": 1, "integer cast and back": 1}
    x = torch.rand(5, 4, requires_grad=True)
    c = torch.randn(5, 3)
    out = forward(x)
    assert torch.equal(out, module(x))
    (grad,) = torch.autograd.grad((out * c).sum(), x)
    torch.testing.assert_close(grad, _closed_form(x, c))
    # the loaded module still has its own (zero) gradient: the rewrite worked on a copy
    (plain,) = torch.autograd.grad((module(x) * c).sum(), x)
    assert float(plain.abs().max()) == 0.0


def test_torchscript_scalar_rounding_is_left_alone() -> None:
    """``math.floor`` of a shape is an integer computation, not the input's rounding: only
    the tensor operations are rewritten (a scalar ``aten::floor`` cannot be detached)."""
    import math

    class Cropped(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keep = math.floor(x.shape[1] / 2.0)
            rounded = torch.round(x[:, :keep] * 4) / 4
            if bool(x.sum() > 0):  # inside a block too
                rounded = rounded + torch.floor(x[:, :keep] * 3)
            return rounded

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.script(Cropped())
    forward, seen = script_straight_through(module)
    assert seen == {"round": 1, "floor": 1}
    x = torch.rand(2, 6, requires_grad=True)
    out = forward(x)
    assert torch.equal(out, module(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.tensor([[4.0] * 3 + [0.0] * 3] * 2))


@pytest.mark.parametrize("kind", ["torchscript", "export", "module-bpda", "module"])
def test_every_torch_form_through_the_classifier(tmp_path, kind) -> None:
    """TorchScript and torch.export graphs are straight-through always, a plain module
    with ``bpda``; the gradient pass's scores are the plain forward's, bit for bit (they
    are the clean figures); without ``bpda`` a plain module keeps its zero gradient and
    the details say why and what to set."""
    module = Rounding().eval()
    x = torch.rand(6, 4)
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(module), str(tmp_path / "r.pt"))
            module = torch.jit.load(str(tmp_path / "r.pt"))
    elif kind == "export":
        module = torch.export.export(module, (x,)).module()
    model = TorchClassifier(module, name="r", input_range=(0, 1), bpda=kind == "module-bpda")
    c = torch.randn(6, 3)
    grad, scores = model.objective_gradient(x, lambda z: (z.float() * c).sum(1))
    assert torch.equal(scores, model.scores(x))
    (note,) = model.notes(gradient=True)
    if kind == "module":
        assert float(grad.abs().max()) == 0.0
        assert note.startswith("the forward pass calls ") and "set bpda = true" in note
        assert "torch.round x1" in note and "integer cast and back x1" in note
    else:
        torch.testing.assert_close(grad, _closed_form(x, c))
        how = {"torchscript": "TorchScript graph", "export": "torch.export graph",
               "module-bpda": "bpda = true"}[kind]
        assert note.startswith("input gradient straight-through (BPDA)") and note.endswith(f"({how})")


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_quantise_and_dequantise_are_straight_through() -> None:
    class FakeInt8(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = torch.quantize_per_tensor(x, 0.05, 10, torch.quint8)
            return q.dequantize() @ W

    x = torch.rand(3, 4, requires_grad=True)
    with straight_through_mode() as mode:
        out = FakeInt8()(x)
    assert torch.equal(out, FakeInt8()(x.detach()))
    c = torch.randn(3, 3)
    (grad,) = torch.autograd.grad((out * c).sum(), x)
    torch.testing.assert_close(grad, c @ W.T)
    assert mode.seen == {"quantise and back": 1}


def test_floor_division_is_straight_through_as_a_division() -> None:
    x = torch.rand(3, 4, requires_grad=True)
    with straight_through_mode():
        out = ((x * 255) // 16) @ W
    c = torch.randn(3, 3)
    (grad,) = torch.autograd.grad((out * c).sum(), x)
    torch.testing.assert_close(grad, 255 / 16 * c @ W.T)


def test_bpda_key_is_read_inherited_and_checked() -> None:
    attacks = {"fgsm": AttackOptions()}
    path = Path("/project/pyproject.toml")
    checks = [{"attack": "fgsm", "eps": 0.1, "min-accuracy": 0.5}]
    config = parse_config({"data": "d.npz", "bpda": True, "checks": checks,
                           "models": {"a": {"model": "pkg:a"}, "b": {"model": "pkg:b", "bpda": False}}},
                          path=path, attacks=attacks)
    assert [spec.bpda for spec in config.models] == [True, False]
    assert parse_config({"model": "pkg:a", "data": "d.npz", "checks": checks}, path=path,
                        attacks=attacks).models[0].bpda is False
    with pytest.raises(ConfigError, match="bpda"):
        parse_config({"model": "pkg:a", "data": "d.npz", "bpda": "yes", "checks": checks}, path=path,
                     attacks=attacks)


def test_rounded_probabilities_are_detected_as_probabilities() -> None:
    """An INT8 softmax output sums to 1 only within half a step per class: still
    probabilities (taking them for logits would attack another loss). Float scores on no
    common grid keep the 1e-3 rule."""
    p = torch.softmax(torch.randn(200, 10) * 3, 1)
    rounded = torch.round(p * 255) / 255
    assert float((rounded.sum(1) - 1).abs().max()) > 1e-3
    assert detect_output_kind(rounded) == "probabilities"
    assert detect_output_kind(p) == "probabilities"
    off = p.clone()
    off[:, 0] += 0.01
    assert detect_output_kind(off) == "logits"
    assert detect_output_kind(torch.full((4, 10), 0.2)) == "logits"  # on a grid, but rows sum to 2
