"""Random draws keyed by the sample's position, not by the order of processing.

An attack gets a :class:`SampleRandom` as its ``rng``. It behaves like a
``numpy.random.Generator``; a draw whose first dimension is the number of rows of the
batch (``rng.random(size=(len(x), ...))``, the way every built-in attack draws) is made row
by row, each row from its own sample's stream, keyed by (seed, model, check, eps, sample
position). So a sample gets the same noise signs, PGD starts and SPSA directions whatever
the batch size, whatever else is in its batch and whichever shard of a sharded run
evaluates it: shard results add up exactly to the unsharded ones. Draws of another shape
come from one stream keyed by the batch's first sample (the same batch in every shard, and
in an unsharded run, since shards are batch-aligned).

A row's stream is consumed in the order the attack asks; an attack that draws again for
only some rows (SPSA, per step, for the samples not yet fooled) takes ``rng.rows(index)``,
a view of those rows over the same streams.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["SampleRandom", "row_generator", "sample_key", "sample_order"]

#: stream tags, so a batch's stream, a fit's stream and decide-early's sample order never
#: coincide (rows: see _row_state)
BATCH, FIT, ORDER = 1, 2, 3


def sample_key(seed: int, model: str, check: int, eps: float) -> tuple[int, ...]:
    """What every stream of one gate derives from: the seed, the model, the check and eps."""
    import math
    import zlib

    # eps in billionths (an int); an eps so large that this overflows (1e300) keys by its
    # integer value instead, so a valid config never ends in an OverflowError
    scaled = eps * 1e9
    return (int(seed), zlib.crc32(model.encode()), int(check),
            int(round(scaled)) if math.isfinite(scaled) else int(eps))


def sample_order(seed: int, model: str, samples: int) -> np.ndarray:
    """The order decide-early reads a model's ``samples`` in: a permutation keyed by the seed
    and the model alone (not by batch size, check or eps), so every prefix is a uniformly
    random part of the data and the same config reads the same prefix in every run."""
    import zlib

    generator = np.random.default_rng([int(seed), zlib.crc32(model.encode()), ORDER])
    return generator.permutation(samples).astype(np.int64)


def fit_generator(key: Sequence[int]) -> np.random.Generator:
    """The stream an attack's fit step draws from (it sees the fit split, not a batch)."""
    return np.random.default_rng([*key, FIT])


def row_generator(key: Sequence[int], position: int) -> np.random.Generator:
    """Sample ``position``'s own stream, from its start: the definition every per-row draw
    of :class:`SampleRandom` follows."""
    bits = np.random.PCG64(0)
    bits.state = _row_state(_key_bytes(key), position)
    return np.random.Generator(bits)


def _key_bytes(key: Sequence[int]) -> bytes:
    return ",".join(str(int(k)) for k in key).encode()


def _row_state(key: bytes, position: int) -> dict[str, Any]:
    """A PCG64 state (128-bit state, odd increment: a stream of its own) hashed from the key
    and the position. Setting a state this way costs a fifth of seeding a generator per
    sample through a SeedSequence, which small inputs would otherwise mostly pay for."""
    import hashlib

    digest = hashlib.blake2b(key + b"|%d" % position, digest_size=32).digest()
    return {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
            "state": {"state": int.from_bytes(digest[:16], "little"),
                      "inc": int.from_bytes(digest[16:], "little") | 1}}


class SampleRandom:
    """``numpy.random.Generator``-like; row ``i`` of a per-row draw comes from the stream of
    sample ``positions[i]`` (see the module docstring)."""

    def __init__(self, key: Sequence[int], positions: Any,
                 _shared: tuple[dict[int, Any], np.random.Generator] | None = None) -> None:
        self.key = tuple(int(k) for k in key)
        #: the absolute position (index in the evaluation data) of each row
        self.positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        self._key = _key_bytes(self.key)
        if _shared is None:  # each row's stream state, and one generator they take turns in
            _shared = ({}, np.random.Generator(np.random.PCG64(0)))
        self._shared = _shared
        self._batch: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def rows(self, index: Any) -> "SampleRandom":
        """The same streams for a subset of the rows (indices or a boolean mask)."""
        if hasattr(index, "detach"):
            index = index.detach().cpu().numpy()
        view = SampleRandom(self.key, self.positions[np.asarray(index)], self._shared)
        view._batch = self._batch_stream()
        return view

    def _row(self, row: int, draw: Any) -> Any:
        """``draw(generator)`` on row ``row``'s stream, continuing where it last stopped."""
        states, generator = self._shared
        position = int(self.positions[row])
        state = states.get(position)
        generator.bit_generator.state = state if state is not None else _row_state(self._key, position)
        try:
            return draw(generator)
        finally:
            states[position] = generator.bit_generator.state

    # -- the Generator methods attacks use, per row when the shape leads with the rows ------
    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        rest = self._rest(size) if out is None else None
        if rest is None:
            return self._batch_stream().random(size, dtype, out)
        return self._fill_rows(lambda g, row: g.random(dtype=dtype, out=row), size, dtype)

    def integers(self, low: Any, high: Any = None, size: Any = None, dtype: Any = np.int64,
                 endpoint: bool = False) -> Any:
        rest = self._rest(size) if np.ndim(low) == 0 and np.ndim(high) == 0 else None
        if rest is None:
            return self._batch_stream().integers(low, high, size, dtype, endpoint)
        return self._per_row(lambda g: g.integers(low, high, rest, dtype, endpoint), size, dtype)

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None) -> Any:
        rest = self._rest(size) if np.ndim(low) == 0 and np.ndim(high) == 0 else None
        if rest is None:
            return self._batch_stream().uniform(low, high, size)
        return self._per_row(lambda g: g.uniform(low, high, rest), size, np.float64)

    def normal(self, loc: Any = 0.0, scale: Any = 1.0, size: Any = None) -> Any:
        rest = self._rest(size) if np.ndim(loc) == 0 and np.ndim(scale) == 0 else None
        if rest is None:
            return self._batch_stream().normal(loc, scale, size)
        return self._per_row(lambda g: g.normal(loc, scale, rest), size, np.float64)

    def standard_normal(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        rest = self._rest(size) if out is None else None
        if rest is None:
            return self._batch_stream().standard_normal(size, dtype, out)
        return self._fill_rows(lambda g, row: g.standard_normal(dtype=dtype, out=row), size, dtype)

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None,
               shuffle: bool = True) -> Any:
        rest = self._rest(size)
        if rest is None:
            return self._batch_stream().choice(a, size, replace, p, shuffle=shuffle)
        sample = np.asarray(a)
        return self._per_row(lambda g: g.choice(a, rest, replace, p, shuffle=shuffle), size,
                             np.int64 if sample.ndim == 0 else sample.dtype)

    def __getattr__(self, name: str) -> Any:
        """Any other Generator method: the batch's stream (deterministic per batch)."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._batch_stream(), name)

    # -- helpers ----------------------------------------------------------------------------
    def _rest(self, size: Any) -> tuple[int, ...] | None:
        """The per-row shape when ``size`` leads with the number of rows, else None."""
        if size is None:
            return None
        shape = (int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        if not shape or shape[0] != len(self.positions):
            return None
        return shape[1:]

    def _per_row(self, draw: Any, size: Any, dtype: Any) -> np.ndarray:
        shape = (int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        if not len(self.positions):
            return np.empty(shape, dtype=dtype)
        return np.stack([np.asarray(self._row(i, draw)) for i in range(len(self.positions))])

    def _fill_rows(self, fill: Any, size: Any, dtype: Any) -> np.ndarray:
        """Like :meth:`_per_row`, each row drawn straight into the result (no stacking copy;
        ``g.random(out=row)`` draws what ``g.random(row.shape)`` would)."""
        shape = (int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        out = np.empty(shape, dtype=dtype)
        if out.size == 0:
            return out
        rows = out.reshape(shape[0], -1)  # a view: row i is contiguous
        for i in range(shape[0]):
            self._row(i, lambda generator: fill(generator, rows[i]))
        return out

    def _batch_stream(self) -> np.random.Generator:
        if self._batch is None:
            first = int(self.positions[0]) if len(self.positions) else -1
            self._batch = np.random.default_rng([*self.key, BATCH, first & 0xFFFFFFFFFFFFFFFF])
        return self._batch
