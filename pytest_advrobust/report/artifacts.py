"""Fitted perturbations saved for people: the raw ``.npy`` and, with matplotlib, a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import AdvRobustError
from .files import atomic_write

__all__ = ["UnsafePath", "inside", "save_perturbation", "render_perturbation", "as_image"]


class UnsafePath(AdvRobustError):
    """A file name that would land outside the folder it is meant for."""

    kind = "path error"


def inside(folder: Path, filename: str) -> Path:
    """``folder / filename``, refused unless it resolves to a file directly in ``folder``
    (no separators, no ``..``, no symlink leading out): names from the config never choose
    where a file goes."""
    target = folder / filename
    if (Path(filename).name != filename or filename in (".", "..")
            or target.resolve().parent != folder.resolve()):
        raise UnsafePath(f"the file name {filename!r} would be written outside {folder}; refused. "
                         "Model and attack names may hold only letters, digits, '_', '-' and '.'.",
                         where=str(folder))
    return target


def save_perturbation(delta: np.ndarray, folder: Path, stem: str, *, title: str = "") -> list[Path]:
    """Write ``stem.npy`` (always) and ``stem.png`` (when matplotlib is installed)."""
    paths = [atomic_write(inside(folder, f"{stem}.npy"), lambda tmp: _save_npy(tmp, delta))]
    png = inside(folder, f"{stem}.png")
    if render_perturbation(delta, png, title=title):
        paths.append(png)
    return paths


def render_perturbation(delta: np.ndarray, path: Path, *, title: str = "",
                        any_shape: bool = False) -> bool:
    """Draw ``delta`` as an image (diverging colours around 0) into ``path``; False when
    matplotlib is missing or ``delta`` has no image shape (``any_shape``: draw it as a row)."""
    image = as_image(delta)
    if image is None:
        if not any_shape:
            return False
        image = np.asarray(delta, dtype=np.float64).reshape(1, -1)
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    wide = image.ndim == 2 and image.shape[1] > 4 * image.shape[0]
    figure, axis = plt.subplots(figsize=(6.4, 2.0) if wide else (3.6, 3.2), dpi=100)
    try:
        bound = float(np.abs(delta).max()) or 1.0
        shown = axis.imshow(image, cmap="RdBu_r" if image.ndim == 2 else None, aspect="auto" if wide else None,
                            vmin=-bound if image.ndim == 2 else None, vmax=bound if image.ndim == 2 else None)
        if image.ndim == 2:
            figure.colorbar(shown, ax=axis, fraction=0.046)
        axis.set_title(title, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.tight_layout()
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)
    return True


def as_image(delta: np.ndarray) -> np.ndarray | None:
    """A 2-D (or H x W x 3 in [0, 1]) view of one input, when it has an image shape."""
    array = np.asarray(delta, dtype=np.float64)
    if array.ndim == 1:
        side = int(math.isqrt(array.size))
        return array.reshape(side, side) if side * side == array.size and side > 1 else None
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[0] in (1, 3):
        if array.shape[0] == 1:
            return array[0]
        bound = np.abs(array).max() or 1.0
        return np.transpose(array / (2 * bound) + 0.5, (1, 2, 0))
    return None


def _save_npy(tmp: Path, delta: np.ndarray) -> None:
    with open(tmp, "wb") as handle:
        np.save(handle, delta)
