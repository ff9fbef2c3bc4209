"""Import the ``"pkg.module:callable"`` a config names (the only code a config can reach)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import AdvRobustError

__all__ = ["import_callable"]


def import_callable(ref: str, root: Path, *, key: str, error: type[AdvRobustError]) -> Callable[..., Any]:
    """``"pkg.mod:attr"`` -> the object, importing with the project folder on ``sys.path``."""
    module_name, _, attr_path = ref.partition(":")
    folder = str(root.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import module {module_name!r} ({exc}). The module must be importable "
                    f"from {folder} or installed in this environment.", where=key) from None
    except Exception as exc:  # the user's module raised while importing
        raise error(f"importing {module_name!r} raised {type(exc).__name__}: {exc}", where=key) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise error(f"module {module_name!r} has no attribute {attr_path!r}.", where=key)
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{ref!r} is a {type(obj).__name__}, not a callable.", where=key)
    return obj
