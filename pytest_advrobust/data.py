"""Evaluation data: loading, checking, and streaming in batches so memory stays flat.

Sources: a ``.npz`` file with arrays ``x`` and ``y``, or ``"pkg.module:callable"``
returning ``(inputs, labels)`` (numpy arrays or torch tensors) or an iterable of
``(inputs, labels)`` batches (a generator, a DataLoader). Each pass over the data calls the
loader again, so a generator is fine; the user's arrays are copied batch by batch, never
written to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import re

import numpy as np

from .errors import DataError
from .imports import import_callable

if TYPE_CHECKING:
    import torch

    from .config import ModelSpec

__all__ = ["Batch", "EvalData"]

_CALLABLE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Batch:
    """A batch of raw inputs and integer labels, and the index of its first sample."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    offset: int


class EvalData:
    """The evaluation set of one model: re-iterable, validated batch by batch."""

    def __init__(self, spec: "ModelSpec", custom: Callable[["ModelSpec"], Any] | None = None) -> None:
        """``custom(spec)``: the ``pytest_advrobust_load_data`` hook; None from it (or no
        hook) means the built-in sources."""
        self.spec = spec
        self.where = spec.key("data")
        self._custom = custom
        self._arrays: tuple[Any, Any] | None = None

    @property
    def size(self) -> int | None:
        """Samples a pass evaluates, once known without reading ahead (arrays already
        loaded; ``max-samples`` caps it); None for a stream of batches (progress lines)."""
        if self._arrays is None:
            return None
        count = len(self._arrays[1])
        return count if self.spec.max_samples is None else min(count, self.spec.max_samples)

    @property
    def source(self) -> str:
        return str(self.spec.resolve(self.spec.data)) if self.spec.data.lower().endswith(".npz") \
            else self.spec.data

    def batches(self, batch_size: int, dtype: "torch.dtype", *, start: int = 0,
                stop: int | None = None) -> Iterator[Batch]:
        """Batches of samples ``[start, stop)`` (clipped to ``max-samples``), as torch tensors."""
        import torch

        limit = self.spec.max_samples
        stop = limit if stop is None else (stop if limit is None else min(stop, limit))
        low, high = self.spec.input_range
        tolerance = 1e-6 * (high - low)
        seen = 0
        for xs, ys, offset in _rechunk(self._chunks(), batch_size, start, stop):
            x = torch.tensor(xs, dtype=dtype)
            y = torch.tensor(ys, dtype=torch.int64)
            smallest, largest = (float(v) for v in torch.aminmax(x))  # NaN propagates: one pass
            if not (math.isfinite(smallest) and math.isfinite(largest)):
                bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
                raise DataError(f"inputs hold NaN or inf ({bad} samples in the batch starting at "
                                f"sample {offset}). Clean the data before gating on it.",
                                where=self.where)
            if smallest < low - tolerance or largest > high + tolerance:
                raise DataError(
                    f"inputs range over [{smallest:.4g}, {largest:.4g}] (batch starting "
                    f"at sample {offset}) but input-range is [{low:g}, {high:g}]. eps and clipping "
                    "act in these units, so they must match the data: set input-range to the "
                    "data's range, or feed raw (unnormalised) data and use normalize.",
                    where=self.where)
            if y.min() < 0:
                raise DataError(f"labels must be class indices >= 0; found {int(y.min())}.",
                                where=self.where)
            seen += len(y)
            yield Batch(x, y, offset)
        if seen == 0 and start == 0:
            raise DataError("the data is empty (no samples). Check the loader or the .npz file.",
                            where=self.where)

    # -- sources --------------------------------------------------------------------------
    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is not None:
            yield self._arrays
            return
        produced = None if self._custom is None else self._call(lambda: self._custom(self.spec))
        if produced is None and self.spec.data.lower().endswith(".npz"):
            self._arrays = self._npz(self.spec.resolve(self.spec.data))
            yield self._arrays
            return
        if produced is None and not _CALLABLE_REF.match(self.spec.data):
            raise DataError(f"no loader claimed {self.spec.data!r}: no pytest_advrobust_load_data "
                            "hook returned data for it, and the built-in sources are a .npz file "
                            "and \"pkg.module:callable\".", where=self.where)
        if produced is None:
            loader = import_callable(self.spec.data, self.spec.root, key=self.where, error=DataError)
            produced = self._call(loader)
        if _is_pair_of_arrays(produced):
            self._arrays = self._check_pair(produced[0], produced[1], "the loader's result")
            yield self._arrays
            return
        if not isinstance(produced, Iterable):
            raise DataError(f"the loader returned {type(produced).__name__}; it must return "
                            "(inputs, labels) or an iterable of (inputs, labels) batches.",
                            where=self.where)
        shape = None
        for index, item in enumerate(self._guard(produced)):
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise DataError(f"batch {index} from the loader is a {type(item).__name__}; each "
                                "batch must be an (inputs, labels) pair.", where=self.where)
            x, y = self._check_pair(item[0], item[1], f"batch {index}")
            if shape is not None and x.shape[1:] != shape:
                raise DataError(f"batch {index} holds inputs of shape {x.shape[1:]} but earlier "
                                f"batches {shape}; every sample must have the same shape.",
                                where=self.where)
            shape = x.shape[1:]
            yield x, y

    def _call(self, loader: Callable[[], Any]) -> Any:
        try:
            return loader()
        except Exception as exc:  # the user's loader: report it as theirs
            raise DataError(f"the data loader raised {type(exc).__name__}: {exc}",
                            where=self.where) from exc

    def _guard(self, iterable: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(iterable)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise DataError(f"iterating the loader's batches raised {type(exc).__name__}: {exc}",
                                where=self.where) from exc
            yield item

    def _npz(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if not path.is_file():
            raise DataError("file not found. Check the data key (relative to pyproject.toml).",
                            where=str(path))
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = {"x", "y"} - set(archive.files)
                if missing:
                    raise DataError(f"the archive holds {sorted(archive.files)} but needs arrays "
                                    "named x (inputs) and y (labels): np.savez(path, x=..., y=...).",
                                    where=str(path))
                x, y = archive["x"], archive["y"]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot be read as a .npz archive without pickle ({exc}).",
                            where=str(path)) from None
        return self._check_pair(x, y, "the archive")

    def _check_pair(self, x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = _to_numpy(x), _to_numpy(y)
        if x.dtype.kind not in "f":
            raise DataError(f"inputs in {what} have dtype {x.dtype}; they must be floats in "
                            "input-range units (for 8-bit images: x.astype('float32') / 255 with "
                            "input-range = [0, 1]).", where=self.where)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"labels in {what} have shape {y.shape} and dtype {y.dtype}; they must "
                            "be a 1-D integer array of class indices (not one-hot, not floats: "
                            "y.argmax(1) or y.astype('int64')).", where=self.where)
        if x.ndim < 1 or len(x) != len(y):
            raise DataError(f"{what} has {len(x) if x.ndim else 0} inputs but {len(y)} labels.",
                            where=self.where)
        if len(x) and x.size == 0:
            raise DataError(f"inputs in {what} have shape {x.shape}: samples with no values. "
                            "Check how the inputs are built.", where=self.where)
        return x, y


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _is_pair_of_arrays(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, np.ndarray) or hasattr(v, "detach") for v in value))


def _rechunk(chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int, start: int,
             stop: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Re-cut chunks of any size into batches of ``size`` covering samples ``[start, stop)``."""
    pending_x: list[np.ndarray] = []
    pending_y: list[np.ndarray] = []
    pending = 0
    position = 0  # index of the first sample of the next chunk
    emitted = start
    for x, y in chunks:
        begin, end = position, position + len(y)
        position = end
        lo = max(begin, start)
        hi = end if stop is None else min(end, stop)
        if hi > lo:
            pending_x.append(x[lo - begin:hi - begin])
            pending_y.append(y[lo - begin:hi - begin])
            pending += hi - lo
        while pending >= size:
            yield _take(pending_x, size), _take(pending_y, size), emitted
            emitted += size
            pending -= size
        if stop is not None and position >= stop:
            break
    if pending:
        yield _take(pending_x, pending), _take(pending_y, pending), emitted


def _take(parts: list[np.ndarray], size: int) -> np.ndarray:
    """Remove the first ``size`` samples from ``parts`` (views, no copy of the remainder:
    concatenating everything pending per batch would copy a whole array once per batch)."""
    taken = []
    while size:
        head = parts[0]
        if len(head) <= size:
            taken.append(parts.pop(0))
            size -= len(head)
        else:
            taken.append(head[:size])
            parts[0] = head[size:]
            size = 0
    return taken[0] if len(taken) == 1 else np.concatenate(taken)
