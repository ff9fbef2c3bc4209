"""ONNX models, evaluated in onnxruntime (the runtime they ship on).

Gradients come from a torch twin of the graph (:mod:`.onnx_torch`; for a quantised graph,
of the graph as the session optimised it, :func:`translate_session`), trusted only after
its scores match onnxruntime's on the evaluation data; a graph with an operator that has
no gradient (``ai.onnx.ml`` trees) can still be scored and attacked by black-box attacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from ..errors import AttackError, ModelLoadError
from .base import Classifier

__all__ = ["OnnxClassifier", "Translation", "load_onnx", "runtime_graph", "translate_session"]

#: how closely the torch twin must reproduce onnxruntime's scores to be trusted
PARITY_RTOL = 1e-3
PARITY_ATOL = 1e-4
#: a quantised graph's twin may differ where a float operator between two quantisers
#: (LayerNormalization, Erf, ...) rounds a tie the other way: accepted on at most this
#: share of the rows, by at most this share of the scores' range (a wrong translation
#: differs on most rows, by far more)
QUANTISED_ROWS = 0.05
QUANTISED_SPREAD = 0.05

_ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(double)": torch.float64}


class OnnxClassifier(Classifier):
    """An onnxruntime session, plus a lazily built torch twin for input gradients."""

    def __init__(self, session: Any, proto: Any, *, output: str | None, **kwargs: Any) -> None:
        inputs = session.get_inputs()
        source = kwargs.get("source", "model.onnx")
        if len(inputs) != 1:
            raise ModelLoadError(f"the graph has {len(inputs)} inputs "
                                 f"({', '.join(i.name for i in inputs)}); a classifier gate needs "
                                 "exactly one (the image or feature batch).", where=source)
        if inputs[0].type not in _ORT_DTYPES:
            raise ModelLoadError(f"the graph input {inputs[0].name!r} has type {inputs[0].type}; "
                                 "only float and double inputs can be perturbed.", where=source)
        super().__init__(dtype=_ORT_DTYPES[inputs[0].type], **kwargs)
        self.session_ = session
        self.proto = proto
        self.input_name = inputs[0].name
        self.output_name, self.output_index = _choose_output(session, output, source)
        batch = inputs[0].shape[0] if inputs[0].shape else None
        # a graph exported without a dynamic batch axis accepts exactly this many rows
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._twin: Any = None
        self._twin_checked = False
        self.gradient_error = None
        #: the quantisation operators of the optimised graph the twin translates (None: it
        #: translates the file), and the fusions that made it fall back to the file
        self.runtime_operators: list[str] | None = None
        self.unfused: Any = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy())
        try:
            (out,) = self.session_.run([self.output_name], {self.input_name: array})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"onnxruntime rejected a batch of shape {array.shape} and dtype {array.dtype}: "
                f"{' '.join(str(exc).split())[:400]} Check that the data has the shape the "
                "model's input declares.", where=self.source) from None
        return torch.from_numpy(np.asarray(out, dtype=np.float64 if self.dtype == torch.float64
                                           else np.float32)).to(self.device)

    def _differentiable_forward(self, x: torch.Tensor) -> torch.Tensor:
        twin = self.twin()
        try:
            return twin(x)[0]
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
            # a graph the translation accepted but cannot run: no gradient, said as a gate error
            self.gradient_error = (
                f"the torch translation of this graph, used for input gradients, failed on a batch "
                f"of shape {tuple(x.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]} "
                "Use a black-box attack (transfer, spsa) for this model, or report the graph to "
                "pytest-advrobust.")
            raise AttackError(self.gradient_error, where=self.source) from None

    def notes(self, gradient: bool = False) -> list[str]:
        notes = super().notes(gradient)
        if gradient:
            ops = self.runtime_operators or self._quantised_operators()
            if ops:
                ties = getattr(self, "tie_difference", 0.0)
                forward = (f"forward within {ties:.3g} of onnxruntime on a few rows (rounding ties)"
                           if ties else "forward matching onnxruntime")
                graph = (f"quantised graph as onnxruntime runs it ({', '.join(ops)})" if self.runtime_operators
                         else f"quantised graph ({', '.join(ops)})")
                notes.append(f"{graph}: {forward}, input gradient straight-through (BPDA) the rounding")
            rounded = sorted(getattr(self._twin, "rounded", ()))
            if rounded:
                names = [f"{op} to an integer type and back" if op.startswith("Cast") else op
                         for op in rounded]
                notes.append(f"input gradient straight-through (BPDA) {', '.join(names)}")
        return notes

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor,
                      loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
        """The twin's gradient, and onnxruntime's scores (what ships decides the accuracy).

        The parity check runs on every batch on purpose: both score tensors are computed
        anyway (onnxruntime's for the clean accuracy, the twin's for the gradient), so the
        comparison costs one [batch, classes] allclose, and a twin that agrees on the first
        batch can still diverge on inputs that reach other branches of the graph."""
        shipped = self.scores(x)
        grad, twin_scores = super().loss_gradient(x, y, loss)
        if not torch.allclose(twin_scores.to(shipped.dtype), shipped, rtol=PARITY_RTOL, atol=PARITY_ATOL) \
                and not self._rounding_ties_only(twin_scores.to(shipped.dtype), shipped):
            worst = float((twin_scores.to(shipped.dtype) - shipped).abs().max())
            unfused = ""
            if self.unfused is not None:
                unfused = (" onnxruntime runs this graph with fused operators the translation "
                           f"lacks ({_operator_kinds(self.unfused)}), so the translation follows the "
                           "file's nodes, which round differently; the session's "
                           "graph_optimization_level at ORT_ENABLE_BASIC runs them as written.")
            self.gradient_error = (
                f"the torch translation of this graph, used for input gradients, disagrees with "
                f"onnxruntime by up to {worst:.3g} on the evaluation data, so its gradients cannot "
                f"be trusted.{unfused} Use a black-box attack (transfer, spsa) for this model, or "
                "report the graph to pytest-advrobust.")
            raise AttackError(self.gradient_error, where=self.source)
        return grad, shipped

    def _rounding_ties_only(self, twin: torch.Tensor, shipped: torch.Tensor) -> bool:
        """For a quantised graph: the twin differs from onnxruntime only on a few rows and
        by little (see :data:`QUANTISED_ROWS`); the largest such difference is kept for
        the gates' details."""
        if not self._quantised_operators():
            return False
        off = ~torch.isclose(twin, shipped, rtol=PARITY_RTOL, atol=PARITY_ATOL)
        rows = int(off.reshape(len(off), -1).any(1).sum())
        allowed = max(1, int(QUANTISED_ROWS * len(off)))  # one row of a small batch (pgd's remainder)
        worst = float((twin - shipped).abs().max())
        spread = float(shipped.max() - shipped.min()) or 1.0
        if rows > allowed or worst > QUANTISED_SPREAD * spread:
            return False
        self.tie_difference = max(getattr(self, "tie_difference", 0.0), worst)
        return True

    def _quantised_operators(self) -> list[str]:
        if not hasattr(self, "_quantised"):
            from .onnx_torch import straight_through_operators

            self._quantised = straight_through_operators(self.proto, [self.output_name])
        return self._quantised

    def twin(self) -> Any:
        """The differentiable torch translation of the graph onnxruntime runs (see
        :func:`translate_session`)."""
        if self._twin is None:
            from .onnx_torch import UnsupportedOperator

            try:
                # only what the score output needs: an unused label branch (ArgMax,
                # ArrayFeatureExtractor in scikit-learn exports) needs no translation
                translation = translate_session(self.session_, self.proto, [self.output_name],
                                                quantised=bool(self._quantised_operators()))
                self._twin = translation.twin.to(self.device)
                self.runtime_operators, self.unfused = translation.runtime_operators, translation.unfused
            except UnsupportedOperator as exc:
                self.gradient_error = (
                    f"{exc} Attacks that work on this model: noise, transfer (from a "
                    "differentiable surrogate), square and spsa (score-based; square is the stronger), "
                    "and strongest (runs square on such a model).")
                raise AttackError(self.gradient_error, where=self.source) from None
        return self._twin


class Translation(NamedTuple):
    """What :func:`translate_session` made: the twin; the quantisation operators of the
    optimised graph it translates (None when it translates the file); and the
    UnsupportedOperator naming the fusions that made it fall back to the file (or None)."""

    twin: Any
    runtime_operators: list[str] | None
    unfused: Any


def translate_session(session: Any, proto: Any, outputs: list[str], *, quantised: bool) -> Translation:
    """The differentiable twin of the graph ``session`` runs, for ``outputs``.

    A quantised graph's rounding depends on how onnxruntime optimised it (its fused
    QLinear* kernels round differently from the file's nodes), so its twin translates the
    session's optimised graph (:func:`runtime_graph`); when that graph holds a fusion with
    no translation, the file's nodes (QDQ chains computed the fused way when the session
    fuses), and a parity failure then names the fusions. A float graph's fusions change no
    value beyond float rounding: its file is translated as it is. Raises
    UnsupportedOperator when the file cannot be translated either."""
    from .onnx_torch import UnsupportedOperator, straight_through_operators, to_torch

    fused, unfused = True, None
    if quantised:
        optimised, level = runtime_graph(session, proto)
        fused = level >= EXTENDED
        if optimised is not None:
            try:
                return Translation(to_torch(optimised, outputs, fused_requantisation=False),
                                   straight_through_operators(optimised, outputs), None)
            except UnsupportedOperator as exc:
                unfused = exc
    return Translation(to_torch(proto, outputs, fused_requantisation=fused), None, unfused)


#: onnxruntime's optimisation level that fuses quantised chains (GraphOptimizationLevel values)
EXTENDED = 2
#: session configuration entries that change what onnxruntime's optimiser does to a
#: quantised graph, copied to the session that writes the optimised graph out
OPTIMISER_ENTRIES = ("session.disable_quant_qdq", "session.disable_double_qdq_remover",
                     "session.enable_quant_qdq_cleanup", "session.qdqisint8allowed",
                     "optimization.enable_gelu_approximation")


def runtime_graph(session: Any, proto: Any) -> tuple[Any, int]:
    """The graph ``session`` runs (``proto`` as onnxruntime optimises it at the session's
    ``graph_optimization_level``, with its providers and optimiser settings), and that
    level; ``(None, level)`` when it cannot be written out.

    The level is capped at ORT_ENABLE_EXTENDED, where the quantised fusions (QLinearConv,
    QGemm, QLinearAdd, QLinearSoftmax, ...) happen; the levels above it rewrite memory
    layouts (NCHWc, NHWC), not values, into kernels of one machine's instruction set."""
    import tempfile

    import onnx
    import onnxruntime as ort

    try:
        options = session.get_session_options()
        level = int(options.graph_optimization_level)
    except Exception:  # a session-like object of a hook: assume onnxruntime's default
        options, level = None, int(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if level == 0:
        return proto, level
    probe = ort.SessionOptions()
    probe.graph_optimization_level = ort.GraphOptimizationLevel(min(level, EXTENDED))
    probe.log_severity_level = 3
    probe.intra_op_num_threads = 1
    for key in OPTIMISER_ENTRIES if options is not None else ():
        try:
            probe.add_session_config_entry(key, options.get_session_config_entry(key))
        except Exception:  # not set on the session
            continue
    try:
        providers = session.get_providers()
    except Exception:
        providers = ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="advrobust-ort-") as folder:
        probe.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        try:
            ort.InferenceSession(proto.SerializeToString(), probe, providers=providers)
            return onnx.load(probe.optimized_model_filepath), level
        except Exception:  # a graph over 2 GB, a provider that will not write it out
            return None, level


def _operator_kinds(exc: Any) -> str:
    """``QLinearAveragePool (com.microsoft), ...`` from an UnsupportedOperator."""
    kinds = dict.fromkeys(f"{op} ({domain})" for op, domain, _, _ in exc.problems)
    return ", ".join(kinds)


def load_onnx(path: Path, *, output: str | None, device: torch.device, **kwargs: Any) -> OnnxClassifier:
    """Check the file, refuse external data outside its folder, open an inference session."""
    import onnx
    import onnxruntime as ort

    if not path.is_file():
        raise ModelLoadError("file not found. Check the model key (paths are relative to "
                             "pyproject.toml) and that the file was exported before the gates run.",
                             where=str(path))
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"is not a readable ONNX file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'parse error'}). Re-export "
                             "the model; the file may be truncated.", where=str(path)) from None
    _refuse_escaping_external_data(proto, path)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"fails onnx.checker: {' '.join(str(exc).split())[:500]} Re-export "
                             "the model with a current exporter.", where=str(path)) from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime and torch take turns (scores, then the twin's gradient), never run at once:
    # onnxruntime keeps its default pool (one thread per core, as in a plain script), but its
    # threads must not spin-wait between runs and steal the cores from torch's turn
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    # an xdist worker's share of the cores (or --advrobust-threads); 0 keeps the default pool
    from ..threads import onnxruntime_threads

    options.intra_op_num_threads = onnxruntime_threads()
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load it: {' '.join(str(exc).split())[:500]}",
                             where=str(path)) from None
    return OnnxClassifier(session, proto, output=output, device=device, source=str(path), **kwargs)


def _refuse_escaping_external_data(proto: Any, path: Path) -> None:
    """External tensor data must stay inside the model's folder (no ``../`` escapes, no
    absolute paths, no symlinks out), wherever a graph can name a file: initializers,
    sparse initializers, tensor attributes of any node (``Constant``), and the same inside
    subgraphs (``If``/``Loop``/``Scan`` bodies) and model-local functions."""
    root = path.parent.resolve()
    for tensor, owner in _all_tensors(proto):
        if not (tensor.external_data or tensor.data_location == 1):  # 1: TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or root not in target.parents:
            raise ModelLoadError(
                f"{owner} points at external data {location!r}, outside the model's folder. "
                "Refused: a model file may not read other files on this machine. Keep external "
                "data next to the .onnx file.", where=str(path))


def _all_tensors(proto: Any) -> Iterator[tuple[Any, str]]:
    """Every TensorProto of a model that could hold external data, with its owner in words."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node, f" (function {function.name!r})")


def _graph_tensors(graph: Any, inside: str = "") -> Iterator[tuple[Any, str]]:
    for tensor in graph.initializer:
        yield tensor, f"initializer {tensor.name!r}{inside}"
    for sparse in graph.sparse_initializer:
        name = sparse.values.name or sparse.indices.name
        yield sparse.values, f"sparse initializer {name!r}{inside}"
        yield sparse.indices, f"sparse initializer {name!r} (indices){inside}"
    for node in graph.node:
        yield from _node_tensors(node, inside)


def _node_tensors(node: Any, inside: str) -> Iterator[tuple[Any, str]]:
    owner = f"node {node.name or node.op_type!r} ({node.op_type})"
    for attribute in node.attribute:
        what = f"{owner} attribute {attribute.name!r}{inside}"
        if attribute.HasField("t"):
            yield attribute.t, what
        for tensor in attribute.tensors:
            yield tensor, what
        sparse = list(attribute.sparse_tensors)
        if attribute.HasField("sparse_tensor"):
            sparse.append(attribute.sparse_tensor)
        for item in sparse:
            yield item.values, what
            yield item.indices, what
        subgraphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for graph in subgraphs:
            yield from _graph_tensors(graph, f" (in the subgraph {attribute.name!r} of {owner}){inside}")


def _choose_output(session: Any, wanted: str | int | None, source: str) -> tuple[str, int]:
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    if isinstance(wanted, int):
        if wanted >= len(names):
            raise ModelLoadError(f"output = {wanted}, but the graph has {len(names)} outputs "
                                 f"({', '.join(names)}).", where=source)
        wanted = names[wanted]
    if wanted is not None:
        if wanted not in names:
            raise ModelLoadError(f"the output key names {wanted!r}, but the graph's outputs are "
                                 f"{', '.join(names)}.", where=source)
        chosen = outputs[names.index(wanted)]
        if not chosen.type.startswith("tensor(float") and chosen.type != "tensor(double)":
            raise ModelLoadError(_zipmap_hint(chosen) if "seq" in chosen.type or "map" in chosen.type
                                 else f"output {wanted!r} has type {chosen.type}; class scores "
                                 "must be a float tensor.", where=source)
        return wanted, names.index(wanted)
    scores = [o for o in outputs if o.type in ("tensor(float)", "tensor(double)")
              and (o.shape is None or len(o.shape) in (1, 2))]  # [N, C], or [N] for a binary head
    if len(scores) == 1:
        return scores[0].name, names.index(scores[0].name)
    maps = [o for o in outputs if "map" in o.type]
    if maps and not scores:
        raise ModelLoadError(_zipmap_hint(maps[0]), where=source)
    raise ModelLoadError(
        f"cannot tell which output holds the class scores: outputs are "
        f"{', '.join(f'{o.name} ({o.type}, shape {o.shape})' for o in outputs)}. Set "
        "output = \"NAME\" (or its index) to the float [batch, classes] output.", where=source)


def _zipmap_hint(output: Any) -> str:
    return (f"output {output.name!r} is a sequence of maps (skl2onnx's ZipMap), not a score "
            "tensor. Re-export with options={id(model): {'zipmap': False}} so the probabilities "
            "are a float [batch, classes] tensor.")


