"""pytest-advrobust: gate CI on the adversarial robustness of classifiers.

Importing this package is cheap: torch and onnxruntime load only when a gate runs.
Without pytest: ``evaluate("pyproject.toml")`` runs a config's gates and
``attack(module, x, y, "fgsm", eps=0.1)`` attacks an in-memory model.
"""

from __future__ import annotations

from typing import Any

from .api import attack, evaluate, open_session
from .attacks import Attack, AttackRegistry
from .config import CheckSpec, ModelSpec, RobustnessConfig
from .errors import AdvRobustError, AttackError, ConfigError, DataError, ModelLoadError
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

_LAZY = {"Classifier": "pytest_advrobust.models.base",
         "TorchClassifier": "pytest_advrobust.models.torch_models"}


def __getattr__(name: str) -> Any:
    """``Classifier`` and ``TorchClassifier`` import torch, so they load on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pytest_advrobust' has no attribute {name!r}")
