"""One run's state: the parsed config, the attack registry and the engine.

Used by the pytest plugin (one per pytest run, kept in ``config.stash``) and by the
public API (``pytest_advrobust.evaluate``) alike, so both give the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pluggy

from .attacks import AttackRegistry
from .config import CheckSpec, ModelSpec, RobustnessConfig, load_config
from .engine import Engine, Request
from .errors import AdvRobustError, ConfigError, ModelLoadError, user_frame
from .gate import Judge
from .results import AttackResult, Measurement

__all__ = ["RobustnessSession", "Probe", "plugin_manager"]


class _StandaloneManager(pluggy.PluginManager):
    """Outside pytest: like pytest, unmarked ``pytest_advrobust_*`` functions (in a
    conftest.py) are hook implementations."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("pytest_advrobust_") and callable(getattr(plugin, name)):
            opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                    "tryfirst": False, "trylast": False, "specname": None}
        return opts


def plugin_manager(plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A stand-alone manager with our hooks, ``plugins`` and the built-ins, for use outside
    pytest."""
    from . import hookspecs

    manager = _StandaloneManager("pytest")
    for plugin in plugins:
        manager.register(plugin)
    manager.add_hookspecs(hookspecs)
    register_builtins(manager)
    return manager


#: plugin names of our built-in hook implementations
BUILTIN_PLUGINS = ("advrobust-attacks", "advrobust-loaders")


def has_custom_impl(hook: Any, name: str) -> bool:
    """Whether anyone besides our built-ins implements the hook ``name``."""
    caller = getattr(hook, name, None)
    return caller is not None and any(impl.plugin_name not in BUILTIN_PLUGINS
                                      for impl in caller.get_hookimpls())


def register_builtins(manager: Any) -> None:
    from . import models
    from .attacks import builtin

    for name, module in (("advrobust-attacks", builtin), ("advrobust-loaders", models)):
        if not manager.is_registered(module) and manager.get_plugin(name) is None:
            manager.register(module, name)


def result_sink(hook: Any) -> Callable[[AttackResult], None]:
    """``pytest_advrobust_result`` for each result; a sink that raises fails the gate with
    one paragraph naming the hook and the user's line."""

    def sink(result: AttackResult) -> None:
        try:
            hook.pytest_advrobust_result(result=result)
        except AdvRobustError:
            raise
        except Exception as exc:  # a user's sink: report it as theirs
            frame = user_frame(exc)
            raise ConfigError(f"a pytest_advrobust_result hook raised {type(exc).__name__}"
                              f"{f' in {frame}' if frame else ''}: {exc}",
                              where="pytest_advrobust_result") from None

    return sink


def save_fitted(measurement: Measurement, spec: ModelSpec, folder: Path, *, folds: bool = False) -> None:
    """A fitted perturbation is saved so a person can look at it (``.npy``, and a PNG),
    under ``folder/ATTACK/``; the files go into ``artifacts``, or, when they cannot be
    written, the reason into the details (the gate's figures stand). ``folds``: the state of
    a cross-fitted attack, one perturbation per fold."""
    state = measurement.state
    if not hasattr(state, "detach") or any(a.endswith(".npy") for a in measurement.artifacts):
        return
    from .report.artifacts import save_perturbation
    from .results import format_eps

    attack, eps = measurement.attack, measurement.eps
    stem = gate_stem(measurement, spec)
    title = f"{attack} perturbation, eps={format_eps(eps or 0.0)}, {spec.name}"
    array = state.detach().cpu().numpy()
    # a cross-fitted state holds one perturbation per fold: one file each
    parts = ([(f"{stem}-fold{j + 1}", fold, f"{title}, fold {j + 1}") for j, fold in enumerate(array)]
             if folds else [(stem, array, title)])
    try:
        paths = [path for name, delta, words in parts
                 for path in save_perturbation(delta, folder / attack, name, title=words)]
    except Exception as exc:  # noqa: BLE001 - the gate's figures stand; the file is said missing
        _note(measurement, f"fitted perturbation not saved ({type(exc).__name__}: {exc})")
        return
    measurement.artifacts += [str(path) for path in paths]


def save_examples(measurement: Measurement, spec: ModelSpec, folder: Path) -> None:
    """``--advrobust-examples``: the gate's first flipped samples drawn as a PNG grid in
    ``folder`` (clean, attacked, perturbation); its path goes into ``artifacts``. Inputs that
    are not images, or a file that cannot be written, are said in the details instead."""
    examples = measurement.examples
    if examples is None or any(a.endswith("-examples.png") for a in measurement.artifacts):
        return
    from .report.examples import examples_path, write_examples
    from .results import format_eps

    eps = "" if measurement.eps is None else f" eps={format_eps(measurement.eps)}"
    shard = measurement.shard
    stem = gate_stem(measurement, spec) + (f"-shard{shard['index']}of{shard['count']}" if shard else "")
    try:
        path = write_examples(examples, examples_path(folder, stem), eps=measurement.eps,
                              input_range=spec.input_range,
                              title=f"{measurement.attack}{eps} on {spec.name}: the first "
                                    f"{len(examples['index'])} samples it flipped")
    except Exception as exc:  # noqa: BLE001 - the gate's figures stand; the file is said missing
        _note(measurement, f"examples not saved ({type(exc).__name__}: {exc})")
        return
    if path is None:
        shape = tuple(examples["x"].shape[1:])
        _note(measurement, f"examples not drawn: inputs of shape {shape} are not images")
        return
    measurement.artifacts.append(str(path))


def gate_stem(measurement: Measurement, spec: ModelSpec) -> str:
    """The start of the names of a gate's files: ``MODEL-ATTACK-epsE`` (``-checkN`` when
    another check of the same attack runs at that eps too)."""
    from .results import format_eps

    attack, eps = measurement.attack, measurement.eps
    stem = f"{spec.name}-{attack}-eps{format_eps(eps or 0.0)}"
    sharing = [c.index for c in spec.checks if c.attack == attack and eps in c.eps]
    if sharing != [measurement.check]:  # another check (or a fixture call) runs at this eps too
        stem += f"-check{measurement.check}"
    return stem


def _note(measurement: Measurement, note: str) -> None:
    measurement.details = "; ".join(filter(None, [measurement.details, note]))


class RobustnessSession:
    """The config, the registry and the engine for one run."""

    def __init__(self, hook: Any, path: Path | None, *, artifacts: Path | None = None,
                 pytest_config: Any = None, baseline: Mapping[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None, accept: Iterable[str] = (),
                 examples: Path | None = None, decide_early: bool | None = None) -> None:
        self.hook = hook
        self.path = path
        self.registry = AttackRegistry()
        self.pytest_config = pytest_config
        try:
            hook.pytest_advrobust_add_attacks(registry=self.registry)
        except AdvRobustError:
            raise
        except Exception as exc:  # a user's conftest or plugin: report it as theirs
            frame = user_frame(exc)
            raise ConfigError(f"a pytest_advrobust_add_attacks hook raised {type(exc).__name__}"
                              f"{f' in {frame}' if frame else ''}: {exc}",
                              where="pytest_advrobust_add_attacks") from None
        self.config: RobustnessConfig | None = None
        if path is not None and path.is_file():
            self.config = load_config(
                path, self.registry.config_options(),
                custom_models=has_custom_impl(hook, "pytest_advrobust_load_model"),
                custom_data=has_custom_impl(hook, "pytest_advrobust_load_data"))
        root = path.parent if path is not None else Path.cwd()
        self.artifacts = artifacts if artifacts is not None else root / ".advrobust"
        #: where each gate's first flipped samples are drawn (``--advrobust-examples``)
        self.examples = examples
        self._sink = result_sink(hook)
        self.engine = Engine(
            self.registry,
            load_model=self.load_model,
            load_data=lambda spec: hook.pytest_advrobust_load_data(spec=spec, config=pytest_config),
            on_measured=self._measured,
            progress=progress,
            specs=self.spec,
        )
        if examples is not None:
            from .report.examples import COUNT

            self.engine.examples = COUNT
        #: the one judge of this run's gates (thresholds and settings from the config); its
        #: rule also tells the engine when a gate that decides early may stop
        self.judge = Judge(self.lookup, self.registry, baseline=baseline, accept=accept,
                           decide_early=decide_early)
        self.engine.decide_early = self.judge
        self._adhoc: dict[tuple, CheckSpec] = {}

    def _measured(self, measurement: Measurement) -> None:
        """A gate was measured: save what it fitted (and its examples), judge it, tell the
        result hooks."""
        save_fitted(measurement, self.spec(measurement.model), self.artifacts,
                    folds=self.cross_fitted(measurement.attack))
        if self.examples is not None:
            save_examples(measurement, self.spec(measurement.model), self.examples)
        self._sink(self.judge.result(measurement))

    def cross_fitted(self, attack: str) -> bool:
        return attack in self.registry and self.registry[attack].folds_key is not None

    def lookup(self, model: str, index: int) -> tuple[ModelSpec, CheckSpec]:
        """A gate's model and check, by model name and check index (the config's checks,
        and the checks made from hand-written calls)."""
        spec = self.spec(model)
        for check in spec.checks:
            if check.index == index:
                return spec, check
        for check in self._adhoc.values():
            if check.index == index:
                return spec, check
        raise ConfigError(f"model {model!r} has no check number {index} (the config changed "
                          "while the run was going?).", where=str(self.path))

    def measure(self, spec: ModelSpec, request: Request, batch_with: Iterable[Request] = ()) -> AttackResult:
        """A gate's judged result, computed (with ``batch_with``, in the same pass) unless
        cached; a gate that could not be computed raises its error."""
        return self.judge.result(self.engine.measure(spec, request, batch_with=list(batch_with)))

    def load_model(self, spec: ModelSpec) -> Any:
        """Ask the ``pytest_advrobust_load_model`` hooks; a torch module is wrapped."""
        from .models import wrap_module
        from .models.base import Classifier

        try:
            loaded = self.hook.pytest_advrobust_load_model(spec=spec, config=self.pytest_config)
        except AdvRobustError:
            raise
        except Exception as exc:  # a user's loader: report it as theirs
            frame = user_frame(exc)
            raise ModelLoadError(f"loading raised {type(exc).__name__}: {exc}"
                                 f"{f' (in {frame})' if frame else ''}",
                                 where=spec.key("model")) from exc
        if isinstance(loaded, Classifier):
            return loaded
        if loaded is None or not callable(loaded):
            raise ModelLoadError(f"no pytest_advrobust_load_model hook returned a model for "
                                 f"{spec.model!r} (got {type(loaded).__name__}); return a "
                                 "Classifier or a torch module.", where=spec.key("model"))
        return wrap_module(loaded, spec)

    def spec(self, name: str | None = None) -> ModelSpec:
        """A model of the config by name (the first one when ``name`` is None)."""
        if self.config is None:
            raise ConfigError("no [tool.advrobust] table found. Add one naming the model and data "
                              "(see README, \"Quick start\").", where=str(self.path or "pyproject.toml"))
        if name is None:
            return self.config.models[0]
        try:
            return self.config.model(name)
        except KeyError:
            raise ConfigError(f"no model named {name!r}; the config has "
                              f"{', '.join(self.config.model_names)}.", where=str(self.path)) from None

    def requests(self, spec: ModelSpec) -> list[Request]:
        return [Request(check, eps) for check in spec.checks for eps in check.eps]

    def decides_early(self) -> list[str]:
        """The gates of the config (labels) that decide-early may stop before the end."""
        return [f"{check.attack} on {spec.name}" for spec in self.spec_list() for check in spec.checks
                if self.judge.decides_early(spec.name, check.index)]

    def run_all(self, models: Iterable[str] | None = None) -> list[AttackResult]:
        """Every gate of the config (or of the named models), in one pass per model, judged
        together (so the masking signs that compare a model's gates are there). A gate that
        cannot be computed raises its error (a :class:`~pytest_advrobust.AdvRobustError`)."""
        out = []
        names = list(models) if models is not None else [s.name for s in self.spec_list()]
        for name in names:
            spec = self.spec(name)
            pending = self.requests(spec)
            for request in pending:
                out.append(self.engine.measure(spec, request, batch_with=pending))
        return self.judge.results(out)

    def spec_list(self) -> tuple[ModelSpec, ...]:
        return self.config.models if self.config else ()

    def probe(self, model: str | None = None) -> "Probe":
        return Probe(self, self.spec(model))

    def adhoc_check(self, attack: str, options: Mapping[str, Any], model: ModelSpec | None = None,
                    eps: Any = None) -> tuple[CheckSpec, float]:
        """A check made from a hand-written call on ``model``, and its eps, validated exactly
        like a config entry (an eps of the wrong type, negative, too small or too large is
        a :class:`ConfigError` naming the call)."""
        from .config import parse_config

        uses_eps = self._uses_eps(attack)
        if uses_eps and eps is None:
            raise ConfigError(f"{attack} needs eps, e.g. advrobust.attack({attack!r}, eps=0.1).",
                              where=f"advrobust.{attack}()")
        spec_table = {"model": "x.onnx", "data": "x.npz",
                      "checks": [{"attack": attack, **({"eps": eps} if uses_eps else {}),
                                  "report-only": True, **dict(options)}]}
        if model is not None:
            spec_table.update(name=model.name, **{"input-range": list(model.input_range)})
        parsed = parse_config(spec_table, path=Path(f"<advrobust.{attack}()>"),
                              attacks=self.registry.config_options(), others=self.spec_list())
        template = parsed.models[0].checks[0]
        signature = (attack, tuple(sorted(template.options.items(), key=str)))
        if signature not in self._adhoc:
            self._adhoc[signature] = CheckSpec(attack=attack, eps=(), options=template.options,
                                               index=10_000 + len(self._adhoc), report_only=True)
        return self._adhoc[signature], template.eps[0]

    def _uses_eps(self, attack: str) -> bool:
        if attack not in self.registry:
            return False
        return self.registry[attack].uses_eps


class Probe:
    """The ``advrobust`` fixture: run one attack on one model from a hand-written test.

    ``advrobust.fgsm(eps=0.1).accuracy``; results carry no thresholds (the test asserts).
    """

    def __init__(self, session: RobustnessSession, spec: ModelSpec) -> None:
        self._session = session
        self.spec = spec

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def classifier(self) -> Any:
        """The loaded model (a :class:`~pytest_advrobust.Classifier`)."""
        return self._session.engine.classifier(self.spec)

    def attack(self, name: str, eps: float | None = None, **options: Any) -> AttackResult:
        """Run any registered attack; options use the config's keys (``fit_samples`` works too)."""
        options = {key.replace("_", "-"): value for key, value in options.items()}
        check, value = self._session.adhoc_check(name, options, self.spec, eps)
        session = self._session
        measurement = session.engine.measure(self.spec, Request(check, value), gate=False)
        save_fitted(measurement, self.spec, session.artifacts, folds=session.cross_fitted(name))
        return session.judge.result(measurement)

    def clean(self) -> AttackResult:
        return self.attack("clean")

    def fgsm(self, eps: float, **options: Any) -> AttackResult:
        return self.attack("fgsm", eps, **options)

    def noise(self, eps: float) -> AttackResult:
        return self.attack("noise", eps)

    def universal(self, eps: float, **options: Any) -> AttackResult:
        return self.attack("universal", eps, **options)

    def pgd(self, eps: float, **options: Any) -> AttackResult:
        return self.attack("pgd", eps, **options)

    def transfer(self, eps: float, surrogate: str | list[str], **options: Any) -> AttackResult:
        """Inputs crafted on the configured model(s) ``surrogate``, evaluated on this one."""
        return self.attack("transfer", eps, surrogate=surrogate, **options)

    def spsa(self, eps: float, **options: Any) -> AttackResult:
        return self.attack("spsa", eps, **options)
