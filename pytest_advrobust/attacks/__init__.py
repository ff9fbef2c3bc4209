"""Attacks, one module per family, behind a registry keyed by the name used in the config.

Attack functions are small and stateless: ``perturb(model, x, y, eps, rng, **options)``
returns the perturbed batch, or a tuple of candidate batches (a sample counts as fooled if
any fools it); the engine owns batching, caching, projection, clipping and scoring.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from ..config import AttackOptions, Choice
from ..errors import AdvRobustError, AttackError, user_frame

__all__ = ["Attack", "AttackRegistry", "Choice", "fold_of"]


def fold_of(positions: Any, folds: int) -> Any:
    """The fold of each sample position in a cross-fitted attack: ``p mod folds``. The one
    rule the fit (``state[j]`` never sees fold ``j``), the perturb function (fold ``j`` is
    scored on ``state[j]``) and the engine's per-fold counts follow."""
    return positions % folds

#: Arguments the engine can hand an attack; an attack function names the ones it needs
#: (``surrogates``: the loaded classifiers its ``surrogate`` option names; ``positions``: each
#: row's position in the data stream, a tensor).
ENGINE_ARGUMENTS = ("model", "x", "y", "eps", "rng", "grad", "scores", "stats", "state",
                    "surrogates", "positions")
#: the fit split of an attack with a ``fit`` function that declares no ``fit_samples_key``
FIT_SAMPLES = 256


@dataclass(frozen=True)
class Attack:
    """A registered attack: its functions and the check keys it accepts."""

    name: str
    perturb: Callable[..., Any] | str
    fit: Callable[..., Any] | str | None = None
    uses_eps: bool = True
    needs_gradient: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    #: ``describe(stats) -> str``: words for the result (a counterexample), appended to its
    #: gate message; called once after the pass
    describe: Callable[..., str] | str | None = None
    #: the check key that caps how many samples (the first N) the attack is evaluated on
    samples_key: str | None = None
    #: numeric options that must be > 0 (checked at config time)
    positive: tuple[str, ...] = ()
    #: ``validate(options) -> message or None``: rules across options, checked at config
    #: time on the check's options plus the declared defaults
    validate: Callable[..., str | None] | str | None = None
    #: the check key that sizes the fit split of an attack with ``fit`` (the first N
    #: samples, never evaluated unless the attack is cross-fitted); :data:`FIT_SAMPLES` when
    #: the attack names none
    fit_samples_key: str | None = None
    #: the check key naming the loss the attack ascends (for the masking diagnostics:
    #: a zero cross-entropy gradient fails a gate only when it ascends cross-entropy)
    loss_key: str | None = None
    #: the check key naming the other models of the config it crafts its inputs on
    surrogate_key: str | None = None
    #: cross-fitted: the check key holding the number of folds k. The fit (given
    #: ``positions``) returns ``k`` states, ``state[j]`` fitted without fold ``j`` (see
    #: :func:`fold_of`); every sample is evaluated, the fit split too, and the perturb function
    #: (given ``positions``) scores fold ``j`` on ``state[j]``; the engine counts each fold
    #: (``stats["fold<j>_correct"]``, ``["fold<j>_n"]``, j from 1) and each state is saved
    folds_key: str | None = None

    def __post_init__(self) -> None:
        # an attack that declares none of these keys but has an option of the conventional
        # name means it (a custom attack's "fit-samples", "loss" or "surrogate" option)
        for attribute, name in (("fit_samples_key", "fit-samples"), ("loss_key", "loss"),
                                ("surrogate_key", "surrogate")):
            if getattr(self, attribute) is None and name in self.options:
                object.__setattr__(self, attribute, name)

    @property
    def config_options(self) -> AttackOptions:
        return AttackOptions(uses_eps=self.uses_eps, options=dict(self.options),
                             positive=frozenset(self.positive),
                             validate=None if self.validate is None else _resolve(self.validate),
                             surrogate_key=self.surrogate_key, cross_checked=self.cross_checked)

    @property
    def cross_checked(self) -> bool:
        """Whether the engine cross-checks its gates with the black-box masking probe: a
        per-sample gradient attack (a fitted one, ``universal``, is weaker than per-sample
        attacks by design, so a black-box attack beating it is no sign of masking)."""
        return self.needs_gradient and self.fit is None

    def perturb_function(self) -> Callable[..., Any]:
        return _resolve(self.perturb)

    def fit_function(self) -> Callable[..., Any] | None:
        return None if self.fit is None else _resolve(self.fit)

    def with_defaults(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """A check's options plus the declared defaults of the keys it leaves out."""
        defaults = {key: value.default if isinstance(value, Choice) else value
                    for key, value in self.options.items()
                    if value is not None and not isinstance(value, type)}
        return {**defaults, **options}

    def describe_function(self) -> Callable[..., str] | None:
        return None if self.describe is None else _resolve(self.describe)

    def fit_samples(self, options: Mapping[str, Any]) -> int:
        """How many of the first samples the attack fits on (with ``options``, a check's)."""
        if self.fit_samples_key is None:
            return FIT_SAMPLES
        return int(self.with_defaults(options).get(self.fit_samples_key, FIT_SAMPLES))

    def folds(self, options: Mapping[str, Any]) -> int | None:
        """How many folds a cross-fitted attack fits (None: not cross-fitted)."""
        if self.folds_key is None:
            return None
        return int(self.with_defaults(options)[self.folds_key])

    def samples_cap(self, options: Mapping[str, Any]) -> int | None:
        """The first N samples the attack is evaluated on (None: all)."""
        if self.samples_key is None:
            return None
        value = self.with_defaults(options).get(self.samples_key)
        return None if value is None else int(value)

    def loss(self, options: Mapping[str, Any]) -> str:
        """The loss the attack ascends (``"ce"`` unless it declares a ``loss_key``)."""
        value = self.with_defaults(options).get(self.loss_key) if self.loss_key else None
        return value if isinstance(value, str) else "ce"

    def surrogates(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The model names its ``surrogate_key`` option gives (empty when none)."""
        value = options.get(self.surrogate_key) if self.surrogate_key else None
        return (value,) if isinstance(value, str) else tuple(value or ())

    def wants(self, argument: str) -> bool:
        """Whether the perturb function takes ``argument`` (so the engine computes it)."""
        return _accepts(self.perturb_function(), argument)


class AttackRegistry:
    """Name -> :class:`Attack`. Filled through ``pytest_advrobust_add_attacks``."""

    def __init__(self) -> None:
        self._attacks: dict[str, Attack] = {}

    def attack(
        self,
        name: str,
        *,
        options: Mapping[str, Any] | None = None,
        uses_eps: bool = True,
        needs_gradient: bool = False,
        fit: Callable[..., Any] | str | None = None,
        description: str = "",
        describe: Callable[..., str] | str | None = None,
        samples_key: str | None = None,
        positive: tuple[str, ...] = (),
        validate: Callable[..., str | None] | str | None = None,
        fit_samples_key: str | None = None,
        loss_key: str | None = None,
        surrogate_key: str | None = None,
        folds_key: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``perturb`` under ``name`` (a name already taken is kept)."""

        def register(perturb: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Attack(name, perturb, fit=fit, uses_eps=uses_eps, needs_gradient=needs_gradient,
                            options=dict(options or {}),
                            description=description or (perturb.__doc__ or "").strip().split("\n")[0],
                            describe=describe, samples_key=samples_key, positive=tuple(positive),
                            validate=validate, fit_samples_key=fit_samples_key, loss_key=loss_key,
                            surrogate_key=surrogate_key, folds_key=folds_key))
            return perturb

        return register

    def add(self, attack: Attack) -> None:
        """Register ``attack``; the first registration of a name wins (users run first)."""
        if not isinstance(attack.name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", attack.name):
            from ..errors import ConfigError

            raise ConfigError(f"registry.attack({attack.name!r}): an attack name becomes part of "
                              "test ids and file names, so it must be an ASCII identifier (letters, "
                              "digits, '_' and '-', not starting with a digit or '-').",
                              where="pytest_advrobust_add_attacks")
        self._attacks.setdefault(attack.name, attack)

    def __getitem__(self, name: str) -> Attack:
        return self._attacks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._attacks

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._attacks))

    def config_options(self) -> dict[str, AttackOptions]:
        return {name: attack.config_options for name, attack in self._attacks.items()}


def call_attack(function: Callable[..., Any], available: Mapping[str, Callable[[], Any]],
                options: Mapping[str, Any]) -> Any:
    """Call ``function`` with the engine arguments it names (each computed only if asked)
    and the check's options (``fit-samples`` -> ``fit_samples``)."""
    parameters, takes_all = _signature(function)
    kwargs = {key.replace("-", "_"): value for key, value in options.items()}
    for name, produce in available.items():
        if name in parameters or (takes_all and name in ENGINE_ARGUMENTS[:5]):
            kwargs[name] = produce()
    if not takes_all:
        kwargs = {key: value for key, value in kwargs.items() if key in parameters}
    if getattr(function, "__module__", "").startswith("pytest_advrobust."):
        return function(**kwargs)  # a built-in: an exception here is our bug, shown as one
    try:
        return function(**kwargs)
    except AdvRobustError:
        raise
    except Exception as exc:  # a user's attack: report it as theirs, with their line
        frame = user_frame(exc)
        text = " ".join(str(exc).strip().split("\n")[0].split())[:400] or "(no message)"
        raise AttackError(f"the attack function raised {type(exc).__name__}"
                          f"{f' in {frame}' if frame else ''}: {text} Fix the attack there.",
                          where=_qualname(function)) from None


@functools.lru_cache(maxsize=256)
def _signature(function: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    """Parameter names and whether it takes ``**kwargs``: read once per function, not per batch."""
    parameters = inspect.signature(function).parameters
    return frozenset(parameters), any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _accepts(function: Callable[..., Any], argument: str) -> bool:
    return argument in _signature(function)[0]


def _resolve(ref: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise AttackError(f"cannot load the attack function {ref!r} ({type(exc).__name__}: "
                          f"{exc}). Check the \"pkg.module:function\" given to registry.attack.",
                          where=ref) from None


def _qualname(function: Any) -> str:
    return f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', repr(function))}"
