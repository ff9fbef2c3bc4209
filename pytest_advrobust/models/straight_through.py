"""Straight-through gradients (BPDA) for operations that have none: rounding, integer
casts, quantisation.

``round(x)`` has a zero gradient almost everywhere, so a model that rounds its input (or
quantises it, or casts it to ``uint8`` and back) looks perfectly robust to a gradient
attack that trusts autograd: a false green. BPDA (Athalye, Carlini & Wagner, 2018) keeps
the exact forward value and takes the gradient as if the operation were the identity.

Three places use it: the ONNX twin (every Round, Floor, Ceil, Sign, quantiser and integer
cast), TorchScript graphs (rewritten once, :func:`script_straight_through`) and torch
functions intercepted while a gradient is taken (:func:`straight_through_mode`: a
``torch.export`` graph always, a ``nn.Module`` with ``bpda = true``). The forward values
are bit for bit those of the plain model: the gradient pass's scores are also the clean
pass's.

Torch is imported only when a mode or a rewrite is built.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable

__all__ = ["SMOOTH", "describe", "script_straight_through", "smooth_of", "straight_through",
           "straight_through_mode", "with_smooth"]

#: the attribute under which a tensor carries its unrounded counterpart: on an integer
#: tensor, the float tensor it was cast from (so the cast back can be straight-through); on
#: a rounded score tensor, the unrounded scores (so the loss's gradient is taken there)
SMOOTH = "_advrobust_smooth"


def straight_through(exact: Any, smooth: Any) -> Any:
    """``exact`` in the forward pass, bit for bit; the gradient of ``smooth`` backward.

    Written ``exact - (smooth.detach() - smooth)``: the bracket is ``+0`` for any finite
    value, and ``v - 0`` is ``v`` (signed zeros included), where the usual
    ``smooth + (exact - smooth).detach()`` can be off by one ulp."""
    return exact.detach() - (smooth.detach() - smooth)


def with_smooth(tensor: Any, smooth: Any) -> Any:
    """``tensor`` carrying ``smooth`` (see :data:`SMOOTH`); returns ``tensor``."""
    try:
        setattr(tensor, SMOOTH, smooth)
    except (AttributeError, RuntimeError):  # a tensor subclass without a __dict__
        pass
    return tensor


def smooth_of(tensor: Any) -> Any:
    """The unrounded counterpart a tensor carries, or None."""
    return getattr(tensor, SMOOTH, None)


def describe(seen: "collections.Counter[str]") -> str:
    """``torch.round x2, integer cast and back x1``: what was made straight-through."""
    return ", ".join(f"{kind} x{count}" for kind, count in sorted(seen.items()))


# --------------------------------------------------------------------------
# torch functions (nn.Module with bpda = true, torch.export graphs)
# --------------------------------------------------------------------------

#: rounding-like operations whose straight-through stand-in is the identity, by the name
#: torch gives the function (``torch.round``, ``Tensor.round``, ``aten.round.default``)
ROUNDING = ("round", "floor", "ceil", "trunc", "fix", "sign", "sgn")
#: casts: to an integer dtype (the float source is remembered) and back to float
CASTS = ("to", "type", "type_as", "_to_copy", "float", "double", "half", "bfloat16", "long",
         "int", "short", "char", "byte")
#: quantisation to a quantised tensor, and back
QUANTISE = ("quantize_per_tensor", "quantize_per_channel", "quantize_per_tensor_dynamic")
DEQUANTISE = ("dequantize",)


def _name(func: Any) -> str:
    """``round`` for torch.round, Tensor.round, aten.round.default and aten.round.decimals."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):  # operators: __floordiv__ -> floordiv
        name = name.strip("_")
    return name.split(".")[0].rstrip("_") if "." in name else name


@functools.cache
def _mode_class() -> type:
    """The TorchFunctionMode subclass, built on first use so torch loads lazily."""
    import torch
    from torch.overrides import TorchFunctionMode

    class StraightThroughMode(TorchFunctionMode):
        """While active: rounding, floor division, integer casts and quantisation keep
        their forward values and take the identity's gradient (``replace``), or are only
        counted (``replace=False``: to say in a gate's details that they block the
        gradient). Only calls on tensors that require a gradient count: rounding a
        constant changes no input gradient."""

        def __init__(self, replace: bool = True) -> None:
            super().__init__()
            self.replace = replace
            self.seen: collections.Counter[str] = collections.Counter()

        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            source = args[0] if args else kwargs.get("input", kwargs.get("self"))
            if not isinstance(source, torch.Tensor) or not isinstance(out, torch.Tensor):
                return out
            name = _name(func)
            name = "floor_divide" if name == "floordiv" else name
            if name in ROUNDING or name == "floor_divide":
                if not (source.requires_grad and out.is_floating_point()):
                    return out
                self.seen[f"torch.{name}"] += 1
                if not self.replace:
                    return out
                smooth = source
                if name == "floor_divide":
                    divisor = args[1] if len(args) > 1 else kwargs.get("other")
                    smooth = torch.true_divide(source, divisor)
                return straight_through(out, smooth.to(out.dtype))
            if name in CASTS or name in QUANTISE:
                if out.is_floating_point() and not out.is_quantized:
                    origin = smooth_of(source)  # an integer tensor cast back to float
                    if origin is None:
                        return out
                    self.seen["integer cast and back" if name in CASTS else "quantise and back"] += 1
                    return straight_through(out, origin.to(out.dtype)) if self.replace else out
                if source.is_floating_point() and source.requires_grad and out.dtype != torch.bool:
                    return with_smooth(out, source)  # to integers or a quantised tensor
                return out
            if name in DEQUANTISE:
                origin = smooth_of(source)
                if origin is not None and out.is_floating_point():
                    self.seen["quantise and back"] += 1
                    return straight_through(out, origin.to(out.dtype)) if self.replace else out
            return out

    return StraightThroughMode


def straight_through_mode(replace: bool = True) -> Any:
    """A ``TorchFunctionMode`` (use it as a context manager around the forward pass whose
    gradient is taken) that makes non-differentiable torch functions straight-through;
    ``.seen`` counts what it met. Casts are straight-through only when an integer tensor
    goes straight back to float (integer arithmetic in between drops the link)."""
    return _mode_class()(replace)


# --------------------------------------------------------------------------
# TorchScript graphs
# --------------------------------------------------------------------------

#: ScalarType numbers of torch's integer dtypes (uint8, int8, int16, int32, int64, uint16-64)
_INTEGER_TYPES = {0, 1, 2, 3, 4, 27, 28, 29}
#: TorchScript rounding operations, taken as the identity backward
_SCRIPT_ROUNDING = ("round", "floor", "ceil", "trunc", "sign", "fix")


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value.type(), torch._C.TensorType)


def _straighten(graph: Any, node: Any, smooth: Any) -> None:
    """Rewrite ``node``'s tensor output ``y`` into ``y.detach() - (s.detach() - s)`` for
    the value ``s = smooth`` (as :func:`straight_through`), for every later use."""
    y = node.output()
    with graph.insert_point_guard(node):  # before the node: smooth is already defined
        gap = graph.insert("aten::sub", [graph.insert("aten::detach", [smooth]), smooth])
    detached = graph.create("aten::detach", [y])
    detached.insertAfter(node)
    one = graph.insertConstant(1)
    one.node().moveBefore(detached)
    exact = graph.create("aten::sub", [detached.output(), gap, one])
    exact.insertAfter(detached)
    exact.output().setType(y.type())
    y.replaceAllUsesWith(exact.output())
    detached.replaceInput(0, y)


def _cast_source(node: Any) -> Any:
    """For ``aten::to`` casting back from a cast to a (constant) integer dtype of a float
    tensor: that tensor; else None."""
    inner = node.inputsAt(0).node()
    if inner.kind() != "aten::to" or inner.inputsSize() < 2 or not _is_tensor(inner.inputsAt(0)):
        return None
    dtype = inner.inputsAt(1)
    if dtype.node().kind() != "prim::Constant" or dtype.toIValue() not in _INTEGER_TYPES:
        return None
    return inner.inputsAt(0)


def script_straight_through(module: Any) -> tuple[Callable[[Any], Any] | None, "collections.Counter[str]"]:
    """A callable running a TorchScript module's ``forward`` with every tensor rounding
    (``aten::round``, ``floor``, ``ceil``, ``trunc``, ``sign``, ``fix``), integer cast and
    back (``aten::to``), and ``quantize_per_tensor`` then ``dequantize`` straight-through,
    and what it changed; ``(None, empty)`` when there is nothing to change (or the graph
    cannot be rewritten). The module itself is left as it is: its methods are shared by
    every instance of its class, so the rewrite works on an inlined copy of the graph.
    Scalar overloads (``math.floor`` of a shape) are left alone."""
    import torch

    seen: collections.Counter[str] = collections.Counter()
    try:
        graph = module.forward.graph.copy()
        torch._C._jit_pass_inline(graph)
        changes = []
        for op in _SCRIPT_ROUNDING:
            for node in graph.findAllNodes(f"aten::{op}"):
                if _is_tensor(node.inputsAt(0)) and _is_tensor(node.output()):
                    changes.append((op, node, node.inputsAt(0)))
        for node in graph.findAllNodes("aten::to"):
            source = _cast_source(node)
            if source is not None and _is_tensor(node.output()):
                changes.append(("integer cast and back", node, None))
        for node in graph.findAllNodes("aten::dequantize"):
            inner = node.inputsAt(0).node()
            if inner.kind() == "aten::quantize_per_tensor" and _is_tensor(inner.inputsAt(0)):
                changes.append(("quantise and back", node, inner.inputsAt(0)))
        for what, node, smooth in changes:
            if smooth is None:  # the float source cast as the node casts: the smooth value
                with graph.insert_point_guard(node):
                    smooth = graph.insert("aten::to", [_cast_source(node), *list(node.inputs())[1:]])
            _straighten(graph, node, smooth)
            seen[what] += 1
        if not seen:
            return None, seen
        graph.lint()
        function = torch._C._create_function_from_graph("forward_straight_through", graph)
    except Exception:  # an exotic graph: the plain gradient (and its masking diagnostics) stand
        return None, collections.Counter()
    owner = module._c
    return (lambda x: function(owner, x)), seen
