"""Counter-based random numbers for the numba samplers.

Every random draw on the data path is a pure function of (seed, stream, epoch, step) and the
*global* row index, never of the rank, the number of processes or the number of threads. This
is what makes a resumed run draw exactly what the uninterrupted run drew, lets 1 and 2
processes see the same global batch, and lets `prange` loops run in any order.

A stream key is a 64-bit integer derived in Python with :func:`stream_key`; inside numba
kernels, :func:`row_state` turns (key, row) into a per-row splitmix64 state, and
:func:`next_u64`, :func:`next_float` and :func:`next_below` draw from it.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15

# Named streams keep unrelated draws independent even with equal (seed, epoch, step).
STREAMS = {
    "shuffle": 1,
    "negatives": 2,
    "corrupt_rows": 3,
    "corrupt_position": 4,
    "corrupt_item": 5,
    "partition": 6,
    "candidates": 7,
    "folds": 8,
    "synthetic": 9,
    "plant_noise": 10,
    "recognizer_shuffle": 11,
}


def _mix(z: int) -> int:
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=1024)
def _stream_base(seed: int, stream: str) -> int:
    # The (seed, stream) part of a key, computed once: stream_key runs for every batch.
    return _mix(_mix(seed & _MASK) ^ STREAMS[stream])


def stream_key(seed: int, stream: str, *counters: int) -> np.uint64:
    """A 64-bit key for one named stream at one point of the run (e.g. epoch, step)."""
    z = _stream_base(int(seed), stream)
    for c in counters:
        z = _mix(z ^ (int(c) & _MASK))
    return np.uint64(z)


@numba.njit(inline="always", cache=True)
def _splitmix(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    x = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z, x ^ (x >> np.uint64(31))


@numba.njit(inline="always", cache=True)
def row_state(key, row):
    """The initial state of row ``row`` of the stream ``key`` (both uint64-compatible)."""
    _, out = _splitmix(np.uint64(key) ^ (np.uint64(row) * np.uint64(0xD1B54A32D192ED03)))
    return out


@numba.njit(inline="always", cache=True)
def next_u64(state):
    """Advance ``state``; returns (new state, 64 random bits)."""
    return _splitmix(state)


@numba.njit(inline="always", cache=True)
def next_float(state):
    """Advance ``state``; returns (new state, a float uniform in [0, 1))."""
    state, bits = _splitmix(state)
    return state, np.float64(bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always", cache=True)
def next_below(state, n):
    """Advance ``state``; returns (new state, an int uniform in [0, n)), n >= 1."""
    state, bits = _splitmix(state)
    # Lemire's multiply-shift would need 128-bit products; the modulo bias is < n / 2^64.
    return state, np.int64(bits % np.uint64(n))
