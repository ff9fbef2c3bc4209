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
from .results import AttackResult

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


class RobustnessSession:
    """The config, the registry and the engine for one run."""

    def __init__(self, hook: Any, path: Path | None, *, artifacts: Path | None = None,
                 pytest_config: Any = None, baseline: Mapping[str, float] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
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
        self.engine = Engine(
            self.registry,
            load_model=self.load_model,
            load_data=lambda spec: hook.pytest_advrobust_load_data(spec=spec, config=pytest_config),
            artifacts=self.artifacts,
            on_result=result_sink(hook),
            baseline=baseline,
            progress=progress,
            specs=self.spec,
        )
        self._adhoc: dict[tuple, int] = {}

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
                              "(see the README's quick start).", where=str(self.path or "pyproject.toml"))
        if name is None:
            return self.config.models[0]
        try:
            return self.config.model(name)
        except KeyError:
            raise ConfigError(f"no model named {name!r}; the config has "
                              f"{', '.join(self.config.model_names)}.", where=str(self.path)) from None

    def requests(self, spec: ModelSpec) -> list[Request]:
        return [Request(check, eps) for check in spec.checks for eps in check.eps]

    def run_all(self, models: Iterable[str] | None = None) -> list[AttackResult]:
        """Every gate of the config (or of the named models), in one pass per model."""
        out = []
        names = list(models) if models is not None else [s.name for s in self.spec_list()]
        for name in names:
            spec = self.spec(name)
            pending = self.requests(spec)
            for request in pending:
                out.append(self.engine.result(spec, request, batch_with=pending))
        return out

    def spec_list(self) -> tuple[ModelSpec, ...]:
        return self.config.models if self.config else ()

    def probe(self, model: str | None = None) -> "Probe":
        return Probe(self, self.spec(model))

    def adhoc_check(self, attack: str, options: Mapping[str, Any],
                    model: ModelSpec | None = None) -> CheckSpec:
        """A check made from a hand-written call on ``model``, validated like a config entry."""
        from .config import parse_config

        spec_table = {"model": "x.onnx", "data": "x.npz",
                      "checks": [{"attack": attack, **({"eps": 0.0} if self._uses_eps(attack) else {}),
                                  "report-only": True, **dict(options)}]}
        if model is not None:
            spec_table.update(name=model.name, **{"input-range": list(model.input_range)})
        parsed = parse_config(spec_table, path=Path(f"<advrobust.{attack}()>"),
                              attacks=self.registry.config_options(), others=self.spec_list())
        template = parsed.models[0].checks[0]
        signature = (attack, tuple(sorted(template.options.items(), key=str)))
        index = self._adhoc.setdefault(signature, 10_000 + len(self._adhoc))
        return CheckSpec(attack=attack, eps=(), options=template.options, index=index, report_only=True)

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
        check = self._session.adhoc_check(name, options, self.spec)
        uses_eps = self._session.registry[name].uses_eps
        if uses_eps and eps is None:
            raise ConfigError(f"{name} needs eps, e.g. advrobust.attack({name!r}, eps=0.1).")
        value = float(eps) if uses_eps else 0.0
        if value < 0:
            raise ConfigError(f"eps must be >= 0, not {eps!r}.", where=f"advrobust.{name}()")
        return self._session.engine.result(self.spec, Request(check, value), gate=False)

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
