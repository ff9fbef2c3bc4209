"""Position-keyed randomness: a sample's draws come from its own stream, whatever its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_advrobust.randomness import SampleRandom, row_generator

KEY = (0, 123, 2, 100_000_000)


def own(position: int) -> np.random.Generator:
    """Sample ``position``'s stream from its start (the definition)."""
    return row_generator(KEY, position)


def test_row_i_comes_from_sample_positions_i_own_stream() -> None:
    positions = np.array([5, 6, 7, 40])
    draws = SampleRandom(KEY, positions).random(size=(4, 3, 2))
    for row, position in enumerate(positions):
        np.testing.assert_array_equal(draws[row], own(position).random((3, 2)))
    ints = SampleRandom(KEY, positions).integers(0, 2**32, size=4)
    assert ints.tolist() == [int(own(p).integers(0, 2**32)) for p in positions]
    f32 = SampleRandom(KEY, positions).random((4, 5), dtype=np.float32)
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32[1], own(6).random(5, dtype=np.float32))


def test_any_batching_gives_each_sample_the_same_draws() -> None:
    whole = SampleRandom(KEY, np.arange(100)).standard_normal(size=(100, 4))
    pieces = np.concatenate([SampleRandom(KEY, np.arange(i, min(i + 7, 100))).standard_normal(size=(len(range(i, min(i + 7, 100))), 4))
                             for i in range(0, 100, 7)])
    np.testing.assert_array_equal(whole, pieces)
    other_seed = SampleRandom((1,) + KEY[1:], np.arange(100)).standard_normal(size=(100, 4))
    assert not np.array_equal(whole, other_seed)


def test_rows_view_continues_each_rows_own_stream() -> None:
    """SPSA draws per step for the samples still active: a row's second draw is its stream's
    second draw, whichever other rows are active."""
    rng = SampleRandom(KEY, np.array([10, 11, 12]))
    first = rng.random(size=(3, 2))
    second = rng.rows(torch.tensor([0, 2])).random(size=(2, 2))
    expected = own(12)
    expected.random(2)
    np.testing.assert_array_equal(second[1], expected.random(2))
    np.testing.assert_array_equal(first[0], own(10).random(2))


def test_draws_of_another_shape_come_from_the_batch_stream() -> None:
    a = SampleRandom(KEY, np.array([64, 65, 66]))
    b = SampleRandom(KEY, np.array([64, 65, 66]))
    scalar = a.random()
    assert scalar == b.random() and 0 <= scalar < 1
    assert a.permutation(5).tolist() == b.permutation(5).tolist()  # any Generator method
    assert a.random(size=(2, 2)).shape == (2, 2)  # leading dim is not the rows: no error
    assert SampleRandom(KEY, np.array([0])).random() != scalar  # another batch, another stream


def test_row_streams_are_distinct_and_uniform() -> None:
    draws = np.stack([own(p).random(2000) for p in range(50)])
    assert abs(draws.mean() - 0.5) < 0.01 and abs(draws.var() - 1 / 12) < 0.002
    assert len({tuple(d[:4]) for d in draws}) == 50  # no two samples share a stream
    assert not np.array_equal(row_generator((1,) + KEY[1:], 0).random(8), own(0).random(8))


def test_no_rows_gives_empty_draws() -> None:
    assert SampleRandom(KEY, np.array([], dtype=np.int64)).random(size=(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("method, args", [("uniform", (-1.0, 1.0)), ("normal", (0.0, 2.0))])
def test_scalar_parameter_draws_are_per_row(method, args) -> None:
    rng = SampleRandom(KEY, np.array([3, 9]))
    draws = getattr(rng, method)(*args, size=(2, 4))
    np.testing.assert_array_equal(draws[1], getattr(own(9), method)(*args, size=4))
