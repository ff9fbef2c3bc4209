"""Models behind one small interface (:class:`Classifier`), one file per backend.

Torch and onnxruntime are imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ModelSpec
    from .base import Classifier

__all__ = ["load_classifier", "resolve_device", "wrap_module"]


def resolve_device(name: str) -> Any:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU."""
    import torch

    from ..errors import ModelLoadError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device = \"cuda\" but torch sees no GPU on this machine. Use "
                             "device = \"auto\" to fall back to the CPU.", where="device")
    return device


def load_classifier(spec: "ModelSpec") -> "Classifier":
    """The built-in loader: ONNX, TorchScript, ``torch.export`` or a factory + state_dict."""
    import torch

    from ..archives import ReadLimit
    from ..errors import ModelLoadError
    from ..imports import import_callable
    from .torch_models import TorchClassifier, load_torch_module, static_batch

    device = resolve_device(spec.device)
    common = dict(
        name=spec.name,
        input_range=spec.input_range,
        output_kind=spec.output_kind,
        normalize=(spec.normalize.mean, spec.normalize.std) if spec.normalize else None,
    )
    fmt = spec.model_format
    if fmt == "unknown":
        raise ModelLoadError(f"no loader claimed {spec.model!r}: no pytest_advrobust_load_model "
                             "hook returned a model for it, and the built-in loader knows only "
                             ".onnx, TorchScript .pt/.pth, torch.export .pt2 and \"pkg.mod:factory\".",
                             where=spec.key("model"))
    if fmt == "onnx":
        from .onnx_models import load_onnx

        return load_onnx(spec.resolve(spec.model), output=spec.output, device=device, **common)
    if fmt == "factory":
        factory = import_callable(spec.model, spec.root, key=spec.key("model"), error=ModelLoadError)
        module = load_torch_module(fmt, None, factory=factory, weights=spec.resolve(spec.weights)
                                   if spec.weights else None, device=device,
                                   read_limit=ReadLimit.of(spec))
        source = spec.model
    else:
        path = spec.resolve(spec.model)
        module = load_torch_module(fmt, path, allow_pickle=spec.allow_pickle, device=device,
                                   read_limit=ReadLimit.of(spec))
        source = str(path)
    dtype = next((p.dtype for p in _parameters(module) if p.is_floating_point()), torch.float32)
    model = TorchClassifier(module, output=spec.output, device=device, dtype=dtype, source=source,
                            bpda=spec.bpda, **common)
    if fmt == "export":
        model.fixed_batch = static_batch(module)
    return model


def wrap_module(module: Any, spec: "ModelSpec") -> "Classifier":
    """A torch module (or any callable from tensors to scores) behind the Classifier
    interface, with the spec's input range, normalisation and output kind; left on its
    own device and dtype (nothing is moved or copied)."""
    import torch

    from .torch_models import TorchClassifier

    params = [p for p in _parameters(module) if p.is_floating_point()]
    return TorchClassifier(
        module, output=spec.output, bpda=spec.bpda, name=spec.name, input_range=spec.input_range,
        output_kind=spec.output_kind,
        normalize=(spec.normalize.mean, spec.normalize.std) if spec.normalize else None,
        device=params[0].device if params else torch.device("cpu"),
        dtype=params[0].dtype if params else torch.float32, source=spec.model)


def _parameters(module: Any) -> list:
    try:
        return list(module.parameters())
    except Exception:
        return []


def _hookimpl(**kwargs: Any) -> Any:
    import pluggy

    return pluggy.HookimplMarker("pytest")(**kwargs)


@_hookimpl(trylast=True)
def pytest_advrobust_load_model(spec: "ModelSpec", config: Any) -> "Classifier":
    """Built-in loader, last in line so a user's ``pytest_advrobust_load_model`` wins."""
    return load_classifier(spec)
