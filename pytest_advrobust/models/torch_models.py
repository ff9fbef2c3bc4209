"""Torch models: a factory plus a state_dict, TorchScript archives, ``torch.export`` files."""

from __future__ import annotations

import collections
import contextlib
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ..archives import ReadLimit, refusal
from ..errors import ModelLoadError
from .base import Classifier, model_raised, user_frame
from .straight_through import describe, script_straight_through, straight_through_mode

__all__ = ["TorchClassifier", "load_torch_module", "borrowed", "static_batch"]


class TorchClassifier(Classifier):
    """Any callable torch module (``nn.Module``, ScriptModule, exported GraphModule).

    ``output`` picks the score tensor when the module returns a dict (by key) or a tuple
    or list (by index) of several tensors, as the ``output`` key does for ONNX graphs.

    Input gradients are straight-through (BPDA) where the model rounds, casts to integers
    or quantises: always in a TorchScript graph (rewritten) or a ``torch.export`` graph
    (its aten calls intercepted), and in a plain module with ``bpda`` (its torch calls
    intercepted, :func:`~.straight_through.straight_through_mode`). The forward values,
    and so every figure, are the plain model's."""

    def __init__(self, module: Any, *, output: str | int | None = None, bpda: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module
        self.output = output
        self.bpda = bpda
        #: how gradients are taken: "script" (a rewritten graph), "intercept" (a mode that
        #: replaces), "watch" (a mode that only counts, once), "plain"; decided on first use
        self._gradient_kind: str | None = None
        self._replaces = False
        self._script_forward: Any = None
        #: the non-differentiable operations met in gradient passes (see notes)
        self.straight_through: collections.Counter[str] = collections.Counter()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x)

    def _differentiable_forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self._gradient_kind or self._choose_gradient()
        if kind == "script":
            return self._call(x, self._script_forward)
        if kind == "plain":
            return self._call(x)
        if kind == "watch":
            self._gradient_kind = "plain"  # looked once; the module keeps its own gradient
            try:
                with straight_through_mode(replace=False) as mode:
                    out = self._call(x)
            except Exception:  # a forward that cannot run under a mode (torch.compile, ...)
                return self._call(x)  # is run as it is, unwatched (its own errors recur here)
        else:
            with straight_through_mode() as mode:
                out = self._call(x)
        for what, count in mode.seen.items():  # calls per forward pass, not summed over passes
            self.straight_through[what] = max(self.straight_through[what], count)
        return out

    def _choose_gradient(self) -> str:
        """Decided on the first gradient pass (see the class docstring)."""
        if isinstance(self.module, torch.jit.ScriptModule):
            self._script_forward, seen = script_straight_through(self.module)
            self.straight_through.update(seen)
            kind = "script" if self._script_forward is not None else "plain"
        elif self.bpda or isinstance(self.module, torch.fx.GraphModule):
            kind = "intercept"
        else:
            kind = "watch"
        self._replaces = kind in ("script", "intercept")
        self._gradient_kind = kind
        return kind

    def notes(self, gradient: bool = False) -> list[str]:
        notes = super().notes(gradient)
        if not (gradient and self.straight_through):
            return notes
        what = describe(self.straight_through)
        if self._replaces:
            how = ("TorchScript graph" if self._gradient_kind == "script" else "torch.export graph"
                   if isinstance(self.module, torch.fx.GraphModule) else "bpda = true")
            notes.append(f"input gradient straight-through (BPDA) {what} ({how})")
        else:
            notes.append(f"the forward pass calls {what}, which has no gradient: gradient attacks "
                         "see none through it and overstate robustness; set bpda = true for a "
                         "straight-through (BPDA) gradient")
        return notes

    def _call(self, x: torch.Tensor, module: Any = None) -> torch.Tensor:
        try:
            out = (module if module is not None else self.module)(x)
        except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
            if "Inference tensors" in str(exc) or "in-place operation" in str(exc):  # not the batch's shape
                raise model_raised(exc, self.source, shape=tuple(x.shape)) from None
            frame = user_frame(exc)
            raise ModelLoadError(
                f"the model rejected a batch of shape {tuple(x.shape)} and dtype "
                f"{str(x.dtype).replace('torch.', '')}{f' (in {frame})' if frame else ''}: "
                f"{_first_line(exc)} Check that the data has "
                "the shape the model expects (flat vectors vs NCHW images) and its dtype.",
                where=self.source) from None
        return self._pick(out, len(x))

    def _pick(self, out: Any, rows: int) -> torch.Tensor:
        """The score tensor among the module's outputs (see ``output``)."""
        wanted = self.output
        if isinstance(out, torch.Tensor):
            if wanted not in (None, 0):
                raise ModelLoadError(f"output = {wanted!r}, but the model returns a single tensor. "
                                     "Remove output.", where=self.source)
            return out
        if isinstance(out, dict):
            names = list(out)
            if isinstance(wanted, int) and not isinstance(wanted, bool):
                if wanted >= len(names):
                    raise ModelLoadError(f"output = {wanted}, but the model returns a dict of "
                                         f"{len(names)} entries ({_listing(out)}).", where=self.source)
                wanted = names[wanted]
            if wanted is not None and wanted not in out:
                raise ModelLoadError(f"output = {wanted!r}, but the model returns a dict with keys "
                                     f"{_listing(out)}.", where=self.source)
            return self._tensor(out[wanted] if wanted is not None else self._only(out, rows), wanted)
        if isinstance(out, (tuple, list)):
            fields = getattr(out, "_fields", None)  # a namedtuple: its field names work too
            if isinstance(wanted, str) and fields and wanted in fields:
                wanted = list(fields).index(wanted)
            if isinstance(wanted, str):
                raise ModelLoadError(f"output = {wanted!r} names an entry, but the model returns a "
                                     f"{type(out).__name__} of {len(out)}; give its index "
                                     f"(output = 0..{len(out) - 1}).", where=self.source)
            if wanted is not None and wanted >= len(out):
                raise ModelLoadError(f"output = {wanted}, but the model returns a "
                                     f"{type(out).__name__} of {len(out)}.", where=self.source)
            entries = dict(enumerate(out))
            return self._tensor(out[wanted] if wanted is not None else self._only(entries, rows), wanted)
        raise ModelLoadError(f"the model returned {type(out).__name__}, not a tensor of class "
                             "scores.", where=self.source)

    def _only(self, entries: dict, rows: int) -> Any:
        """With no ``output`` key: the one float tensor shaped like scores, or a clear error
        (guessing between, say, features and logits would score the wrong tensor)."""
        scores = [k for k, v in entries.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                  and v.dim() in (1, 2) and v.shape[0] == rows]
        if len(scores) == 1:
            return entries[scores[0]]
        hint = "INDEX" if all(isinstance(k, int) for k in entries) else '"NAME"'
        raise ModelLoadError(
            f"the model returns several outputs ({_listing(entries)}) and "
            f"{'several' if scores else 'none'} of them look like class scores (a float "
            f"[batch, classes] tensor), so it cannot be told which to attack. Set output = "
            f"{hint} to the one holding the class scores.", where=self.source)

    def _tensor(self, value: Any, wanted: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"output {wanted!r} of the model is a {type(value).__name__}, not "
                                 "a tensor of class scores.", where=self.source)
        return value

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with borrowed(self.module):
            yield


@contextlib.contextmanager
def borrowed(module: Any) -> Iterator[None]:
    """Evaluation mode and frozen parameters while attacks run; the user's train/eval
    flags and ``requires_grad`` flags are restored exactly afterwards."""
    if not isinstance(module, torch.nn.Module):
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    # parameters made under torch.inference_mode() refuse flag changes (and any gradient;
    # that is reported when a gradient is taken)
    flags = [(p, p.requires_grad) for p in module.parameters() if not p.is_inference()]
    try:
        with contextlib.suppress(NotImplementedError):  # torch.export modules refuse .eval()
            module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            with contextlib.suppress(NotImplementedError):
                m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def load_torch_module(fmt: str, path: Path | None, *, factory: Any = None, weights: Path | None = None,
                      allow_pickle: bool = False, device: torch.device,
                      read_limit: ReadLimit = ReadLimit()) -> Any:
    """Load a torch model in one of the supported forms; every failure is a ModelLoadError.
    ``read_limit``: what a model or weights archive may expand to (``max-read-bytes``)."""
    if fmt == "factory":
        return _from_factory(factory, weights, device, read_limit)
    assert path is not None
    if not path.is_file():
        raise ModelLoadError("file not found. Check the model key (paths are relative to "
                             "pyproject.toml) and that the file was built before the gates run.",
                             where=str(path))
    if fmt == "export":
        return _from_export(path, device, read_limit)
    return _from_torchscript(path, device, allow_pickle, read_limit)


def _from_factory(factory: Any, weights: Path | None, device: torch.device, read_limit: ReadLimit) -> Any:
    try:
        module = factory()
    except Exception as exc:  # the user's code: report it, do not crash
        frame = user_frame(exc)
        raise ModelLoadError(f"the model factory raised {type(exc).__name__}: {_first_line(exc)}"
                             f"{f' (in {frame})' if frame else ''}",
                             where=_qualname(factory)) from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"the model factory returned {type(module).__name__}, not a "
                             "torch.nn.Module.", where=_qualname(factory))
    if weights is not None:
        state = load_state_dict(weights, read_limit)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"the weights do not fit the model built by {_qualname(factory)}: "
                f"{' '.join(str(exc).split())[:600]} Rebuild the weights from this model "
                "(torch.save(model.state_dict(), path)) or fix the factory.",
                where=str(weights)) from None
    return module.to(device)


def load_state_dict(path: Path, read_limit: ReadLimit = ReadLimit()) -> dict[str, torch.Tensor]:
    """A state_dict, never unpickling code: ``torch.load(weights_only=True)``."""
    if not path.is_file():
        raise ModelLoadError("weights file not found. Check the weights key (relative to "
                             "pyproject.toml).", where=str(path))
    verify_archive(path, "weights", read_limit)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot be read as a state_dict with torch.load(weights_only=True): "
            f"{_first_line(exc)} Save it with torch.save(model.state_dict(), path); a pickled "
            "whole model is refused because unpickling runs code from the file.",
            where=str(path)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError("does not hold a state_dict (a mapping of names to tensors).",
                             where=str(path))
    return state


def _from_export(path: Path, device: torch.device, read_limit: ReadLimit) -> Any:
    hint = "Re-export it with torch.export.save(torch.export.export(model, (example,)), path)."
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"is not a torch.export archive (not a zip file: truncated, or of "
                             f"another format). {hint}", where=str(path))
    verify_archive(path, "model", read_limit)
    try:
        with _quiet("torch.export"):  # torch logs its own traceback before raising
            program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"is not a torch.export archive readable by torch "
                             f"{torch.__version__}: {_first_line(exc)} {hint}",
                             where=str(path)) from None
    module = program.module()
    return module.to(device) if device.type != "cpu" else module


def _from_torchscript(path: Path, device: torch.device, allow_pickle: bool, read_limit: ReadLimit) -> Any:
    verify_archive(path, "model", read_limit)
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript; users still ship it
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        script_error = _first_line(exc)
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"is not a TorchScript archive ({script_error}). The file may be "
                             "truncated or of another format: save the model with "
                             "torch.jit.save(torch.jit.script(model), path), or use a factory "
                             "\"pkg.mod:build\" plus weights.", where=str(path))
    if not allow_pickle:
        raise ModelLoadError(
            "is not a TorchScript archive; it looks like a pickled model or a state_dict. "
            "Unpickling a whole model runs code from the file, so it is refused by default. "
            "Either save it with torch.jit.save(torch.jit.script(model), path) or torch.export, "
            "or give model = \"pkg.mod:build\" with weights = this file (a state_dict), or, "
            "only for a file you trust, set allow-pickle = true.", where=str(path))
    warnings.warn(f"{path}: unpickling a whole torch model (allow-pickle = true) runs code "
                  "from that file; only do this for files you trust.", stacklevel=2)
    try:
        module = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot be unpickled: {_first_line(exc)}", where=str(path)) from None
    if not callable(module):
        raise ModelLoadError(f"holds a {type(module).__name__}, not a model. A state_dict needs "
                             "a factory: model = \"pkg.mod:build\", weights = this file.",
                             where=str(path))
    return module


def static_batch(module: Any) -> int | None:
    """The batch size a ``torch.export`` module was exported with when its batch
    dimension is static (the guard then refuses every other size); None when dynamic."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    value = placeholders[0].meta.get("val")
    shape = getattr(value, "shape", None)
    if not shape or not isinstance(shape[0], int):
        return None
    return int(shape[0])


def _listing(entries: Any) -> str:
    items = entries.items() if isinstance(entries, dict) else enumerate(entries)
    return ", ".join(f"{k!r} ({_describe(v)})" for k, v in items)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    return type(value).__name__


def verify_archive(path: Path, key: str, read_limit: ReadLimit = ReadLimit()) -> None:
    """Before torch reads a zip archive (TorchScript, torch.save, .pt2): refuse one whose
    members declare more than ``read_limit`` (torch would hold each whole; checked before
    the CRCs, since testing a CRC decompresses the member), then check every member's CRC:
    torch does not, and loads flipped bytes as garbage weights."""
    if not zipfile.is_zipfile(path):
        return  # a legacy (non-zip) torch.save file, or not an archive: the loader says which
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            problem = refusal(archive.infolist(), read_limit, torch=True)
            damaged = None if problem else archive.testzip()
    except Exception as exc:  # a damaged header or compressed stream
        damaged = f"? ({type(exc).__name__}: {_first_line(exc)[:-1]})"
    if problem is not None:
        raise ModelLoadError(problem, where=str(path))
    if damaged is not None:
        raise ModelLoadError(
            f"is damaged: the archive member {damaged!r} fails its CRC check (flipped bytes: a "
            "bad copy, a truncated download or a disk error), so its weights would be garbage. "
            f"Rebuild or re-download the file (check the {key} key's file against its source).",
            where=str(path))


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a torch logger for the duration (it logs a traceback we report in one line)."""
    logger = logging.getLogger(name)
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0] or type(exc).__name__
    return text if text.endswith(".") else text + "."
