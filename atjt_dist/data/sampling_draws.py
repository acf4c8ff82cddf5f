"""The draws every sampler of the data path shares: permutations, the user partition, alias
tables, and per-user item sets with their membership test and exact free-item draw.

Randomness comes from :mod:`atjt_dist.data.rng`, so each result is a pure function of its seed,
stream and counters.
"""

from __future__ import annotations

import numba
import numpy as np

from .rng import next_below, next_float, row_state, stream_key

# ---------------------------------------------------------------------------------------------
# Permutations and partitions
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _fisher_yates(n, key):
    out = np.arange(n, dtype=np.int64)
    state = row_state(key, 0)
    for i in range(n - 1, 0, -1):
        state, j = next_below(state, i + 1)
        tmp = out[i]
        out[i] = out[j]
        out[j] = tmp
    return out


def permutation(n: int, seed: int, stream: str, *counters: int) -> np.ndarray:
    """A seeded permutation of 0..n-1 (int64), a pure function of its arguments."""
    return _fisher_yates(int(n), stream_key(seed, stream, *counters))


def partition_users(users: np.ndarray, num_parts: int, seed: int) -> list[np.ndarray]:
    """The ATJT N-way user partition: a seeded shuffle cut into N near-equal parts.

    Each part is returned sorted, so that membership does not depend on the shuffle's order
    (the training order is drawn per epoch anyway).
    """
    if num_parts < 1:
        raise ValueError("num_parts must be >= 1")
    users = np.asarray(users)
    if len(users) < num_parts:
        raise ValueError(f"cannot split {len(users)} training users into {num_parts} parts")
    if len(np.unique(users)) != len(users):
        raise ValueError("partition_users: the user list has duplicates, so the parts would not be disjoint")
    order = users[permutation(len(users), seed, "partition")]
    return [np.sort(part) for part in np.array_split(order, num_parts)]


# ---------------------------------------------------------------------------------------------
# Alias tables and per-user item sets
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _build_alias(weights):
    n = weights.shape[0]
    total = weights.sum()
    scaled = weights * (n / total)
    prob = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int32)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        g = large[nl]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            small[ns] = g
            ns += 1
        else:
            large[nl] = g
            nl += 1
    # Leftovers are 1 up to rounding.
    return prob, alias


def build_alias(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table for sampling index i with probability weights[i] / sum."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0:
        raise ValueError("alias weights must be a non-empty vector")
    if not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("alias weights must be finite, non-negative and not all zero")
    return _build_alias(weights)


@numba.njit(inline="always", cache=True)
def _alias_draw(state, prob, alias):
    state, i = next_below(state, prob.shape[0])
    state, u = next_float(state)
    if u >= prob[i]:
        i = alias[i]
    return state, i


@numba.njit(cache=True)
def user_item_sets(seq_items, seq_offsets):
    """Each user's items sorted (CSR with the same offsets): for O(log n) membership tests."""
    out = seq_items.copy()
    for u in range(seq_offsets.shape[0] - 1):
        out[seq_offsets[u] : seq_offsets[u + 1]].sort()
    return out, seq_offsets


@numba.njit(inline="always", cache=True)
def _owns(owned, lo, hi, item):
    # binary search in owned[lo:hi]
    while lo < hi:
        mid = (lo + hi) >> 1
        v = owned[mid]
        if v == item:
            return True
        if v < item:
            lo = mid + 1
        else:
            hi = mid
    return False


_MAX_REJECTIONS = 10_000


@numba.njit(cache=True)
def _draw_free_item(state, prob, alias, owned, lo, hi, num_items):
    # Exact draw from the alias table's distribution restricted to the items not in
    # owned[lo:hi] (column j carries mass prob[j] for item j+1 and 1-prob[j] for item
    # alias[j]+1); uniform over the free items if they all have weight 0; 0 if there is none.
    # O(num_items log n): the last resort of a user who owns nearly all of the mass.
    total = 0.0
    free = 0
    for j in range(num_items):
        if not _owns(owned, lo, hi, j + 1):
            total += prob[j]
            free += 1
        if prob[j] < 1.0 and not _owns(owned, lo, hi, alias[j] + 1):
            total += 1.0 - prob[j]
    if free == 0:
        return state, 0
    if total > 0.0:
        state, u = next_float(state)
        x = u * total
        last = 0
        for j in range(num_items):
            if not _owns(owned, lo, hi, j + 1):
                last = j + 1
                x -= prob[j]
                if x < 0.0:
                    return state, j + 1
            if prob[j] < 1.0 and not _owns(owned, lo, hi, alias[j] + 1):
                last = alias[j] + 1
                x -= 1.0 - prob[j]
                if x < 0.0:
                    return state, alias[j] + 1
        return state, last  # rounding at the very end of the walk
    state, k = next_below(state, free)
    for j in range(num_items):
        if not _owns(owned, lo, hi, j + 1):
            if k == 0:
                return state, j + 1
            k -= 1
    return state, 0
