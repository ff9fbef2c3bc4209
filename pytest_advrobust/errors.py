"""The few named errors a user can cause; each carries the file or key and the fix.

They are turned into pytest output in one place (``plugin.py``): a ``pytest.UsageError``
before collection, or a one-paragraph test failure when a gate runs.
"""

from __future__ import annotations

import functools
import importlib.util
import traceback
from pathlib import Path

__all__ = ["AdvRobustError", "AdvRobustWarning", "ConfigError", "ModelLoadError", "ScoresNotFinite",
           "DataError", "AttackError", "user_frame"]


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


class ScoresNotFinite(ModelLoadError):
    """The model returned NaN or inf scores (on the data, or on perturbed inputs) for
    ``bad`` of ``total`` inputs."""

    def __init__(self, message: str, *, where: str | None = None, bad: int = 0, total: int = 0) -> None:
        super().__init__(message, where=where)
        self.bad, self.total = bad, total


class DataError(AdvRobustError):
    """The evaluation data is missing, empty, of the wrong shape or dtype, or holds NaN."""

    kind = "data error"


class AttackError(AdvRobustError):
    """An attack cannot run on this model (no usable gradient, unknown option)."""

    kind = "attack error"


class AdvRobustWarning(UserWarning):
    """Something a gate accepts but that probably does not mean what the user thinks (data
    that fills a tiny part of input-range); shown once per model in pytest's warnings summary."""


@functools.lru_cache(maxsize=1)
def _internal_folders() -> tuple[str, ...]:
    """Folders whose frames are not the user's code: this plugin, torch, onnxruntime
    (found without importing them)."""
    folders = [Path(__file__).resolve().parent]
    for name in ("torch", "onnxruntime"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders.append(Path(spec.origin).resolve().parent)
    return tuple(f"{folder}/" for folder in folders)


def user_frame(exc: BaseException) -> str | None:
    """``file:line`` of the innermost traceback frame outside torch and this plugin: the
    user's own line that raised (or that called into torch when torch raised)."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<"):
            continue
        if not str(Path(frame.filename).resolve()).startswith(_internal_folders()):
            return f"{frame.filename}:{frame.lineno}"
    return None
