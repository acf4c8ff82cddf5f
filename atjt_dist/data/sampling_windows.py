"""History windows: for each sample (user, target position), the at most L items before the
target, left-aligned and 0-padded, with their categories and the target's.
"""

from __future__ import annotations

import numba

from .sampling_execution import _AHEAD, _CHUNK, PARALLEL_MIN_ROWS, _prefetch


@numba.njit(cache=True)
def _windows_rows(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat, r0, r1):
    L = hist.shape[1]
    for r in range(r0, min(r1, r0 + 2 * _AHEAD)):
        _prefetch(seq_offsets, users[r])
    for r in range(r0 - _AHEAD, r1):
        if r + 2 * _AHEAD < r1:
            _prefetch(seq_offsets, users[r + 2 * _AHEAD])
        if r + _AHEAD < r1:
            base = seq_offsets[users[r + _AHEAD]]
            pos = positions[r + _AHEAD]
            k = base + max(0, pos - L)
            while k < base + pos:  # the window's cache lines, then the target's
                _prefetch(seq_items, k)
                k += 16
            _prefetch(seq_items, base + pos)
        if r < r0:
            continue
        base = seq_offsets[users[r]]
        pos = positions[r]
        start = max(0, pos - L)
        n = pos - start
        for j in range(n):
            it = seq_items[base + start + j]
            hist[r, j] = it
            hist_cat[r, j] = item_category[it]
        for j in range(n, L):
            hist[r, j] = 0
            hist_cat[r, j] = 0
        lengths[r] = n
        t = seq_items[base + pos]
        target[r] = t
        target_cat[r] = item_category[t]


@numba.njit(cache=True)
def _fill_windows_serial(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat):
    _windows_rows(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat, 0, users.shape[0])


@numba.njit(parallel=True, cache=True)
def _fill_windows_parallel(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat):
    rows = users.shape[0]
    for c in numba.prange((rows + _CHUNK - 1) // _CHUNK):
        r0 = c * _CHUNK
        _windows_rows(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat, r0, min(rows, r0 + _CHUNK))


@numba.njit(cache=True)
def fill_windows(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat):
    """Fill history windows for samples (users[r], positions[r]).

    ``hist[r, :n]`` = the n = min(L, position) items before the target, in time order;
    the rest of the row is 0. Categories are gathered alongside. Requires
    0 <= positions[r] < the user's sequence length (not checked).
    """
    # (The thread count is not consulted here: numba.get_num_threads() would make this function
    # uncacheable, and with one thread the parallel loop of so large a batch costs nothing more.)
    if users.shape[0] >= PARALLEL_MIN_ROWS:
        _fill_windows_parallel(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat)
    else:
        _fill_windows_serial(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat)
