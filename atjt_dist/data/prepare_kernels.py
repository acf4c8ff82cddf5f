"""Numba kernels of ``python -m atjt_dist.data.prepare``: the stable sort by (user, time),
de-duplication of (user, item) pairs, the iterative k-core and the compaction after each filter.

They work on CSR rows (per-user offsets into item/time arrays) and are cached on disk, so only
the first run on a machine compiles them.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def order_by_user(user, num_users):
    """Stable counting sort by user code: (row order, CSR offsets [num_users + 1])."""
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    for r in range(user.shape[0]):
        offsets[user[r] + 1] += 1
    for u in range(num_users):
        offsets[u + 1] += offsets[u]
    cursor = offsets[:-1].copy()
    order = np.empty(user.shape[0], dtype=np.int64)
    for r in range(user.shape[0]):
        u = user[r]
        order[cursor[u]] = r
        cursor[u] += 1
    return order, offsets


_RUN = 16  # insertion-sorted run length of the merge sort


@numba.njit(cache=True)
def _merge_runs(src_k, src_p, dst_k, dst_p, width):
    """Merge neighbouring sorted runs of `width` from src into dst; the left run wins ties."""
    n = src_k.shape[0]
    for lo in range(0, n, 2 * width):
        mid = min(lo + width, n)
        hi = min(lo + 2 * width, n)
        i = lo
        j = mid
        for o in range(lo, hi):
            if j >= hi or (i < mid and src_k[i] <= src_k[j]):
                dst_k[o] = src_k[i]
                dst_p[o] = src_p[i]
                i += 1
            else:
                dst_k[o] = src_k[j]
                dst_p[o] = src_p[j]
                j += 1


@numba.njit(cache=True)
def stable_sort_by_key(keys, payload):
    """Sort `keys` ascending in place, carrying `payload`; equal keys keep their order.

    A bottom-up merge sort over insertion-sorted runs: small code that numba compiles
    quickly (np.argsort(kind="mergesort") in a parallel loop took ~20 s to compile).
    """
    n = keys.shape[0]
    for start in range(0, n, _RUN):
        for i in range(start + 1, min(start + _RUN, n)):
            k = keys[i]
            p = payload[i]
            j = i - 1
            while j >= start and keys[j] > k:
                keys[j + 1] = keys[j]
                payload[j + 1] = payload[j]
                j -= 1
            keys[j + 1] = k
            payload[j + 1] = p
    if n <= _RUN:
        return
    buffer_k = np.empty_like(keys)
    buffer_p = np.empty_like(payload)
    in_buffer = False
    width = _RUN
    while width < n:
        if in_buffer:
            _merge_runs(buffer_k, buffer_p, keys, payload, width)
        else:
            _merge_runs(keys, payload, buffer_k, buffer_p, width)
        in_buffer = not in_buffer
        width *= 2
    if in_buffer:
        for i in range(n):
            keys[i] = buffer_k[i]
            payload[i] = buffer_p[i]


@numba.njit(parallel=True, cache=True)
def sort_by_user_time(user, item, time, num_users):
    """Rows stably sorted by (user, time): (CSR offsets, items, times).

    Ties in time keep input row order: the counting sort by user is stable, and so is the
    sort of each user's rows by time.
    """
    order, offsets = order_by_user(user, num_users)
    items = np.empty(item.shape[0], dtype=np.int32)
    times = np.empty(item.shape[0], dtype=np.int64)
    for u in numba.prange(num_users):
        a = offsets[u]
        b = offsets[u + 1]
        keys = np.empty(b - a, dtype=np.int64)
        for k in range(a, b):
            keys[k - a] = time[order[k]]
        rows = order[a:b].copy()
        stable_sort_by_key(keys, rows)
        for k in range(a, b):
            items[k] = item[rows[k - a]]
            times[k] = keys[k - a]
    return offsets, items, times


@numba.njit(parallel=True, cache=True)
def first_of_pairs(offsets, item, num_items, chunks):
    """Keep-mask of each user's first row per item (rows in CSR order, sorted by time).

    Users are split into `chunks` (one per thread), each with its own item -> last-user table.
    """
    num_users = offsets.shape[0] - 1
    keep = np.ones(item.shape[0], dtype=np.bool_)
    chunks = max(1, min(chunks, num_users))
    for c in numba.prange(chunks):
        owner = np.full(num_items, -1, dtype=np.int32)
        for u in range(num_users * c // chunks, num_users * (c + 1) // chunks):
            for r in range(offsets[u], offsets[u + 1]):
                if owner[item[r]] == u:
                    keep[r] = False
                else:
                    owner[item[r]] = u
    return keep


@numba.njit(cache=True)
def k_core(offsets, item, num_items, min_user, min_item):
    """Iterative k-core: (keep-mask, passes, rows per user, rows per item) after it.

    Removals update the counts at once, so a pass sees earlier removals; the result is the
    unique largest subset where every user has >= min_user rows and every item >= min_item.
    """
    num_users = offsets.shape[0] - 1
    keep = np.ones(item.shape[0], dtype=np.bool_)
    user_count = offsets[1:] - offsets[:-1]
    item_count = np.zeros(num_items, dtype=np.int64)
    for r in range(item.shape[0]):
        item_count[item[r]] += 1
    passes = 0
    changed = True
    while changed:
        changed = False
        passes += 1
        for u in range(num_users):
            if user_count[u] == 0:
                continue
            for r in range(offsets[u], offsets[u + 1]):
                if keep[r] and (user_count[u] < min_user or item_count[item[r]] < min_item):
                    keep[r] = False
                    user_count[u] -= 1
                    item_count[item[r]] -= 1
                    changed = True
    return keep, passes, user_count, item_count


@numba.njit(cache=True)
def compact(offsets, item, time, keep):
    """Move the kept rows forward in place (order kept); returns (new CSR offsets, rows kept).

    In place because fresh memory is slow to fault in: the caller slices item[:n], time[:n].
    """
    new_offsets = np.zeros_like(offsets)
    j = 0
    for u in range(offsets.shape[0] - 1):
        for r in range(offsets[u], offsets[u + 1]):
            if keep[r]:
                item[j] = item[r]
                time[j] = time[r]
                j += 1
        new_offsets[u + 1] = j
    return new_offsets, j
