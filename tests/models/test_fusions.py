"""onnxruntime's quantised fusions (com.microsoft QLinear*): the twin's forward pass is
onnxruntime's kernel, to the last rounding, and its gradient is the float operator's on
the dequantised inputs (straight-through the rounding)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pytest_advrobust.models.onnx_torch import find_untranslatable, to_torch

TYPES = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}


def contrib_model(op: str, inputs: list[str], feeds: dict[str, np.dtype], constants: dict[str, np.ndarray],
                  **attrs) -> onnx.ModelProto:
    """One com.microsoft node; ``feeds`` are graph inputs (name -> dtype), ``constants``
    initializers (scales and zero points, as a quantiser writes them)."""
    node = helper.make_node(op, inputs, ["y"], domain="com.microsoft", **attrs)
    element = TYPES[next(iter(feeds.values()))]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(name, TYPES[dtype], None) for name, dtype in feeds.items()],
        [helper.make_tensor_value_info("y", element, None)],
        initializer=[numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid("com.microsoft", 1)], ir_version=8)


def onnxruntime_and_twin(model, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    twin = to_torch(model)
    with torch.no_grad():  # quantised values enter the twin as floats holding whole numbers
        got = twin(*[torch.from_numpy(v.astype(np.float32)) for v in feeds.values()])[0]
    return expected, got.numpy()


def quantised(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def zero_point(dtype, value: int) -> np.ndarray:
    return np.array(value - 128 if dtype == np.int8 else value, dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("shapes", [((4, 6, 5, 5), (4, 6, 5, 5)), ((4, 6, 5, 5), (4, 6, 1, 1)),
                                    ((4, 6, 5, 5), (1,)), ((1, 10, 16), (4, 10, 16)), ((3, 7), (7,))])
def test_elementwise_fusions_match_onnxruntime_exactly(op, dtype, shapes) -> None:
    """Residual adds, squeeze-excite gates, position embeddings: every broadcast pattern,
    both 8-bit types, all-to-all exact (a table of onnxruntime's own kernel)."""
    rng = np.random.default_rng(0)
    constants = {"sa": np.float32(0.0123), "za": zero_point(dtype, 131), "sb": np.float32(0.0371),
                 "zb": zero_point(dtype, 90), "sc": np.float32(0.0457), "zc": zero_point(dtype, 120)}
    model = contrib_model(op, ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], {"a": dtype, "b": dtype}, constants)
    feeds = {"a": quantised(rng, dtype, shapes[0]), "b": quantised(rng, dtype, shapes[1])}
    expected, got = onnxruntime_and_twin(model, feeds)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("op, attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {"alpha": 0.1})])
def test_lookup_fusions_match_onnxruntime_on_every_value(op, attrs, dtype) -> None:
    info = np.iinfo(dtype)
    constants = {"sx": np.float32(0.05), "zx": zero_point(dtype, 140), "sy": np.float32(1 / 256),
                 "zy": zero_point(dtype, 3)}
    model = contrib_model(op, ["x", "sx", "zx", "sy", "zy"], {"x": dtype}, constants, **attrs)
    every = np.arange(info.min, info.max + 1).astype(dtype).reshape(2, 8, 16)
    expected, got = onnxruntime_and_twin(model, {"x": every})
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_concat_requantises_each_input_as_onnxruntime(dtype) -> None:
    """Inputs at another scale go through onnxruntime's table, one at the output's scale
    is copied."""
    rng = np.random.default_rng(1)
    constants = {"sy": np.float32(0.02), "zy": zero_point(dtype, 128), "s1": np.float32(0.013),
                 "z1": zero_point(dtype, 100), "s2": np.float32(0.02), "z2": zero_point(dtype, 128),
                 "s3": np.float32(0.031), "z3": zero_point(dtype, 7)}
    model = contrib_model("QLinearConcat", ["sy", "zy", "a", "s1", "z1", "b", "s2", "z2", "c", "s3", "z3"],
                          {"a": dtype, "b": dtype, "c": dtype}, constants, axis=1)
    feeds = {name: quantised(rng, dtype, (3, width, 4)) for name, width in zip("abc", (2, 5, 1))}
    expected, got = onnxruntime_and_twin(model, feeds)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape, axis, opset", [((500, 10), -1, 13), ((64, 1000), -1, 13),
                                                ((6, 7, 9), 1, 13), ((6, 3, 5), 1, 12)])
def test_qlinear_softmax_matches_onnxruntime_bit_for_bit(shape, axis, opset, dtype) -> None:
    """The kernel's float32 lookup values, its in-order float32 sum and its requantisation
    by ``floor(1 / y_scale)``: reproduced exactly, on confident rows (one value at the top
    of the range) and spread ones, over rows along the last axis, a middle axis, and the
    flattened trailing axes of opset 12."""
    rng = np.random.default_rng(2)
    x = quantised(rng, dtype, shape)
    x[: shape[0] // 2].reshape(shape[0] // 2, -1)[:, 0] = np.iinfo(dtype).max  # confident rows
    constants = {"sx": np.float32(0.0731), "zx": zero_point(dtype, 128), "sy": np.float32(1 / 256),
                 "zy": np.array(-128 if dtype == np.int8 else 0, dtype)}
    model = contrib_model("QLinearSoftmax", ["x", "sx", "zx", "sy", "zy"], {"x": dtype}, constants,
                          axis=axis, opset=opset)
    expected, got = onnxruntime_and_twin(model, {"x": x})
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_global_average_pool_matches_onnxruntime(dtype, channels_last) -> None:
    rng = np.random.default_rng(3)
    constants = {"sx": np.float32(0.031), "zx": zero_point(dtype, 12), "sy": np.float32(0.017),
                 "zy": zero_point(dtype, 3)}
    model = contrib_model("QLinearGlobalAveragePool", ["x", "sx", "zx", "sy", "zy"], {"x": dtype}, constants,
                          channels_last=channels_last)
    for spatial in ((7, 7), (3, 5), (1, 1)):
        shape = (16, *spatial, 19) if channels_last else (16, 19, *spatial)
        expected, got = onnxruntime_and_twin(model, {"x": quantised(rng, dtype, shape)})
        np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_fusion_gradients_are_the_float_operators_on_dequantised_inputs() -> None:
    """Closed forms, in the output's quantised units: QLinearAdd's gradient is
    ``s_a / s_c`` and ``s_b / s_c``; QLinearMul's ``s_a dq(b) / s_c``; QLinearSigmoid's
    ``s_x sigmoid'(dq(x)) / s_y``."""
    rng = np.random.default_rng(4)
    scales = {"sa": np.float32(0.02), "za": np.uint8(100), "sb": np.float32(0.05), "zb": np.uint8(7),
              "sc": np.float32(0.1), "zc": np.uint8(128)}
    a = rng.integers(0, 256, (3, 4)).astype(np.float32)
    b = rng.integers(0, 256, (3, 4)).astype(np.float32)
    for op in ("QLinearAdd", "QLinearMul"):
        model = contrib_model(op, ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"],
                              {"a": np.uint8, "b": np.uint8}, scales)
        ta, tb = torch.from_numpy(a).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
        to_torch(model)(ta, tb)[0].sum().backward()
        if op == "QLinearAdd":
            expected_a, expected_b = np.full_like(a, 0.02 / 0.1), np.full_like(b, 0.05 / 0.1)
        else:
            expected_a, expected_b = 0.02 * (0.05 * (b - 7)) / 0.1, 0.05 * (0.02 * (a - 100)) / 0.1
        np.testing.assert_allclose(ta.grad.numpy(), expected_a, rtol=1e-5)
        np.testing.assert_allclose(tb.grad.numpy(), expected_b, rtol=1e-5)
    model = contrib_model("QLinearSigmoid", ["x", "sx", "zx", "sy", "zy"], {"x": np.uint8},
                          {"sx": np.float32(0.05), "zx": np.uint8(128), "sy": np.float32(1 / 256),
                           "zy": np.uint8(0)})
    tx = torch.from_numpy(a).requires_grad_(True)
    to_torch(model)(tx)[0].sum().backward()
    s = 1 / (1 + np.exp(-0.05 * (a - 128)))
    np.testing.assert_allclose(tx.grad.numpy(), 0.05 * s * (1 - s) * 256, rtol=1e-4)


def test_qlinear_softmax_gradient_is_the_float_softmax() -> None:
    """Backward, QLinearSoftmax is ``softmax(dq(x)) * floor(1 / y_scale)``: the gradient of
    ``sum(c * y)`` is ``s_x * 256 * p * (c - <c, p>)``."""
    rng = np.random.default_rng(5)
    model = contrib_model("QLinearSoftmax", ["x", "sx", "zx", "sy", "zy"], {"x": np.uint8},
                          {"sx": np.float32(0.1), "zx": np.uint8(200), "sy": np.float32(1 / 256),
                           "zy": np.uint8(0)}, axis=-1, opset=13)
    x = rng.integers(150, 256, (5, 10)).astype(np.float32)
    c = rng.standard_normal((5, 10)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    (to_torch(model)(tx)[0] * torch.from_numpy(c)).sum().backward()
    z = 0.1 * (x.astype(np.float64) - 200)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = 0.1 * 256 * p * (c - (c * p).sum(1, keepdims=True))
    np.testing.assert_allclose(tx.grad.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_untranslated_fusions_are_named() -> None:
    """A fusion without a translation (QLinearAveragePool here) is listed like any
    operator the twin lacks, as onnxruntime's."""
    model = contrib_model("QLinearAveragePool", ["x", "sx", "zx", "sy", "zy"], {"x": np.uint8},
                          {"sx": np.float32(0.1), "zx": np.uint8(0), "sy": np.float32(0.1), "zy": np.uint8(0)},
                          kernel_shape=[2, 2])
    assert find_untranslatable(model) == [("QLinearAveragePool", "com.microsoft", "<node 0>")]
