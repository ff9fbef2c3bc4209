"""The few named errors a user can cause; each carries the file or key and the fix.

They are turned into pytest output in one place (``plugin.py``): a ``pytest.UsageError``
before collection, or a one-paragraph test failure when a gate runs.
"""

from __future__ import annotations

__all__ = ["AdvRobustError", "AdvRobustWarning", "ConfigError", "ModelLoadError", "DataError",
           "AttackError"]


class AdvRobustError(Exception):
    """Base class: a mistake in the user's configuration, model or data, not a bug."""

    kind = "advrobust error"

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(AdvRobustError):
    """``[tool.advrobust]`` holds an unknown key, a wrong type or an impossible value."""

    kind = "configuration error"


class ModelLoadError(AdvRobustError):
    """The model file or factory cannot be loaded, or the model does not fit the data."""

    kind = "model error"


class DataError(AdvRobustError):
    """The evaluation data is missing, empty, of the wrong shape or dtype, or holds NaN."""

    kind = "data error"


class AttackError(AdvRobustError):
    """An attack cannot run on this model (no usable gradient, unknown option)."""

    kind = "attack error"


class AdvRobustWarning(UserWarning):
    """Something a gate accepts but that probably does not mean what the user thinks (data
    that fills a tiny part of input-range); shown once per model in pytest's warnings summary."""
