"""pytest-advrobust: gate CI on the adversarial robustness of classifiers.

Importing this package is cheap: torch and onnxruntime load only when a gate runs.
"""

from __future__ import annotations

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
