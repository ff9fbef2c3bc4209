"""Runs checks in batches: the only place that loops over data.

For one model, every pending (check, eps) is computed in a single streamed pass: per batch
one forward (or one forward + backward when a gradient attack is pending, which also
yields the clean scores) and one forward per attacked variant. Classifiers, data handles
and measurements are cached for the session, so no work is done twice. Per-sample gradient
gates are cross-checked by the masking probe (a bounded square attack on a fixed random
subsample of their samples, shared by the gates of one eps), and a model whose forward
draws random numbers is attacked and evaluated over seeded draws (models/randomised.py).

The engine measures and nothing else: it knows no thresholds, no reference figures and
no files.
Its :class:`~pytest_advrobust.results.Measurement` objects (counts, attack statistics,
what the masking diagnostics need, a fitted state handed out) are judged by
:class:`~pytest_advrobust.gate.Judge` and written by the report stages.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .attacks import Attack, AttackRegistry, call_attack
from .config import CheckSpec, ModelSpec
from .errors import AdvRobustError, AttackError, DataError, ScoresNotFinite
from .fingerprint import fingerprint
from .results import Measurement, format_eps

if TYPE_CHECKING:  # numpy, torch and the data module load when a gate runs, not at start-up
    import numpy as np
    import torch

    from .data import EvalData
    from .models.base import Classifier
    from .randomness import SampleRandom

__all__ = ["Engine", "GateRun", "ModelPass", "Request"]


@dataclass(frozen=True)
class Request:
    """One gate to compute: a check of a model at one eps."""

    check: CheckSpec
    eps: float

    @property
    def key(self) -> tuple[int, float]:
        return (self.check.index, self.eps)


class Engine:
    """Session-wide cache of classifiers, data and measurements."""

    def __init__(self, registry: AttackRegistry, *, load_model: Callable[[ModelSpec], "Classifier"],
                 on_measured: Callable[[Measurement], None] | None = None,
                 progress: Callable[[str], None] | None = None,
                 specs: Callable[[str], ModelSpec] | None = None,
                 load_data: Callable[[ModelSpec], Any] | None = None,
                 shard: tuple[int, int] | None = None, decide_early: Any = None) -> None:
        self.registry = registry
        #: decide-early's rule (``gate.Judge``): ``decides_early(model, check)`` says which
        #: gates stop once ``settled(measurement)`` says their counts so far settle their
        #: verdict; None: every gate is measured on all its data
        self.decide_early = decide_early
        #: ``(k, n)``: gates are measured on shard k of n of every model's evaluation data
        #: and come out partial (no verdict); hand-written probes still see all the data
        self.shard = shard
        #: how many flipped samples each gate hands out in its measurement (``--advrobust-examples``)
        self.examples = 0
        self._specs = specs  # name -> ModelSpec, for attacks that use other models (transfer)
        self._load_model = load_model
        self._load_data = load_data
        self._on_measured = on_measured
        self._progress = progress
        self._classifiers: dict[str, Any] = {}
        self._data: dict[str, "EvalData"] = {}
        self._done: dict[tuple[str, tuple[int, float]], Measurement | AdvRobustError] = {}
        #: every gate measured (or errored) in this process, in order: what the reports read
        self.measurements: list[Measurement] = []

    # -- public ---------------------------------------------------------------------------
    def classifier(self, spec: ModelSpec) -> "Classifier":
        """Load once per session; a load error is remembered and re-raised for every gate."""
        if spec.name not in self._classifiers:
            try:
                self._classifiers[spec.name] = self._load_model(spec)
            except AdvRobustError as exc:
                self._classifiers[spec.name] = exc
        cached = self._classifiers[spec.name]
        if isinstance(cached, AdvRobustError):
            raise cached
        return cached

    def data(self, spec: ModelSpec) -> "EvalData":
        """The model's evaluation data (through a user's ``load_data`` hook when one claims it)."""
        from .data import EvalData

        if spec.name not in self._data:
            self._data[spec.name] = EvalData(spec, self._load_data)
        return self._data[spec.name]

    def measure(self, spec: ModelSpec, request: Request,
                batch_with: Sequence[Request] = (), *, gate: bool = True) -> Measurement:
        """The measurement of ``request``, computing it (and ``batch_with``, in the same pass
        over the data) unless it is cached; a gate that could not be computed raises its
        error. Only gates (not a fixture's ad-hoc calls) go into :attr:`measurements`."""
        slot = (spec.name, request.key)
        if slot not in self._done:
            todo = [request] + [r for r in batch_with if (spec.name, r.key) not in self._done
                                and r.key != request.key]
            self._run(spec, todo, gate=gate)
        cached = self._done[slot]
        if isinstance(cached, AdvRobustError):
            raise cached
        return cached

    def error_measurement(self, spec: ModelSpec, request: Request, error: BaseException) -> Measurement:
        """What a gate that could not be computed measured: its error, no figures."""
        uses_eps = request.check.attack not in self.registry or self.registry[request.check.attack].uses_eps
        kind = error.kind if isinstance(error, AdvRobustError) else type(error).__name__
        return Measurement(model=spec.name, attack=request.check.attack,
                           eps=request.eps if uses_eps else None, check=request.check.index,
                           options=dict(request.check.options), error=f"{kind}: {error}")

    def record_error(self, spec: ModelSpec, request: Request, error: BaseException) -> Measurement:
        """A gate that could not be computed still counts: its error measurement goes into
        :attr:`measurements` (once) and to the listener, so no report can leave it out."""
        measurement = self.error_measurement(spec, request, error)
        if all(m.key != measurement.key for m in self.measurements):
            self._publish(measurement)
        return measurement

    # -- the pass -------------------------------------------------------------------------
    def _run(self, spec: ModelSpec, todo: list[Request], *, gate: bool = True) -> None:
        started = time.perf_counter()
        try:
            outcomes = self._evaluate(spec, todo, shard=self.shard if gate else None, gate=gate)
        except AdvRobustError as exc:  # model or data problem: every gate of the pass says so
            outcomes = {request.key: exc for request in todo}
        seconds = (time.perf_counter() - started) / max(1, len(todo))
        for request in todo:
            outcome = outcomes[request.key]
            if isinstance(outcome, Measurement):
                outcome.seconds = seconds
                if gate:
                    self._publish(outcome)
            elif gate:
                self.record_error(spec, request, outcome)
            self._done[(spec.name, request.key)] = outcome

    def _publish(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)
        if self._on_measured is not None:
            self._on_measured(measurement)

    def _evaluate(self, spec: ModelSpec, todo: list[Request],
                  shard: tuple[int, int] | None = None, gate: bool = True) -> dict[tuple[int, float], Any]:
        """One streamed pass over ``spec``'s data computing every gate of ``todo``: the
        steps of :class:`ModelPass`, in order (gates, not a fixture's calls, may decide early)."""
        run = ModelPass(self, spec, todo, shard=shard,
                        decider=self.decide_early if gate and shard is None else None)
        with run.model.session():
            run.fit()
            for batch in run.batches():
                shared = run.shared(batch)
                for gate in run.live():
                    run.attack(gate, batch, shared)
        return run.outcomes()

    def _surrogates(self, spec: ModelSpec, gate: "GateRun", model: "Classifier") -> list["Classifier"]:
        """The classifiers a check's surrogate option names, loaded through the cache."""
        r = gate.request
        names = gate.attack.surrogates(r.check.options)
        if not names or self._specs is None:
            raise AttackError(f"{r.check.attack} needs {gate.attack.surrogate_key or 'surrogate'} = "
                              "\"NAME\" (another model of the config) to craft its inputs on.",
                              where=spec.name)
        out = []
        for name in names:
            try:
                surrogate = self.classifier(self._specs(name))
            except AdvRobustError as exc:
                raise AttackError(f"surrogate {name!r} of {r.check.attack} cannot be used: {exc}",
                                  where=spec.name) from None
            if tuple(surrogate.input_range) != tuple(model.input_range):
                raise AttackError(
                    f"surrogate {name!r} takes inputs in input-range {list(surrogate.input_range)} "
                    f"but {spec.name!r} takes {list(model.input_range)}; a transferred input must "
                    "be valid for both. Give both models the same input-range (use normalize for "
                    "what differs inside).", where=spec.name)
            out.append(surrogate)
        return out

    def _report_progress(self, spec: ModelSpec, offset: int, what: str = "",
                         gates: Sequence["GateRun"] = (), total: int | None = None) -> None:
        """One progress line: the model, the gates this pass computes, and where it is."""
        if self._progress is not None:
            total = total if total is not None else spec.max_samples
            batch = f"batch {offset // spec.batch_size + 1}"
            if total:
                batch += f"/{-(-total // spec.batch_size)}"
            gates_text = f"; gates: {_gate_names([g.request for g in gates])}" if gates else ""
            self._progress(f"{spec.name}: {what or f'{batch} (from sample {offset})'}{gates_text}")


@dataclass
class GateRun:
    """Everything one gate holds during a model's pass: its request and attack, its
    random-stream key, its counts so far, the fitted state, its fit split and samples cap,
    the masking diagnostic's count, and the error that stopped it (then it is left out of
    later steps)."""

    request: Request
    attack: Attack
    #: the key of its position-keyed random streams (``randomness.sample_key``)
    stream: int
    correct: int = 0
    clean_correct: int = 0
    n: int = 0
    #: the attack's own statistics, kept for the whole pass
    stats: dict[str, Any] = field(default_factory=dict)
    #: what its ``fit`` returned (a universal perturbation), handed out with the measurement
    state: Any = None
    #: samples [0, fit_size) are its fit split (0: the attack fits nothing), never evaluated
    #: unless the attack is cross-fitted (``folds``)
    fit_size: int = 0
    #: a cross-fitted attack's number of folds (None: not cross-fitted; see ``Attack.folds_key``)
    folds: int | None = None
    #: it is evaluated on samples [0, cap) only (None: all)
    cap: int | None = None
    #: correctly classified samples whose cross-entropy input gradient is exactly zero
    #: (None: not counted, for an attack that needs no gradient)
    zero_gradient: int | None = None
    error: AdvRobustError | None = None
    #: per true label: [samples, clean correct, correct under attack]
    per_class: dict[int, list[int]] = field(default_factory=dict)
    #: the first flipped samples (right when clean, wrong under attack), when asked for
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: samples it got wrong clean and right under attack
    gained: int = 0
    #: decide-early: it may stop once its verdict is settled; ``decided``: the stage at
    #: whose end it stopped (0: it has not)
    early: bool = False
    decided: int = 0

    @property
    def key(self) -> tuple[int, float]:
        return self.request.key

    @property
    def check(self) -> CheckSpec:
        return self.request.check

    @property
    def eps(self) -> float:
        return self.request.eps

    @property
    def skip(self) -> int:
        """The first samples it does not evaluate: its fit split, unless cross-fitted."""
        return 0 if self.folds else self.fit_size


@dataclass(frozen=True)
class Shared:
    """What every gate of a batch shares: the clean scores, which samples they classify
    right, and the loss gradient at the inputs when a gradient attack is pending."""

    scores: "torch.Tensor"
    clean_ok: "torch.Tensor"
    grad: "torch.Tensor | None" = None
    #: a randomised model's: per sample, in how many of its draws it was classified right
    draws_correct: "torch.Tensor | None" = None


class ModelPass:
    """One model's streamed pass over its data, computing every pending gate at once.

    The steps, in the order :meth:`Engine._evaluate` runs them, each readable and testable
    alone: plan (``__init__``: the model, data and attacks, and the gates that cannot run),
    :meth:`fit` (attacks that learn a perturbation first), per batch :meth:`shared` (the one
    forward, or forward + backward, that every gate reuses) and :meth:`attack` (one gate on
    one batch), then :meth:`outcomes` (measurements and errors). Each gate's state is one
    :class:`GateRun` in :attr:`gates`; a gate that errors keeps its error there and is left
    out of later steps.
    """

    def __init__(self, engine: Engine, spec: ModelSpec, todo: Sequence[Request],
                 shard: tuple[int, int] | None = None, decider: Any = None) -> None:
        from .data import Census
        from .randomness import sample_key

        self.engine = engine
        #: ``(k, n)``: evaluate only the k-th of every n batches (the fit split is read whole)
        self.shard = shard
        #: what the pass saw of the whole stream (other shards' samples included)
        self.census = Census(parts=shard[1] if shard else 1)
        self.spec = spec
        self.model = engine.classifier(spec)
        self.data = engine.data(spec)
        self.gates: dict[tuple[int, float], GateRun] = {}
        for r in todo:
            attack = engine.registry[r.check.attack]
            gate = GateRun(r, attack, stream=sample_key(spec.seed, spec.name, r.check.index, r.eps),
                           cap=attack.samples_cap(r.check.options), folds=attack.folds(r.check.options),
                           zero_gradient=0 if attack.needs_gradient else None)
            if attack.needs_gradient and self.model.gradient_error:
                gate.error = _no_gradient(spec, r, self.model)
            gate.early = decider is not None and decider.decides_early(spec.name, r.check.index)
            self.gates[r.key] = gate
        self._zero_rows: tuple[Any, Any] = (None, None)
        #: the masking probe's outcomes on the current batch, per (eps, settings, rows)
        self._probed: dict[tuple[Any, ...], tuple[Any, int]] = {}
        #: the positions the probe attacks, per (skip, cap, samples, data size)
        self._probe_sets: dict[tuple[Any, ...], Any] = {}
        #: whether the model is randomised, once looked at (also kept on the classifier)
        self._randomised: bool | None = getattr(self.model, "randomised", None)
        #: decide-early's rule (see :meth:`settle`), when a gate of the pass decides early
        self.decider = decider if any(gate.early for gate in self.gates.values()) else None
        #: decide-early on a stream of batches: the labels it has shown so far, and why its
        #: gates may not stop early after all (its first stage looks sorted)
        self._labels_seen: set[int] = set()
        self._order_suspect = ""
        #: decide-early reads the data in its own shuffled order (arrays); False: a stream
        self._shuffled = False

    # -- steps ----------------------------------------------------------------------------
    def live(self) -> list[GateRun]:
        """The gates still running (not errored, not stopped by decide-early)."""
        return [gate for gate in self.gates.values() if gate.error is None and not gate.decided]

    def rng(self, gate: GateRun, batch: Any = None,
            keep: "torch.Tensor | None" = None) -> "SampleRandom | np.random.Generator":
        """What ``gate`` draws from: on ``batch`` (its rows ``keep``), a
        :class:`~pytest_advrobust.randomness.SampleRandom` whose per-row draws come from each
        sample's own stream, keyed by its position; without a batch (fitting), the fit's
        stream. Results so depend neither on the batch size nor on sharding."""
        from .randomness import SampleRandom, fit_generator

        if batch is None:
            return fit_generator(gate.stream)
        positions = batch.positions()
        if keep is not None:
            positions = positions[keep.cpu().numpy()]
        return SampleRandom(gate.stream, positions)

    def fit(self) -> None:
        """Fit the attacks that learn a perturbation, on the first samples (as many as
        each attack's declared fit split takes)."""
        import torch

        spec, model = self.spec, self.model
        fitting = [gate for gate in self.live() if gate.attack.fit is not None]
        if not fitting:
            return
        for gate in fitting:
            gate.fit_size = gate.attack.fit_samples(gate.check.options)
        batches = list(self.data.batches(spec.batch_size, model.dtype,
                                         stop=max(gate.fit_size for gate in fitting) + 1))
        fit_x = torch.cat([b.x for b in batches])
        fit_y = torch.cat([b.y for b in batches])
        if model.num_classes is None or self._randomised is None:
            self.randomised(batches[0].x, self._drawn(self._key("fit")).scores(batches[0].x))
        _check_labels(fit_y, model.num_classes, self.data, 0)
        for gate in fitting:
            if len(fit_y) <= gate.fit_size and gate.folds:
                gate.fit_size = len(fit_y)  # cross-fitted: every sample is fitted and scored
            elif len(fit_y) <= gate.fit_size:
                key = gate.attack.fit_samples_key
                gate.error = DataError(
                    f"{gate.check.attack} fits its perturbation on the first "
                    f"{f'{key} = ' if key else ''}{gate.fit_size} samples and evaluates on the rest, "
                    f"but the data has only {len(fit_y)}. "
                    f"{f'Lower {key} in this check' if key else 'Give the attack a fit split'} or "
                    "give more data.",
                    where=spec.key("data"))
        for gate in [gate for gate in fitting if gate.error is None]:
            n, r = gate.fit_size, gate.request
            self.engine._report_progress(spec, 0, f"fitting {r.check.attack} eps={format_eps(r.eps)}",
                                         gates=[gate])
            available = {
                "model": lambda: self._drawn((*gate.stream, "fit")), "x": lambda: fit_x[:n],
                "y": lambda: fit_y[:n],
                "eps": lambda: r.eps, "rng": lambda: self.rng(gate),
                "batch_size": lambda: spec.batch_size, "positions": lambda: torch.arange(n),
                "progress": lambda r=r: lambda text: self.engine._report_progress(
                    spec, 0, f"fitting {r.check.attack} eps={format_eps(r.eps)}: {text}"),
            }
            try:
                gate.state = call_attack(gate.attack.fit_function(), available,
                                         gate.attack.with_defaults(r.check.options))
            except Exception as exc:  # noqa: BLE001 - a failed fit errors its own gate only
                gate.error = self._attack_error(gate, exc)

    def batches(self) -> Iterator[Any]:
        """The evaluation batches, on the model's device (they are made on the CPU). The
        whole stream, other shards' batches included, is counted and hashed on the way
        (:attr:`census`, :meth:`data_digest`), for the merge and the data fingerprint.
        With decide-early, they come in decide-early's order (:meth:`ordered`)."""
        source = self.ordered() if self.decider is not None else self.data.batches(
            self.spec.batch_size, self.model.dtype, shard=self.shard, census=self.census)
        for batch in source:
            self.engine._report_progress(self.spec, batch.offset, gates=self.live(),
                                         total=self.data.size)
            yield replace(batch, x=batch.x.to(self.model.device, non_blocking=True),
                          y=batch.y.to(self.model.device, non_blocking=True))

    def data_digest(self) -> str:
        """A hash of every input and label of the stream (all shards'), whatever the batch
        size: the data part of a result's fingerprint."""
        return self.census.digest()

    # -- decide-early ---------------------------------------------------------------------
    def ordered(self) -> Iterator[Any]:
        """decide-early's pass: the samples in an order keyed by the seed and the model
        (:func:`~pytest_advrobust.randomness.sample_order`) when the data can be read in any
        order, else in the loader's own; batches are cut at each stage's end (``gate.
        stage_samples``: 128, 256, 512, ...), where :meth:`settle` stops the gates whose
        verdict is settled, so the figures do not depend on the batch size. Samples no
        running gate evaluates are left out; the pass ends when every gate has stopped or
        the data runs out. Every sample is still checked, counted and hashed (arrays first,
        in their own order; a stream read to its end), for the data fingerprint."""
        from .randomness import sample_order

        spec, dtype = self.spec, self.model.dtype
        stream = None
        self._shuffled = self.data.random_access() is not None
        if self._shuffled:
            for _ in self.data.batches(spec.batch_size, dtype, census=self.census):
                pass  # every sample checked, counted and hashed in the data's own order
            size = self.data.size or 0
            pieces = self._pieces(sample_order(spec.seed, spec.name, size), size)
        else:
            stream = self.data.batches(spec.batch_size, dtype, census=self.census)
            pieces = self._stream_pieces(stream)
        stage = 1
        for batch, end in pieces:
            if batch is not None:
                yield batch
            if end == _stage_samples(stage):
                self.settle(stage)
                stage += 1
            if not self.live():
                break
        if stream is not None:  # the sample count and data fingerprint need the whole stream
            for _ in stream:
                pass

    def _pieces(self, order: "np.ndarray", size: int) -> Iterator[tuple[Any, int]]:
        """``(batch or None, end)`` over ``order``: batch-size slices cut at each stage's
        end, loaded only for the samples a running gate evaluates; ``end`` is where the
        slice ends in the order. No stage ends at the last sample (that is all the data)."""
        start = 0
        while start < size:
            stop = min(start + self.spec.batch_size, _next_stage_end(start), size)
            positions = order[start:stop]
            positions = positions[self._wanted(positions)]
            batch = self.data.rows(positions, self.model.dtype, start) if len(positions) else None
            yield batch, (stop if stop < size else -1)
            start = stop

    def _stream_pieces(self, stream: Iterator[Any]) -> Iterator[tuple[Any, int]]:
        """``(batch or None, end)`` over a loader's own batches, cut at each stage's end.
        Its order is the loader's, so a stage only counts once the stream has shown every
        class of the model, and a first stage whose labels look sorted turns decide-early
        off for the pass, with a warning (:meth:`_check_order`)."""
        import numpy as np

        first: list[Any] = []
        for batch in stream:
            while len(batch.y):
                end = _next_stage_end(batch.offset)
                piece, batch = batch.head(min(len(batch.y), end - batch.offset))
                labels = piece.y.numpy()
                self._labels_seen.update(np.unique(labels).tolist())
                if len(first) < _stage_samples(1):
                    first.extend(labels[:_stage_samples(1) - len(first)].tolist())
                    if len(first) == _stage_samples(1):
                        self._check_order(np.asarray(first))
                wanted = self._wanted(piece.positions())
                kept = piece if wanted.all() else (piece.rows(wanted) if wanted.any() else None)
                yield kept, piece.offset + len(piece.y)

    def _check_order(self, labels: "np.ndarray") -> None:
        """A loader's first stage, in its own order: labels in long runs (a class-sorted
        stream) would make an early stop read a biased part of the data, so the pass then
        runs to the end, with a warning saying so."""
        import numpy as np

        from .errors import AdvRobustWarning

        changes = int((labels[1:] != labels[:-1]).sum())
        _, counts = np.unique(labels, return_counts=True)
        m = len(labels)
        expected = (m - 1) * (1 - float((counts * (counts - 1)).sum()) / (m * (m - 1)))
        if len(counts) > 1 and changes >= expected - 4 * expected ** 0.5:
            return
        classes = getattr(self.model, "num_classes", None)
        if len(counts) == 1 and classes == 1:
            return
        self._order_suspect = (
            f"the first {m} labels of the data's own order look sorted ({len(counts)} "
            f"class{'es' if len(counts) > 1 else ''}, {changes} changes of label where a "
            f"shuffled stream gives about {expected:.0f})")
        warning = AdvRobustWarning(
            f"{self.data.where}: decide-early: {self._order_suspect}, so an early stop would "
            "judge a biased part of the data; this pass measures every gate on all of it. "
            "Yield the batches in a shuffled order (DataLoader(..., shuffle=True, generator="
            "torch.Generator().manual_seed(0))), or return (inputs, labels) arrays, which "
            "decide-early shuffles itself.")
        try:
            import warnings

            warnings.warn(warning, AdvRobustWarning, stacklevel=2)
        except AdvRobustWarning:  # a warnings filter made it an error (-W error)
            raise DataError(f"{str(warning).split(': ', 1)[1]} (AdvRobustWarning, turned into an "
                            "error by a warnings filter)", where=self.data.where) from None

    def _wanted(self, positions: "np.ndarray") -> "np.ndarray":
        """Which of ``positions`` some running gate evaluates (past its fit split, within
        its samples cap)."""
        import numpy as np

        wanted = np.zeros(len(positions), dtype=bool)
        for gate in self.live():
            keep = positions >= gate.skip
            if gate.cap is not None:
                keep &= positions < gate.cap
            wanted |= keep
        return wanted

    def settle(self, stage: int) -> None:
        """decide-early, at the end of ``stage``: each running gate that decides early and
        whose counts so far settle its verdict (the judge's ``settled``) stops. Not on a
        stream that has not yet shown every class of the model, or whose order looked
        sorted."""
        if self.decider is None or self._order_suspect:
            return
        if not self._shuffled:
            classes = getattr(self.model, "num_classes", None)
            if classes is None or len(self._labels_seen) < classes:
                return
        for gate in self.live():
            if gate.early and gate.n and self.decider.settled(self._so_far(gate, stage)):
                gate.decided = stage

    def _population(self, gate: GateRun) -> int | None:
        """The samples ``gate`` evaluates on all the data (None: a stream not yet read to
        its end)."""
        size = self.data.size if self._shuffled else None
        if size is None:
            return None
        return max(0, min(size, gate.cap if gate.cap is not None else size) - gate.skip)

    def _so_far(self, gate: GateRun, stage: int) -> Measurement:
        """``gate``'s counts at the end of ``stage``, as the judge reads a measurement."""
        r, samples = gate.request, self._population(gate)
        eps = r.eps if gate.attack.uses_eps else None
        return Measurement(
            model=self.spec.name, attack=r.check.attack, eps=eps, check=r.check.index,
            options=dict(r.check.options), correct=gate.correct, clean_correct=gate.clean_correct,
            n=gate.n, gained=gate.gained, stats=gate.stats, zero_gradient=gate.zero_gradient,
            fingerprint={**fingerprint(self.spec, r.check, eps, samples if samples is not None else gate.n,
                                       gate.attack, self.data_digest()),
                         **self._draws_fingerprint()},
            samples=samples, decided_early=True, stage=stage)

    def _early_outcomes(self, outcomes: dict[tuple[int, float], Any]) -> dict[tuple[int, float], Any]:
        """Each measurement's ``gained`` count; in a decide-early pass also its ``samples``
        (its fingerprint's ``n``, so its figure compares with one measured on all the data)
        and, for a gate that stopped before the data ran out, ``decided_early`` and the stage."""
        for key, gate in self.gates.items():
            m = outcomes[key]
            if not isinstance(m, Measurement):
                continue
            m.gained = gate.gained
            if self.decider is None:
                continue
            samples = self._population(gate)
            if samples is None:  # a stream, now read to its end
                samples = max(0, min(self.census.samples, gate.cap if gate.cap is not None
                                     else self.census.samples) - gate.skip)
            m.samples = samples
            m.fingerprint["n"] = samples
            m.decided_early = bool(gate.decided) and gate.n < samples
            m.stage = gate.decided if m.decided_early else 0
        return outcomes

    def shared(self, batch: Any) -> Shared:
        """The batch's one forward pass; forward + backward when a live gate takes the
        gradient or needs it for its masking diagnostic (so that diagnostic does not depend
        on which other gates share the pass: a serial run and xdist measure the same). This
        gives the clean scores too. A gradient that fails errors only the gates that
        wanted it."""
        wanting = [gate for gate in self.live()
                   if gate.attack.wants("grad") or gate.attack.needs_gradient]
        grad = None
        model = self._drawn(self._key("shared", batch.offset))
        if wanting:
            try:
                grad, scores = model.loss_gradient(batch.x, batch.y)
            except DataError as exc:  # labels the model cannot score
                raise DataError(str(exc), where=exc.where or self.data.where) from None
            except AttackError as exc:
                for gate in wanting:  # an attack that can do without (strongest) gets grad=None
                    if gate.attack.needs_gradient:
                        gate.error = _no_gradient(self.spec, gate.request, self.model, exc)
                scores = model.scores(batch.x)
        else:
            scores = model.scores(batch.x)
        _check_labels(batch.y, self.model.num_classes, self.data, batch.offset)
        if self._randomised is None and self.randomised(batch.x, scores):
            return self.shared(batch)  # again, through its draws
        if self.randomised():  # each draw's decisions: right only if right in all
            draws = sum((s.argmax(1).to(batch.y.device) == batch.y).long() for s in model.last)
            return Shared(scores=scores, clean_ok=draws == model.draws, grad=grad, draws_correct=draws)
        return Shared(scores=scores, clean_ok=scores.argmax(1).to(batch.y.device) == batch.y, grad=grad)

    def selection(self, gate: GateRun, batch: Any) -> "torch.Tensor | None":
        """Which samples of ``batch`` ``gate`` evaluates: None for all, else a mask (past
        its fit split, within its samples cap), possibly empty."""
        if not gate.skip and gate.cap is None:
            return None
        import torch

        index = torch.from_numpy(batch.positions()).to(batch.y.device)
        keep = index >= gate.skip
        return keep if gate.cap is None else keep & (index < gate.cap)

    def attack(self, gate: GateRun, batch: Any, shared: Shared) -> None:
        """``gate`` on one batch: attack the selected samples and count them."""
        keep = self.selection(gate, batch)
        if keep is not None and not keep.any():
            return
        try:
            adv_ok = self._attacked(gate, batch, keep, shared)
        except Exception as exc:  # noqa: BLE001 - whatever one attack raises errors that gate only
            gate.error = self._attack_error(gate, exc)
            return
        ok = shared.clean_ok if keep is None else shared.clean_ok[keep]
        gate.correct += int(adv_ok.sum())
        gate.clean_correct += int(ok.sum())
        gate.gained += int((adv_ok & ~ok.to(adv_ok.device)).sum())
        gate.n += int(ok.numel())
        if gate.folds:
            self._count_folds(gate, adv_ok, _positions(batch, keep))
        _count_classes(gate.per_class, batch.y if keep is None else batch.y[keep], ok, adv_ok)
        self._count_zero_gradients(gate, keep, shared)
        self._probe(gate, batch, keep, shared, adv_ok)

    def outcomes(self) -> dict[tuple[int, float], Any]:
        """Each gate's :class:`~pytest_advrobust.results.Measurement`, or the error that
        stopped it."""
        outcomes: dict[tuple[int, float], Any] = {}
        for key, gate in self.gates.items():
            r, attack = gate.request, gate.attack
            if gate.error is not None:
                outcomes[key] = gate.error
                continue
            if gate.n == 0 and self.shard is None:
                why = (f"the fit split takes all {gate.fit_size} samples. Lower "
                       f"{attack.fit_samples_key or 'its fit split'} or give more data." if gate.fit_size
                       else f"{attack.samples_key} = 0 selects none. Raise it.")
                outcomes[key] = DataError(f"{r.check.attack} has no samples to evaluate: {why}",
                                          where=self.spec.key("data"))
                continue
            eps = r.eps if attack.uses_eps else None
            describe = attack.describe_function()
            outcomes[key] = Measurement(
                model=self.spec.name, attack=r.check.attack, eps=eps, check=r.check.index,
                options=dict(r.check.options), correct=gate.correct,
                clean_correct=gate.clean_correct, n=gate.n, stats=gate.stats,
                fingerprint={**fingerprint(self.spec, r.check, eps, gate.n, attack, self.data_digest()),
                             **self._draws_fingerprint()},
                details=describe(gate.stats) if describe is not None else "",
                model_notes=_model_notes(self.model, attack.needs_gradient),
                zero_gradient=gate.zero_gradient, state=gate.state,
                shard=None if self.shard is None else self._shard_record(gate),
                per_class=[{"label": label, "n": n, "clean_correct": clean, "correct": correct}
                           for label, (n, clean, correct) in sorted(gate.per_class.items())],
                examples=_stacked(gate.examples),
            )
        return self._early_outcomes(outcomes)

    # -- helpers --------------------------------------------------------------------------
    def _shard_record(self, gate: GateRun) -> dict[str, Any]:
        """What a shard result carries so the merge can check that shards fit together and
        judge them: the shard, the stream it read (sample count, label digest, a digest of
        each shard's part), a fitted state's digest and the masking diagnostic's count."""
        record: dict[str, Any] = {"index": self.shard[0], "count": self.shard[1],
                                  **self.census.summary(), "zero_gradient": gate.zero_gradient,
                                  "notes": _model_notes(self.model, gate.attack.needs_gradient)}
        if "parts" in record:  # the part this shard evaluated, kept apart from its index
            record["evaluated"] = record["parts"][self.shard[0] - 1]
        if hasattr(gate.state, "detach"):
            data = gate.state.detach().cpu().contiguous().numpy().tobytes()
            record["fit"] = "sha256:" + hashlib.sha256(data).hexdigest()[:16]
        return record

    def _count_folds(self, gate: GateRun, adv_ok: "torch.Tensor", positions: "torch.Tensor") -> None:
        """A cross-fitted gate's figure per fold (``stats["fold<j>_correct"]``, ``["fold<j>_n"]``,
        j from 1), which the shard merge sums like the other counts."""
        from .attacks import fold_of

        fold = fold_of(positions.to(adv_ok.device), gate.folds)
        for j in range(gate.folds):
            mine = fold == j
            gate.stats[f"fold{j + 1}_correct"] = gate.stats.get(f"fold{j + 1}_correct", 0) + int(adv_ok[mine].sum())
            gate.stats[f"fold{j + 1}_n"] = gate.stats.get(f"fold{j + 1}_n", 0) + int(mine.sum())

    def _count_zero_gradients(self, gate: GateRun, keep: "torch.Tensor | None", shared: Shared) -> None:
        """Masking diagnostic, free: of ``gate``'s correctly classified samples in this
        batch, how many have an input gradient (the shared cross-entropy one) of exactly 0."""
        if shared.grad is None or gate.zero_gradient is None:
            return
        if self._zero_rows[0] is not shared:  # once per batch, for every gate
            flat = shared.grad.reshape(len(shared.grad), -1)
            self._zero_rows = (shared, ~flat.ne(0).any(1).to(shared.clean_ok.device) & shared.clean_ok)
        zero = self._zero_rows[1] if keep is None else self._zero_rows[1][keep.to(shared.clean_ok.device)]
        gate.zero_gradient += int(zero.sum())

    def _attacked(self, gate: GateRun, batch: Any, keep: "torch.Tensor | None",
                  shared: Shared) -> "torch.Tensor":
        """Correctness of the model on the attacked batch (a bool per kept sample)."""
        import torch

        model, attack, r = self._drawn((*gate.stream, "attack", batch.offset)), gate.attack, gate.request
        x, y, grad, scores, clean_ok = batch.x, batch.y, shared.grad, shared.scores, shared.clean_ok
        if keep is not None:
            x, y, clean_ok = x[keep], y[keep], clean_ok[keep]
            grad = None if grad is None else grad[keep.to(grad.device)]
            scores = scores[keep.to(scores.device)]
        available = {
            "model": lambda: model, "x": lambda: x, "y": lambda: y, "eps": lambda: r.eps,
            "rng": lambda: self.rng(gate, batch, keep), "grad": lambda: grad, "scores": lambda: scores,
            "stats": lambda: gate.stats, "state": lambda: gate.state,
            "surrogates": lambda: self.engine._surrogates(self.spec, gate, model),
            "positions": lambda: _positions(batch, keep),
        }
        adversarial = call_attack(attack.perturb_function(), available,
                                  attack.with_defaults(r.check.options))
        if adversarial is x:  # the attack left the inputs alone (clean)
            if shared.draws_correct is not None:
                self._tally_draws(gate, shared.draws_correct if keep is None
                                  else shared.draws_correct[keep.to(shared.draws_correct.device)])
            return clean_ok
        # a tuple holds candidates: a sample is right only if right on each, and a later one
        # is scored only on the samples the earlier ones left standing (fgsm: the corner, then
        # its interior point); ``shown`` keeps, per sample, the point that fooled it (or the last)
        key = (*gate.stream, "eval", batch.offset)
        shown = correct = draws = None
        candidates = adversarial if isinstance(adversarial, tuple) and adversarial else (adversarial,)
        for number, candidate in enumerate(candidates):
            points = _project(candidate, x, r.eps if attack.uses_eps else None, model.input_range,
                              self.spec, r)
            if correct is None:
                shown = points
                correct, draws = self._correct(points, y, key)
                continue
            rows = correct.nonzero().squeeze(1)
            if len(rows):
                on_points = rows.to(points.device)
                again, again_draws = self._correct(points[on_points], y[rows], (*key, number))
                correct[rows] = again
                shown[rows.to(shown.device)] = points[on_points]
                if draws is not None and again_draws is not None:
                    draws[rows] = torch.minimum(draws[rows], again_draws)
        self._tally_draws(gate, draws)
        if len(gate.examples) < self.engine.examples:
            self._keep_examples(gate, batch, keep, x, shown, y, scores, correct)
        return correct

    def _keep_examples(self, gate: GateRun, batch: Any, keep: "torch.Tensor | None", x: "torch.Tensor",
                       adversarial: "torch.Tensor", y: "torch.Tensor", scores: "torch.Tensor",
                       correct: "torch.Tensor") -> None:
        """Keep the batch's flipped samples (right when clean, wrong under attack), in data
        order, until the gate holds :attr:`Engine.examples` of them: handed out with its
        measurement for the report side to draw (the engine writes no file)."""
        import torch

        clean = scores.argmax(1).to(y.device)
        flipped = torch.nonzero((clean == y) & ~correct).flatten()[: self.engine.examples - len(gate.examples)]
        if not len(flipped):
            return
        predicted = self.model.scores(adversarial[flipped.to(adversarial.device)]).argmax(1).to(y.device)
        positions = _positions(batch, keep)
        for row, label in zip(flipped.tolist(), predicted.tolist()):
            gate.examples.append({"index": int(positions[row]), "label": int(y[row]),
                                  "clean": int(clean[row]), "adversarial": int(label),
                                  "x": x[row].detach().cpu(), "adv": adversarial[row].detach().cpu()})

    def _attack_error(self, gate: GateRun, exc: BaseException) -> AdvRobustError:
        """What one gate's failure says: "no usable gradient" when that is the cause, NaN
        scores on perturbed inputs as such (the clean scores were finite), a surrogate's or
        an attack's own error as it is, anything else with its type and where it was raised."""
        attack, r = gate.attack, gate.request
        eps = f" at eps={format_eps(r.eps)}" if attack.uses_eps else ""
        if isinstance(exc, ScoresNotFinite):
            return AttackError(
                f"{r.check.attack}{eps}: NaN on perturbed inputs: the model returned NaN or inf "
                f"scores for {exc.bad} of {exc.total} perturbed inputs, while its scores on the "
                "data itself are finite. A model that breaks down just off its data is not robust "
                "there; check its numerics (a log of 0, a division by a small norm) before "
                "gating.", where=self.spec.name)
        if isinstance(exc, AdvRobustError):
            if self.model.gradient_error and attack.needs_gradient and isinstance(exc, AttackError):
                return _no_gradient(self.spec, r, self.model, exc)
            return exc
        return AttackError(f"{r.check.attack}{eps} raised {type(exc).__name__}: {exc} "
                           f"(at {_raised_at(exc)}). Only this gate is affected; if the attack is "
                           "your own, fix it there, else please report it.", where=self.spec.name)

    # -- randomised models (models/randomised.py) -------------------------------------------
    def randomised(self, x: "torch.Tensor | None" = None, scores: "torch.Tensor | None" = None) -> bool:
        """Whether the model draws random numbers in forward, looked at once: one more pass
        over the first :data:`DETECT_ROWS` inputs a pass scored (``x``, with their
        ``scores``), under a seed, must give the same scores. A randomised model is then
        attacked through an EOT :class:`~pytest_advrobust.models.randomised.Expectation`
        and every figure is over ``eot-samples`` seeded draws."""
        if self._randomised is None and x is not None:
            from .models.randomised import differs

            first = None if scores is None else scores[:DETECT_ROWS]
            self._randomised = differs(self.model, x[:DETECT_ROWS], self._key("detect"), first)
            try:  # for its notes, and the session's later passes
                self.model.randomised = self._randomised
                self.model.draws = self.spec.eot_samples if self._randomised else 1
            except AttributeError:  # a classifier of a hook's that takes no attributes
                pass
        return bool(self._randomised)

    def _key(self, *parts: Any) -> tuple[Any, ...]:
        """A key for this model's seeded draws outside any one gate (the clean pass)."""
        from .randomness import sample_key

        return (*sample_key(self.spec.seed, self.spec.name, -1, 0.0), *parts)

    def _drawn(self, key: tuple[Any, ...]) -> Any:
        """The model as an attack (or the clean pass) uses it: itself, or for a randomised
        model its expectation over ``eot-samples`` draws seeded from ``key``; before the
        model was looked at, one draw seeded from ``key`` (so that first pass leaves the
        caller's torch generator alone, whatever the model turns out to be)."""
        if self._randomised is False:
            return self.model
        from .models.randomised import Expectation

        return Expectation(self.model, self.spec.eot_samples if self._randomised else 1, key)

    def _correct(self, x: "torch.Tensor", y: "torch.Tensor",
                 key: tuple[Any, ...]) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """Whether the model classifies each row of ``x`` right: one forward, or for a
        randomised model right in all its draws (seeded from ``key``, with how many)."""
        if not self.randomised():
            return self.model.scores(x).argmax(1).to(y.device) == y, None
        from .models.randomised import correct_in_draws

        return correct_in_draws(self.model, x, y, self.spec.eot_samples, key)

    def _tally_draws(self, gate: GateRun, draws: "torch.Tensor | None") -> None:
        """A randomised model's mean over draws, as counts that add up across batches and
        shards: correct (sample, draw) pairs and evaluations."""
        if draws is None:
            return
        for name, value in (("eot_correct_draws", int(draws.sum())),
                            ("eot_evaluations", int(draws.numel()) * self.spec.eot_samples)):
            gate.stats[name] = gate.stats.get(name, 0) + value

    def _draws_fingerprint(self) -> dict[str, Any]:
        """What a randomised model's figures also depend on: its draws are seeded per batch."""
        if not self.randomised():
            return {}
        return {"randomised": {"eot-samples": self.spec.eot_samples,
                               "batch-size": self.spec.batch_size, "seed": self.spec.seed}}

    # -- the masking probe (diagnostics.py judges its counts) -------------------------------
    def _probe(self, gate: GateRun, batch: Any, keep: "torch.Tensor | None", shared: Shared,
               adv_ok: "torch.Tensor") -> None:
        """Cross-check a per-sample gradient gate with a black-box attack: a square attack of
        at most ``masking-probe-queries`` queries at the gate's eps, on
        ``masking-probe-samples`` of the samples the gate evaluates (:meth:`_probe_members`),
        paired with the gate's own outcome on each. Counts go into the gate's statistics
        (``probe_*``, summed over batches and shards) for the judge's paired test. A
        sample's probe outcome depends only on the seed, the model, eps and the sample, so
        the gradient gates of one eps share it (computed once per batch)."""
        from .config import masking_probe

        settings = masking_probe(self.spec, gate.check) if gate.attack.cross_checked else None
        if settings is None or gate.error is not None:
            return
        import torch

        samples, queries = settings
        members = self._probe_members(gate, batch, keep, samples)
        if not bool(members.any()):
            return
        gate_ok = torch.zeros_like(members)
        if keep is None:
            gate_ok[:] = adv_ok.to(members.device)
        else:
            gate_ok[keep.to(members.device)] = adv_ok.to(members.device)
        rows = members & shared.clean_ok.to(members.device)
        try:
            probe_ok, spent = self._probe_outcome(gate, batch, shared, rows, queries)
        except Exception as exc:  # noqa: BLE001 - the probe errors its own gate only
            gate.error = self._attack_error(gate, exc) if isinstance(exc, AdvRobustError) else AttackError(
                f"the masking probe of {gate.check.attack} at eps={format_eps(gate.eps)} (a square "
                f"attack) raised {type(exc).__name__}: {exc} (at {_raised_at(exc)}). Set "
                "masking-probe = false in the check to gate without it, and please report it.",
                where=self.spec.name)
            return
        counts = {"probe_samples": members, "probe_correct": rows & probe_ok,
                  "probe_gate_correct": members & gate_ok,
                  "probe_fooled_only": rows & ~probe_ok & gate_ok,
                  "probe_gate_only": rows & probe_ok & ~gate_ok}
        for name, mask in counts.items():
            gate.stats[name] = gate.stats.get(name, 0) + int(mask.sum())
        gate.stats["probe_queries"] = gate.stats.get("probe_queries", 0) + spent

    def _probe_members(self, gate: GateRun, batch: Any, keep: "torch.Tensor | None",
                       samples: int) -> "torch.Tensor":
        """The rows of ``batch`` in the probe's subsample. On data read as arrays: the first
        ``samples`` of the samples the gate evaluates, in the order keyed by the seed and
        the model (``randomness.sample_order``): a uniformly random subsample, the same at
        every eps, batch size and shard, and the first ``samples`` a gate that decides early
        measures (its pass reads that order), so the judge can take the probe's test at an
        early stop exactly as on all the data. On a stream of batches: the first
        ``samples`` the gate evaluates in the stream's order, by position, so every shard
        probes the same ones."""
        import numpy as np
        import torch

        positions = batch.positions()
        kept = np.ones(len(positions), dtype=bool) if keep is None else keep.cpu().numpy()
        total = self.data.size
        if total:
            member = kept & np.isin(positions, self._probe_set(gate, samples, total))
        else:  # the gate evaluates positions [skip, cap) in order: its first ones
            member = kept & (positions < gate.skip + samples)
        return torch.from_numpy(member).to(batch.y.device)

    def _probe_set(self, gate: GateRun, samples: int, total: int) -> "np.ndarray":
        """The positions the probe attacks for ``gate`` on data of ``total`` samples."""
        import numpy as np

        from .randomness import sample_order

        slot = (gate.skip, gate.cap, samples, total)
        if slot not in self._probe_sets:
            order = sample_order(self.spec.seed, self.spec.name, total)
            evaluated = order[(order >= gate.skip) & (order < (gate.cap if gate.cap is not None else total))]
            self._probe_sets[slot] = np.sort(evaluated[:samples])
        return self._probe_sets[slot]

    def _probe_outcome(self, gate: GateRun, batch: Any, shared: Shared, rows: "torch.Tensor",
                       queries: int) -> tuple["torch.Tensor", int]:
        """Per row of ``batch``: whether it stays correct under the probe (rows outside
        ``rows`` are not attacked and read True), and the forward passes of one sample the
        probe took (its queries and the evaluation, times the draws of a randomised model)."""
        import torch

        from .attacks.square import square_linf
        from .randomness import SampleRandom, sample_key

        slot = (batch.offset, gate.eps, queries, rows.cpu().numpy().tobytes())
        if slot in self._probed:
            return self._probed[slot]
        if any(other[0] != batch.offset for other in self._probed):
            self._probed.clear()  # an earlier batch's
        ok = torch.ones_like(rows)
        spent = 0
        index = rows.nonzero().squeeze(1)
        if len(index):
            key = (*sample_key(self.spec.seed, self.spec.name, -1, gate.eps), PROBE_STREAM)
            positions = batch.positions()
            x, y = batch.x[index.to(batch.x.device)], batch.y[index.to(batch.y.device)]
            stats: dict[str, Any] = {}
            adversarial = square_linf(self._drawn((*key, "attack", batch.offset)), x, y, gate.eps,
                                      SampleRandom(key, positions[index.cpu().numpy()]),
                                      scores=shared.scores[index.to(shared.scores.device)],
                                      stats=stats, queries=queries)
            adversarial = _project(adversarial, x, gate.eps, self.model.input_range, self.spec,
                                   gate.request)
            correct, _ = self._correct(adversarial, y, (*key, "eval", batch.offset))
            ok[index] = correct.to(ok.device)
            draws = self.spec.eot_samples if self.randomised() else 1
            spent = (int(stats.get("queries", 0)) + len(index)) * draws
        self._probed[slot] = (ok, spent)
        return ok, spent


#: tag of the masking probe's position-keyed draws (its square attack)
PROBE_STREAM = 2
#: rows of the first batch scored twice to tell whether a model is randomised
DETECT_ROWS = 32


def _positions(batch: Any, keep: "torch.Tensor | None") -> "torch.Tensor":
    """Each kept row's position in the data stream (whatever the batch size or shard)."""
    import torch

    positions = torch.from_numpy(batch.positions()).to(batch.y.device)
    return positions if keep is None else positions[keep.to(positions.device)]


def _stage_samples(stage: int) -> int:
    from .gate import stage_samples

    return stage_samples(stage)


def _next_stage_end(position: int) -> int:
    """The end of the decide-early stage that ``position`` (a sample of the pass) lies in."""
    stage = 1
    while _stage_samples(stage) <= position:
        stage += 1
    return _stage_samples(stage)


def _raised_at(exc: BaseException) -> str:
    """``file:line`` of the innermost frame that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "unknown"


def _count_classes(counts: dict[int, list[int]], y: "torch.Tensor", clean_ok: "torch.Tensor",
                   adv_ok: "torch.Tensor") -> None:
    """Add a batch to the per-label counts ``[samples, clean correct, correct under attack]``."""
    import torch

    if not len(y):
        return
    size = int(y.max()) + 1
    tallies = torch.stack([torch.bincount(y, minlength=size),
                           torch.bincount(y[clean_ok.to(y.device)], minlength=size),
                           torch.bincount(y[adv_ok.to(y.device)], minlength=size)])
    for label, (n, clean, correct) in enumerate(tallies.T.tolist()):
        if n:
            row = counts.setdefault(label, [0, 0, 0])
            row[0], row[1], row[2] = row[0] + n, row[1] + clean, row[2] + correct


def _stacked(examples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The kept examples as one record: sample indices, labels and predictions (lists) and
    the clean and attacked inputs (stacked tensors); None when there are none."""
    if not examples:
        return None
    import torch

    out: dict[str, Any] = {key: [e[key] for e in examples] for key in ("index", "label", "clean", "adversarial")}
    out["x"] = torch.stack([e["x"] for e in examples])
    out["adv"] = torch.stack([e["adv"] for e in examples])
    return out


def _gate_names(gates: Sequence[Request]) -> str:
    """``clean, fgsm 0.02/0.05, pgd 0.05``: the gates of a pass, in words, for progress."""
    by_attack: dict[str, list[str]] = {}
    for r in gates:
        eps = by_attack.setdefault(r.check.attack, [])
        if r.check.attack != "clean" and f"{r.eps:g}" not in eps:
            eps.append(f"{r.eps:g}")
    return ", ".join(f"{attack} {'/'.join(eps)}" if eps else attack for attack, eps in by_attack.items())


def _no_gradient(spec: ModelSpec, r: Request, model: "Classifier",
                 exc: AttackError | None = None) -> AttackError:
    """A gradient attack on a model without a usable gradient: the reason, and what works."""
    reason = model.gradient_error or (str(exc) if exc is not None else "no input gradient")
    if "transfer" not in reason:
        reason += (" Attacks that need no gradient of this model: noise, transfer (from a "
                   "differentiable surrogate), square and spsa (score-based; square is the stronger), "
                   "and strongest (runs square on such a model).")
    return AttackError(f"{r.check.attack} needs input gradients, which this model cannot give: "
                       f"{reason}", where=spec.name)


def _model_notes(model: Any, gradient: bool) -> list[str]:
    """How the model was run, for a gate's details (fixed batch, binary head, a
    straight-through gradient); a hook's own classifier may not say."""
    notes = getattr(model, "notes", None)
    return list(notes(gradient=gradient)) if callable(notes) else []


def _project(adversarial: Any, x: "torch.Tensor", eps: float | None, bounds: tuple[float, float],
             spec: ModelSpec, r: Request) -> "torch.Tensor":
    """Keep any attack honest: inside the L-inf ball of radius eps, inside input-range."""
    import torch

    if not isinstance(adversarial, torch.Tensor) or adversarial.shape != x.shape:
        raise AttackError(f"attack {r.check.attack!r} returned "
                          f"{getattr(adversarial, 'shape', type(adversarial).__name__)}; it must "
                          f"return a tensor shaped like its input {tuple(x.shape)}.",
                          where=spec.name)
    adversarial = adversarial.to(device=x.device, dtype=x.dtype)
    if eps is None:
        return adversarial.clamp(*bounds)
    # min(max(adv, x - eps), x + eps): exactly ``adv`` where it is inside the ball, and no
    # reduction or host sync per eps; the clip to input-range reuses the same buffer
    projected = torch.sub(x, eps)
    torch.maximum(adversarial, projected, out=projected)
    torch.minimum(projected, torch.add(x, eps), out=projected)
    return projected.clamp_(*bounds)


def _check_labels(y: "torch.Tensor", classes: int | None, data: "EvalData", offset: int) -> None:
    if classes is None:
        return
    if int(y.max()) >= classes:
        raise DataError(f"a label is {int(y.max())} (batch starting at sample {offset}) but the "
                        f"model scores {classes} classes, so labels must lie in 0..{classes - 1}. "
                        "Check that the labels match the model's class order.", where=data.where)


