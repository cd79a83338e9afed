import numpy as np
import pytest

from vae_tui.telemetry.series import Series


def brute_force(values: np.ndarray, max_points: int):
    size = 1
    while -(-len(values) // size) > max_points:
        size *= 2
    chunks = [values[i : i + size] for i in range(0, len(values), size)]
    return size, [c.mean() for c in chunks], [c.min() for c in chunks], [c.max() for c in chunks]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 100, 1023, 1024, 1025, 5000])
@pytest.mark.parametrize("max_points", [1, 5, 64, 240])
def test_decimation_matches_brute_force(n, max_points):
    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    series = Series()
    for chunk in np.array_split(values, 7):  # arrives in chunks, as from the trainer
        series.extend(chunk)
    d = series.decimate(max_points)
    size, mean, lo, hi = brute_force(values, max_points)
    assert len(d) == len(mean) <= max(max_points, 1)
    if n:
        assert d.bucket == size
        np.testing.assert_allclose(d.mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(d.lo, lo)
        np.testing.assert_array_equal(d.hi, hi)
        assert d.x[0] == (min(size, n) - 1) / 2


def test_buckets_stay_put_as_data_arrives():
    series = Series()
    series.extend(np.arange(1000, dtype=np.float32))
    before = series.decimate(100)
    series.extend(np.arange(1000, 1010, dtype=np.float32))
    after = series.decimate(100)
    assert after.bucket == before.bucket
    full = len(before) - 1  # all but the partial last bucket are unchanged
    np.testing.assert_array_equal(after.mean[:full], before.mean[:full])
    np.testing.assert_array_equal(after.x[:full], before.x[:full])


def test_tail_returns_the_latest_values():
    series = Series()
    series.extend([1, 2, 3])
    assert series.tail(2).tolist() == [2, 3]
    assert series.tail(0).tolist() == []
