"""Evaluation data: loading, checking, and streaming in batches so memory stays flat.

Sources: a ``.npz`` file with arrays ``x`` and ``y``, or ``"pkg.module:callable"``
returning ``(inputs, labels)`` (numpy arrays or torch tensors) or an iterable of
``(inputs, labels)`` batches (a generator, a DataLoader). Each pass over the data calls the
loader again, so a generator is fine; the user's arrays are copied batch by batch, never
written to.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
from numpy.lib import format as npy

from .archives import ReadLimit, refusal
from .errors import AdvRobustWarning, DataError, user_frame
from .imports import import_callable

if TYPE_CHECKING:
    import torch

    from .config import ModelSpec

__all__ = ["Batch", "Census", "EvalData"]

_CALLABLE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: data spanning less than this share of input-range's width gets a warning (eps and
#: clipping are in input-range units, so they then mean something else than intended)
NARROW_DATA = 0.05


@dataclass(frozen=True)
class Batch:
    """A batch of raw inputs and integer labels, and the index of its first sample in the
    pass (its position in the data unless ``index`` says otherwise)."""

    x: "torch.Tensor"
    y: "torch.Tensor"
    offset: int
    #: each sample's position in the data, when they are not ``offset, offset + 1, ...``
    #: (decide-early's shuffled pass); random streams and fit splits are keyed by them
    index: np.ndarray | None = None

    def positions(self) -> np.ndarray:
        """Each sample's position in the data (int64)."""
        if self.index is not None:
            return self.index
        return np.arange(self.offset, self.offset + len(self.y), dtype=np.int64)

    def head(self, rows: int) -> tuple["Batch", "Batch"]:
        """The first ``rows`` samples and the rest, as two batches."""
        positions = self.positions()
        return (Batch(self.x[:rows], self.y[:rows], self.offset, positions[:rows]),
                Batch(self.x[rows:], self.y[rows:], self.offset + rows, positions[rows:]))

    def rows(self, keep: np.ndarray) -> "Batch":
        """The samples ``keep`` (a boolean mask) selects, with their positions."""
        import torch

        chosen = np.flatnonzero(keep)
        rows = torch.from_numpy(chosen).to(self.y.device)
        return Batch(self.x[rows], self.y[rows], self.offset, self.positions()[chosen])


def out_of_range(smallest: float, largest: float, low: float, high: float, offset: int, *,
                 whole: bool = False) -> str:
    """Why data outside input-range is refused, and the fix that keeps eps meaning what the
    user meant: 8-bit pixel values (``whole`` numbers up to 255) against input-range [0, 1]
    are divided by 255 in the loader; widening input-range instead would keep eps in grey
    levels, so the configured eps would move almost nothing."""
    where = (f"inputs range over [{smallest:.4g}, {largest:.4g}] (batch starting at sample "
             f"{offset}) but input-range is [{low:g}, {high:g}].")
    if whole and low >= 0 and high <= 1 and smallest >= low and 1 < largest <= 255:
        return (f"{where} The data looks like 8-bit pixel values (0-255): divide by 255 in the "
                "loader (x.astype('float32') / 255) and keep input-range; eps then stays a share "
                "of the pixel range (eps = 0.1 is 25.5 of 255 grey levels). Setting input-range "
                "= [0, 255] instead would make eps = 0.1 a tenth of one grey level, which moves "
                "no prediction (the gates would then report gradient masking or pass for no "
                "reason); with that range, eps must be given in grey levels (0.1 -> 25.5).")
    return (f"{where} eps and clipping act in input-range units, so they must match the data: "
            "scale the data into input-range in the loader, or set input-range to the data's "
            "range and give eps in those units too (eps is a distance in input-range units); "
            "or feed raw (unnormalised) data and use normalize.")


class Census:
    """What a pass saw of the whole data stream, its other shards' samples included: how
    many samples, a digest of every label in order, and with ``parts`` = N shards a digest
    of each shard's part (its batches' inputs and labels). Shards of one evaluation must
    agree on all of it, or they did not read the same data (a shuffling loader, another
    file); a shard's own part tells which shard a report really measured."""

    #: input batches of at least this many bytes are hashed on a helper thread, overlapping
    #: the next batch's work (hashlib releases the GIL); smaller ones are hashed at once
    BACKGROUND_BYTES = 1 << 20

    def __init__(self, parts: int = 1) -> None:
        import hashlib

        self.samples = 0
        self._digest = hashlib.sha256()
        self._inputs = hashlib.blake2b(digest_size=8)
        self._parts = [hashlib.blake2b(digest_size=8) for _ in range(parts)] if parts > 1 else []
        #: the thread hashing the previous batch's inputs (at most one batch in flight, so
        #: the hashes see the batches in order and memory holds one batch more at most)
        self._job: Any = None

    def add(self, labels: np.ndarray, inputs: np.ndarray | None = None, batch: int = 0, *,
            background: bool = False) -> None:
        """Count batch number ``batch`` (in batch-size units from the stream's start). With
        ``background``, a large batch's inputs are hashed on a helper thread: the caller
        must not let them change before :meth:`wait` (a loader may reuse its buffers)."""
        self.samples += len(labels)
        labels = np.ascontiguousarray(labels, dtype="<i8").tobytes()
        self._digest.update(labels)
        if inputs is not None:  # one byte stream: where batches are cut does not matter
            # the array's bytes without a copy of them (tobytes() doubled the cost of hashing)
            data = np.ascontiguousarray(inputs).reshape(-1).view(np.uint8)
            part = self._parts[batch % len(self._parts)] if self._parts else None
            self.wait()
            if not background or data.nbytes < self.BACKGROUND_BYTES:
                self._hash(data, labels, part)
            else:
                import threading

                self._job = threading.Thread(target=self._hash, args=(data, labels, part),
                                             name="advrobust-census", daemon=True)
                self._job.start()

    def _hash(self, data: np.ndarray, labels: bytes, part: Any) -> None:
        self._inputs.update(data)
        if part is not None:
            part.update(labels)
            part.update(data)

    def wait(self) -> None:
        """Let the previous batch's hash finish (before the next one, or a digest)."""
        if self._job is not None:
            self._job.join()
            self._job = None

    def summary(self) -> dict[str, Any]:
        """What a shard's result records (with ``parts``: each shard's part, in order)."""
        self.wait()
        out: dict[str, Any] = {"samples": self.samples,
                               "labels": "sha256:" + self._digest.hexdigest()[:16]}
        if self._parts:
            out["parts"] = [f"blake2b:{part.hexdigest()}" for part in self._parts]
        return out

    def digest(self) -> str:
        """Inputs and labels of the whole stream: what a baseline's ``data`` fingerprint holds."""
        self.wait()
        return f"blake2b:{self._inputs.hexdigest()}{self._digest.hexdigest()[:16]}"


class EvalData:
    """The evaluation set of one model: re-iterable, validated batch by batch."""

    def __init__(self, spec: "ModelSpec", custom: Callable[["ModelSpec"], Any] | None = None) -> None:
        """``custom(spec)``: the ``pytest_advrobust_load_data`` hook; None from it (or no
        hook) means the built-in sources."""
        self.spec = spec
        self.where = spec.key("data")
        self._custom = custom
        self._arrays: tuple[Any, Any] | None = None
        self._range_checked = False
        #: the narrow-data warning, when a warnings filter made it an error: every later pass
        #: over this data fails with it too (under xdist a worker runs several passes)
        self._range_error: DataError | None = None
        #: a stream opened by :meth:`random_access` (its first chunk and the rest), which
        #: the next pass reads instead of calling the loader again
        self._opened: tuple[Any, Iterator[Any]] | None = None
        self._is_stream = False  # the source yields batches (known once it was called)

    @property
    def size(self) -> int | None:
        """Samples a pass evaluates, once known without reading ahead (arrays already
        loaded; ``max-samples`` caps it); None for a stream of batches (progress lines)."""
        if self._arrays is None:
            return None
        count = len(self._arrays[1])
        return count if self.spec.max_samples is None else min(count, self.spec.max_samples)

    def random_access(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The data as arrays ``(x, y)`` (capped by ``max-samples`` only when a pass reads
        them) when the source gives arrays (a .npz, a loader returning inputs and labels),
        so samples can be read in any order; None for a loader that yields batches, whose
        order is its own. Loads the data if no pass has yet."""
        if self._arrays is None and self._opened is None and not self._is_stream:
            chunks = self._chunks()
            first = next(chunks, None)
            if self._arrays is None:  # a stream: the next pass starts with what was read
                self._opened = (first, chunks)
        return self._arrays

    def rows(self, positions: np.ndarray, dtype: "torch.dtype", offset: int) -> Batch:
        """The samples at ``positions`` (of :meth:`random_access`'s arrays) as a batch; a pass
        over the data in its own order has checked them already."""
        import torch

        assert self._arrays is not None
        xs, ys = self._arrays
        chosen = xs[positions]  # fancy indexing copies: the tensor never shares the user's memory
        x = torch.from_numpy(chosen).to(dtype) if chosen.dtype.isnative else torch.tensor(chosen, dtype=dtype)
        return Batch(x, torch.tensor(ys[positions], dtype=torch.int64), offset,
                     np.asarray(positions, dtype=np.int64))

    @property
    def source(self) -> str:
        return str(self.spec.resolve(self.spec.data)) if self.spec.data.lower().endswith(".npz") \
            else self.spec.data

    def batches(self, batch_size: int, dtype: "torch.dtype", *, start: int = 0,
                stop: int | None = None, shard: tuple[int, int] | None = None,
                census: Census | None = None) -> Iterator[Batch]:
        """Batches of samples ``[start, stop)`` (clipped to ``max-samples``), as torch tensors.

        ``shard=(k, n)``: only batches ``k-1, k-1+n, k-1+2n, ...`` (by batch index, so a
        loader of unknown length works and every shard keeps the unsharded batch
        boundaries); the others are passed over without being converted or checked.
        ``census`` counts and digests every label of the stream, passed-over ones included.
        """
        import torch

        if self._range_error is not None:
            raise self._range_error
        limit = self.spec.max_samples
        stop = limit if stop is None else (stop if limit is None else min(stop, limit))
        low, high = self.spec.input_range
        tolerance = 1e-6 * (high - low)
        seen = 0
        span = [math.inf, -math.inf]  # the data's range over a whole pass
        for xs, ys, offset in _rechunk(self._chunks(), batch_size, start, stop):
            seen += len(ys)
            mine = shard is None or ((offset - start) // batch_size) % shard[1] == shard[0] - 1
            if census is not None:  # a batch this pass hands out is hashed while it is used
                census.add(ys, xs, batch=(offset - start) // batch_size, background=mine)
            if not mine:
                continue  # another shard's batch
            x = torch.tensor(xs, dtype=dtype)
            y = torch.tensor(ys, dtype=torch.int64)
            smallest, largest = (float(v) for v in torch.aminmax(x))  # NaN propagates: one pass
            if not (math.isfinite(smallest) and math.isfinite(largest)):
                bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
                if np.isfinite(xs).all():  # finite in the data's dtype, not in the model's
                    raise DataError(
                        f"inputs of {bad} samples (batch starting at sample {offset}) are too "
                        f"large for the model's dtype {str(dtype).replace('torch.', '')} (largest "
                        f"magnitude {float(np.abs(xs).max()):.4g}) and become inf. Scale the data "
                        "into input-range units the model can hold.", where=self.where)
                raise DataError(f"inputs hold NaN or inf ({bad} samples in the batch starting at "
                                f"sample {offset}). Clean the data before gating on it.",
                                where=self.where)
            if smallest < low - tolerance or largest > high + tolerance:
                raise DataError(out_of_range(smallest, largest, low, high, offset,
                                             whole=bool(torch.equal(x, x.round()))), where=self.where)
            if y.min() < 0:
                raise DataError(f"labels must be class indices >= 0; found {int(y.min())}.",
                                where=self.where)
            span[0], span[1] = min(span[0], smallest), max(span[1], largest)
            yield Batch(x, y, offset)
            if census is not None:  # before the loader runs again (it may reuse its buffers)
                census.wait()
        if seen == 0 and start == 0:
            raise DataError("the data is empty (no samples). Check the loader or the .npz file.",
                            where=self.where)
        if start == 0 and stop == limit and not self._range_checked:
            self._range_checked = True
            self._warn_if_narrow(*span)

    def _warn_if_narrow(self, smallest: float, largest: float) -> None:
        """Once per model: data filling a tiny part of input-range (data in [0, 1] with
        input-range [0, 255]) makes every eps mean something else than intended."""
        low, high = self.spec.input_range
        if smallest > largest or largest - smallest >= NARROW_DATA * (high - low):
            return  # no batch seen here (a shard with none), or data that fills the range
        eps = max((e for check in self.spec.checks for e in check.eps), default=0.0)
        scale = (f" The largest eps, {eps:g}, is {eps / (largest - smallest):.3g} times the "
                 "data's whole span." if eps > 0 and largest > smallest else "")
        warning = AdvRobustWarning(
            f"{self.where}: the data ranges over [{smallest:.4g}, {largest:.4g}], "
            f"{100 * (largest - smallest) / (high - low):.2g}% of input-range [{low:g}, {high:g}] "
            f"(key input-range of [{self.spec.table}]). eps and clipping are in input-range "
            f"units, so eps then means something else than it would on data filling the range.{scale} "
            "If the data was rescaled (x / 255), set input-range to the data's units and eps in "
            "them; if the range is right, ignore this.")
        try:
            warnings.warn_explicit(warning, AdvRobustWarning, str(self.spec.source),
                                   _line_of(self.spec.source, f"[{self.spec.table}]"))
        except AdvRobustWarning:  # a warnings filter turned it into an error (-W error)
            self._range_error = DataError(f"{str(warning).split(': ', 1)[1]} (AdvRobustWarning, "
                                          "turned into an error by a warnings filter)",
                                          where=self.where)
            raise self._range_error from None

    # -- sources --------------------------------------------------------------------------
    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._arrays is not None:
            yield self._arrays
            return
        if self._opened is not None:  # the stream random_access() opened
            first, rest = self._opened
            self._opened = None
            if first is not None:
                yield first
            yield from rest
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
        pair = self._pair(produced, "the loader")
        if pair is not None:
            self._arrays = self._check_pair(pair[0], pair[1], "the loader's result")
            yield self._arrays
            return
        if not isinstance(produced, Iterable) or isinstance(produced, (str, bytes)):
            raise DataError(f"the loader returned {_describe(produced)}; it must return "
                            f"{_EXPECTED}.", where=self.where)
        self._is_stream = True
        shape = None
        for index, item in enumerate(self._guard(produced)):
            pair = self._pair(item, f"batch {index} from the loader")
            if pair is None:
                raise DataError(f"batch {index} from the loader is {_describe(item)}; each batch "
                                "must be an (inputs, labels) pair (a tuple, a list [x, y] or a "
                                "dict {\"x\": ..., \"y\": ...}).", where=self.where)
            x, y = self._check_pair(pair[0], pair[1], f"batch {index}")
            if shape is not None and x.shape[1:] != shape:
                raise DataError(f"batch {index} holds inputs of shape {x.shape[1:]} but earlier "
                                f"batches {shape}; every sample must have the same shape.",
                                where=self.where)
            shape = x.shape[1:]
            yield x, y

    def _pair(self, value: Any, what: str) -> tuple[Any, Any] | None:
        """``(x, y)`` from the pair forms a loader may give: a tuple or list ``(x, y)`` whose
        inputs are an array or tensor (labels may be a list), or ``{"x": ..., "y": ...}``.
        None when ``value`` is none of these (it may then be an iterable of batches); a
        DataError when it is meant as a pair but is not one (a 3-tuple, other dict keys)."""
        if isinstance(value, dict):
            if {"x", "y"} <= set(value):
                return value["x"], value["y"]
            raise DataError(f"{what} returned a dict with keys {sorted(map(str, value))}; a dict "
                            "must hold the inputs under \"x\" and the labels under \"y\".",
                            where=self.where)
        if _is_array(value):
            raise DataError(f"{what} returned one array of shape {tuple(value.shape)}, not inputs "
                            f"and labels; it must return {_EXPECTED}.", where=self.where)
        if isinstance(value, (tuple, list)) and value and _is_array(value[0]):
            if len(value) != 2:
                raise DataError(f"{what} returned a {type(value).__name__} of {len(value)} items "
                                f"({', '.join(_describe(v) for v in value[:4])}"
                                f"{', ...' if len(value) > 4 else ''}); it must return "
                                f"{_EXPECTED}. Drop the extra items (e.g. return x, y).",
                                where=self.where)
            return value[0], value[1]
        return None

    def _call(self, loader: Callable[[], Any]) -> Any:
        try:
            return loader()
        except Exception as exc:  # the user's loader: report it as theirs
            frame = user_frame(exc)
            raise DataError(f"the data loader raised {type(exc).__name__}: {exc}"
                            f"{f' (in {frame})' if frame else ''}", where=self.where) from exc

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
        """``x`` and ``y`` of a .npz, checked; with ``max-samples``, only their first rows
        are kept in memory (the rest of each member is streamed through its CRC check).
        Members declaring more than ``max-read-bytes`` are refused before any is read."""
        if not path.is_file():
            raise DataError("file not found. Check the data key (relative to pyproject.toml).",
                            where=str(path))
        rows = self.spec.max_samples
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = {"x", "y"} - set(archive.files)
                if missing:
                    raise DataError(f"the archive holds {sorted(archive.files)} but needs arrays "
                                    "named x (inputs) and y (labels): np.savez(path, x=..., y=...).",
                                    where=str(path))
                names = archive.zip.namelist()  # NpzFile's rule: a member "x", else "x.npy"
                members = [key if key in names else f"{key}.npy" for key in ("x", "y")]
                problem = refusal([archive.zip.getinfo(name) for name in members],
                                  ReadLimit.of(self.spec))
                if problem is not None:
                    raise DataError(problem, where=str(path))
                with _NpyMember(archive.zip, members[0]) as x, _NpyMember(archive.zip, members[1]) as y:
                    labels = _to_numpy(y.read(rows))
                    self._check_layout(x, y, labels, "the archive")  # before reading the inputs
                    inputs = _to_numpy(x.read(rows))
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot be read as a .npz archive without pickle ({exc}).",
                            where=str(path)) from None
        return inputs, labels

    def _check_pair(self, x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = _to_numpy(x), _to_numpy(y)
        self._check_layout(x, y, y, what)
        return x, y

    def _check_layout(self, x: Any, y: Any, labels: np.ndarray, what: str) -> None:
        """The rules on inputs and labels, from the ``shape`` and ``dtype`` of ``x`` and ``y``
        (arrays, or .npy headers when only the first rows are read) and the labels read."""
        if x.dtype.kind not in "f":
            raise DataError(f"inputs in {what} have dtype {x.dtype}; they must be floats in "
                            "input-range units (for 8-bit images: x.astype('float32') / 255 with "
                            "input-range = [0, 1]).", where=self.where)
        if y.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
            raise DataError(f"a label in {what} is {int(labels.max())}, beyond any class index. "
                            "Check the labels (an unsigned overflow of -1?).", where=self.where)
        if len(y.shape) != 1 or y.dtype.kind not in "iu":
            raise DataError(f"labels in {what} have shape {y.shape} and dtype {y.dtype}; they must "
                            "be a 1-D integer array of class indices (not one-hot, not floats: "
                            "y.argmax(1) or y.astype('int64')).", where=self.where)
        inputs = x.shape[0] if x.shape else 0
        if not x.shape or inputs != y.shape[0]:
            raise DataError(f"{what} has {inputs} inputs but {y.shape[0]} labels.", where=self.where)
        if inputs and math.prod(x.shape) == 0:
            raise DataError(f"inputs in {what} have shape {x.shape}: samples with no values. "
                            "Check how the inputs are built.", where=self.where)


class _NpyMember:
    """One member of an open .npz with its .npy header read and its data not yet: ``shape``
    and ``dtype``, then :meth:`read` for the whole array or its first rows. Gives what
    ``NpzFile[key]`` gives (an array; the raw bytes of a member that is not .npy; numpy's
    own errors for pickled objects), in at most the memory of what it returns."""

    CHUNK = 1 << 20

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self.info = archive.getinfo(name)
        self._stream = archive.open(self.info)
        self._whole: Any = None  # the member, when it is read at once
        try:
            self._read_header()
        except BaseException:
            self._stream.close()
            raise

    def _read_header(self) -> None:
        magic = self._stream.read(npy.MAGIC_LEN)
        readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
        version = tuple(magic[len(npy.MAGIC_PREFIX):])
        if not magic.startswith(npy.MAGIC_PREFIX):
            self._stream.seek(0)
            self._whole = self._stream.read()  # not .npy: NpzFile gives the bytes
        elif version in readers:
            self.shape, fortran_order, self.dtype = readers[version](self._stream)
            if fortran_order or self.dtype.hasobject:  # rows are not a prefix / numpy refuses it
                self._whole = self._numpy_read()
        else:  # format 3.0 (utf-8 field names), or numpy's error for another version
            self._whole = self._numpy_read()
        if self._whole is not None:
            whole = np.asarray(self._whole)
            self.shape, self.dtype = whole.shape, whole.dtype

    def _numpy_read(self) -> np.ndarray:
        self._stream.seek(0)
        return npy.read_array(self._stream, allow_pickle=False)

    def read(self, rows: int | None = None) -> Any:
        """The array, or its first ``rows`` rows (along the first axis), then the rest of the
        member streamed through (zipfile checks a member's CRC at its end)."""
        if self._whole is not None:
            whole = self._whole
            if rows is not None and isinstance(whole, np.ndarray) and whole.ndim and rows < len(whole):
                whole = np.ascontiguousarray(whole[:rows])
        else:
            whole = self._read_rows(rows)
        while self._stream.read(self.CHUNK):
            pass
        return whole

    def _read_rows(self, rows: int | None) -> np.ndarray:
        shape = tuple(self.shape)
        keep = shape if rows is None or not shape or rows >= shape[0] else (rows, *shape[1:])
        size = math.prod(shape) * self.dtype.itemsize
        held = self.info.file_size - self._stream.tell()
        if size > held:
            raise ValueError(f"EOF: the member {self.info.filename!r} declares {math.prod(shape)} "
                             f"values of {self.dtype} in its .npy header ({size} bytes) but holds "
                             f"{held} bytes of data")
        if self.dtype.itemsize == 0:
            return np.ndarray(keep, self.dtype)
        buffer = bytearray(math.prod(keep) * self.dtype.itemsize)
        view, filled = memoryview(buffer), 0
        while filled < len(buffer):
            got = self._stream.readinto(view[filled:filled + self.CHUNK])
            if not got:
                raise ValueError(f"EOF: reading the data of member {self.info.filename!r}")
            filled += got
        return np.frombuffer(buffer, dtype=self.dtype).reshape(keep)

    def __enter__(self) -> "_NpyMember":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stream.close()


def _line_of(path: Path, text: str) -> int:
    """The line of ``path`` that starts with ``text`` (1 when none does, or unreadable)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return 1
    return next((i for i, line in enumerate(lines, 1) if line.strip().startswith(text)), 1)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


_EXPECTED = ("(inputs, labels), [inputs, labels] or {\"x\": inputs, \"y\": labels} (inputs a "
             "numpy array or torch tensor, labels an array, tensor or list of class indices), or "
             "an iterable of such batches")


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def _describe(value: Any) -> str:
    """What a loader returned, in words: the type and, for arrays, the shape and dtype."""
    if _is_array(value):
        return (f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype "
                f"{str(value.dtype).replace('torch.', '')}")
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return "None" if value is None else f"a {type(value).__name__}"


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
        # what waits for the next chunk is copied first: a loader may refill the buffer it
        # handed out as soon as it is asked for the next batch (less than one batch)
        pending_x = [np.array(part) for part in pending_x]
        pending_y = [np.array(part) for part in pending_y]
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
