"""pytest-advrobust: gate CI on the adversarial robustness of classifiers.

Importing this package is cheap: torch and onnxruntime load only when a gate runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import AdvRobustError, AttackError, ConfigError, DataError, ModelLoadError

if TYPE_CHECKING:
    from .attacks import Attack, AttackRegistry
    from .config import CheckSpec, ModelSpec, RobustnessConfig
    from .results import AttackResult, wilson_interval
    from .session import Probe, RobustnessSession

__version__ = "0.1.0"

#: the public API, imported on first use: pytest imports this package for the plugin in
#: every run, and a project without gates should not pay for the engine's modules
_LAZY = {"Attack": "attacks", "AttackRegistry": "attacks", "CheckSpec": "config",
         "ModelSpec": "config", "RobustnessConfig": "config", "AttackResult": "results",
         "wilson_interval": "results", "Probe": "session", "RobustnessSession": "session"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AdvRobustError",
    "Attack",
    "AttackError",
    "AttackRegistry",
    "AttackResult",
    "CheckSpec",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "ModelSpec",
    "Probe",
    "RobustnessConfig",
    "RobustnessSession",
    "__version__",
    "wilson_interval",
]
