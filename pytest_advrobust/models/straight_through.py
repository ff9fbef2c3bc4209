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


def _rule(params: str, lines: str, smooth: str) -> tuple[str, str]:
    """A TorchScript rewrite: ``lines`` (ending in ``%y``) become ``%y`` with the gradient of
    the value ``smooth`` (the straight-through formula of :func:`straight_through`)."""
    head = f"graph({params}):\n"
    replacement = (head + lines + "  %one : int = prim::Constant[value=1]()\n"
                   f"  %s_d = aten::detach({smooth})\n  %gap = aten::sub(%s_d, {smooth}, %one)\n"
                   "  %y_d = aten::detach(%y)\n  %z = aten::sub(%y_d, %gap, %one)\n  return (%z)")
    return head + lines + "  return (%y)", replacement


def _script_rules() -> list[tuple[str, int, str, str]]:
    """``(what, arity, pattern, replacement)`` for every non-differentiable TorchScript
    operation handled; ``what`` names it in the gate's details."""
    rules = []
    for op in ("round", "floor", "ceil", "trunc", "sign", "fix"):
        rules.append((op, 1, *_rule("%x", f"  %y = aten::{op}(%x)\n", "%x")))
    rules.append(("round", 2, *_rule("%x, %k", "  %y = aten::round(%x, %k)\n", "%x")))  # decimals
    # aten::to(self, dtype, non_blocking, copy, memory_format) to integers, then back
    first, second = "%a0, %a1, %a2, %a3", "%b0, %b1, %b2, %b3"
    lines = f"  %i = aten::to(%x, {first})\n  %y = aten::to(%i, {second})\n  %s = aten::to(%x, {second})\n"
    pattern, replacement = _rule(f"%x, {first}, {second}", lines, "%s")
    pattern = pattern.replace(f"  %s = aten::to(%x, {second})\n", "")
    rules.append(("integer cast and back", 2, pattern, replacement))
    lines = "  %q = aten::quantize_per_tensor(%x, %s1, %z1, %t1)\n  %y = aten::dequantize(%q)\n"
    rules.append(("quantise and back", 2, *_rule("%x, %s1, %z1, %t1", lines, "%x")))
    return rules


def _count(graph: Any, what: str, arity: int) -> int:
    """How many of the operations a rule rewrites the inlined graph holds (for casts: pairs
    whose first cast is to a constant integer dtype)."""
    if what == "integer cast and back":
        found = 0
        for node in graph.findAllNodes("aten::to"):
            inner = node.inputsAt(0).node()
            if inner.kind() == "aten::to" and len(list(inner.inputs())) == 5:
                dtype = inner.inputsAt(1)
                if dtype.node().kind() == "prim::Constant" and dtype.toIValue() in _INTEGER_TYPES:
                    found += 1
        return found
    if what == "quantise and back":
        return sum(1 for node in graph.findAllNodes("aten::dequantize")
                   if node.inputsAt(0).node().kind() == "aten::quantize_per_tensor")
    return sum(1 for node in graph.findAllNodes(f"aten::{what}") if len(list(node.inputs())) == arity)


def script_straight_through(module: Any) -> tuple[Callable[[Any], Any] | None, "collections.Counter[str]"]:
    """A callable running a TorchScript module's ``forward`` with every rounding,
    integer cast-and-back and quantise-dequantise pair straight-through, and what it
    changed; ``(None, empty)`` when there is nothing to change (or the graph cannot be
    rewritten). The module itself is left as it is: its methods are shared by every
    instance of its class, so the rewrite works on an inlined copy of the graph."""
    import torch

    seen: collections.Counter[str] = collections.Counter()
    try:
        graph = module.forward.graph.copy()
        torch._C._jit_pass_inline(graph)
        for what, arity, pattern, replacement in _script_rules():
            found = _count(graph, what, arity)
            if found:
                torch._C._jit_pass_custom_pattern_based_rewrite_graph(pattern, replacement, graph)
                seen[what] += found
        if not seen:
            return None, seen
        function = torch._C._create_function_from_graph("forward_straight_through", graph)
    except Exception:  # an exotic graph: the plain gradient (and its masking diagnostics) stand
        return None, collections.Counter()
    owner = module._c
    return (lambda x: function(owner, x)), seen
