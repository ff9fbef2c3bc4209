"""Random draws keyed by the sample's position, not by the order of processing.

An attack gets a :class:`SampleRandom` as its ``rng``. It behaves like a
``numpy.random.Generator``; a draw whose first dimension is the number of rows of the
batch (``rng.random(size=(len(x), ...))``, the way every built-in attack draws) gives each
row the next values of its own sample's stream, keyed by (seed, model, check, eps, sample
position). So a sample gets the same noise signs, PGD starts and SPSA directions whatever
the batch size, whatever else is in its batch and whichever shard of a sharded run
evaluates it: shard results add up exactly to the unsharded ones. Draws of another shape
come from one stream keyed by the batch's first sample (the same batch in every shard, and
in an unsharded run, since shards are batch-aligned).

**The streams are counter-based**, so a draw for every row of a batch is a few numpy
operations, not one generator per row: word ``k`` (from 0) of sample ``position``'s stream
is SplitMix64's ``k``-th output from the row's seed (Steele, Lea & Flood, 2014)::

    seed(key, position) = mix(hash(key) ^ mix(position))      hash: blake2b, 8 bytes
    word(k)             = mix(seed + (k + 1) * 0x9E3779B97F4A7C15)          (mod 2**64)
    mix(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
            z ^= z >> 31

A float64 in [0, 1) is ``(word >> 11) / 2**53``, a float32 ``(word >> 40) / 2**24``; an
integer in ``[low, high)`` is ``low + floor(u * (high - low))`` for that float64 ``u`` (the
word modulo the span for spans above 2**53); a normal is Box-Muller on two words
(``sqrt(-2 log u1) cos(2 pi u2)``, ``u1 = ((w1 >> 11) + 1) / 2**53``). A row's words are
consumed in the order the attack asks; an attack that draws again for only some rows
(SPSA and square, per step, for the samples not yet fooled) takes ``rng.rows(index)``, a
view of those rows over the same streams, and gets exactly the values those rows would
have got from a draw for the whole batch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["SampleRandom", "row_random", "sample_key", "sample_order", "splitmix"]

#: stream tags, so a batch's stream, a fit's stream and decide-early's sample order never
#: coincide
BATCH, FIT, ORDER = 1, 2, 3
#: SplitMix64's increment (the golden ratio) and its two multipliers
GAMMA, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
#: integers with a span up to this are drawn from one float64 (unbiased to 2**-53)
EXACT_SPAN = 1 << 53
_GAMMA, _MIX1, _MIX2 = np.uint64(GAMMA), np.uint64(MIX1), np.uint64(MIX2)
_S11, _S27, _S30, _S31, _S40 = (np.uint64(s) for s in (11, 27, 30, 31, 40))


def sample_key(seed: int, model: str, check: int, eps: float) -> tuple[int, ...]:
    """What every stream of one gate derives from: the seed, the model, the check and eps."""
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


def splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (a bijection of 64-bit words)."""
    z = np.array(z, dtype=np.uint64, ndmin=1)  # arrays wrap around silently; scalars would warn
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return z


def row_seeds(key: Sequence[int], positions: Any) -> np.ndarray:
    """Each position's stream seed under ``key`` (uint64): ``mix(hash(key) ^ mix(position))``."""
    import hashlib

    digest = hashlib.blake2b(_key_bytes(key), digest_size=8).digest()
    base = np.uint64(int.from_bytes(digest, "little"))
    positions = np.asarray(positions, dtype=np.int64).astype(np.uint64)
    return splitmix(base ^ splitmix(positions))


def row_random(key: Sequence[int], position: int, count: int, start: int = 0) -> np.ndarray:
    """Floats ``start .. start + count - 1`` of sample ``position``'s stream: the definition
    every per-row ``random`` draw of :class:`SampleRandom` follows."""
    words = _words(row_seeds(key, [position]), np.zeros(1, np.uint64) + np.uint64(start), count)
    return _float64(words[0])


def _key_bytes(key: Sequence[int]) -> bytes:
    return ",".join(str(int(k)) for k in key).encode()


def _words(seeds: np.ndarray, starts: np.ndarray, count: int) -> np.ndarray:
    """``[rows, count]`` uint64: words ``starts[i] .. starts[i] + count - 1`` of row ``i``."""
    z = starts[:, None] + np.arange(1, count + 1, dtype=np.uint64)
    z *= _GAMMA
    z += seeds[:, None]
    return splitmix(z)


def _float64(words: np.ndarray) -> np.ndarray:
    return (words >> _S11).astype(np.float64) * (1.0 / EXACT_SPAN)


def _float32(words: np.ndarray) -> np.ndarray:
    return (words >> _S40).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _as_shape(size: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in size) if isinstance(size, (tuple, list)) or np.ndim(size) \
        else (int(size),)


class SampleRandom:
    """``numpy.random.Generator``-like; row ``i`` of a per-row draw comes from the stream of
    sample ``positions[i]`` (see the module docstring)."""

    def __init__(self, key: Sequence[int], positions: Any) -> None:
        self.key = tuple(int(k) for k in key)
        #: the absolute position (index in the evaluation data) of each row
        self.positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        # every view shares its root's seeds and counters (words consumed per row)
        self._seeds = row_seeds(self.key, self.positions)
        self._counters = np.zeros(len(self.positions), dtype=np.uint64)
        self._index = np.arange(len(self.positions))
        self._root = self
        self._batch: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def rows(self, index: Any) -> "SampleRandom":
        """The same streams for a subset of the rows (indices or a boolean mask)."""
        if hasattr(index, "detach"):
            index = index.detach().cpu().numpy()
        index = np.asarray(index)
        if index.dtype == bool:
            index = index.nonzero()[0]
        view = object.__new__(SampleRandom)
        view.key, view._root = self.key, self._root
        view._index = self._index[index.astype(np.int64).reshape(-1)]
        view.positions = self._root.positions[view._index]
        view._seeds, view._counters = self._root._seeds, self._root._counters
        view._batch = self._batch_stream()
        return view

    def _take(self, count: int) -> np.ndarray:
        """``[rows, count]`` uint64: each row's next ``count`` words (its counter moves on)."""
        index = self._index
        words = _words(self._seeds[index], self._counters[index], count)
        self._counters[index] += np.uint64(count)
        return words

    # -- the Generator methods attacks use, per row when the shape leads with the rows ------
    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        rest = self._rest(size) if out is None else None
        if rest is None:
            return self._batch_stream().random(size, dtype, out)
        shape, count = self._shape(size)
        if np.dtype(dtype) == np.float32:
            return _float32(self._take(count)).reshape(shape)
        if np.dtype(dtype) != np.float64:
            raise TypeError(f"Unsupported dtype {np.dtype(dtype)} for random")
        return _float64(self._take(count)).reshape(shape)

    def integers(self, low: Any, high: Any = None, size: Any = None, dtype: Any = np.int64,
                 endpoint: bool = False) -> Any:
        rest = self._rest(size) if np.ndim(low) == 0 and np.ndim(high) == 0 else None
        if rest is None:
            return self._batch_stream().integers(low, high, size, dtype, endpoint)
        if high is None:
            low, high = 0, low
        span = int(high) - int(low) + bool(endpoint)
        if span < 1:
            raise ValueError("high <= low")
        shape, count = self._shape(size)
        words = self._take(count)
        if span <= EXACT_SPAN:
            values = np.minimum(np.floor(_float64(words) * span), span - 1).astype(np.int64) + int(low)
        else:  # wider than a float's mantissa: the word modulo the span
            offsets = words if span == 1 << 64 else words % np.uint64(span)
            values = offsets.astype(np.int64) + int(low) if span <= 1 << 63 else offsets + np.uint64(int(low))
        return values.astype(dtype).reshape(shape)

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None) -> Any:
        rest = self._rest(size) if np.ndim(low) == 0 and np.ndim(high) == 0 else None
        if rest is None:
            return self._batch_stream().uniform(low, high, size)
        return low + (high - low) * self.random(size)

    def normal(self, loc: Any = 0.0, scale: Any = 1.0, size: Any = None) -> Any:
        rest = self._rest(size) if np.ndim(loc) == 0 and np.ndim(scale) == 0 else None
        if rest is None:
            return self._batch_stream().normal(loc, scale, size)
        return loc + scale * self.standard_normal(size)

    def standard_normal(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        rest = self._rest(size) if out is None else None
        if rest is None:
            return self._batch_stream().standard_normal(size, dtype, out)
        shape, count = self._shape(size)
        words = self._take(2 * count).reshape(len(self), count, 2)
        radius = np.sqrt(-2.0 * np.log(((words[..., 0] >> np.uint64(11)) + np.uint64(1))
                                       .astype(np.float64) * (1.0 / EXACT_SPAN)))
        values = radius * np.cos(2.0 * np.pi * _float64(words[..., 1]))
        return values.astype(dtype).reshape(shape)

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None,
               shuffle: bool = True) -> Any:
        rest = self._rest(size)
        if rest is None:
            return self._batch_stream().choice(a, size, replace, p, shuffle=shuffle)
        sample = np.asarray(a)
        n = int(sample) if sample.ndim == 0 else len(sample)
        shape, _ = self._shape(size)
        if replace and p is None:
            picks = self.integers(0, n, size=shape)
            return picks if sample.ndim == 0 else sample[picks]
        # without replacement or with weights: one word per row seeds that row's own draw
        seeds = self._take(1)[:, 0]
        out = [np.random.default_rng(int(seed)).choice(a, rest, replace, p, shuffle=shuffle)
               for seed in seeds]
        return np.stack(out) if out else np.empty(shape, np.int64 if sample.ndim == 0 else sample.dtype)

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
        shape = _as_shape(size)
        if not shape or shape[0] != len(self.positions):
            return None
        return shape[1:]

    def _shape(self, size: Any) -> tuple[tuple[int, ...], int]:
        """The full shape of a per-row draw and the values each row takes."""
        shape = _as_shape(size)
        return shape, math.prod(shape[1:])

    def _batch_stream(self) -> np.random.Generator:
        if self._batch is None:
            first = int(self.positions[0]) if len(self.positions) else -1
            # keyed by a hash of the key (its parts may be negative: a model-wide key uses
            # check -1), the tag and the batch's first sample
            seed = int(row_seeds((*self.key, BATCH), [first])[0])
            self._batch = np.random.default_rng(seed)
        return self._batch
