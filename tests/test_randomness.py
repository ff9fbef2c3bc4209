"""Position-keyed randomness: a sample's draws come from its own stream, whatever its batch."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from pytest_advrobust.randomness import SampleRandom, row_random

KEY = (0, 123, 2, 100_000_000)
MASK = (1 << 64) - 1


def mix(z: int) -> int:
    """SplitMix64's output function in plain Python integers (the reference)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def words(key, position: int, count: int) -> list[int]:
    """The first ``count`` words of sample ``position``'s stream, from the module's definition."""
    base = int.from_bytes(hashlib.blake2b(",".join(map(str, key)).encode(), digest_size=8).digest(), "little")
    seed = mix(base ^ mix(position))
    return [mix((seed + (k + 1) * 0x9E3779B97F4A7C15) & MASK) for k in range(count)]


def floats(key, position: int, count: int) -> np.ndarray:
    return np.array([(w >> 11) / 2**53 for w in words(key, position, count)])


def test_splitmix_reference_values() -> None:
    """The mixer is SplitMix64's: its published first outputs from seed 0."""
    assert [mix((k * 0x9E3779B97F4A7C15) & MASK) for k in (1, 2, 3)] == \
           [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_row_i_comes_from_sample_positions_i_own_stream() -> None:
    positions = np.array([5, 6, 7, 40])
    draws = SampleRandom(KEY, positions).random(size=(4, 3, 2))
    for row, position in enumerate(positions):
        np.testing.assert_array_equal(draws[row].ravel(), floats(KEY, int(position), 6))
    np.testing.assert_array_equal(row_random(KEY, 40, 6), floats(KEY, 40, 6))
    ints = SampleRandom(KEY, positions).integers(0, 10, size=(4, 5))
    assert ints.tolist() == [[math.floor(u * 10) for u in floats(KEY, int(p), 5)] for p in positions]
    f32 = SampleRandom(KEY, positions).random((4, 5), dtype=np.float32)
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32[1], np.array([(w >> 40) / 2**24 for w in words(KEY, 6, 5)],
                                                    dtype=np.float32))
    normal = SampleRandom(KEY, positions).standard_normal(size=(4, 2))
    w = words(KEY, 7, 4)
    expected = [math.sqrt(-2 * math.log(((w[2 * i] >> 11) + 1) / 2**53))
                * math.cos(2 * math.pi * (w[2 * i + 1] >> 11) / 2**53) for i in range(2)]
    np.testing.assert_allclose(normal[2], expected, rtol=1e-12)


def test_draws_continue_each_rows_stream() -> None:
    rng = SampleRandom(KEY, np.array([3, 4]))
    first, second = rng.random(size=(2, 3)), rng.random(size=(2, 2))
    np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), floats(KEY, 4, 5))
    np.testing.assert_array_equal(second[0], row_random(KEY, 3, 2, start=3))


def test_any_batching_gives_each_sample_the_same_draws() -> None:
    whole = SampleRandom(KEY, np.arange(100)).standard_normal(size=(100, 4))
    pieces = np.concatenate([SampleRandom(KEY, np.arange(i, min(i + 7, 100))).standard_normal(size=(len(range(i, min(i + 7, 100))), 4))
                             for i in range(0, 100, 7)])
    np.testing.assert_array_equal(whole, pieces)
    other_seed = SampleRandom((1,) + KEY[1:], np.arange(100)).standard_normal(size=(100, 4))
    assert not np.array_equal(whole, other_seed)


def test_rows_view_continues_each_rows_own_stream() -> None:
    """SPSA and square draw per step for the samples still active: a row's second draw is
    its stream's next values, whichever other rows are active, and equal to what a draw for
    the whole batch would have given it."""
    rng = SampleRandom(KEY, np.array([10, 11, 12]))
    first = rng.random(size=(3, 2))
    second = rng.rows(torch.tensor([0, 2])).random(size=(2, 2))
    np.testing.assert_array_equal(second[1], floats(KEY, 12, 4)[2:])
    np.testing.assert_array_equal(first[0], floats(KEY, 10, 2))
    third = rng.rows(np.array([False, False, True])).rows([0]).random(size=(1, 3))
    np.testing.assert_array_equal(third[0], floats(KEY, 12, 7)[4:])
    whole = SampleRandom(KEY, np.array([10, 11, 12]))
    whole.random(size=(3, 2))
    np.testing.assert_array_equal(whole.random(size=(3, 2))[[0, 2]], second)


def test_draws_of_another_shape_come_from_the_batch_stream() -> None:
    a = SampleRandom(KEY, np.array([64, 65, 66]))
    b = SampleRandom(KEY, np.array([64, 65, 66]))
    scalar = a.random()
    assert scalar == b.random() and 0 <= scalar < 1
    assert a.permutation(5).tolist() == b.permutation(5).tolist()  # any Generator method
    assert a.random(size=(2, 2)).shape == (2, 2)  # leading dim is not the rows: no error
    assert SampleRandom(KEY, np.array([0])).random() != scalar  # another batch, another stream


def test_row_streams_are_distinct_and_uniform() -> None:
    draws = SampleRandom(KEY, np.arange(50)).random(size=(50, 2000))
    assert abs(draws.mean() - 0.5) < 0.01 and abs(draws.var() - 1 / 12) < 0.002
    assert len({tuple(d[:4]) for d in draws}) == 50  # no two samples share a stream
    assert not np.array_equal(row_random((1,) + KEY[1:], 0, 8), row_random(KEY, 0, 8))
    # neighbouring samples' streams are not correlated
    assert abs(np.corrcoef(draws[:-1].ravel(), draws[1:].ravel())[0, 1]) < 0.01
    normal = SampleRandom(KEY, np.arange(50)).standard_normal(size=(50, 2000))
    assert abs(normal.mean()) < 0.02 and abs(normal.std() - 1) < 0.02


def test_integers_cover_their_range_evenly() -> None:
    ints = SampleRandom(KEY, np.arange(20)).integers(1, 8, size=(20, 700))
    assert ints.min() == 1 and ints.max() == 7
    counts = np.bincount(ints.ravel())[1:]
    assert counts.min() > 1800 and counts.max() < 2200  # 2000 each
    wide = SampleRandom(KEY, np.arange(4)).integers(0, 2**62, size=4)
    assert wide.dtype == np.int64 and (wide >= 0).all() and len(set(wide.tolist())) == 4
    assert SampleRandom(KEY, np.arange(3)).integers(5, size=3, endpoint=True).max() <= 5


def test_choice_per_row() -> None:
    rng = SampleRandom(KEY, np.arange(3))
    picks = rng.choice(np.array([10, 20, 30]), size=(3, 50))
    assert set(picks.ravel().tolist()) == {10, 20, 30}
    without = SampleRandom(KEY, np.arange(3)).choice(5, size=(3, 5), replace=False)
    assert all(sorted(row) == [0, 1, 2, 3, 4] for row in without.tolist())
    again = SampleRandom(KEY, np.arange(1, 3)).choice(5, size=(2, 5), replace=False)
    np.testing.assert_array_equal(again, without[1:])


def test_no_rows_gives_empty_draws() -> None:
    assert SampleRandom(KEY, np.array([], dtype=np.int64)).random(size=(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("method, args", [("uniform", (-1.0, 1.0)), ("normal", (0.0, 2.0))])
def test_scalar_parameter_draws_are_per_row(method, args) -> None:
    draws = getattr(SampleRandom(KEY, np.array([3, 9])), method)(*args, size=(2, 4))
    alone = getattr(SampleRandom(KEY, np.array([9])), method)(*args, size=(1, 4))
    np.testing.assert_array_equal(draws[1], alone[0])
    assert not np.array_equal(draws[0], draws[1])
