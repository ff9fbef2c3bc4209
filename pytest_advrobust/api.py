"""The Python API: the same checks from a notebook or a script, without pytest.

``evaluate("pyproject.toml")`` runs every gate of a config (the numbers ``pytest`` gives);
``attack(module, x, y, "fgsm", eps=0.1)`` attacks an in-memory model directly and hands it
back exactly as it was (train/eval mode, ``requires_grad`` flags, parameters).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import parse_config
from .engine import Engine, Request
from .errors import ConfigError
from .gate import Judge
from .results import AttackResult
from .session import RobustnessSession, plugin_manager, result_sink, save_fitted

__all__ = ["attack", "evaluate", "open_session"]

IN_MEMORY = "<in-memory>"


def open_session(path: str | Path = "pyproject.toml", *, plugins: Iterable[Any] = (),
                 conftest: bool = True, artifacts: str | Path | None = None) -> RobustnessSession:
    """A :class:`RobustnessSession` for the config at ``path``, with the hooks of
    ``plugins`` (modules or objects with ``pytest_advrobust_*`` functions) and, when
    ``conftest`` is true, of the ``conftest.py`` next to it, as pytest would load them."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError("file not found.", where=str(path))
    extra = list(plugins)
    if conftest and (path.parent / "conftest.py").is_file():
        extra.append(_import_conftest(path.parent / "conftest.py"))
    manager = plugin_manager(extra)
    session = RobustnessSession(manager.hook, path,
                                artifacts=Path(artifacts).resolve() if artifacts else None)
    if session.config is None:
        raise ConfigError("has no [tool.advrobust] table.", where=str(path))
    return session


def evaluate(path: str | Path = "pyproject.toml", models: Sequence[str] | None = None, *,
             plugins: Iterable[Any] = (), conftest: bool = True,
             artifacts: str | Path | None = None) -> list[AttackResult]:
    """Every gate of ``[tool.advrobust]`` in ``path`` (or of the named ``models``), judged:
    the same results, in the same order, as a ``pytest`` run's JSON report holds."""
    session = open_session(path, plugins=plugins, conftest=conftest, artifacts=artifacts)
    return session.run_all(models)


def attack(model: Any, x: Any, y: Any, name: str, eps: float | None = None, *,
           input_range: tuple[float, float] = (0.0, 1.0),
           normalize: tuple[Sequence[float], Sequence[float]] | None = None,
           output_kind: str = "auto", output: str | int | None = None,
           batch_size: int = 256, seed: int = 0,
           min_accuracy: float | None = None, max_drop: float | None = None,
           plugins: Iterable[Any] = (), artifacts: str | Path | None = None,
           **options: Any) -> AttackResult:
    """Run the attack ``name`` on an in-memory ``model`` (a torch module, or a
    :class:`~pytest_advrobust.models.base.Classifier`) over inputs ``x`` and labels ``y``
    (numpy arrays or tensors, raw units). Options use the config's keys (``fit_samples``
    works for ``fit-samples``); thresholds, when given, are judged into ``result.passed``.

    The module is not moved or copied; its train/eval mode and ``requires_grad`` flags are
    restored afterwards and its parameters and buffers are left untouched."""
    manager = plugin_manager(plugins)
    session = RobustnessSession(manager.hook, None)
    table: dict[str, Any] = {
        "model": IN_MEMORY, "data": IN_MEMORY, "name": "model",
        "input-range": [float(input_range[0]), float(input_range[1])],
        "output-kind": output_kind, "batch-size": batch_size, "seed": seed,
        "checks": [{"attack": name, **({} if eps is None else {"eps": eps}),
                    **({"report-only": True} if min_accuracy is None and max_drop is None else {}),
                    **({} if min_accuracy is None else {"min-accuracy": min_accuracy}),
                    **({} if max_drop is None else {"max-drop": max_drop}),
                    **{key.replace("_", "-"): value for key, value in options.items()}}],
    }
    if output is not None:  # the score tensor of a module returning a dict or a tuple
        table["output"] = output
    if normalize is not None:
        table["normalize"] = {"mean": list(normalize[0]), "std": list(normalize[1])}
    config = parse_config(table, path=Path(f"<advrobust.attack({name!r})>"),
                          attacks=session.registry.config_options(), custom_models=True,
                          custom_data=True)
    spec = config.models[0]
    check = spec.checks[0]
    judge = Judge(lambda model, index: (spec, check), session.registry)
    engine = Engine(session.registry, load_model=lambda s: _classifier(model, s),
                    load_data=lambda s: (x, y))
    measurement = engine.measure(spec, Request(check, check.eps[0]))
    save_fitted(measurement, spec, Path(artifacts).resolve() if artifacts else Path.cwd() / ".advrobust",
                folds=session.cross_fitted(name))
    result = judge.result(measurement)
    result_sink(manager.hook)(result)
    return result


def _classifier(model: Any, spec: Any) -> Any:
    from .models import wrap_module
    from .models.base import Classifier

    return model if isinstance(model, Classifier) else wrap_module(model, spec)


def _import_conftest(path: Path) -> Any:
    """Import a conftest.py under a name of its own (as pytest does, with its folder on
    ``sys.path``), once per file."""
    name = "advrobust_conftest_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
