"""Building blocks of the numba kernels that generate sequences (``synthetic_generator``) and
plant noise in them (``noise``): a small set of item ids, and a threaded runner over rows.

Every row (user, item) of those kernels draws from its own counter-based state, so what they
produce is a pure function of their inputs, whatever the number of threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

MAX_REJECTIONS = 32  # Zipf / alias draws before a deterministic scan for a free item


# ---------------------------------------------------------------------------------------------
# A small open-addressing set of item ids (per user, inside numba kernels)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def set_new(n):
    """An empty set with room for ``n`` item ids (at most half full, so probes stay short)."""
    cap = 16
    while cap < 2 * n:
        cap <<= 1
    return np.zeros(cap, dtype=np.int32)  # 0 = empty: item ids start at 1


@numba.njit(cache=True)
def set_has(table, item):
    """Whether ``item`` (>= 1) is in the set."""
    mask = table.shape[0] - 1
    h = (item * 2654435761) & mask
    while table[h] != 0:
        if table[h] == item:
            return True
        h = (h + 1) & mask
    return False


@numba.njit(cache=True)
def set_add(table, item):
    """Add ``item`` (>= 1) to the set (a no-op if it is there)."""
    mask = table.shape[0] - 1
    h = (item * 2654435761) & mask
    while table[h] != 0:
        if table[h] == item:
            return
        h = (h + 1) & mask
    table[h] = item


# ---------------------------------------------------------------------------------------------
# Rows on threads
# ---------------------------------------------------------------------------------------------


def run_chunks(kernel, work_offsets: np.ndarray, *args) -> None:
    """Run ``kernel(lo, hi, *args)`` over rows 0..R-1 in chunks of equal work, on threads.

    ``work_offsets`` (R + 1, CSR-like) measures each row's work. Kernels are ``nogil`` and
    every row draws from its own counter-based state, so the result is the same for any number
    of threads. (Not ``parallel=True``: numba's parfor compilation took ~10 s per kernel here,
    paid on the first use of the default dataset, for no speed gain.)
    """
    rows = len(work_offsets) - 1
    threads = max(1, min(numba.get_num_threads(), rows // 256))
    targets = np.linspace(0, work_offsets[-1], threads + 1)
    bounds = np.searchsorted(work_offsets, targets).clip(0, rows)
    bounds[0], bounds[-1] = 0, rows
    if threads == 1:
        kernel(0, rows, *args)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: kernel(bounds[i], bounds[i + 1], *args), range(threads)))
