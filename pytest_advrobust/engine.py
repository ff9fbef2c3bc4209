"""Runs checks in batches: the only place that loops over data.

For one model, every pending (check, eps) is computed in a single streamed pass: per batch
one forward (or one forward + backward when a gradient attack is pending, which also
yields the clean scores) and one forward per attacked variant. Classifiers, data handles
and results are cached for the session, so no work is done twice.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

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

__all__ = ["Engine", "Request"]


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
        import torch

        model = self.classifier(spec)
        data = self.data(spec)
        attacks = {r.key: self.registry[r.check.attack] for r in todo}
        errors: dict[tuple[int, float], AdvRobustError] = {}
        for r in todo:
            if attacks[r.key].needs_gradient and model.gradient_error:
                errors[r.key] = _no_gradient(spec, r, model)
        rngs = {r.key: _rng(spec, r) for r in todo}
        with model.session():
            states, fit_sizes = self._fit(spec, model, data, todo, attacks, rngs, errors)
            limits = {r.key: int(r.check.option(attacks[r.key].samples_key,
                                                attacks[r.key].options.get(attacks[r.key].samples_key)))
                      for r in todo if attacks[r.key].samples_key}
            counts = {r.key: [0, 0, 0] for r in todo}  # correct, clean correct, n
            stats: dict[tuple[int, float], dict[str, float]] = {r.key: {} for r in todo}
            wants_grad = [r for r in todo if attacks[r.key].wants("grad")]
            for batch in data.batches(spec.batch_size, model.dtype):
                self._report_progress(spec, batch.offset)
                # batches are made on the CPU; attacks see them on the model's device
                batch = replace(batch, x=batch.x.to(model.device, non_blocking=True),
                                y=batch.y.to(model.device, non_blocking=True))
                live_grad = [r for r in wants_grad if r.key not in errors]
                grad = None
                if live_grad:
                    try:
                        grad, scores = model.loss_gradient(batch.x, batch.y)
                    except DataError as exc:  # labels the model cannot score
                        raise DataError(str(exc), where=exc.where or data.where) from None
                    except AttackError as exc:
                        for r in live_grad:
                            errors[r.key] = _no_gradient(spec, r, model, exc)
                        scores = model.scores(batch.x)
                else:
                    scores = model.scores(batch.x)
                _check_labels(batch.y, model.num_classes, data, batch.offset)
                clean_ok = scores.argmax(1).to(batch.y.device) == batch.y
                for r in todo:
                    if r.key in errors:
                        continue
                    keep = None
                    if r.key in fit_sizes or r.key in limits:
                        index = torch.arange(batch.offset, batch.offset + len(batch.y),
                                             device=batch.y.device)
                        keep = (index >= fit_sizes.get(r.key, 0)) & (index < limits.get(r.key, index[-1] + 1))
                        if not keep.any():
                            continue
                    try:
                        adv_ok = self._attacked(model, spec, r, attacks[r.key], batch, keep, grad,
                                                scores, clean_ok, rngs[r.key], stats[r.key],
                                                states.get(r.key))
                    except AttackError as exc:
                        errors[r.key] = (_no_gradient(spec, r, model, exc) if model.gradient_error
                                         and attacks[r.key].needs_gradient else exc)
                        continue
                    ok = clean_ok if keep is None else clean_ok[keep]
                    counts[r.key][0] += int(adv_ok.sum())
                    counts[r.key][1] += int(ok.sum())
                    counts[r.key][2] += int(ok.numel())
        outcomes: dict[tuple[int, float], Any] = dict(errors)
        for r in todo:
            if r.key in errors:
                continue
            correct, clean_correct, n = counts[r.key]
            if n == 0:
                why = (f"the fit split takes all {fit_sizes[r.key]} samples. Lower fit-samples or "
                       "give more data." if r.key in fit_sizes else
                       f"{attacks[r.key].samples_key} = 0 selects none. Raise it.")
                outcomes[r.key] = DataError(f"{r.check.attack} has no samples to evaluate: {why}",
                                            where=spec.key("data"))
                continue
            describe = attacks[r.key].describe_function()
            outcomes[r.key] = AttackResult(
                model=spec.name, attack=r.check.attack,
                eps=r.eps if attacks[r.key].uses_eps else None,
                correct=correct, clean_correct=clean_correct, n=n,
                min_accuracy=r.check.min_accuracy, max_drop=r.check.max_drop,
                max_regression=r.check.max_regression if r.check.max_regression is not None
                else spec.max_regression,
                check=r.check.index, options=dict(r.check.options), stats=stats[r.key],
                artifacts=[str(p) for p in states.get((r.key, "artifacts"), [])],
                fingerprint=fingerprint(spec, r.check, r.eps if attacks[r.key].uses_eps else None, n,
                                        attacks[r.key]),
                details=describe(stats[r.key]) if describe is not None else "",
            )
        return outcomes

    def _attacked(self, model: "Classifier", spec: ModelSpec, r: Request, attack: Any, batch: Any,
                  keep: "torch.Tensor | None", grad: "torch.Tensor | None", scores: "torch.Tensor",
                  clean_ok: "torch.Tensor", rng: "np.random.Generator", stats: dict[str, float],
                  state: Any) -> "torch.Tensor":
        """Correctness of the model on the attacked batch (a bool per kept sample)."""
        x, y = batch.x, batch.y
        if keep is not None:
            x, y = x[keep], y[keep]
            grad = None if grad is None else grad[keep.to(grad.device)]
            scores = scores[keep.to(scores.device)]
        available = {
            "model": lambda: model, "x": lambda: x, "y": lambda: y, "eps": lambda: r.eps,
            "rng": lambda: rng, "grad": lambda: grad, "scores": lambda: scores,
            "stats": lambda: stats, "state": lambda: state,
            "surrogates": lambda: self._surrogates(spec, r, model),
        }
        adversarial = call_attack(attack.perturb_function(), available,
                                  attack.with_defaults(r.check.options))
        if adversarial is x:  # the attack left the inputs alone (clean)
            return clean_ok if keep is None else clean_ok[keep]
        adversarial = _project(adversarial, x, r.eps if attack.uses_eps else None, model.input_range,
                               spec, r)
        return model.scores(adversarial).argmax(1).to(y.device) == y

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

    def _fit(self, spec: ModelSpec, model: "Classifier", data: EvalData, todo: list[Request],
             attacks: Mapping[tuple[int, float], Any], rngs: Mapping[tuple[int, float], Any],
             errors: dict) -> tuple[dict, dict]:
        """Fit the attacks that learn a perturbation, on the first ``fit-samples`` samples."""
        import torch

        fitting = [r for r in todo if attacks[r.key].fit is not None and r.key not in errors]
        states: dict[Any, Any] = {}
        sizes: dict[tuple[int, float], int] = {}
        if not fitting:
            return states, sizes
        for r in fitting:
            sizes[r.key] = int(r.check.option("fit-samples", attacks[r.key].options.get("fit-samples", 256)))
        batches = list(data.batches(spec.batch_size, model.dtype, stop=max(sizes.values()) + 1))
        fit_x = torch.cat([b.x for b in batches])
        fit_y = torch.cat([b.y for b in batches])
        if model.num_classes is None:
            model.scores(batches[0].x)
        _check_labels(fit_y, model.num_classes, data, 0)
        for r in fitting:
            if len(fit_y) <= sizes[r.key]:
                errors[r.key] = DataError(
                    f"{r.check.attack} fits its perturbation on the first fit-samples = "
                    f"{sizes[r.key]} samples and evaluates on the rest, but the data has only "
                    f"{len(fit_y)}. Lower fit-samples in this check or give more data.",
                    where=spec.key("data"))
        fitting = [r for r in fitting if r.key not in errors]
        for r in fitting:
            n = sizes[r.key]
            self._report_progress(spec, 0, f"fitting {r.check.attack} eps={r.eps:g}")
            available = {
                "model": lambda: model, "x": lambda: fit_x[:n], "y": lambda: fit_y[:n],
                "eps": lambda: r.eps, "rng": lambda: rngs[r.key],
                "batch_size": lambda: spec.batch_size,
            }
            try:
                state = call_attack(attacks[r.key].fit_function(), available,
                                    attacks[r.key].with_defaults(r.check.options))
            except AttackError as exc:
                errors[r.key] = _no_gradient(spec, r, model, exc) if model.gradient_error else exc
                continue
            states[r.key] = state
            states[(r.key, "artifacts")] = self._save_state(spec, r, state)
        return states, sizes

    def _save_state(self, spec: ModelSpec, r: Request, state: Any) -> list[Path]:
        """A fitted perturbation is saved so a person can look at it (.npy, and a PNG)."""
        if not hasattr(state, "detach"):
            return []
        from .report.artifacts import save_perturbation

        stem = f"{spec.name}-{r.check.attack}-eps{r.eps:g}"
        return save_perturbation(state.detach().cpu().numpy(), self.artifacts / r.check.attack, stem,
                                 title=f"{r.check.attack} perturbation, eps={r.eps:g}, {spec.name}")

    def _report_progress(self, spec: ModelSpec, offset: int, what: str = "") -> None:
        if self._progress is not None:
            batch = f"batch {offset // spec.batch_size + 1}"
            if spec.max_samples:
                batch += f"/{-(-spec.max_samples // spec.batch_size)}"
            self._progress(f"{spec.name}: {what or f'{batch} (from sample {offset})'}")


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


