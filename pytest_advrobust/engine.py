"""Runs checks in batches: the only place that loops over data.

For one model, every pending (check, eps) is computed in a single streamed pass: per batch
one forward (or one forward + backward when a gradient attack is pending, which also
yields the clean scores) and one forward per attacked variant. Classifiers, data handles
and results are cached for the session, so no work is done twice.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from .attacks import AttackRegistry, call_attack
from .config import CheckSpec, ModelSpec
from .errors import AdvRobustError, AttackError, DataError
from .fingerprint import fingerprint
from .gate import baseline_figure, judge
from .results import AttackResult

if TYPE_CHECKING:  # numpy, torch and the data module load when a gate runs, not at start-up
    import numpy as np
    import torch

    from .data import EvalData

    from .models.base import Classifier

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
                 load_data: Callable[[ModelSpec], Any] | None = None) -> None:
        self.registry = registry
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
            outcomes = self._evaluate(spec, todo)
        except AdvRobustError as exc:  # model or data problem: every gate of the pass says so
            for request in todo:
                self._results[(spec.name, request.key)] = exc
            return
        seconds = (time.perf_counter() - started) / max(1, len(todo))
        for request in todo:
            outcome = outcomes[request.key]
            if isinstance(outcome, AttackResult):
                outcome.seconds = seconds
                outcome.baseline_accuracy = baseline_figure(self.baseline.get(outcome.key), outcome)
                verdict = judge(outcome)
                outcome.passed, outcome.message = verdict.passed, verdict.message
                if gate:
                    self.results.append(outcome)
                    if self._on_result is not None:
                        self._on_result(outcome)
            self._results[(spec.name, request.key)] = outcome

    def _evaluate(self, spec: ModelSpec, todo: list[Request]) -> dict[tuple[int, float], Any]:
        """One streamed pass over ``spec``'s data computing every gate of ``todo``: the
        steps of :class:`ModelPass`, in order."""
        run = ModelPass(self, spec, todo)
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

        stem = f"{spec.name}-{r.check.attack}-eps{r.eps:g}"
        return save_perturbation(state.detach().cpu().numpy(), self.artifacts / r.check.attack, stem,
                                 title=f"{r.check.attack} perturbation, eps={r.eps:g}, {spec.name}")

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

    def __init__(self, engine: Engine, spec: ModelSpec, todo: Sequence[Request]) -> None:
        self.engine = engine
        self.spec = spec
        self.todo = list(todo)
        self.model = engine.classifier(spec)
        self.data = engine.data(spec)
        self.attacks = {r.key: engine.registry[r.check.attack] for r in self.todo}
        self.errors: dict[tuple[int, float], AdvRobustError] = {}
        for r in self.todo:
            if self.attacks[r.key].needs_gradient and self.model.gradient_error:
                self.errors[r.key] = _no_gradient(spec, r, self.model)
        self.rngs = {r.key: _rng(spec, r) for r in self.todo}
        self.tallies = {r.key: Tally() for r in self.todo}
        #: fitted state per gate (a universal perturbation), and the files it was saved to
        self.states: dict[tuple[int, float], Any] = {}
        self.saved: dict[tuple[int, float], list[Path]] = {}
        #: samples [0, fit size) of a fitted gate are its fit split, never evaluated
        self.fit_sizes: dict[tuple[int, float], int] = {}
        self.limits = {r.key: int(r.check.option(self.attacks[r.key].samples_key,
                                                 self.attacks[r.key].options.get(self.attacks[r.key].samples_key)))
                       for r in self.todo if self.attacks[r.key].samples_key}

    # -- steps ----------------------------------------------------------------------------
    def live(self) -> list[Request]:
        """The gates still running (not errored)."""
        return [r for r in self.todo if r.key not in self.errors]

    def rng(self, r: Request, batch: Any = None) -> "np.random.Generator":
        """The random stream gate ``r`` draws from (on ``batch``, when one is given)."""
        return self.rngs[r.key]

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
            if len(fit_y) <= self.fit_sizes[r.key]:
                self.errors[r.key] = DataError(
                    f"{r.check.attack} fits its perturbation on the first fit-samples = "
                    f"{self.fit_sizes[r.key]} samples and evaluates on the rest, but the data has "
                    f"only {len(fit_y)}. Lower fit-samples in this check or give more data.",
                    where=spec.key("data"))
        for r in [r for r in fitting if r.key not in self.errors]:
            n = self.fit_sizes[r.key]
            self.engine._report_progress(spec, 0, f"fitting {r.check.attack} eps={r.eps:g}", gates=[r])
            available = {
                "model": lambda: model, "x": lambda: fit_x[:n], "y": lambda: fit_y[:n],
                "eps": lambda: r.eps, "rng": lambda: self.rng(r),
                "batch_size": lambda: spec.batch_size,
            }
            attack = self.attacks[r.key]
            try:
                state = call_attack(attack.fit_function(), available, attack.with_defaults(r.check.options))
            except AttackError as exc:
                self.errors[r.key] = self._attack_error(r, exc)
                continue
            self.states[r.key] = state
            self.saved[r.key] = self.engine._save_state(spec, r, state)

    def batches(self) -> Iterator[Any]:
        """The evaluation batches, on the model's device (they are made on the CPU)."""
        for batch in self.data.batches(self.spec.batch_size, self.model.dtype):
            self.engine._report_progress(self.spec, batch.offset, gates=self.live(),
                                         total=self.data.size)
            yield replace(batch, x=batch.x.to(self.model.device, non_blocking=True),
                          y=batch.y.to(self.model.device, non_blocking=True))

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
        if r.key not in self.fit_sizes and r.key not in self.limits:
            return None
        import torch

        index = torch.arange(batch.offset, batch.offset + len(batch.y), device=batch.y.device)
        return (index >= self.fit_sizes.get(r.key, 0)) & (index < self.limits.get(r.key, index[-1] + 1))

    def attack(self, r: Request, batch: Any, shared: Shared) -> None:
        """Gate ``r`` on one batch: attack the selected samples and count them."""
        keep = self.selection(r, batch)
        if keep is not None and not keep.any():
            return
        try:
            adv_ok = self._attacked(r, batch, keep, shared)
        except AttackError as exc:
            self.errors[r.key] = self._attack_error(r, exc)
            return
        ok = shared.clean_ok if keep is None else shared.clean_ok[keep]
        tally = self.tallies[r.key]
        tally.correct += int(adv_ok.sum())
        tally.clean_correct += int(ok.sum())
        tally.n += int(ok.numel())

    def outcomes(self) -> dict[tuple[int, float], Any]:
        """Each gate's :class:`AttackResult`, or the error that stopped it."""
        outcomes: dict[tuple[int, float], Any] = dict(self.errors)
        for r in self.live():
            attack, tally = self.attacks[r.key], self.tallies[r.key]
            if tally.n == 0:
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
                artifacts=[str(p) for p in self.saved.get(r.key, [])],
                fingerprint=fingerprint(self.spec, r.check, eps, tally.n, attack),
                details=describe(tally.stats) if describe is not None else "",
            )
        return outcomes

    # -- helpers --------------------------------------------------------------------------
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
            "rng": lambda: self.rng(r, batch), "grad": lambda: grad, "scores": lambda: scores,
            "stats": lambda: self.tallies[r.key].stats, "state": lambda: self.states.get(r.key),
            "surrogates": lambda: self.engine._surrogates(self.spec, r, model),
        }
        adversarial = call_attack(attack.perturb_function(), available,
                                  attack.with_defaults(r.check.options))
        if adversarial is x:  # the attack left the inputs alone (clean)
            return clean_ok
        adversarial = _project(adversarial, x, r.eps if attack.uses_eps else None, model.input_range,
                               self.spec, r)
        return model.scores(adversarial).argmax(1).to(y.device) == y

    def _attack_error(self, r: Request, exc: AttackError) -> AttackError:
        """An attack's error, said as "no usable gradient" when that is the cause."""
        if self.model.gradient_error and self.attacks[r.key].needs_gradient:
            return _no_gradient(self.spec, r, self.model, exc)
        return exc


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
                   "differentiable surrogate) and spsa (score-based).")
    return AttackError(f"{r.check.attack} needs input gradients, which this model cannot give: "
                       f"{reason}", where=spec.name)


def _rng(spec: ModelSpec, r: Request) -> "np.random.Generator":
    """Every random draw derives from ``seed``, the model, the check and eps."""
    import numpy as np

    return np.random.default_rng([spec.seed, zlib.crc32(spec.name.encode()), r.check.index,
                                  int(round(r.eps * 1e9))])


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


