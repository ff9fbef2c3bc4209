"""A lean, differentiable torch twin of an ONNX graph.

Gradient attacks (FGSM, PGD, ...) need exact input gradients, but ONNX models
are evaluated in onnxruntime, which has none.  This module translates the
graph node by node into torch operations so that autograd can differentiate
it with respect to the graph inputs.  The translation is deliberately small:
it covers the operators that classifiers exported from torch / Keras / hand
written graphs use, and refuses everything else with ``UnsupportedOperator``
instead of guessing.  The caller is expected to parity-check the twin against
onnxruntime before trusting its gradients.

Neither torch nor onnx is imported at module import time: the plugin must not
pay for torch unless a gradient gate actually runs.  ``find_untranslatable``
needs neither.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx
    import torch

__all__ = ["UnsupportedOperator", "find_untranslatable", "to_torch"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


class UnsupportedOperator(Exception):
    """The graph holds operators we cannot translate into differentiable torch ops.

    ``op_type``, ``domain``, ``node_name`` and ``reason`` describe the first one; ``problems``
    lists every one, ``(op_type, domain, node_name, reason)``, and the message names them all
    (so a user learns the whole list at once, not one operator per attempt)."""

    def __init__(self, op_type: str, domain: str, node_name: str, reason: str = "",
                 others: "list[tuple[str, str, str, str]] | tuple" = ()) -> None:
        self.op_type = op_type
        self.domain = domain or "ai.onnx"
        self.node_name = node_name
        self.reason = reason
        self.problems = [(op_type, self.domain, node_name, reason),
                         *[(o, d or "ai.onnx", n, r) for o, d, n, r in others]]
        if len(self.problems) == 1:
            message = (
                f"operator {op_type} (domain {self.domain}, node {node_name!r}) has no gradient-capable "
                f"torch translation"
            )
            if reason:
                message += f": {reason}"
        else:
            groups: dict[tuple[str, str, str], list[str]] = {}
            for o, d, n, r in self.problems:
                groups.setdefault((o, d, r), []).append(n)
            parts = []
            for (o, d, r), names in groups.items():
                shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more"
                                                                  if len(names) > 3 else "")
                parts.append(f"{o} (domain {d}, node{'s' if len(names) > 1 else ''} {shown})"
                             + (f": {r}" if r else ""))
            message = (f"{len(groups)} operator kinds in {len(self.problems)} nodes have no "
                       f"gradient-capable torch translation: {'; '.join(parts)}")
        super().__init__(message.rstrip(".") + ".")


# --------------------------------------------------------------------------
# Attribute / graph helpers (no torch needed)
# --------------------------------------------------------------------------


def _opset(model: Any) -> int:
    """Opset version of the default ONNX domain (what operator semantics follow)."""
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    return 21


def _attrs(node: Any) -> dict[str, Any]:
    """Node attributes as plain Python values (strings decoded, tensors as numpy)."""
    from onnx import AttributeProto, helper, numpy_helper

    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            out[attr.name] = numpy_helper.to_array(attr.t)
            continue
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out


def _node_label(node: Any, index: int) -> str:
    return node.name or f"<node {index}>"


def _attr_problem(node: Any, attrs: dict[str, Any], opset: int) -> str:
    """Reason why a node of a *known* op type still cannot be translated ("" if it can)."""
    op = node.op_type
    outputs = [o for o in node.output]
    if op == "Pad" and attrs.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"pad mode {attrs.get('mode')!r}"
    if op == "MaxPool" and len(outputs) > 1 and outputs[1]:
        return "the Indices output of MaxPool is not translated"
    if op == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
        return "dilated AveragePool"
    if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return f"auto_pad {attrs.get('auto_pad')!r}"
        kernel = attrs.get("kernel_shape")
        if kernel is not None and not 1 <= len(kernel) <= 3:
            return f"{len(kernel)}-d kernels"
    if op == "ConvTranspose" and attrs.get("auto_pad", "NOTSET").startswith("SAME"):
        return "auto_pad SAME_* for ConvTranspose (pad placement differs between runtimes)"
    if op == "BatchNormalization" and attrs.get("training_mode", 0):
        return "training-mode BatchNormalization"
    if op in ("Cast",) and attrs.get("to") == 8:
        return "cast to string"
    if op == "Constant" and not any(
        k in attrs for k in ("value", "value_float", "value_floats", "value_int", "value_ints")
    ):
        return "only numeric Constant values are supported"
    if op == "Resize":
        return _resize_problem(attrs, opset)
    if op in ("QuantizeLinear", "DequantizeLinear"):
        if attrs.get("block_size", 0):
            return "blocked quantisation (block_size)"
        if attrs.get("output_dtype", 0) not in (0, 2, 3, 4, 5):
            return "only 8- and 16-bit integer quantisation"
    return ""


def _resize_problem(attrs: dict[str, Any], opset: int) -> str:
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
    if attrs.get("antialias", 0) or attrs.get("axes") is not None:
        return "Resize antialias/axes"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize keep_aspect_ratio_policy"
    if mode == "nearest":
        near = attrs.get("nearest_mode", "round_prefer_floor")
        if ctm != "asymmetric" or (opset >= 11 and near != "floor"):
            return f"nearest Resize with {ctm}/{near} (only asymmetric/floor)"
        return ""
    if mode == "linear":
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return f"linear Resize with coordinate_transformation_mode {ctm!r}"
        return ""
    return f"Resize mode {mode!r}"


def _problem(node: Any, opset: int, types: "dict[str, int] | None" = None) -> str | None:
    """None if translatable, else the reason (``types``: initializer element types)."""
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and types and len(node.input) > 2:
        allowed = (2, 3, 4, 5, 6) if node.op_type == "DequantizeLinear" else (2, 3, 4, 5)  # + int32 bias
        if types.get(node.input[2], 2) not in allowed:
            return "only 8- and 16-bit integer quantisation (not float8 or int4)"
    if node.domain == "com.microsoft":
        if node.op_type not in _CONTRIB_HANDLERS:
            return ("an onnxruntime contrib operator (a fusion onnxruntime applies when it "
                    "optimises the graph) with no translation")
        return _contrib_problem(node, _attrs(node)) or None
    if node.domain not in _DEFAULT_DOMAINS:
        if node.domain == "ai.onnx.ml":
            if node.op_type in _ML_HANDLERS:
                return _ml_problem(node, _attrs(node)) or None
            return ("classical-ML operators (trees, SVMs, ZipMap, ...) are not differentiable here "
                    "(linear models, Normalizer and Scaler are)")
        return f"custom domain {node.domain!r} is unknown"
    if node.op_type not in _HANDLERS:
        return "no translation for this operator"
    problem = _attr_problem(node, _attrs(node), opset)
    return problem or None


def _initializer_types(model: Any) -> dict[str, int]:
    return {init.name: init.data_type for init in model.graph.initializer}


def _needed_nodes(model: Any, outputs: "list[str] | None") -> list[tuple[int, Any]]:
    """``(index, node)`` of the nodes that the named graph outputs depend on, in graph
    order (all nodes when ``outputs`` is None): an unused branch, such as the ``label``
    output of a scikit-learn export, needs no translation."""
    nodes = list(model.graph.node)
    if outputs is None:
        return list(enumerate(nodes))
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    wanted, stack = set(), [producer[name] for name in outputs if name in producer]
    while stack:
        i = stack.pop()
        if i in wanted:
            continue
        wanted.add(i)
        stack.extend(producer[name] for name in nodes[i].input if name in producer)
    return [(i, nodes[i]) for i in sorted(wanted)]


def find_untranslatable(model: "onnx.ModelProto",
                        outputs: "list[str] | None" = None) -> list[tuple[str, str, str]]:
    """(op_type, domain, node_name) of every node ``to_torch`` cannot translate; [] if all can.

    The default domain is reported as ``"ai.onnx"`` and unnamed nodes as ``"<node i>"``.
    ``outputs`` limits the question to the nodes those graph outputs need.
    Cheap: no torch import, so gates can decide whether gradient attacks apply.
    """
    opset, types = _opset(model), _initializer_types(model)
    found = []
    for i, node in _needed_nodes(model, outputs):
        if _problem(node, opset, types) is not None:
            found.append((node.op_type, node.domain or "ai.onnx", _node_label(node, i)))
    return found


#: operators of quantised graphs (their presence is said in a gradient gate's details):
#: exact forward, straight-through (BPDA) backward; the com.microsoft ones are onnxruntime's
#: fusions, which the twin meets in the graph as onnxruntime runs it
QUANTISATION = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
                "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearGlobalAveragePool",
                "QLinearConcat")
#: float operators without a gradient that the twin makes straight-through (identity
#: backward): rounding, and a Cast to an integer type followed by a Cast back to float
ROUNDING = ("Round", "Floor", "Ceil", "Sign", "Cast", "CastLike")


def straight_through_operators(model: "onnx.ModelProto", outputs: "list[str] | None" = None) -> list[str]:
    """The quantisation operators among the nodes ``outputs`` need (sorted, distinct): where
    there are any, the twin's input gradient is the straight-through estimate."""
    return sorted({node.op_type for _, node in _needed_nodes(model, outputs)
                   if node.op_type in QUANTISATION})


# --------------------------------------------------------------------------
# Small torch helpers used inside the closures
# --------------------------------------------------------------------------


def _ints(t: Any) -> list[int] | None:
    """Shape-like argument (tensor, list or None) as a list of Python ints."""
    if t is None:
        return None
    if hasattr(t, "tolist"):
        t = t.reshape(-1).tolist()
    return [int(v) for v in t]


def _torch_dtype(onnx_type: int) -> "torch.dtype":
    import torch

    names = {
        1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
        9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
    }
    dtype = getattr(torch, names.get(onnx_type, ""), None)
    if dtype is None:
        raise ValueError(f"ONNX element type {onnx_type} has no torch dtype")
    return dtype


def _to_tensor(array: Any) -> "torch.Tensor":
    """numpy array (from numpy_helper.to_array) -> owned torch tensor, dtype kept."""
    import numpy as np
    import torch

    array = np.array(array, copy=True)
    if array.dtype.kind in "OUS":
        raise ValueError("string tensors cannot live in a torch twin")
    if array.dtype.name == "bfloat16":  # ml_dtypes, unknown to torch.from_numpy
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(array)


def _same_pads(in_sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               upper: bool) -> list[int]:
    """ONNX auto_pad SAME_* pads [b1, b2, ..., e1, e2, ...] for the given spatial sizes."""
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _torch_pad_arg(pads: list[int]) -> list[int]:
    """ONNX pads [b1..bn, e1..en] (first axis first) -> F.pad order (last axis first)."""
    n = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(n)):
        out += [pads[axis], pads[axis + n]]
    return out


def _spatial_pads(attrs: dict[str, Any], x: "torch.Tensor", kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """Explicit spatial pads for Conv/Pool, resolving auto_pad against the runtime shape."""
    auto = attrs.get("auto_pad", "NOTSET")
    nd = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto == "SAME_UPPER")
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(attrs.get("pads", [0] * (2 * nd)))


# --------------------------------------------------------------------------
# Operator builders: (attrs, opset, node) -> closure over torch tensors
# --------------------------------------------------------------------------

Fn = Callable[..., Any]


def _build_unary(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch
    import torch.nn.functional as F

    op = node.op_type
    alpha = attrs.get("alpha")
    table: dict[str, Fn] = {
        "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp, "Log": torch.log,
        "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Relu": torch.relu,
        "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
        "Floor": _rounding(torch.floor), "Ceil": _rounding(torch.ceil),
        "Round": _rounding(torch.round), "Sign": _rounding(torch.sign),
        "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not,
        "Softplus": lambda x: torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0),
        "Softsign": lambda x: x / (1 + x.abs()),
        "LeakyRelu": lambda x: F.leaky_relu(x, 0.01 if alpha is None else alpha),
        "Elu": lambda x: F.elu(x, 1.0 if alpha is None else alpha),
        "Celu": lambda x: F.celu(x, 1.0 if alpha is None else alpha),
        "ThresholdedRelu": lambda x: torch.where(x > (1.0 if alpha is None else alpha), x,
                                                 torch.zeros_like(x)),
        "Mish": lambda x: x * torch.tanh(F.softplus(x)),
        "Gelu": lambda x: F.gelu(x, approximate=attrs.get("approximate", "none")),
        "Identity": lambda x: x,
    }
    if op == "Selu":
        a = attrs.get("alpha", 1.67326319217681884765625)
        g = attrs.get("gamma", 1.05070102214813232421875)
        return lambda x: g * torch.where(x > 0, x, a * (torch.exp(x) - 1))
    if op in ("HardSigmoid", "HardSwish"):
        a = attrs.get("alpha", 0.2 if op == "HardSigmoid" else 1 / 6)
        b = attrs.get("beta", 0.5)
        if op == "HardSigmoid":
            return lambda x: torch.clamp(a * x + b, 0, 1)
        return lambda x: x * torch.clamp(a * x + b, 0, 1)
    if op == "PRelu":
        return lambda x, slope: torch.where(x < 0, x * slope, x)
    return table[op]


def _build_binary(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    op = node.op_type

    def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.is_floating_point() or b.is_floating_point():
            return a / b
        return torch.div(a, b, rounding_mode="trunc")

    def pow_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.pow(a, b).to(a.dtype)

    table: dict[str, Fn] = {
        "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": div, "Pow": pow_,
        "MatMul": torch.matmul, "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt,
        "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
        "Or": torch.logical_or, "Xor": torch.logical_xor,
    }
    return table[op]


def _build_variadic(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    op = node.op_type
    combine = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[op]

    def fn(*xs: torch.Tensor) -> torch.Tensor:
        out = functools.reduce(combine, xs)
        return out / len(xs) if op == "Mean" else out

    return fn


def _build_where(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    return lambda c, x, y: torch.where(c, x, y)


def _build_gemm(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)

    def fn(a: Any, b: Any, c: Any = None) -> Any:
        out = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if alpha != 1.0:
            out = out * alpha
        if c is not None:
            out = out + (c * beta if beta != 1.0 else c)
        return out

    return fn


def _build_softmax(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    op = node.op_type
    axis = attrs.get("axis", -1 if opset >= 13 else 1)

    def core(x: torch.Tensor, dim: int) -> torch.Tensor:
        if op == "Softmax":
            return torch.softmax(x, dim)
        if op == "LogSoftmax":
            return torch.log_softmax(x, dim)
        hot = torch.nn.functional.one_hot(x.argmax(dim), x.shape[dim]).to(x.dtype)
        return hot.movedim(-1, dim)  # Hardmax

    def fn(x: torch.Tensor) -> torch.Tensor:
        dim = axis % x.dim()
        if opset >= 13:
            return core(x, dim)
        # opset < 13: coerce to 2-D [prod(d[:axis]), prod(d[axis:])] and normalise rows.
        flat = x.reshape(math.prod(x.shape[:dim]), math.prod(x.shape[dim:]))
        return core(flat, 1).reshape(x.shape)

    return fn


def _build_clip(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    if opset < 11:
        lo, hi = attrs.get("min", -math.inf), attrs.get("max", math.inf)
        return lambda x: torch.clamp(x, lo, hi)

    def fn(x: torch.Tensor, lo: Any = None, hi: Any = None) -> torch.Tensor:
        if lo is None and hi is None:
            return x
        return torch.clamp(x, lo, hi)

    return fn


def _build_dropout(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    # Inference semantics: identity; the optional mask output is all True.
    return lambda x, *rest: (x, torch.ones_like(x, dtype=torch.bool))


def _build_flatten(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    axis = attrs.get("axis", 1)

    def fn(x: Any) -> Any:
        a = axis % x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return fn


def _build_reshape(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    allow_zero = attrs.get("allowzero", 0)

    def fn(x: Any, shape: Any) -> Any:
        dims = _ints(shape)
        if not allow_zero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return fn


def _build_transpose(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    perm = attrs.get("perm")
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


def _build_squeeze(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    attr_axes = attrs.get("axes")

    def squeeze(x: torch.Tensor, axes: Any = None) -> torch.Tensor:
        axes = _ints(axes) if opset >= 13 else attr_axes
        if axes is None:
            return x.squeeze() if x.dim() else x
        return torch.squeeze(x, tuple(a % x.dim() for a in axes))

    def unsqueeze(x: torch.Tensor, axes: Any = None) -> torch.Tensor:
        axes = _ints(axes) if opset >= 13 else attr_axes
        rank = x.dim() + len(axes)
        for a in sorted(a % rank for a in axes):
            x = x.unsqueeze(a)
        return x

    return squeeze if node.op_type == "Squeeze" else unsqueeze


def _build_concat(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    axis = attrs["axis"]
    return lambda *xs: torch.cat(xs, dim=axis)


def _build_split(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    axis = attrs.get("axis", 0)
    attr_split = attrs.get("split")
    n_out = attrs.get("num_outputs", len(node.output))

    def fn(x: Any, split: Any = None) -> tuple:
        sizes = _ints(split) if opset >= 13 else attr_split
        if not sizes:
            dim = x.shape[axis]
            sizes = math.ceil(dim / n_out)
        return tuple(x.split(sizes, dim=axis))

    return fn


def _slice_axis(x: "torch.Tensor", axis: int, start: int, end: int, step: int) -> "torch.Tensor":
    """One ONNX Slice axis with the spec's clamping rules, negative steps included."""
    import torch

    dim = x.shape[axis]
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        index = [slice(None)] * x.dim()
        index[axis] = slice(start, end, step)
        return x[tuple(index)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    idx = torch.tensor(list(range(start, end, step)), dtype=torch.long, device=x.device)
    return x.index_select(axis, idx)


def _build_slice(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    def fn(x: Any, starts: Any = None, ends: Any = None, axes: Any = None, steps: Any = None) -> Any:
        if opset < 10:
            starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
        starts, ends = _ints(starts), _ints(ends)
        axes = _ints(axes) or list(range(len(starts)))
        steps = _ints(steps) or [1] * len(starts)
        for s, e, a, st in zip(starts, ends, axes, steps):
            x = _slice_axis(x, a % x.dim(), s, e, st)
        return x

    return fn


def _build_gather(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    axis = attrs.get("axis", 0)

    def gather(data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        a = axis % data.dim()
        dim = data.shape[a]
        idx = indices.to(torch.long)
        idx = torch.where(idx < 0, idx + dim, idx)
        out = data.index_select(a, idx.reshape(-1))
        return out.reshape(data.shape[:a] + idx.shape + data.shape[a + 1:])

    def gather_elements(data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        a = axis % data.dim()
        idx = indices.to(torch.long)
        idx = torch.where(idx < 0, idx + data.shape[a], idx)
        return torch.gather(data, a, idx)

    return gather if node.op_type == "Gather" else gather_elements


def _build_shape(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    start, end = attrs.get("start", 0), attrs.get("end")
    if node.op_type == "Size":
        return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)
    return lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


def _rounding(op: Fn) -> Fn:
    """A rounding operator (Round, Floor, Ceil, Sign): exact forward, the identity's
    gradient backward (BPDA), its unrounded input kept for a quantised output's loss."""
    from .straight_through import straight_through, with_smooth

    def fn(x: "torch.Tensor") -> "torch.Tensor":
        if not (x.is_floating_point() and x.requires_grad):
            return op(x)
        return with_smooth(straight_through(op(x), x), x)

    return fn


def _cast(x: "torch.Tensor", dtype: "torch.dtype") -> "torch.Tensor":
    """A Cast: to an integer type, the float source rides along; back to float, the
    gradient is the source's (straight-through, BPDA), so ``Cast(uint8) -> Cast(float)``
    quantisation does not cut the input gradient."""
    import torch

    from .straight_through import smooth_of, straight_through, with_smooth

    out = x.to(dtype)
    if out.is_floating_point():
        source = smooth_of(x)
        if source is not None and not x.is_floating_point():
            return with_smooth(straight_through(out, source.to(dtype)), source.to(dtype))
        return out
    if x.is_floating_point() and x.requires_grad and dtype != torch.bool:
        return with_smooth(out, x)
    return out


def _build_cast(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    if node.op_type == "CastLike":
        return lambda x, like: _cast(x, like.dtype)
    dtype = _torch_dtype(attrs["to"])
    return lambda x: _cast(x, dtype)


def _build_constant_of_shape(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    value = attrs.get("value")
    fill = _to_tensor(value).reshape(-1) if value is not None else torch.zeros(1)

    def fn(shape: torch.Tensor) -> torch.Tensor:
        return fill.to(shape.device).expand(_ints(shape)).clone()

    return fn


def _build_expand(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    def fn(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))

    return fn


def _build_tile(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    return lambda x, repeats: x.repeat(_ints(repeats))


def _build_range(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    return lambda s, l, d: torch.arange(s.item(), l.item(), d.item(), dtype=s.dtype, device=s.device)


def _build_pad(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch
    import torch.nn.functional as F

    mode = attrs.get("mode", "constant")

    def index_pad(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
        n = x.dim()
        for axis in range(n):
            begin, end = pads[axis], pads[axis + n]
            if begin == 0 and end == 0:
                continue
            dim = x.shape[axis]
            i = torch.arange(-begin, dim + end, device=x.device)
            if mode == "edge":
                i = i.clamp(0, dim - 1)
            elif mode == "wrap":
                i = i % dim
            else:  # reflect, without repeating the edge element
                period = max(2 * (dim - 1), 1)
                i = i % period
                i = torch.where(i >= dim, period - i, i)
            x = x.index_select(axis, i)
        return x

    def fn(x: torch.Tensor, pads: Any = None, value: Any = None, axes: Any = None) -> torch.Tensor:
        if opset < 11:
            pad_list, fill = list(attrs["pads"]), attrs.get("value", 0.0)
        else:
            pad_list = _ints(pads)
            fill = 0.0 if value is None or value.numel() == 0 else value.item()
            if axes is not None:
                ax = [a % x.dim() for a in _ints(axes)]
                full = [0] * (2 * x.dim())
                for k, a in enumerate(ax):
                    full[a], full[a + x.dim()] = pad_list[k], pad_list[k + len(ax)]
                pad_list = full
        if mode == "constant":
            return F.pad(x, _torch_pad_arg(pad_list), value=fill)
        return index_pad(x, pad_list)

    return fn


def _build_conv(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch.nn.functional as F

    group = attrs.get("group", 1)

    def fn(x: torch.Tensor, w: torch.Tensor, b: Any = None) -> torch.Tensor:
        nd = w.dim() - 2
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        pads = _spatial_pads(attrs, x, kernel, strides, dilations)
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        if pads[:nd] == pads[nd:]:
            padding: Any = pads[:nd]
        else:
            x, padding = F.pad(x, _torch_pad_arg(pads)), 0
        return conv(x, w, b, strides, padding, dilations, group)

    return fn


def _build_conv_transpose(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch.nn.functional as F

    group = attrs.get("group", 1)

    def fn(x: torch.Tensor, w: torch.Tensor, b: Any = None) -> torch.Tensor:
        nd = w.dim() - 2
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        out_pad = list(attrs.get("output_padding", [0] * nd))
        pads = [0] * (2 * nd) if attrs.get("auto_pad") == "VALID" else list(attrs.get("pads", [0] * (2 * nd)))
        if "output_shape" in attrs:  # as onnxruntime: the odd extra pad goes to the head
            target = list(attrs["output_shape"])[-nd:]
            for i in range(nd):
                full = strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
                total = full - target[i]
                pads[i], pads[i + nd] = total - total // 2, total // 2
        deconv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        # Full transposed convolution, then extend by output_padding and crop the pads.
        y = deconv(x, w, None, strides, 0, 0, group, dilations)
        y = F.pad(y, [v for i in reversed(range(nd)) for v in (0, out_pad[i])])
        y = F.pad(y, [-v for i in reversed(range(nd)) for v in (pads[i], pads[i + nd])])
        if b is not None:
            y = y + b.reshape([1, -1] + [1] * nd)
        return y

    return fn


def _build_pool(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch
    import torch.nn.functional as F

    op = node.op_type
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    ceil = bool(attrs.get("ceil_mode", 0))
    include_pad = bool(attrs.get("count_include_pad", 0))

    def max_pool(x: torch.Tensor) -> torch.Tensor:
        pads = _spatial_pads(attrs, x, kernel, strides, dilations)
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        begin = pads[:nd]
        if begin == pads[nd:] and all(p <= k // 2 for p, k in zip(begin, kernel)):
            return pool(x, kernel, strides, begin, dilations, ceil)
        x = F.pad(x, _torch_pad_arg(pads), value=-math.inf)
        return pool(x, kernel, strides, 0, dilations, ceil)

    def avg_pool(x: torch.Tensor) -> torch.Tensor:
        pads = _spatial_pads(attrs, x, kernel, strides, dilations)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        begin = pads[:nd]
        if begin == pads[nd:] and all(p <= k // 2 for p, k in zip(begin, kernel)):
            return pool(x, kernel, strides, begin, ceil, include_pad)
        padded = F.pad(x, _torch_pad_arg(pads))
        summed = pool(padded, kernel, strides, 0, ceil, True)
        if include_pad:
            return summed
        ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad_arg(pads))
        return summed / pool(ones, kernel, strides, 0, ceil, True)

    return max_pool if op == "MaxPool" else avg_pool


def _build_pool_global(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    def fn(x: Any) -> Any:
        dims = tuple(range(2, x.dim()))
        return x.mean(dims, keepdim=True) if node.op_type == "GlobalAveragePool" else x.amax(dims, keepdim=True)

    return fn


def _build_norm(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch
    import torch.nn.functional as F

    op = node.op_type
    eps = attrs.get("epsilon", 1e-5)

    def batch_norm(x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)

    def instance_norm(x: Any, scale: Any, bias: Any) -> Any:
        return F.instance_norm(x, weight=scale, bias=bias, eps=eps)

    def layer_norm(x: Any, scale: Any, bias: Any = None) -> tuple:
        axis = attrs.get("axis", -1) % x.dim()
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv_std = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
        y = (x - mean) * inv_std * scale
        return (y if bias is None else y + bias), mean, inv_std

    return {"BatchNormalization": batch_norm, "InstanceNormalization": instance_norm,
            "LayerNormalization": layer_norm}[op]


def _build_reduce(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    op = node.op_type
    keep = bool(attrs.get("keepdims", 1))
    noop_empty = bool(attrs.get("noop_with_empty_axes", 0))
    axes_are_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    reducers: dict[str, Fn] = {
        "ReduceMean": lambda x, d: x.mean(d, keepdim=keep),
        "ReduceSum": lambda x, d: x.sum(d, keepdim=keep),
        "ReduceMax": lambda x, d: x.amax(d, keepdim=keep),
        "ReduceMin": lambda x, d: x.amin(d, keepdim=keep),
        "ReduceProd": lambda x, d: _prod(x, d, keep),
        "ReduceL1": lambda x, d: x.abs().sum(d, keepdim=keep),
        "ReduceL2": lambda x, d: (x * x).sum(d, keepdim=keep).sqrt(),
        "ReduceSumSquare": lambda x, d: (x * x).sum(d, keepdim=keep),
        "ReduceLogSumExp": lambda x, d: torch.logsumexp(x, d, keepdim=keep),
    }
    reduce = reducers[op]

    def fn(x: torch.Tensor, axes: Any = None) -> torch.Tensor:
        axis_list = _ints(axes) if axes_are_input else attrs.get("axes")
        if not axis_list:
            if noop_empty:
                return x
            axis_list = list(range(x.dim()))
        return reduce(x, tuple(a % x.dim() for a in axis_list))

    return fn


def _prod(x: "torch.Tensor", dims: tuple, keep: bool) -> "torch.Tensor":
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


def _build_arg(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    axis, keep = attrs.get("axis", 0), bool(attrs.get("keepdims", 1))
    last = bool(attrs.get("select_last_index", 0))
    is_max = node.op_type == "ArgMax"

    def fn(x: Any) -> Any:
        a = axis % x.dim()
        src = x.flip(a) if last else x
        idx = src.argmax(a, keepdim=keep) if is_max else src.argmin(a, keepdim=keep)
        return x.shape[a] - 1 - idx if last else idx

    return fn


def _build_einsum(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    equation = attrs["equation"]
    return lambda *xs: torch.einsum(equation, *xs)


def _build_resize(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch.nn.functional as F

    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")

    def fn(x: Any, roi: Any = None, scales: Any = None, sizes: Any = None) -> Any:
        if opset < 11:  # Resize-10: (X, scales)
            scales, sizes = roi, None
        nd = x.dim() - 2
        kwargs: dict[str, Any] = {}
        if sizes is not None and sizes.numel():
            kwargs["size"] = _ints(sizes)[2:]
        else:
            kwargs["scale_factor"] = [float(s) for s in scales.reshape(-1).tolist()[2:]]
        if mode == "nearest":
            return F.interpolate(x, mode="nearest", **kwargs)
        torch_mode = ("linear", "bilinear", "trilinear")[nd - 1]
        return F.interpolate(x, mode=torch_mode, align_corners=ctm == "align_corners", **kwargs)

    return fn


# --------------------------------------------------------------------------
# Quantisation: exact forward (onnxruntime's rounding), straight-through backward
# --------------------------------------------------------------------------
#
# Quantised values travel through the twin as float tensors holding whole numbers (an
# integer dtype would stop autograd); every value an 8-bit tensor can hold is exact in
# float32, and integer products are summed in float64, exact far beyond int32 range.

_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def _per_axis(t: "torch.Tensor", x: "torch.Tensor", axis: int) -> "torch.Tensor":
    """A scale or zero point of one value per slice along ``axis``, shaped to broadcast."""
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return t.reshape(shape)


def _straight_through(exact: "torch.Tensor", smooth: "torch.Tensor") -> "torch.Tensor":
    """``exact`` in the forward pass (bit for bit), the gradient of ``smooth`` in the
    backward pass; the unrounded ``smooth`` rides along, so that a DequantizeLinear at the
    graph's output can hand the loss its unrounded scores."""
    from .straight_through import straight_through, with_smooth

    return with_smooth(straight_through(exact, smooth), smooth)


def _build_quantize(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    axis = attrs.get("axis", 1)
    default_type = _torch_dtype(attrs["output_dtype"]) if attrs.get("output_dtype") else torch.uint8

    def fn(x: torch.Tensor, scale: torch.Tensor, zero_point: Any = None) -> torch.Tensor:
        qtype = zero_point.dtype if zero_point is not None else default_type
        low, high = _INT_RANGES[str(qtype).replace("torch.", "")]
        scale = _per_axis(scale, x, axis).to(x.dtype)
        zp = (_per_axis(zero_point, x, axis).to(x.dtype) if zero_point is not None
              else torch.zeros((), dtype=x.dtype, device=x.device))
        scaled = x / scale  # as onnxruntime: divide, round half to even, add, saturate
        exact = (torch.round(scaled) + zp).clamp(low, high)
        return _straight_through(exact, scaled + zp)

    return fn


def _build_dequantize(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    axis = attrs.get("axis", 1)

    def dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: Any) -> torch.Tensor:
        scale_b = _per_axis(scale, x, axis)
        if x.is_floating_point():  # a quantised value carried as float (whole numbers)
            diff = x if zero_point is None else x - _per_axis(zero_point, x, axis).to(x.dtype)
        else:  # an integer initializer (weights, int32 bias): the difference is exact
            diff = x.long() if zero_point is None else x.long() - _per_axis(zero_point, x, axis).long()
        return diff.to(scale.dtype) * scale_b

    def fn(x: torch.Tensor, scale: torch.Tensor, zero_point: Any = None) -> torch.Tensor:
        from .straight_through import smooth_of, with_smooth

        out = dequantize(x, scale, zero_point)
        smooth = smooth_of(x)  # the unrounded value of the quantiser before, if any
        if smooth is not None and x.is_floating_point():
            with_smooth(out, dequantize(smooth, scale, zero_point))
        return out

    return fn


def _build_dynamic_quantize(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    def fn(x: torch.Tensor) -> tuple:
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        low, high = torch.minimum(x.detach().min(), zero), torch.maximum(x.detach().max(), zero)
        scale = (high - low) / 255
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round((0 - low / scale).clamp(0, 255))
        scaled = x / scale
        exact = (torch.round(scaled) + zp).clamp(0, 255)
        return _straight_through(exact, scaled + zp), scale, zp

    return fn


def _int_operand(t: "torch.Tensor", zero_point: Any, per: str) -> "torch.Tensor":
    """``t - zero_point`` in float64 (exact for 8-bit values); a per-row (``A``) or
    per-column / per-output-channel (``B``, ``w``) zero point is shaped to match."""
    value = t.double()
    if zero_point is None:
        return value
    zp = zero_point.double()
    if zp.numel() > 1:
        if per == "row":
            zp = zp.reshape(-1, 1)
        elif per == "channel":
            zp = zp.reshape([-1] + [1] * (t.dim() - 1))
    else:
        zp = zp.reshape(())
    return value - zp


def _build_matmul_integer(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    def fn(a: torch.Tensor, b: torch.Tensor, a_zp: Any = None, b_zp: Any = None) -> torch.Tensor:
        return torch.matmul(_int_operand(a, a_zp, "row"), _int_operand(b, b_zp, "column"))

    return fn


def _build_conv_integer(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    conv = _build_conv(attrs, opset, node)

    def fn(x: Any, w: Any, x_zp: Any = None, w_zp: Any = None) -> Any:
        # (x - x_zp) zero-padded equals x padded with x_zp, as ConvInteger pads
        return conv(_int_operand(x, x_zp, "scalar"), _int_operand(w, w_zp, "channel"))

    return fn


def _fused_requantisations(model: Any, needed: list[tuple[int, Any]], opset: int) -> dict[int, tuple[Fn, list[str]]]:
    """QuantizeLinear nodes that onnxruntime fuses with the operator before them.

    onnxruntime runs ``DequantizeLinear -> Conv / Gemm / MatMul -> QuantizeLinear`` (a static
    QDQ export) as one integer operator (QLinearConv, QGemm, ...): an exact int32
    accumulation, then ``round(float(acc) * (x_scale * w_scale / y_scale)) + y_zero_point``.
    Rounding the float path of the graph instead differs at ties, by one step of the output
    scale, so those QuantizeLinear nodes are computed the fused way (straight-through in the
    backward pass like every quantiser). ``{node index: (closure, its input names)}``.
    """
    nodes = {i: node for i, node in needed}
    producer = {name: node for node in nodes.values() for name in node.output if name}
    consumers: dict[str, list[Any]] = {}
    for node in nodes.values():
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}

    def dequantized(name: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    found: dict[int, tuple[Fn, list[str]]] = {}
    for i, q in nodes.items():
        if q.op_type != "QuantizeLinear" or q.domain not in _DEFAULT_DOMAINS:
            continue
        src = q.input[0]
        op = producer.get(src)
        if op is None or op.op_type not in ("Conv", "Gemm", "MatMul") or src in graph_outputs \
                or len(consumers.get(src, [])) != 1:
            continue
        attrs = _attrs(op)
        if op.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                     or attrs.get("beta", 1.0) != 1.0):
            continue
        dx, dw = dequantized(op.input[0]), dequantized(op.input[1])
        if dx is None or dw is None:
            continue
        if not all(_single_value(initializers.get(name)) for name in (dx.input[1], q.input[1])):
            continue  # per-axis activation scales: onnxruntime does not fuse those either
        if dw.input[0] in initializers:
            if initializers[dw.input[0]].data_type not in (2, 3):  # 8-bit weights only
                continue
        elif op.op_type != "MatMul" or not _single_value(initializers.get(dw.input[1])):
            continue  # two activations: QLinearMatMul, per-tensor scales only
        db = dequantized(op.input[2]) if len(op.input) > 2 and op.input[2] else None
        if len(op.input) > 2 and op.input[2] and (db is None or db.input[0] not in initializers
                                                  or initializers[db.input[0]].data_type != 6):
            continue

        def optional(node: Any, k: int) -> str:
            return node.input[k] if len(node.input) > k else ""

        inputs = [src, dx.input[0], dx.input[1], optional(dx, 2), dw.input[0], dw.input[1],
                  optional(dw, 2), db.input[0] if db is not None else "", q.input[1], optional(q, 2)]
        found[i] = (_build_fused_requantise(op, attrs, opset, _attrs(dw).get("axis", 1)), inputs)
    return found


def _integer_accumulate(kind: str, conv: Any, trans_b: bool, qx: "torch.Tensor", zx: Any,
                        qw: "torch.Tensor", zw: Any, qb: Any, w_axis: int) -> tuple:
    """``(qx - zx) * (qw - zw) (+ qb)`` summed as onnxruntime's int32 accumulator does, in
    float64 (exact; differentiable in ``qx``), and the shape a per-channel value takes."""
    a = qx.double() - (zx.double().reshape(()) if zx is not None else 0.0)
    w = qw.double()
    if zw is not None:  # the weights' zero point: per output channel, or one for all
        w = w - (_per_axis(zw.double(), w, w_axis) if zw.numel() > 1 else zw.double().reshape(()))
    if kind == "Conv":
        acc = conv(a, w)
        channel = [-1] + [1] * (acc.dim() - 2)
    else:
        acc = a @ (w.T if trans_b else w)
        channel = [-1]
    if qb is not None:
        acc = acc + qb.double().reshape(channel)
    return acc, channel


def _requantise(acc: "torch.Tensor", channel: list, sx: Any, sw: Any, sy: Any, zy: Any,
                dtype: Any) -> tuple:
    """onnxruntime's requantisation of an int32 accumulator: float32 scale
    ``(x_scale * w_scale) / y_scale`` per channel, ``round_half_even(float(acc) * scale)``
    saturated, plus the zero point; and the same without rounding (for the gradient)."""
    import torch

    qtype = zy.dtype if zy is not None else torch.uint8
    low, high = _INT_RANGES[str(qtype).replace("torch.", "")]
    scale = (sx.float().reshape(()) * sw.float().reshape(-1)) / sy.float().reshape(())
    scale = scale.reshape(channel) if scale.numel() > 1 else scale.reshape(())
    zero = zy.double().reshape(()) if zy is not None else torch.zeros((), dtype=torch.float64,
                                                                       device=acc.device)
    value = (acc.detach().float() * scale).clamp(low - float(zero), high - float(zero))
    exact = (torch.round(value).double() + zero).to(dtype)
    smooth = (acc * scale.double() + zero).to(dtype)
    return exact, smooth


def _single_value(init: Any) -> bool:
    """An initializer holding one value (a per-tensor scale)."""
    return init is not None and math.prod(init.dims) == 1


def _build_fused_requantise(op: Any, attrs: dict[str, Any], opset: int, w_axis: int) -> Fn:
    kind = op.op_type
    conv = _build_conv(attrs, opset, op) if kind == "Conv" else None
    trans_b = bool(attrs.get("transB", 0)) if kind == "Gemm" else False

    def fn(out: Any, qx: Any, sx: Any, zx: Any, qw: Any, sw: Any, zw: Any, qb: Any, sy: Any,
           zy: Any) -> Any:
        acc, channel = _integer_accumulate(kind, conv, trans_b, qx, zx, qw, zw, qb, w_axis)
        exact, _ = _requantise(acc, channel, sx, sw, sy, zy, out.dtype)
        # the graph's own float path carries the gradient, as for any QuantizeLinear
        zero = zy.to(out.dtype).reshape(()) if zy is not None else 0.0
        return _straight_through(exact, out / sy.to(out.dtype).reshape(()) + zero)

    return fn


def _build_qlinear(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """QLinearConv, QLinearMatMul and com.microsoft QGemm (a QOperator-format export):
    integer accumulation and requantisation as onnxruntime computes them."""
    import torch

    op = node.op_type
    kind = "Conv" if op == "QLinearConv" else "Gemm"
    conv = _build_conv(attrs, opset, node) if kind == "Conv" else None
    trans_b = bool(attrs.get("transB", 0))
    w_axis = 0 if kind == "Conv" or trans_b else 1

    def fn(*ins: Any) -> Any:
        if op == "QGemm":
            qx, sx, zx, qw, sw, zw, qb, sy, zy = (list(ins) + [None] * 9)[:9]
        elif op == "QLinearConv":
            qx, sx, zx, qw, sw, zw, sy, zy, qb = (list(ins) + [None] * 9)[:9]
        else:
            (qx, sx, zx, qw, sw, zw, sy, zy), qb = ins[:8], None
        acc, channel = _integer_accumulate(kind, conv, trans_b, qx, zx, qw, zw, qb, w_axis)
        dtype = qx.dtype if qx.is_floating_point() else torch.float32
        exact, smooth = _requantise(acc, channel, sx, sw, sy, zy, dtype)
        return _straight_through(exact, smooth)

    return fn


# --------------------------------------------------------------------------
# onnxruntime's quantised fusions (com.microsoft QLinear*): what the session runs
# --------------------------------------------------------------------------
#
# onnxruntime's default optimisation rewrites a QDQ graph's ``DequantizeLinear -> op ->
# QuantizeLinear`` groups into these kernels, and their rounding differs from the
# unfused graph's (QLinearSoftmax: 254/255 where the float softmax rounds to 1.0). The
# element-wise ones (QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu, and
# QLinearConcat's requantisation) are lookup tables of onnxruntime's own kernel, read
# once per scale by running that kernel on every possible input (its arithmetic differs
# between CPU instruction sets); QLinearSoftmax and QLinearGlobalAveragePool are
# reductions, computed as the CPU kernel does. Backward, each is its float operator on
# the dequantised inputs (straight-through the rounding).


def _contrib_problem(node: Any, attrs: dict[str, Any]) -> str:
    if node.op_type == "QGemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                    or len(node.input) < 9 or not node.input[7]):
        return "QGemm with transA, alpha or a float output"
    if node.op_type == "QLinearSoftmax" and "opset" not in attrs:
        return "QLinearSoftmax without its opset attribute"
    return ""


def _quantised_range(*zero_points: Any) -> tuple[int, int, Any]:
    """``(low, high, numpy dtype)`` of the 8-bit type the zero points have (uint8 when
    none is given, as onnxruntime assumes)."""
    import numpy as np
    import torch

    signed = any(zp is not None and zp.dtype == torch.int8 for zp in zero_points)
    return (-128, 127, np.int8) if signed else (0, 255, np.uint8)


def _scalar(t: Any, default: float = 0.0) -> float:
    """A per-tensor scale or zero point as a Python number (a float32 scale stays exact)."""
    return default if t is None else float(t.reshape(-1)[0])


def _dequantized(x: "torch.Tensor", scale: Any, zero_point: Any) -> "torch.Tensor":
    """``(x - zero_point) * scale`` in float32, differentiable in a float ``x``."""
    import torch

    value = x if x.is_floating_point() else x.to(torch.float32)
    if zero_point is not None:
        value = value - zero_point.to(value.dtype).reshape(())
    return value * scale.to(value.dtype).reshape(())


def _kernel_table(op_type: str, attrs: dict[str, Any], inputs: list, varying: tuple[int, ...]) -> Any:
    """onnxruntime's CPU kernel ``com.microsoft.op_type`` run once on ``inputs`` (numpy
    arrays, None for an absent optional input; those at ``varying`` fed at run time, the
    rest constants, as scales and zero points are in the graph): the exact values of a
    lookup table."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = [f"in{k}" if value is not None else "" for k, value in enumerate(inputs)]
    constants = [numpy_helper.from_array(np.asarray(value), name) for k, (value, name)
                 in enumerate(zip(inputs, names)) if value is not None and k not in varying]
    feeds = {names[k]: inputs[k] for k in varying}
    element = helper.np_dtype_to_tensor_dtype(inputs[varying[0]].dtype)
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["out"], domain="com.microsoft", **attrs)], "probe",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), None)
         for name, value in feeds.items()],
        [helper.make_tensor_value_info("out", element, None)], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _table_lookup(table: "torch.Tensor", low: int, *values: "torch.Tensor") -> "torch.Tensor":
    """``table[a]`` (or ``table[a, b]`` for two broadcast operands) for quantised values,
    carried as floats (whole numbers) or 8-bit integers (an initializer); ``table`` is
    indexed from the type's lowest value ``low``."""
    import torch

    flat = [(v.detach().round() if v.is_floating_point() else v).long() - low for v in values]
    if len(flat) == 2:
        a, b = torch.broadcast_tensors(*flat)
        return table.reshape(-1)[a * table.shape[1] + b]
    return table[flat[0]]


def _build_qlinear_binary(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """QLinearAdd, QLinearMul: a 256 x 256 table of onnxruntime's kernel per scale."""
    import numpy as np
    import torch

    op = node.op_type
    tables: dict[tuple, Any] = {}

    def fn(a: Any, sa: Any, za: Any, b: Any, sb: Any, zb: Any, sc: Any, zc: Any = None) -> Any:
        low, high, np_type = _quantised_range(za, zb, zc)
        key = (low, a.device, *(_scalar(t) for t in (sa, za, sb, zb, sc, zc)))
        if key not in tables:
            values = np.arange(low, high + 1).astype(np_type)
            scale = [np.asarray(t.detach().cpu().numpy()) if t is not None else None
                     for t in (sa, za, sb, zb, sc, zc)]
            out = _kernel_table(op, {}, [np.repeat(values, 256), scale[0], scale[1], np.tile(values, 256),
                                         scale[2], scale[3], scale[4], scale[5]], (0, 3))
            tables[key] = torch.from_numpy(out.astype(np.float32).reshape(256, 256)).to(a.device)
        exact = _table_lookup(tables[key], low, a, b)
        x, y = _dequantized(a, sa, za), _dequantized(b, sb, zb)
        value = x + y if op == "QLinearAdd" else x * y
        zero = _scalar(zc)
        smooth = value / sc.to(value.dtype).reshape(()) + zero
        return _straight_through(exact.to(smooth.dtype), smooth)

    return fn


def _build_qlinear_lookup(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """QLinearSigmoid, QLinearLeakyRelu: onnxruntime's 256-entry table per scale."""
    import numpy as np
    import torch

    op = node.op_type
    alpha = attrs.get("alpha", 0.01)
    tables: dict[tuple, Any] = {}

    def float_op(v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v) if op == "QLinearSigmoid" else torch.nn.functional.leaky_relu(v, alpha)

    def fn(x: Any, sx: Any, zx: Any, sy: Any, zy: Any = None) -> Any:
        low, high, np_type = _quantised_range(zx, zy)
        key = (low, x.device, *(_scalar(t) for t in (sx, zx, sy, zy)))
        if key not in tables:
            constants = [t.detach().cpu().numpy() if t is not None else None for t in (sx, zx, sy, zy)]
            out = _kernel_table(op, {"alpha": alpha} if op == "QLinearLeakyRelu" else {},
                                [np.arange(low, high + 1).astype(np_type), *constants], (0,))
            tables[key] = torch.from_numpy(out.astype(np.float32)).to(x.device)
        exact = _table_lookup(tables[key], low, x)
        smooth = float_op(_dequantized(x, sx, zx)) / sy.to(torch.float32).reshape(()) + _scalar(zy)
        return _straight_through(exact.to(smooth.dtype), smooth)

    return fn


def _build_qlinear_concat(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """QLinearConcat: each input requantised to the output's scale by onnxruntime's table
    (copied as it is where its scale and zero point are the output's), then joined."""
    import numpy as np
    import torch

    axis = attrs["axis"]
    tables: dict[tuple, Any] = {}

    def fn(sy: Any, zy: Any, *triples: Any) -> Any:
        low, high, np_type = _quantised_range(zy, *triples[2::3])
        exact, smooth = [], []
        for x, sx, zx in zip(triples[0::3], triples[1::3], triples[2::3]):
            same = _scalar(sx) == _scalar(sy) and _scalar(zx) == _scalar(zy)
            if same:
                exact.append(x.detach().to(torch.float32))  # an 8-bit initializer as whole numbers too
            else:
                key = (low, x.device, *(_scalar(t) for t in (sx, zx, sy, zy)))
                if key not in tables:
                    every = np.arange(low, high + 1).astype(np_type)
                    constants = [t.detach().cpu().numpy() if t is not None else every
                                 for t in (sy, zy, None, sx, zx)]
                    out = _kernel_table("QLinearConcat", {"axis": 0}, constants, (2,))
                    tables[key] = torch.from_numpy(out.astype(np.float32)).to(x.device)
                exact.append(_table_lookup(tables[key], low, x))
            smooth.append(_dequantized(x, sx, zx) / sy.to(torch.float32).reshape(()) + _scalar(zy))
        return _straight_through(torch.cat(exact, axis), torch.cat(smooth, axis))

    return fn


def _build_qlinear_softmax(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """QLinearSoftmax as onnxruntime's CPU kernel computes it: per row, float32
    ``t_i = exp((x_i - max x + shift) * x_scale)`` (computed in float64, ``shift`` keeping
    the row sum below float32's largest value), their sum accumulated in float32 in order,
    and ``round(t_i * floor(1 / y_scale) / sum) + y_zero_point``, saturated. The unfused
    graph (float softmax, then QuantizeLinear) gives 1.0 where this gives 254/255 or
    255/256: one output step on most confident rows."""
    import numpy as np
    import torch

    node_opset = int(attrs["opset"])
    axis = attrs.get("axis", 1 if node_opset < 13 else -1)

    def fn(x: Any, sx: Any, zx: Any, sy: Any, zy: Any = None) -> Any:
        low, high, _ = _quantised_range(zx, zy)
        shape = x.shape
        dim = axis % x.dim()
        if node_opset < 13:  # the trailing dimensions from axis on form the row
            x = x.reshape(math.prod(shape[:dim]), math.prod(shape[dim:]))
            dim = 1
        rows = x.movedim(dim, -1)
        width = rows.shape[-1]
        x_scale = _scalar(sx)
        limit = float(np.float32(np.finfo(np.float32).max) / np.float32(width))
        shift = max(0.0, math.log(limit) - 5.0) / x_scale
        values = rows.detach().double()
        exps = torch.exp((values - values.amax(-1, keepdim=True) + shift) * x_scale).float()
        total = exps[..., 0].clone()
        for j in range(1, width):  # float32, in order, as the kernel's loop adds
            total = total + exps[..., j]
        scale_out = torch.floor(torch.ones((), dtype=torch.float32) / sy.to(torch.float32).reshape(()))
        zero = _scalar(zy)
        exact = (torch.round(exps * scale_out.to(exps.device) / total[..., None]) + zero).clamp(low, high)
        smooth = torch.softmax(_dequantized(rows, sx, zx), -1) * scale_out.to(rows.device) + zero
        exact, smooth = exact.movedim(-1, dim).reshape(shape), smooth.movedim(-1, dim).reshape(shape)
        return _straight_through(exact, smooth)

    return fn


def _build_qlinear_global_average_pool(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """QLinearGlobalAveragePool as onnxruntime's CPU kernel: the exact integer sum minus
    ``x_zero_point * size``, times the float32 ``x_scale / (y_scale * size)``, rounded half
    to even, plus the output zero point, saturated."""
    import torch

    channels_last = bool(attrs.get("channels_last", 0))

    def fn(x: Any, sx: Any, zx: Any, sy: Any, zy: Any = None) -> Any:
        low, high, _ = _quantised_range(zx, zy)
        dims = tuple(range(1, x.dim() - 1)) if channels_last else tuple(range(2, x.dim()))
        size = math.prod(x.shape[d] for d in dims)
        acc = (x.detach().double() - _scalar(zx)).sum(dims, keepdim=True)  # exact: whole numbers
        scale = sx.to(torch.float32).reshape(()) / (sy.to(torch.float32).reshape(())
                                                   * torch.tensor(float(size), dtype=torch.float32))
        zero = _scalar(zy)
        exact = torch.round((acc.float() * scale.to(acc.device)).clamp(low - zero, high - zero)) + zero
        smooth = _dequantized(x, sx, zx).mean(dims, keepdim=True) / sy.to(torch.float32).reshape(()) + zero
        return _straight_through(exact, smooth)

    return fn


_CONTRIB_HANDLERS: dict[str, Callable[[dict[str, Any], int, Any], Fn]] = {
    "QGemm": _build_qlinear,
    **dict.fromkeys(["QLinearAdd", "QLinearMul"], _build_qlinear_binary),
    **dict.fromkeys(["QLinearSigmoid", "QLinearLeakyRelu"], _build_qlinear_lookup),
    "QLinearConcat": _build_qlinear_concat,
    "QLinearSoftmax": _build_qlinear_softmax,
    "QLinearGlobalAveragePool": _build_qlinear_global_average_pool,
}


# --------------------------------------------------------------------------
# ai.onnx.ml: the differentiable classical-ML operators (linear models, scalers)
# --------------------------------------------------------------------------


def _ml_problem(node: Any, attrs: dict[str, Any]) -> str:
    if node.op_type == "LinearClassifier" and attrs.get("post_transform", "NONE") not in (
            "NONE", "LOGISTIC", "SOFTMAX"):
        return f"post_transform {attrs.get('post_transform')!r}"
    if node.op_type == "Normalizer" and attrs.get("norm", "MAX") not in ("MAX", "L1", "L2"):
        return f"norm {attrs.get('norm')!r}"
    return ""


def _build_linear_classifier(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    """``scores = post(X W^T + b)``; a binary model with one coefficient row scores
    ``[-s, s]`` (``[1 - sigmoid(s), sigmoid(s)]`` after LOGISTIC), as onnxruntime does."""
    import numpy as np
    import torch

    labels = attrs.get("classlabels_ints")
    classes = len(labels if labels is not None else attrs.get("classlabels_strings", []))
    intercepts = np.asarray(attrs.get("intercepts", []), dtype=np.float64)
    coefficients = np.asarray(attrs["coefficients"], dtype=np.float64)
    targets = len(intercepts) if len(intercepts) else max(1, classes)
    coefficients = coefficients.reshape(targets, -1)
    post = attrs.get("post_transform", "NONE")

    def fn(x: torch.Tensor) -> tuple:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        w = torch.as_tensor(coefficients, dtype=dtype, device=x.device)
        s = x.to(dtype).reshape(len(x), -1) @ w.T
        if len(intercepts):
            s = s + torch.as_tensor(intercepts, dtype=dtype, device=x.device)
        if targets == 1 and classes == 2:
            s = torch.cat([-s, s], 1)
        if post == "LOGISTIC":
            s = torch.sigmoid(s)
        elif post == "SOFTMAX":
            s = torch.softmax(s, 1)
        index = s.argmax(1)
        label = (torch.as_tensor(labels, dtype=torch.int64, device=x.device)[index]
                 if labels is not None else index)
        return label, s

    return fn


def _build_normalizer(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    norm = attrs.get("norm", "MAX")

    def fn(x: Any) -> Any:
        if norm == "MAX":
            return x / x.amax(1, keepdim=True)
        if norm == "L1":
            return x / x.abs().sum(1, keepdim=True)
        return x / (x * x).sum(1, keepdim=True).sqrt()

    return fn


def _build_scaler(attrs: dict[str, Any], opset: int, node: Any) -> Fn:
    import torch

    offset, scale = attrs.get("offset", [0.0]), attrs.get("scale", [1.0])

    def fn(x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        o = torch.as_tensor(offset, dtype=dtype, device=x.device)
        k = torch.as_tensor(scale, dtype=dtype, device=x.device)
        return (x.to(dtype) - o) * k

    return fn


_ML_HANDLERS: dict[str, Callable[[dict[str, Any], int, Any], Fn]] = {
    "LinearClassifier": _build_linear_classifier,
    "Normalizer": _build_normalizer,
    "Scaler": _build_scaler,
}


_HANDLERS: dict[str, Callable[[dict[str, Any], int, Any], Fn]] = {
    **dict.fromkeys(
        ["Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Relu", "Sigmoid", "Tanh", "Erf",
         "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "Softplus", "Softsign",
         "LeakyRelu", "Elu", "Celu", "Selu", "ThresholdedRelu", "Mish", "Gelu", "HardSigmoid",
         "HardSwish", "PRelu", "Identity"],
        _build_unary,
    ),
    **dict.fromkeys(
        ["Add", "Sub", "Mul", "Div", "Pow", "MatMul", "Equal", "Less", "Greater", "LessOrEqual",
         "GreaterOrEqual", "And", "Or", "Xor"],
        _build_binary,
    ),
    **dict.fromkeys(["Max", "Min", "Sum", "Mean"], _build_variadic),
    "Where": _build_where,
    "Gemm": _build_gemm,
    **dict.fromkeys(["Softmax", "LogSoftmax", "Hardmax"], _build_softmax),
    "Clip": _build_clip,
    "Dropout": _build_dropout,
    "Flatten": _build_flatten,
    "Reshape": _build_reshape,
    "Transpose": _build_transpose,
    **dict.fromkeys(["Squeeze", "Unsqueeze"], _build_squeeze),
    "Concat": _build_concat,
    "Split": _build_split,
    "Slice": _build_slice,
    **dict.fromkeys(["Gather", "GatherElements"], _build_gather),
    **dict.fromkeys(["Shape", "Size"], _build_shape),
    **dict.fromkeys(["Cast", "CastLike"], _build_cast),
    "Constant": None,  # type: ignore[dict-item]  # folded into buffers by the twin itself
    "ConstantOfShape": _build_constant_of_shape,
    "Expand": _build_expand,
    "Tile": _build_tile,
    "Range": _build_range,
    "Pad": _build_pad,
    "Conv": _build_conv,
    "ConvTranspose": _build_conv_transpose,
    **dict.fromkeys(["MaxPool", "AveragePool"], _build_pool),
    **dict.fromkeys(["GlobalAveragePool", "GlobalMaxPool"], _build_pool_global),
    **dict.fromkeys(["BatchNormalization", "InstanceNormalization", "LayerNormalization"], _build_norm),
    **dict.fromkeys(
        ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
         "ReduceSumSquare", "ReduceLogSumExp"],
        _build_reduce,
    ),
    **dict.fromkeys(["ArgMax", "ArgMin"], _build_arg),
    "Einsum": _build_einsum,
    "Resize": _build_resize,
    "QuantizeLinear": _build_quantize,
    "DequantizeLinear": _build_dequantize,
    "DynamicQuantizeLinear": _build_dynamic_quantize,
    "MatMulInteger": _build_matmul_integer,
    "ConvInteger": _build_conv_integer,
    **dict.fromkeys(["QLinearConv", "QLinearMatMul"], _build_qlinear),
}


def _constant_value(attrs: dict[str, Any]) -> Any:
    """numpy value of a Constant node (numeric forms only; checked by _attr_problem)."""
    import numpy as np

    if "value" in attrs:
        return attrs["value"]
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    return np.array(attrs["value_ints"], dtype=np.int64)


@functools.cache
def _twin_class() -> type:
    """The torch.nn.Module subclass, created on first use so torch loads lazily."""
    import torch

    from .straight_through import smooth_of

    class OnnxTorchTwin(torch.nn.Module):
        """Differentiable evaluation of an ONNX graph: a topological walk over per-node closures."""

        def __init__(self, model: Any, outputs: "list[str] | None" = None, *,
                     fused_requantisation: bool = True) -> None:
            from onnx import numpy_helper

            super().__init__()
            graph, opset = model.graph, _opset(model)
            self._constants: list[tuple[str, str]] = []  # (onnx value name, buffer name)
            needed = _needed_nodes(model, outputs)
            types = _initializer_types(model)
            problems = [(node.op_type, node.domain, _node_label(node, i), problem)
                        for i, node in needed if (problem := _problem(node, opset, types)) is not None]
            if problems:
                raise UnsupportedOperator(*problems[0], others=problems[1:])
            used = {name for _, node in needed for name in node.input} | set(outputs or ())
            for init in graph.initializer:
                if outputs is None or init.name in used:
                    self._add_constant(init.name, numpy_helper.to_array(init))
            known = {init.name for init in graph.initializer}
            self.input_names = [i.name for i in graph.input if i.name not in known]
            self.output_names = list(outputs) if outputs is not None else [o.name for o in graph.output]
            self._steps: list[tuple[Fn, list[str], list[str], str]] = []
            #: the rounding operators (ROUNDING) a gradient went straight through
            self.rounded: set[str] = set()
            fused = _fused_requantisations(model, needed, opset) if fused_requantisation else {}
            for i, node in needed:
                attrs = _attrs(node)
                if node.op_type == "Constant":
                    self._add_constant(node.output[0], _constant_value(attrs))
                    continue
                if i in fused:
                    fn, inputs = fused[i]
                    self._steps.append((fn, inputs, list(node.output), node.op_type))
                    continue
                handlers = (_ML_HANDLERS if node.domain == "ai.onnx.ml" else _CONTRIB_HANDLERS
                            if node.domain == "com.microsoft" else _HANDLERS)
                fn = handlers[node.op_type](attrs, opset, node)
                self._steps.append((fn, list(node.input), list(node.output), node.op_type))

        def _add_constant(self, name: str, array: Any) -> None:
            buffer = f"_const{len(self._constants)}"
            self.register_buffer(buffer, _to_tensor(array))
            self._constants.append((name, buffer))

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if len(inputs) != len(self.input_names):
                raise TypeError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
            env: dict[str, Any] = {name: getattr(self, buf) for name, buf in self._constants}
            env.update(zip(self.input_names, inputs))
            for fn, ins, outs, op_type in self._steps:
                # Optional inputs are "" in ONNX; trailing ones are simply absent.
                result = fn(*[env[n] if n else None for n in ins])
                if not isinstance(result, tuple):
                    result = (result,)
                if op_type in ROUNDING and result[0].is_floating_point() and result[0].requires_grad \
                        and smooth_of(result[0]) is not None:
                    self.rounded.add(op_type)
                for name, value in zip(outs, result):
                    if name:
                        env[name] = value
            return tuple(env[n] for n in self.output_names)

    return OnnxTorchTwin


def to_torch(model: "onnx.ModelProto", outputs: "list[str] | None" = None, *,
             fused_requantisation: bool = True) -> "torch.nn.Module":
    """Translate an ONNX graph into a differentiable torch module (the gradient twin).

    ``forward`` takes the graph's non-initializer inputs positionally and returns a
    tuple with one tensor per graph output (per name in ``outputs``, when given: then only
    the nodes those outputs need are translated).  Initializers and Constant values are
    buffers (no grad).  Raises UnsupportedOperator naming every untranslatable node.
    Quantisation and rounding operators (Round, Floor, Ceil, Sign, a Cast to an integer
    type and back) are exact in the forward pass and straight-through (identity gradient,
    BPDA) in the backward pass; ``.rounded`` names the rounding ones a gradient went
    through.

    ``fused_requantisation``: compute a QDQ graph's ``DequantizeLinear -> Conv / Gemm /
    MatMul -> QuantizeLinear`` chains the way onnxruntime's fused integer kernels round
    (right for a file that onnxruntime optimises on loading; wrong for a graph it already
    optimised, where the chains left are the ones it runs unfused).
    """
    return _twin_class()(model, outputs, fused_requantisation=fused_requantisation).eval()
