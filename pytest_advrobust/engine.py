"""Runs checks in batches: the only place that loops over data.

For one model, every pending (check, eps) is computed in a single streamed pass: per batch
one forward (or one forward + backward when a gradient attack is pending, which also
yields the clean scores) and one forward per attacked variant. Classifiers, data handles
and results are cached for the session, so no work is done twice.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from .attacks import AttackRegistry, call_attack
from .config import CheckSpec, ModelSpec
from .errors import AdvRobustError, AttackError, DataError, ScoresNotFinite
from .fingerprint import fingerprint
from .gate import baseline_figure, judge, partial_message
from .results import AttackResult, format_eps

if TYPE_CHECKING:  # numpy, torch and the data module load when a gate runs, not at start-up
    import numpy as np
    import torch

    from .data import EvalData
    from .models.base import Classifier
    from .randomness import SampleRandom

__all__ = ["Engine", "ModelPass", "Request"]


@dataclass(frozen=True)
class Request:
    """One gate to compute: a check of a model at one eps."""

    check: CheckSpec
    eps: float

    @property
    def key(self) -> tuple[int, float]:
        return (self.check.index, self.eps)


class Engine:
    """Session-wide cache of classifiers, data and results."""

    def __init__(self, registry: AttackRegistry, *, load_model: Callable[[ModelSpec], "Classifier"],
                 artifacts: Path, on_result: Callable[[AttackResult], None] | None = None,
                 baseline: Mapping[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None,
                 specs: Callable[[str], ModelSpec] | None = None,
                 load_data: Callable[[ModelSpec], Any] | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        self.registry = registry
        #: ``(k, n)``: gates are measured on shard k of n of every model's evaluation data
        #: and come out partial (no verdict); hand-written probes still see all the data
        self.shard = shard
        self._specs = specs  # name -> ModelSpec, for attacks that use other models (transfer)
        self.artifacts = artifacts
        self._load_model = load_model
        self._load_data = load_data
        self._on_result = on_result
        self._progress = progress
        self.baseline = dict(baseline or {})
        self._classifiers: dict[str, Any] = {}
        self._data: dict[str, "EvalData"] = {}
        self._results: dict[tuple[str, tuple[int, float]], AttackResult | AdvRobustError] = {}
        self.results: list[AttackResult] = []

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

    def result(self, spec: ModelSpec, request: Request,
               batch_with: Sequence[Request] = (), *, gate: bool = True) -> AttackResult:
        """The result of ``request``, computing it (and ``batch_with``, in the same pass
        over the data) unless it is cached. Only gates (not a fixture's ad-hoc calls) go
        into :attr:`results` and the result hook."""
        slot = (spec.name, request.key)
        if slot not in self._results:
            todo = [request] + [r for r in batch_with if (spec.name, r.key) not in self._results
                                and r.key != request.key]
            self._run(spec, todo, gate=gate)
        cached = self._results[slot]
        if isinstance(cached, AdvRobustError):
            raise cached
        return cached

    # -- the pass -------------------------------------------------------------------------
    def _run(self, spec: ModelSpec, todo: list[Request], *, gate: bool = True) -> None:
        started = time.perf_counter()
        try:
            outcomes = self._evaluate(spec, todo, shard=self.shard if gate else None)
        except AdvRobustError as exc:  # model or data problem: every gate of the pass says so
            outcomes = {request.key: exc for request in todo}
        seconds = (time.perf_counter() - started) / max(1, len(todo))
        for request in todo:
            outcome = outcomes[request.key]
            if isinstance(outcome, AttackResult):
                outcome.seconds = seconds
                if outcome.shard is not None:  # partial: judged once the shards are merged
                    outcome.passed, outcome.message = None, partial_message(outcome)
                else:
                    outcome.baseline_accuracy = baseline_figure(self.baseline.get(outcome.key), outcome)
                    verdict = judge(outcome)
                    outcome.passed, outcome.message = verdict.passed, verdict.message
                if gate:
                    self._publish(outcome)
            elif gate:
                self.record_error(spec, request, outcome)
            self._results[(spec.name, request.key)] = outcome

    def record_error(self, spec: ModelSpec, request: Request, error: BaseException) -> AttackResult:
        """A gate that could not be computed still counts: an ``error`` result (no figures)
        goes into :attr:`results` and the result hook, so no report can leave it out."""
        uses_eps = request.check.attack not in self.registry or self.registry[request.check.attack].uses_eps
        kind = error.kind if isinstance(error, AdvRobustError) else type(error).__name__
        result = AttackResult(
            model=spec.name, attack=request.check.attack, eps=request.eps if uses_eps else None,
            correct=0, clean_correct=0, n=0, min_accuracy=request.check.min_accuracy,
            max_drop=request.check.max_drop, passed=False, check=request.check.index,
            options=dict(request.check.options), report_only=request.check.report_only,
            error=f"{kind}: {error}", message=f"{kind}: {error}")
        if all(r.key != result.key for r in self.results):
            self._publish(result)
        return result

    def _publish(self, result: AttackResult) -> None:
        self.results.append(result)
        if self._on_result is not None:
            self._on_result(result)

    def _evaluate(self, spec: ModelSpec, todo: list[Request],
                  shard: tuple[int, int] | None = None) -> dict[tuple[int, float], Any]:
        """One streamed pass over ``spec``'s data computing every gate of ``todo``: the
        steps of :class:`ModelPass`, in order."""
        run = ModelPass(self, spec, todo, shard=shard)
        with run.model.session():
            run.fit()
            for batch in run.batches():
                shared = run.shared(batch)
                for request in run.live():
                    run.attack(request, batch, shared)
        return run.outcomes()

    def _surrogates(self, spec: ModelSpec, r: Request, model: "Classifier") -> list["Classifier"]:
        """The classifiers a check's ``surrogate`` option names, loaded through the cache."""
        names = r.check.option("surrogate")
        names = (names,) if isinstance(names, str) else tuple(names or ())
        if not names or self._specs is None:
            raise AttackError(f"{r.check.attack} needs surrogate = \"NAME\" (another model of "
                              "the config) to craft its inputs on.", where=spec.name)
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

    def _save_state(self, spec: ModelSpec, r: Request, state: Any) -> list[Path]:
        """A fitted perturbation is saved so a person can look at it (.npy, and a PNG)."""
        if not hasattr(state, "detach"):
            return []
        from .report.artifacts import save_perturbation

        stem = f"{spec.name}-{r.check.attack}-eps{format_eps(r.eps)}"
        sharing = [c for c in spec.checks if c.attack == r.check.attack and r.eps in c.eps]
        if sharing != [r.check]:  # another check (or a fixture call) fits at this eps too
            stem += f"-check{r.check.index}"
        title = f"{r.check.attack} perturbation, eps={format_eps(r.eps)}, {spec.name}"
        if self.registry[r.check.attack].folds_key:  # cross-fitted: one file per fold's state
            return [path for j, fold in enumerate(state.detach().cpu().numpy())
                    for path in save_perturbation(fold, self.artifacts / r.check.attack, f"{stem}-fold{j + 1}",
                                                  title=f"{title}, fold {j + 1}")]
        return save_perturbation(state.detach().cpu().numpy(), self.artifacts / r.check.attack, stem,
                                 title=title)

    def _report_progress(self, spec: ModelSpec, offset: int, what: str = "",
                         gates: Sequence[Request] = (), total: int | None = None) -> None:
        """One progress line: the model, the gates this pass computes, and where it is."""
        if self._progress is not None:
            total = total if total is not None else spec.max_samples
            batch = f"batch {offset // spec.batch_size + 1}"
            if total:
                batch += f"/{-(-total // spec.batch_size)}"
            gates_text = f"; gates: {_gate_names(gates)}" if gates else ""
            self._progress(f"{spec.name}: {what or f'{batch} (from sample {offset})'}{gates_text}")


@dataclass
class Tally:
    """What one gate has counted so far in a pass: samples correct under attack, correct
    clean, evaluated, and the attack's own statistics."""

    correct: int = 0
    clean_correct: int = 0
    n: int = 0
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Shared:
    """What every gate of a batch shares: the clean scores, which samples they classify
    right, and the loss gradient at the inputs when a gradient attack is pending."""

    scores: "torch.Tensor"
    clean_ok: "torch.Tensor"
    grad: "torch.Tensor | None" = None


class ModelPass:
    """One model's streamed pass over its data, computing every pending gate at once.

    The steps, in the order :meth:`Engine._evaluate` runs them, each readable and testable
    alone: plan (``__init__``: the model, data and attacks, and the gates that cannot run),
    :meth:`fit` (attacks that learn a perturbation first), per batch :meth:`shared` (the one
    forward, or forward + backward, that every gate reuses) and :meth:`attack` (one gate on
    one batch), then :meth:`outcomes` (results and errors). A gate's error is recorded in
    :attr:`errors` and the gate is left out of later steps.
    """

    def __init__(self, engine: Engine, spec: ModelSpec, todo: Sequence[Request],
                 shard: tuple[int, int] | None = None) -> None:
        from .data import Census

        self.engine = engine
        #: ``(k, n)``: evaluate only the k-th of every n batches (the fit split is read whole)
        self.shard = shard
        #: what the pass saw of the whole stream (other shards' samples included)
        self.census = Census()
        self.spec = spec
        self.todo = list(todo)
        self.model = engine.classifier(spec)
        self.data = engine.data(spec)
        self.attacks = {r.key: engine.registry[r.check.attack] for r in self.todo}
        self.errors: dict[tuple[int, float], AdvRobustError] = {}
        for r in self.todo:
            if self.attacks[r.key].needs_gradient and self.model.gradient_error:
                self.errors[r.key] = _no_gradient(spec, r, self.model)
        from .randomness import sample_key

        self.keys = {r.key: sample_key(spec.seed, spec.name, r.check.index, r.eps) for r in self.todo}
        self.tallies = {r.key: Tally() for r in self.todo}
        #: fitted state per gate (a universal perturbation), and the files it was saved to
        self.states: dict[tuple[int, float], Any] = {}
        self.saved: dict[tuple[int, float], list[Path]] = {}
        #: why a fitted perturbation could not be saved (said in the gate's details)
        self.unsaved: dict[tuple[int, float], str] = {}
        #: samples [0, fit size) of a fitted gate are its fit split, never evaluated
        self.fit_sizes: dict[tuple[int, float], int] = {}
        #: masking diagnostic: per gradient gate, correctly classified samples whose
        #: cross-entropy gradient is exactly zero (see :meth:`_count_zero_gradients`)
        self.zero_gradients: dict[tuple[int, float], int] = {}
        self._zero_rows: tuple[Any, Any] = (None, None)
        self.limits = {r.key: int(r.check.option(self.attacks[r.key].samples_key,
                                                 self.attacks[r.key].options.get(self.attacks[r.key].samples_key)))
                       for r in self.todo if self.attacks[r.key].samples_key}

    # -- steps ----------------------------------------------------------------------------
    def live(self) -> list[Request]:
        """The gates still running (not errored)."""
        return [r for r in self.todo if r.key not in self.errors]

    def rng(self, r: Request, batch: Any = None,
            keep: "torch.Tensor | None" = None) -> "SampleRandom | np.random.Generator":
        """What gate ``r`` draws from: on ``batch`` (its rows ``keep``), a
        :class:`~pytest_advrobust.randomness.SampleRandom` whose per-row draws come from each
        sample's own stream, keyed by its position; without a batch (fitting), the fit's
        stream. Results so depend neither on the batch size nor on sharding."""
        from .randomness import SampleRandom, fit_generator

        if batch is None:
            return fit_generator(self.keys[r.key])
        import numpy as np

        positions = np.arange(batch.offset, batch.offset + len(batch.y), dtype=np.int64)
        if keep is not None:
            positions = positions[keep.cpu().numpy()]
        return SampleRandom(self.keys[r.key], positions)

    def fit(self) -> None:
        """Fit the attacks that learn a perturbation, on the first ``fit-samples`` samples."""
        import torch

        spec, model = self.spec, self.model
        fitting = [r for r in self.live() if self.attacks[r.key].fit is not None]
        if not fitting:
            return
        for r in fitting:
            attack = self.attacks[r.key]
            self.fit_sizes[r.key] = int(r.check.option("fit-samples", attack.options.get("fit-samples", 256)))
        batches = list(self.data.batches(spec.batch_size, model.dtype,
                                         stop=max(self.fit_sizes.values()) + 1))
        fit_x = torch.cat([b.x for b in batches])
        fit_y = torch.cat([b.y for b in batches])
        if model.num_classes is None:
            model.scores(batches[0].x)
        _check_labels(fit_y, model.num_classes, self.data, 0)
        for r in fitting:
            if len(fit_y) <= self.fit_sizes[r.key] and self.attacks[r.key].folds_key:
                self.fit_sizes[r.key] = len(fit_y)  # cross-fitted: every sample is evaluated
            elif len(fit_y) <= self.fit_sizes[r.key]:
                self.errors[r.key] = DataError(
                    f"{r.check.attack} fits its perturbation on the first fit-samples = "
                    f"{self.fit_sizes[r.key]} samples and evaluates on the rest, but the data has "
                    f"only {len(fit_y)}. Lower fit-samples in this check or give more data.",
                    where=spec.key("data"))
        for r in [r for r in fitting if r.key not in self.errors]:
            n = self.fit_sizes[r.key]
            self.engine._report_progress(spec, 0, f"fitting {r.check.attack} eps={format_eps(r.eps)}",
                                         gates=[r])
            available = {
                "model": lambda: model, "x": lambda: fit_x[:n], "y": lambda: fit_y[:n],
                "eps": lambda: r.eps, "rng": lambda: self.rng(r),
                "batch_size": lambda: spec.batch_size, "positions": lambda: torch.arange(n),
                "progress": lambda r=r: lambda text: self.engine._report_progress(
                    spec, 0, f"fitting {r.check.attack} eps={r.eps:g}: {text}"),
            }
            attack = self.attacks[r.key]
            try:
                state = call_attack(attack.fit_function(), available, attack.with_defaults(r.check.options))
            except Exception as exc:  # noqa: BLE001 - a failed fit errors its own gate only
                self.errors[r.key] = self._attack_error(r, exc)
                continue
            self.states[r.key] = state
            try:
                self.saved[r.key] = self.engine._save_state(spec, r, state)
            except Exception as exc:  # noqa: BLE001 - the gate's figures stand; the file is said missing
                self.saved[r.key] = []
                self.unsaved[r.key] = (f"fitted perturbation not saved ({type(exc).__name__}: "
                                       f"{exc})")

    def batches(self) -> Iterator[Any]:
        """The evaluation batches, on the model's device (they are made on the CPU). The
        whole stream, other shards' batches included, is counted and hashed on the way
        (:attr:`census`, :meth:`data_digest`), for the merge and the baseline's fingerprint."""
        for batch in self.data.batches(self.spec.batch_size, self.model.dtype, shard=self.shard,
                                       census=self.census):
            self.engine._report_progress(self.spec, batch.offset, gates=self.live(),
                                         total=self.data.size)
            yield replace(batch, x=batch.x.to(self.model.device, non_blocking=True),
                          y=batch.y.to(self.model.device, non_blocking=True))

    def data_digest(self) -> str:
        """A hash of every input and label of the stream (all shards'), whatever the batch
        size: the data part of a result's fingerprint."""
        return self.census.digest()

    def shared(self, batch: Any) -> Shared:
        """The batch's one forward pass (forward + backward when a live gate takes the
        gradient, which gives the clean scores too); a gradient that fails errors only the
        gates that wanted it."""
        wanting = [r for r in self.live() if self.attacks[r.key].wants("grad")]
        grad = None
        if wanting:
            try:
                grad, scores = self.model.loss_gradient(batch.x, batch.y)
            except DataError as exc:  # labels the model cannot score
                raise DataError(str(exc), where=exc.where or self.data.where) from None
            except AttackError as exc:
                for r in wanting:
                    self.errors[r.key] = _no_gradient(self.spec, r, self.model, exc)
                scores = self.model.scores(batch.x)
        else:
            scores = self.model.scores(batch.x)
        _check_labels(batch.y, self.model.num_classes, self.data, batch.offset)
        return Shared(scores=scores, clean_ok=scores.argmax(1).to(batch.y.device) == batch.y, grad=grad)

    def selection(self, r: Request, batch: Any) -> "torch.Tensor | None":
        """Which samples of ``batch`` gate ``r`` evaluates: None for all, else a mask (past
        its fit split, within its samples cap), possibly empty."""
        if (r.key not in self.fit_sizes or self.attacks[r.key].folds_key) and r.key not in self.limits:
            return None
        import torch

        index = torch.arange(batch.offset, batch.offset + len(batch.y), device=batch.y.device)
        first = 0 if self.attacks[r.key].folds_key else self.fit_sizes.get(r.key, 0)
        return (index >= first) & (index < self.limits.get(r.key, index[-1] + 1))

    def attack(self, r: Request, batch: Any, shared: Shared) -> None:
        """Gate ``r`` on one batch: attack the selected samples and count them."""
        keep = self.selection(r, batch)
        if keep is not None and not keep.any():
            return
        try:
            adv_ok = self._attacked(r, batch, keep, shared)
        except Exception as exc:  # noqa: BLE001 - whatever one attack raises errors that gate only
            self.errors[r.key] = self._attack_error(r, exc)
            return
        ok = shared.clean_ok if keep is None else shared.clean_ok[keep]
        tally = self.tallies[r.key]
        tally.correct += int(adv_ok.sum())
        tally.clean_correct += int(ok.sum())
        tally.n += int(ok.numel())
        if self.attacks[r.key].folds_key:  # cross-fitted: each fold's own figure too
            from .attacks import fold_of

            folds = int(r.check.option(self.attacks[r.key].folds_key, self.attacks[r.key].options.get(
                self.attacks[r.key].folds_key)))
            fold = fold_of(_positions(batch, keep).to(adv_ok.device), folds)
            for j in range(folds):
                tally.stats[f"fold{j + 1}_correct"] = tally.stats.get(f"fold{j + 1}_correct", 0) + \
                    int(adv_ok[fold == j].sum())
                tally.stats[f"fold{j + 1}_n"] = tally.stats.get(f"fold{j + 1}_n", 0) + int((fold == j).sum())
        self._count_zero_gradients(r, keep, shared)

    def outcomes(self) -> dict[tuple[int, float], Any]:
        """Each gate's :class:`AttackResult`, or the error that stopped it."""
        outcomes: dict[tuple[int, float], Any] = dict(self.errors)
        for r in self.live():
            attack, tally = self.attacks[r.key], self.tallies[r.key]
            if tally.n == 0 and self.shard is None:
                why = (f"the fit split takes all {self.fit_sizes[r.key]} samples. Lower fit-samples "
                       "or give more data." if r.key in self.fit_sizes else
                       f"{attack.samples_key} = 0 selects none. Raise it.")
                outcomes[r.key] = DataError(f"{r.check.attack} has no samples to evaluate: {why}",
                                            where=self.spec.key("data"))
                continue
            eps = r.eps if attack.uses_eps else None
            describe = attack.describe_function()
            outcomes[r.key] = AttackResult(
                model=self.spec.name, attack=r.check.attack, eps=eps,
                correct=tally.correct, clean_correct=tally.clean_correct, n=tally.n,
                min_accuracy=r.check.min_accuracy, max_drop=r.check.max_drop,
                max_regression=r.check.max_regression if r.check.max_regression is not None
                else self.spec.max_regression,
                check=r.check.index, options=dict(r.check.options), stats=tally.stats,
                report_only=r.check.report_only,
                artifacts=[str(p) for p in self.saved.get(r.key, [])],
                fingerprint=fingerprint(self.spec, r.check, eps, tally.n, attack, self.data_digest()),
                details="; ".join(filter(None, [
                    describe(tally.stats) if describe is not None else "",
                    *_model_notes(self.model, attack.needs_gradient),
                    self.unsaved.get(r.key, "")])),
                shard=None if self.shard is None else self._shard_record(r),
            )
        self._diagnose(outcomes)
        return outcomes

    # -- helpers --------------------------------------------------------------------------
    def _shard_record(self, r: Request) -> dict[str, Any]:
        """What a shard result carries so the merge can check that shards fit together: the
        shard, the stream it read (sample count, label digest) and a fitted state's digest."""
        record: dict[str, Any] = {"index": self.shard[0], "count": self.shard[1],
                                  **self.census.summary()}
        state = self.states.get(r.key)
        if hasattr(state, "detach"):

            data = state.detach().cpu().contiguous().numpy().tobytes()
            record["fit"] = "sha256:" + hashlib.sha256(data).hexdigest()[:16]
        return record

    def _count_zero_gradients(self, r: Request, keep: "torch.Tensor | None", shared: Shared) -> None:
        """Masking diagnostic, free: of gate ``r``'s correctly classified samples in this
        batch, how many have an input gradient (the shared cross-entropy one) of exactly 0."""
        if shared.grad is None or not self.attacks[r.key].needs_gradient:
            return
        if self._zero_rows[0] is not shared:  # once per batch, for every gate
            flat = shared.grad.reshape(len(shared.grad), -1)
            self._zero_rows = (shared, ~flat.ne(0).any(1).to(shared.clean_ok.device) & shared.clean_ok)
        zero = self._zero_rows[1] if keep is None else self._zero_rows[1][keep.to(shared.clean_ok.device)]
        self.zero_gradients[r.key] = self.zero_gradients.get(r.key, 0) + int(zero.sum())

    def _diagnose(self, outcomes: dict[tuple[int, float], Any]) -> None:
        """Fill each result's ``diagnostics`` (see :mod:`pytest_advrobust.diagnostics`): its
        own zero-gradient figures, and the cross-gate checks that need all of a model's
        results (a gradient attack weaker than ``noise``, accuracy rising with eps)."""
        from .diagnostics import diagnose

        results = {r.key: outcomes[r.key] for r in self.todo if isinstance(outcomes.get(r.key), AttackResult)}
        requests = {r.key: r for r in self.todo if r.key in results}
        for key, result in results.items():
            r, attack = requests[key], self.attacks[key]
            loss = attack.with_defaults(r.check.options).get("loss", "ce")
            inputs = {"needs_gradient": attack.needs_gradient,
                      "zero_gradient": self.zero_gradients.get(key) if attack.needs_gradient else None,
                      "loss": loss if isinstance(loss, str) else "ce",
                      "allow_masking": r.check.allow_masking}
            result.diagnostics = diagnose(result, list(results.values()), **inputs)
            if self.shard is not None:  # the merge diagnoses the summed counts again
                result.diagnostics["inputs"] = inputs

    def _attacked(self, r: Request, batch: Any, keep: "torch.Tensor | None",
                  shared: Shared) -> "torch.Tensor":
        """Correctness of the model on the attacked batch (a bool per kept sample)."""
        model, attack = self.model, self.attacks[r.key]
        x, y, grad, scores, clean_ok = batch.x, batch.y, shared.grad, shared.scores, shared.clean_ok
        if keep is not None:
            x, y, clean_ok = x[keep], y[keep], clean_ok[keep]
            grad = None if grad is None else grad[keep.to(grad.device)]
            scores = scores[keep.to(scores.device)]
        available = {
            "model": lambda: model, "x": lambda: x, "y": lambda: y, "eps": lambda: r.eps,
            "rng": lambda: self.rng(r, batch, keep), "grad": lambda: grad, "scores": lambda: scores,
            "stats": lambda: self.tallies[r.key].stats, "state": lambda: self.states.get(r.key),
            "surrogates": lambda: self.engine._surrogates(self.spec, r, model),
            "positions": lambda: _positions(batch, keep),
        }
        adversarial = call_attack(attack.perturb_function(), available,
                                  attack.with_defaults(r.check.options))
        if adversarial is x:  # the attack left the inputs alone (clean)
            return clean_ok
        adversarial = _project(adversarial, x, r.eps if attack.uses_eps else None, model.input_range,
                               self.spec, r)
        return model.scores(adversarial).argmax(1).to(y.device) == y

    def _attack_error(self, r: Request, exc: BaseException) -> AdvRobustError:
        """What one gate's failure says: "no usable gradient" when that is the cause, NaN
        scores on perturbed inputs as such (the clean scores were finite), a surrogate's or
        an attack's own error as it is, anything else with its type and where it was raised."""
        attack = self.attacks[r.key]
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


def _positions(batch: Any, keep: "torch.Tensor | None") -> "torch.Tensor":
    """Each kept row's position in the data stream (whatever the batch size or shard)."""
    import torch

    positions = torch.arange(batch.offset, batch.offset + len(batch.y), device=batch.y.device)
    return positions if keep is None else positions[keep.to(positions.device)]


def _raised_at(exc: BaseException) -> str:
    """``file:line`` of the innermost frame that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "unknown"


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


def _check_labels(y: "torch.Tensor", classes: int | None, data: EvalData, offset: int) -> None:
    if classes is None:
        return
    if int(y.max()) >= classes:
        raise DataError(f"a label is {int(y.max())} (batch starting at sample {offset}) but the "
                        f"model scores {classes} classes, so labels must lie in 0..{classes - 1}. "
                        "Check that the labels match the model's class order.", where=data.where)


