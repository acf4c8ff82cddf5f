"""The counter-based RNG of the data path (atjt_dist.data.rng).

Every draw is a pure function of (seed, stream, counters) and the global row: these tests
check determinism, that distinct streams / rows / counters give unrelated numbers, the ranges
and uniformity of the draws, and that a parallel kernel's output does not depend on the number
of numba threads. All randomness here is seeded, so every statistical check is deterministic:
a failure is a real change in the numbers, never bad luck.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from atjt_dist.data import sampling
from atjt_dist.data.rng import (
    STREAMS,
    next_below,
    next_float,
    next_u64,
    row_state,
    stream_key,
)


def chi2_critical(df: int, z: float = 4.0) -> float:
    """Upper quantile of chi-square(df) at standard-normal z (Wilson-Hilferty); z=4: p ~ 3e-5."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


# --- small numba helpers --------------------------------------------------------------------
# Not cached: numba's cache only watches the file of the cached function, so a cached helper
# here would keep running the old rng.py after it changes -- exactly when these tests matter.


@numba.njit(cache=False)
def first_floats(key, rows):
    out = np.empty(rows, dtype=np.float64)
    for r in range(rows):
        _, out[r] = next_float(row_state(key, r))
    return out


@numba.njit(cache=False)
def row_u64s(key, row, k):
    out = np.empty(k, dtype=np.uint64)
    state = row_state(key, row)
    for i in range(k):
        state, out[i] = next_u64(state)
    return out


@numba.njit(cache=False)
def row_floats(key, row, k):
    out = np.empty(k, dtype=np.float64)
    state = row_state(key, row)
    for i in range(k):
        state, out[i] = next_float(state)
    return out


@numba.njit(cache=False)
def row_belows(key, row, k, n):
    out = np.empty(k, dtype=np.int64)
    state = row_state(key, row)
    for i in range(k):
        state, out[i] = next_below(state, n)
    return out


# --- stream_key --------------------------------------------------------------------------------


def test_stream_key_is_deterministic_and_a_uint64():
    a = stream_key(42, "negatives", 3, 17)
    assert isinstance(a, np.uint64)
    assert a == stream_key(42, "negatives", 3, 17)
    assert a == stream_key(np.int64(42), "negatives", np.int32(3), 17)  # numpy ints are fine


def test_stream_key_depends_on_every_input():
    base = stream_key(42, "negatives", 3, 17)
    variants = {
        "seed": stream_key(43, "negatives", 3, 17),
        "stream": stream_key(42, "corrupt_item", 3, 17),
        "first counter": stream_key(42, "negatives", 4, 17),
        "last counter": stream_key(42, "negatives", 3, 18),
        "counter order": stream_key(42, "negatives", 17, 3),
        "fewer counters": stream_key(42, "negatives", 3),
        "extra counter": stream_key(42, "negatives", 3, 17, 0),
    }
    for what, key in variants.items():
        assert key != base, what
    # every named stream has its own key
    keys = {stream_key(0, name, 1) for name in STREAMS}
    assert len(keys) == len(STREAMS)
    with pytest.raises(KeyError):
        stream_key(0, "no such stream")


def test_stream_key_avalanche():
    # Neighbouring counters give keys that differ in about half of their 64 bits.
    diffs = [(int(stream_key(7, "shuffle", e)) ^ int(stream_key(7, "shuffle", e + 1))).bit_count() for e in range(2000)]
    assert 31.0 < np.mean(diffs) < 33.0
    assert min(diffs) > 10


# --- row_state / next_* ------------------------------------------------------------------------


def test_row_draws_are_deterministic_and_row_specific():
    key = stream_key(1, "negatives", 0, 0)
    a = row_u64s(key, 5, 64)
    assert np.array_equal(a, row_u64s(key, 5, 64))
    assert len(np.unique(a)) == 64  # a 64-bit stream does not repeat in 64 draws
    assert not np.array_equal(a, row_u64s(key, 6, 64))
    assert not np.array_equal(a, row_u64s(stream_key(1, "negatives", 0, 1), 5, 64))
    # a prefix of a longer draw is the shorter draw: the state just advances
    assert np.array_equal(row_u64s(key, 5, 200)[:64], a)


def test_next_float_is_in_unit_interval_and_uniform():
    x = row_floats(stream_key(3, "synthetic", 1), 0, 400_000)
    assert x.min() >= 0.0 and x.max() < 1.0
    assert abs(x.mean() - 0.5) < 4 * np.sqrt(1 / 12 / len(x))
    counts = np.bincount((x * 100).astype(np.int64), minlength=100)
    expected = np.full(100, len(x) / 100)
    assert ((counts - expected) ** 2 / expected).sum() < chi2_critical(99)
    # the largest value the formula can give is still below 1
    assert np.float64(2**53 - 1) * (1.0 / 9007199254740992.0) < 1.0


@pytest.mark.parametrize("n", [1, 2, 7, 10, 1000, 20_011])
def test_next_below_is_in_range_and_uniform(n):
    draws = 50 * n if n <= 1000 else 1_000_000
    x = row_belows(stream_key(5, "shuffle", n), 3, draws, n)
    assert x.min() >= 0 and x.max() <= n - 1
    if n == 1:
        assert np.all(x == 0)
        return
    counts = np.bincount(x, minlength=n)
    expected = np.full(n, draws / n)
    stat = ((counts - expected) ** 2 / expected).sum()
    assert stat < chi2_critical(n - 1), (n, stat)


def test_next_below_small_n_is_not_biased_by_low_bits():
    # n = 2 takes the lowest output bit: it must still be a fair coin, draw after draw
    x = row_belows(stream_key(9, "plant_noise"), 0, 200_000, 2)
    assert abs(x.mean() - 0.5) < 4 * 0.5 / np.sqrt(len(x))
    pairs = np.bincount(2 * x[:-1] + x[1:], minlength=4)  # consecutive draws are independent
    expected = np.full(4, (len(x) - 1) / 4)
    assert ((pairs - expected) ** 2 / expected).sum() < chi2_critical(3)


def test_streams_rows_and_counters_are_uncorrelated():
    n = 100_000
    bound = 5 / np.sqrt(n)
    a = first_floats(stream_key(11, "negatives", 0, 0), n)
    others = {
        "another stream": first_floats(stream_key(11, "corrupt_item", 0, 0), n),
        "the next step": first_floats(stream_key(11, "negatives", 0, 1), n),
        "another seed": first_floats(stream_key(12, "negatives", 0, 0), n),
    }
    for what, b in others.items():
        assert abs(np.corrcoef(a, b)[0, 1]) < bound, what
        assert abs(np.mean(a < 0.5) - np.mean(b < 0.5)) < 0.02, what
        assert np.mean(a == b) == 0.0, what
    # neighbouring rows of one stream
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < bound
    # successive draws of one row
    s = row_floats(stream_key(11, "negatives", 0, 0), 17, n)
    assert abs(np.corrcoef(s[:-1], s[1:])[0, 1]) < bound
    # a row's sequence is not another row's sequence shifted
    r5, r6 = row_u64s(stream_key(11, "negatives"), 5, 1000), row_u64s(stream_key(11, "negatives"), 6, 1000)
    assert not set(r5.tolist()) & set(r6.tolist())


# --- thread count --------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_kernel_results_do_not_depend_on_the_thread_count(restore_threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread on this machine")
    rng = np.random.default_rng(0)
    num_items, users = 500, 300
    lengths = rng.integers(1, 60, users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, num_items + 1, offsets[-1]).astype(np.int32)
    owned, owned_offsets = sampling.user_item_sets(items, offsets)
    prob, alias = sampling.build_alias(rng.random(num_items) + 0.01)
    rows = sampling.PARALLEL_MIN_ROWS + 1000  # the parallel path
    batch_users = rng.integers(0, users, rows)
    row_ids = rng.permutation(10 * rows)[:rows].astype(np.int64)
    key = stream_key(0, "negatives", 1, 2)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        out = np.zeros(rows, dtype=np.int32)
        sampling.sample_negatives(key, row_ids, batch_users, owned, owned_offsets, prob, alias, out)
        cand = sampling.sample_candidates(items, offsets, owned, owned_offsets, prob, alias, 16, 3)
        results.append((out, cand))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    # and the serial path (batches below PARALLEL_MIN_ROWS) draws the same numbers
    serial = np.zeros(rows, dtype=np.int32)
    for lo in range(0, rows, 5000):
        sl = slice(lo, lo + 5000)
        sampling.sample_negatives(key, row_ids[sl], batch_users[sl], owned, owned_offsets, prob, alias, serial[sl])
    assert np.array_equal(serial, results[0][0])
