"""Parity of the ONNX -> torch gradient twin against onnxruntime (values) and torch (gradients)."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pytest_advrobust.models.onnx_torch import UnsupportedOperator, find_untranslatable, to_torch

ROOT = Path(__file__).resolve().parents[2]
F32 = TensorProto.FLOAT


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def run_ort(model: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def run_twin(model: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    twin = to_torch(model)
    with torch.no_grad():
        out = twin(*[torch.from_numpy(x) for x in inputs])
    assert isinstance(out, tuple) and len(out) == len(model.graph.output)
    return [o.numpy() for o in out]


def assert_parity(model: onnx.ModelProto, *inputs: np.ndarray) -> None:
    expected, got = run_ort(model, *inputs), run_twin(model, *inputs)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def rand(*shape: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    return model


def vinfo(name: str, elem=F32, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


# --------------------------------------------------------------------------
# models exported from torch
# --------------------------------------------------------------------------


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4), torch.nn.Softmax(dim=1)
        )

    def forward(self, x):
        return self.net(x)


class Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
            torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 3),
        )
        bn = self.net[1]
        with torch.no_grad():  # non-trivial running statistics so BN matters
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.net(x)


class Activations(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(6, 12), torch.nn.Linear(12, 12), torch.nn.Linear(12, 5)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        h = torch.nn.functional.leaky_relu(self.a(x), 0.1)
        h = torch.tanh(h) + torch.sigmoid(h)
        h = torch.nn.functional.gelu(self.b(self.drop(h)))
        h = torch.nn.functional.elu(h)
        return torch.log_softmax(self.c(h), dim=-1)


class ViewNet(torch.nn.Module):
    """x.view(x.size(0), -1): dynamic Shape/Gather/Unsqueeze/Concat/Reshape in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


class Decoder(torch.nn.Module):
    """The nice-to-haves: ConvTranspose, nearest/bilinear Resize, Conv1d, reflect pad, clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
        self.conv1d = torch.nn.Conv1d(3, 2, 3, dilation=2)

    def forward(self, x):
        h = self.up(x)
        h = torch.nn.functional.interpolate(h, scale_factor=2, mode="nearest")
        h = torch.nn.functional.interpolate(h, scale_factor=0.5, mode="bilinear", align_corners=False)
        h = torch.nn.functional.pad(h, (1, 2, 2, 1), mode="reflect")
        h = h.mean(dim=3)
        return torch.clamp(self.conv1d(h), -0.3, 0.4)


MODELS = {"mlp": (Mlp, (6,)), "cnn": (Cnn, (3, 12, 12)), "act": (Activations, (6,)),
          "view": (ViewNet, (2, 8, 8)), "decoder": (Decoder, (2, 5, 5))}


@functools.cache
def exported(name: str, opset: int) -> tuple[torch.nn.Module, onnx.ModelProto]:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    module = cls().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy TorchScript exporter is deprecated
        torch.onnx.export(
            module, torch.randn(2, *shape), buf, dynamo=False, opset_version=opset,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}},
        )
    return module, onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_torch_model_matches_onnxruntime(name: str, opset: int, batch: int) -> None:
    module, model = exported(name, opset)
    assert find_untranslatable(model) == []
    x = rand(batch, *MODELS[name][1], seed=batch)
    assert_parity(model, x)
    # And the twin reproduces the original torch module too.
    with torch.no_grad():
        np.testing.assert_allclose(run_twin(model, x)[0], module(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_view_graph_really_is_dynamic() -> None:
    """Guard the premise of the 'view' case: the reshape target is computed at run time."""
    ops = {n.op_type for n in exported("view", 13)[1].graph.node}
    assert {"Shape", "Gather", "Concat", "Reshape"} <= ops


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_input_gradient_matches_torch_original(name: str) -> None:
    module, model = exported(name, 13)
    twin = to_torch(model)
    assert all(not b.requires_grad for b in twin.buffers())
    assert list(twin.parameters()) == []
    x = torch.from_numpy(rand(5, *MODELS[name][1], seed=3))
    # Weight the outputs so the gradient is not trivially zero (softmax rows sum to 1).
    weights = torch.linspace(-1.0, 2.0, steps=module(x).shape[-1])

    x_ref = x.clone().requires_grad_(True)
    (module(x_ref) * weights).sum().backward()
    x_twin = x.clone().requires_grad_(True)
    (twin(x_twin)[0] * weights).sum().backward()

    assert x_ref.grad.abs().max() > 1e-4
    np.testing.assert_allclose(x_twin.grad.numpy(), x_ref.grad.numpy(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# hand-built graphs
# --------------------------------------------------------------------------


def test_gemm_trans_b_alpha_beta() -> None:
    w, c = rand(4, 6, seed=1), rand(4, seed=2)
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
        [vinfo("x", shape=["n", 6])], [vinfo("y", shape=["n", 4])], [init("w", w), init("c", c)],
    )
    for batch in (1, 5):
        x = rand(batch, 6, seed=batch)
        assert_parity(model, x)
        np.testing.assert_allclose(run_twin(model, x)[0], 0.5 * x @ w.T + 2.0 * c, rtol=1e-5, atol=1e-6)


def test_gemm_trans_a_without_c() -> None:
    model = make_model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, alpha=1.5)],
        [vinfo("x", shape=[3, 4])], [vinfo("y", shape=[4, 2])], [init("w", rand(3, 2, seed=1))],
    )
    assert_parity(model, rand(3, 4))


@pytest.mark.parametrize("batch", [1, 5])
def test_clip_min_max_inputs_and_attributes(batch: int) -> None:
    model = make_model(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["a"]),
         helper.make_node("Clip", ["x", "", "hi"], ["b"]),
         helper.make_node("Clip", ["x"], ["c"])],
        [vinfo("x", shape=["n", 7])], [vinfo(n, shape=["n", 7]) for n in "abc"],
        [init("lo", np.float32(-0.5)), init("hi", np.float32(0.3))],
    )
    x = rand(batch, 7, seed=batch)
    assert_parity(model, x)
    old = make_model([helper.make_node("Clip", ["x"], ["y"], min=-0.2, max=0.1)],
                     [vinfo("x", shape=["n", 7])], [vinfo("y", shape=["n", 7])], opset=9)
    assert_parity(old, x)
    assert run_twin(old, x)[0].max() <= 0.1 + 1e-7


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_modes(mode: str) -> None:
    pads = [0, 1, 2, 0, 2, 1] if mode != "constant" else [0, 1, -1, 0, 2, 3]
    nodes = [helper.make_node("Pad", ["x", "pads", "v"] if mode == "constant" else ["x", "pads"],
                              ["y"], mode=mode)]
    inits = [init("pads", np.array(pads, dtype=np.int64))]
    if mode == "constant":
        inits.append(init("v", np.float32(0.75)))
    model = make_model(nodes, [vinfo("x", shape=["n", 3, 4])], [vinfo("y")], inits)
    for batch in (1, 5):
        assert_parity(model, rand(batch, 3, 4, seed=batch))
    old = make_model([helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=pads, value=0.75)],
                     [vinfo("x", shape=["n", 3, 4])], [vinfo("y")], opset=9)
    assert_parity(old, rand(2, 3, 4))


def test_slice_inputs_negative_steps_and_clamping() -> None:
    big = np.iinfo(np.int64).max
    model = make_model(
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"]),
         helper.make_node("Slice", ["x", "s2", "e2"], ["z"])],
        [vinfo("x", shape=["n", 6, 7])], [vinfo("y"), vinfo("z")],
        [init("s", np.array([-1, 1], dtype=np.int64)), init("e", np.array([-big, big], dtype=np.int64)),
         init("a", np.array([2, 1], dtype=np.int64)), init("st", np.array([-2, 2], dtype=np.int64)),
         init("s2", np.array([0, 1, -3], dtype=np.int64)), init("e2", np.array([big, -1, 100], dtype=np.int64))],
    )
    for batch in (1, 5):
        assert_parity(model, rand(batch, 6, 7, seed=batch))
    old = make_model([helper.make_node("Slice", ["x"], ["y"], starts=[1, -4], ends=[5, 1000], axes=[1, 2])],
                     [vinfo("x", shape=["n", 6, 7])], [vinfo("y")], opset=9)
    assert_parity(old, rand(3, 6, 7))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_axes_attribute_vs_input(keepdims: int) -> None:
    x = rand(5, 3, 4)
    as_attr = make_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=keepdims)],
                         [vinfo("x", shape=["n", 3, 4])], [vinfo("y")], opset=13)
    as_input = make_model([helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=keepdims)],
                          [vinfo("x", shape=["n", 3, 4])], [vinfo("y")],
                          [init("ax", np.array([1, -1], dtype=np.int64))], opset=18)
    for model in (as_attr, as_input):
        assert_parity(model, x)
        assert_parity(model, x[:1])
    np.testing.assert_allclose(run_twin(as_attr, x)[0], run_twin(as_input, x)[0])
    everything = make_model([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=keepdims)],
                            [vinfo("x", shape=["n", 3, 4])], [vinfo("y")], opset=18)
    assert_parity(everything, x)


def test_reductions_sum_max_argmax() -> None:
    model = make_model(
        [helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=0),
         helper.make_node("ReduceMax", ["x"], ["m"], axes=[2]),
         helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
         helper.make_node("ArgMin", ["x"], ["j"], axis=-1, select_last_index=1)],
        [vinfo("x", shape=["n", 3, 4])],
        [vinfo("s"), vinfo("m"), vinfo("i", TensorProto.INT64), vinfo("j", TensorProto.INT64)],
        [init("ax", np.array([0, 2], dtype=np.int64))],
    )
    x = rand(5, 3, 4)
    x[0, 0, 0] = x[0, 0, 3] = -10.0  # tie for select_last_index
    assert_parity(model, x)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_axis_default_changed_at_13(opset: int) -> None:
    model = make_model([helper.make_node("Softmax", ["x"], ["a"]),
                        helper.make_node("LogSoftmax", ["x"], ["b"], axis=1)],
                       [vinfo("x", shape=["n", 3, 4])], [vinfo("a"), vinfo("b")], opset=opset)
    x = rand(5, 3, 4)
    assert_parity(model, x)
    summed_over = (1, 2) if opset < 13 else (2,)  # opset 11 coerces to 2-D at axis 1
    np.testing.assert_allclose(run_twin(model, x)[0].sum(axis=summed_over), 1.0, rtol=1e-5)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_axes_attribute_vs_input(opset: int) -> None:
    if opset < 13:
        nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, -1]),
                 helper.make_node("Squeeze", ["u"], ["y"], axes=[0, 4]),
                 helper.make_node("Squeeze", ["u"], ["z"])]
        inits = []
    else:
        nodes = [helper.make_node("Unsqueeze", ["x", "a"], ["u"]),
                 helper.make_node("Squeeze", ["u", "b"], ["y"]),
                 helper.make_node("Squeeze", ["u"], ["z"])]
        inits = [init("a", np.array([0, -1], dtype=np.int64)), init("b", np.array([0, 4], dtype=np.int64))]
    model = make_model(nodes, [vinfo("x", shape=["n", 1, 3])], [vinfo("u"), vinfo("y"), vinfo("z")],
                       inits, opset=opset)
    assert_parity(model, rand(5, 1, 3))
    assert run_twin(model, rand(5, 1, 3))[0].shape == (1, 5, 1, 3, 1)


def test_gelu_opset20_both_approximations() -> None:
    model = make_model([helper.make_node("Gelu", ["x"], ["a"]),
                        helper.make_node("Gelu", ["x"], ["b"], approximate="tanh")],
                       [vinfo("x", shape=["n", 8])], [vinfo("a"), vinfo("b")], opset=20)
    assert_parity(model, rand(5, 8) * 3)


def test_elementwise_zoo() -> None:
    names = ["Neg", "Abs", "Exp", "Tanh", "Sigmoid", "Softplus", "Erf", "Relu", "Selu", "Elu",
             "HardSigmoid", "Softsign"]
    nodes = [helper.make_node(op, ["x"], [f"o{i}"]) for i, op in enumerate(names)]
    nodes += [
        helper.make_node("Abs", ["x"], ["ax"]),
        helper.make_node("Add", ["ax", "one"], ["pos"]),
        helper.make_node("Log", ["pos"], ["log"]),
        helper.make_node("Sqrt", ["pos"], ["sqrt"]),
        helper.make_node("Reciprocal", ["pos"], ["rec"]),
        helper.make_node("Pow", ["pos", "half"], ["pow"]),
        helper.make_node("Div", ["x", "pos"], ["div"]),
        helper.make_node("Sub", ["x", "one"], ["sub"]),
        helper.make_node("LeakyRelu", ["x"], ["lrelu"], alpha=0.2),
        helper.make_node("Max", ["x", "sub", "one"], ["max"]),
        helper.make_node("Min", ["x", "sub"], ["min"]),
        helper.make_node("Sum", ["x", "sub", "one"], ["sum"]),
        helper.make_node("Mean", ["x", "pos"], ["mean"]),
        helper.make_node("Greater", ["x", "one"], ["gt"]),
        helper.make_node("Where", ["gt", "x", "sub"], ["where"]),
        helper.make_node("Identity", ["x"], ["id"]),
        helper.make_node("Dropout", ["x"], ["drop", "mask"]),
    ]
    outs = [f"o{i}" for i in range(len(names))] + [
        "log", "sqrt", "rec", "pow", "div", "lrelu", "max", "min", "sum", "mean", "where", "id", "drop"]
    model = make_model(nodes, [vinfo("x", shape=["n", 6])], [vinfo(o) for o in outs],
                       [init("one", np.float32(1.0)), init("half", np.float32(0.5))])
    assert_parity(model, rand(5, 6) * 2)


@pytest.mark.parametrize("auto_pad", ["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"])
def test_conv_auto_pad_strides_dilations(auto_pad: str) -> None:
    # onnxruntime refuses dilations together with SAME_* padding.
    dilations = [1, 2] if auto_pad in ("NOTSET", "VALID") else [1, 1]
    kw = dict(strides=[2, 1], dilations=dilations, group=2, auto_pad=auto_pad)
    if auto_pad == "NOTSET":
        kw["pads"] = [1, 0, 2, 1]  # asymmetric
    conv2d = helper.make_node("Conv", ["x", "w", "b"], ["y"], **kw)
    conv1d = helper.make_node("Conv", ["x1", "w1"], ["z"], strides=[3], auto_pad=auto_pad,
                              **({"pads": [2, 2]} if auto_pad == "NOTSET" else {}))
    model = make_model(
        [conv2d, conv1d], [vinfo("x", shape=["n", 4, 9, 8]), vinfo("x1", shape=["n", 2, 10])],
        [vinfo("y"), vinfo("z")],
        [init("w", rand(6, 2, 3, 3, seed=1)), init("b", rand(6, seed=2)), init("w1", rand(3, 2, 4, seed=3))],
    )
    for batch in (1, 5):
        assert_parity(model, rand(batch, 4, 9, 8, seed=batch), rand(batch, 2, 10, seed=batch + 7))


@pytest.mark.parametrize("include_pad", [0, 1])
def test_pools_with_asymmetric_pads(include_pad: int) -> None:
    model = make_model(
        [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 2], pads=[1, 0, 0, 1], strides=[2, 1]),
         helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[1, 2, 0, 1],
                          count_include_pad=include_pad),
         helper.make_node("AveragePool", ["x"], ["s"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                          count_include_pad=include_pad, strides=[2, 2]),
         helper.make_node("MaxPool", ["x"], ["u"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
         helper.make_node("GlobalMaxPool", ["x"], ["g"])],
        [vinfo("x", shape=["n", 2, 7, 6])], [vinfo(n) for n in "masug"],
    )
    assert_parity(model, rand(5, 2, 7, 6))


def test_shape_ops_constant_of_shape_expand_tile_split_concat_gather() -> None:
    model = make_model(
        [helper.make_node("Shape", ["x"], ["shp"]),
         helper.make_node("Gather", ["shp", "zero"], ["n"]),
         helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
         helper.make_node("Concat", ["n1", "four"], ["target"], axis=0),
         helper.make_node("ConstantOfShape", ["target"], ["filled"],
                          value=helper.make_tensor("v", F32, [1], [0.25])),
         helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0, 3.0, 4.0]),
         helper.make_node("Expand", ["k", "target"], ["kk"]),
         helper.make_node("Split", ["x", "sizes"], ["p", "q"], axis=1),
         helper.make_node("Tile", ["p", "reps"], ["tiled"]),
         helper.make_node("Concat", ["q", "filled", "kk"], ["cat"], axis=1),
         helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
         helper.make_node("Gather", ["x", "idx"], ["cols"], axis=1),
         helper.make_node("Cast", ["n"], ["nf"], to=F32),
         helper.make_node("Mul", ["cat", "nf"], ["scaled"]),
         helper.make_node("Flatten", ["cols"], ["flat"], axis=0)],
        [vinfo("x", shape=["n", 5])],
        [vinfo(n) for n in ("scaled", "tiled", "xt", "flat")] + [vinfo("shp", TensorProto.INT64)],
        [init("zero", np.array(0, dtype=np.int64)), init("zero1", np.array([0], dtype=np.int64)),
         init("four", np.array([4], dtype=np.int64)), init("sizes", np.array([2, 3], dtype=np.int64)),
         init("reps", np.array([1, 3], dtype=np.int64)), init("idx", np.array([[4, -1], [0, 2]], dtype=np.int64))],
    )
    for batch in (1, 5):
        assert_parity(model, rand(batch, 5, seed=batch))


def test_float64_model() -> None:
    w = rand(5, 3, dtype=np.float64)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
         helper.make_node("Softmax", ["t"], ["y"], axis=-1)],
        [vinfo("x", TensorProto.DOUBLE, ["n", 5])], [vinfo("y", TensorProto.DOUBLE, ["n", 3])], [init("w", w)],
    )
    x = rand(5, 5, dtype=np.float64)
    assert_parity(model, x)
    twin = to_torch(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    (twin(xt)[0][:, 0]).sum().backward()
    assert twin(xt)[0].dtype == torch.float64 and xt.grad.dtype == torch.float64
    # Finite-difference check in float64: the gradient is exact, not just plausible.
    eps = 1e-6
    bumped = x.copy()
    bumped[2, 1] += eps
    fd = (run_ort(model, bumped)[0][:, 0].sum() - run_ort(model, x)[0][:, 0].sum()) / eps
    assert abs(fd - xt.grad[2, 1].item()) < 1e-5


# --------------------------------------------------------------------------
# what must be refused
# --------------------------------------------------------------------------


def _sklearn_model(kind: str) -> onnx.ModelProto:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    clf = LogisticRegression() if kind == "logreg" else DecisionTreeClassifier(max_depth=3)
    clf.fit(X, y)
    return to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}})


@pytest.mark.parametrize("kind, op", [("tree", "TreeEnsembleClassifier")])
def test_sklearn_operators_are_refused(kind: str, op: str) -> None:
    model = _sklearn_model(kind)
    found = find_untranslatable(model)
    assert (op, "ai.onnx.ml") in [(o, d) for o, d, _ in found]
    assert all(d == "ai.onnx.ml" for _, d, _ in found)
    with pytest.raises(UnsupportedOperator) as info:
        to_torch(model)
    err = info.value
    assert err.op_type == op and err.domain == "ai.onnx.ml"
    assert err.node_name == found[0][2]
    assert op in str(err) and "ai.onnx.ml" in str(err)


def test_unknown_and_unsupported_default_domain_nodes() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["m", "idx"], kernel_shape=[2], name="pool_with_indices"),
         helper.make_node("NonMaxSuppression", ["x", "x"], ["s"], name="nms")],
        [vinfo("x", shape=[1, 1, 4])], [vinfo("m"), vinfo("idx", TensorProto.INT64), vinfo("s", TensorProto.INT64)],
    )
    assert find_untranslatable(model) == [("MaxPool", "ai.onnx", "pool_with_indices"),
                                          ("NonMaxSuppression", "ai.onnx", "nms")]
    with pytest.raises(UnsupportedOperator, match="MaxPool.*Indices") as info:
        to_torch(model)
    assert info.value.node_name == "pool_with_indices"


@pytest.mark.e2e
def test_find_untranslatable_does_not_import_torch() -> None:
    code = (
        "import sys, onnx\n"
        "from onnx import helper, TensorProto as T\n"
        "from pytest_advrobust.models.onnx_torch import find_untranslatable\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',"
        " [helper.make_tensor_value_info('x', T.FLOAT, [1])], [helper.make_tensor_value_info('y', T.FLOAT, [1])])\n"
        "assert find_untranslatable(helper.make_model(g)) == []\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_normalizations_inference() -> None:
    """BatchNormalization is fused into Conv by the torch exporter, so check it (and friends) by hand."""
    c = 3
    stats = [init("scale", rand(c, seed=1) + 1.0), init("bias", rand(c, seed=2)),
             init("mean", rand(c, seed=3)), init("var", np.abs(rand(c, seed=4)) + 0.5),
             init("ln_scale", rand(5, seed=5)), init("ln_bias", rand(5, seed=6))]
    for opset in (9, 15, 17):
        nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["bn"],
                                  epsilon=1e-3),
                 helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["inorm"])]
        outs = [vinfo("bn"), vinfo("inorm")]
        if opset >= 17:
            nodes.append(helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"]))
            outs.append(vinfo("ln"))
        model = make_model(nodes, [vinfo("x", shape=["n", c, 4, 5])], outs, stats, opset=opset)
        for batch in (1, 5):
            assert_parity(model, rand(batch, c, 4, 5, seed=batch) * 2 + 1)


def test_reshape_zero_copies_dim_and_minus_one_infers() -> None:
    model = make_model(
        [helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Reshape", ["x", "s2"], ["b"])],
        [vinfo("x", shape=["n", 3, 4])], [vinfo("a"), vinfo("b")],
        [init("s1", np.array([0, -1], dtype=np.int64)), init("s2", np.array([0, 2, -1, 2], dtype=np.int64))],
    )
    for batch in (1, 5):
        assert_parity(model, rand(batch, 3, 4, seed=batch))
    assert run_twin(model, rand(5, 3, 4))[1].shape == (5, 2, 3, 2)


@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel", "align_corners"])
def test_resize_linear_with_sizes(ctm: str) -> None:
    model = make_model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                          coordinate_transformation_mode=ctm)],
        [vinfo("x", shape=[2, 3, 5, 4])], [vinfo("y")],
        [init("sizes", np.array([2, 3, 8, 7], dtype=np.int64))],
    )
    assert_parity(model, rand(2, 3, 5, 4))


@pytest.mark.parametrize("output_shape", [[14, 13], [12, 11], [15, 13]])
def test_conv_transpose_output_shape(output_shape: list[int]) -> None:
    """Where the odd leftover padding goes (head or tail) is runtime lore; pin onnxruntime's choice."""
    model = make_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=output_shape)],
        [vinfo("x", shape=["n", 3, 7, 6])], [vinfo("y")], [init("w", rand(3, 2, 3, 3))],
    )
    assert_parity(model, rand(2, 3, 7, 6))
    assert run_twin(model, rand(2, 3, 7, 6))[0].shape[2:] == tuple(output_shape)
