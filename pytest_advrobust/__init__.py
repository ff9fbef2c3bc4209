"""pytest-advrobust: gate CI on the adversarial robustness of classifiers.

Importing this package is cheap: pytest imports it for the plugin in every run, so the
public API below loads on first use, and torch and onnxruntime only when a gate runs.
Without pytest: ``evaluate("pyproject.toml")`` runs a config's gates and
``attack(module, x, y, "fgsm", eps=0.1)`` attacks an in-memory model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import AdvRobustError, AttackError, ConfigError, DataError, ModelLoadError

if TYPE_CHECKING:
    from .api import attack, evaluate, open_session
    from .attacks import Attack, AttackRegistry
    from .config import CheckSpec, ModelSpec, RobustnessConfig
    from .models.base import Classifier
    from .models.torch_models import TorchClassifier
    from .results import AttackResult, wilson_interval
    from .session import Probe, RobustnessSession

__version__ = "0.1.0"

__all__ = [
    "AdvRobustError",
    "Attack",
    "AttackError",
    "AttackRegistry",
    "AttackResult",
    "CheckSpec",
    "Classifier",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "ModelSpec",
    "Probe",
    "RobustnessConfig",
    "RobustnessSession",
    "TorchClassifier",
    "__version__",
    "attack",
    "evaluate",
    "open_session",
    "wilson_interval",
]

#: public name -> the module that defines it, imported on first use
_LAZY = {"attack": "api", "evaluate": "api", "open_session": "api",
         "Attack": "attacks", "AttackRegistry": "attacks", "CheckSpec": "config",
         "ModelSpec": "config", "RobustnessConfig": "config", "AttackResult": "results",
         "wilson_interval": "results", "Probe": "session", "RobustnessSession": "session",
         "Classifier": "models.base", "TorchClassifier": "models.torch_models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
