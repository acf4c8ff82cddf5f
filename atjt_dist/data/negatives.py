"""Negative items for training rows and the test candidates of each user.

Both reject the user's own items (a binary search in its sorted item set, see
:func:`atjt_dist.data.sampling_draws.user_item_sets`) and draw from an alias table over items
1..N; each row's stream is keyed by its global row index (or the user, for candidates).
"""

from __future__ import annotations

import numba
import numpy as np

from .rng import next_below, next_float, row_state, stream_key
from .sampling_draws import _MAX_REJECTIONS, _alias_draw, _draw_free_item, _owns
from .sampling_execution import _AHEAD, _CHUNK, _parallel, _prefetch


@numba.njit(cache=True)
def _negatives_rows(key, row_ids, users, owned, owned_offsets, prob, alias, out, r0, r1):
    # Rows r0..r1-1; returns how many found no free item (their user owns every item).
    num_items = prob.shape[0]
    failures = 0
    for r in range(r0, min(r1, r0 + 2 * _AHEAD)):
        _prefetch(owned_offsets, users[r])
    for r in range(r0 - _AHEAD, r1):
        if r + 2 * _AHEAD < r1:
            _prefetch(owned_offsets, users[r + 2 * _AHEAD])
        if r + _AHEAD < r1:
            # the lines a binary search over the user's items can visit first (all of them up
            # to 512 items), and the last one
            u = users[r + _AHEAD]
            lo = owned_offsets[u]
            hi = owned_offsets[u + 1]
            step = max(16, (hi - lo) >> 5)
            k = lo
            while k < hi:
                _prefetch(owned, k)
                k += step
            if hi > lo:
                _prefetch(owned, hi - 1)
        if r < r0:
            continue
        u = users[r]
        lo0 = owned_offsets[u]
        hi0 = owned_offsets[u + 1]
        state = row_state(key, row_ids[r])
        item = 0
        tries = 0
        # Rejection of the user's own items (the alias draw and the binary search are written
        # out: helpers taking arrays cost reference counting on every call in this loop).
        while tries < _MAX_REJECTIONS:
            state, i = next_below(state, num_items)
            state, x = next_float(state)
            if x >= prob[i]:
                i = alias[i]
            item = i + 1
            lo = lo0
            hi = hi0
            while lo < hi:
                mid = (lo + hi) >> 1
                if owned[mid] < item:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == hi0 or owned[lo] != item:
                break
            tries += 1
        if tries == _MAX_REJECTIONS:
            # nearly all of the mass is the user's own: an exact draw over its free items
            state, item = _draw_free_item(state, prob, alias, owned, lo0, hi0, num_items)
            if item == 0:
                failures += 1
        out[r] = item
    return failures


@numba.njit(cache=True)
def _sample_negatives_serial(key, row_ids, users, owned, owned_offsets, prob, alias, out):
    return _negatives_rows(key, row_ids, users, owned, owned_offsets, prob, alias, out, 0, users.shape[0])


@numba.njit(parallel=True, cache=True)
def _sample_negatives_parallel(key, row_ids, users, owned, owned_offsets, prob, alias, out):
    rows = users.shape[0]
    failures = 0
    for c in numba.prange((rows + _CHUNK - 1) // _CHUNK):
        r0 = c * _CHUNK
        failures += _negatives_rows(key, row_ids, users, owned, owned_offsets, prob, alias, out, r0, min(rows, r0 + _CHUNK))
    return failures


def sample_negatives(
    key: np.uint64,
    row_ids: np.ndarray,
    users: np.ndarray,
    owned: np.ndarray,
    owned_offsets: np.ndarray,
    prob: np.ndarray,
    alias: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """One negative item per row for ``users[r]``, never an item of that user's sequence.

    Drawn from the alias table (popularity^0.75 or uniform, over items 1..N); row r uses the
    stream ``key`` at global row ``row_ids[r]``, so a row's negative does not depend on how the
    batch is split over ranks or threads. A user whose items hold nearly all of the sampling
    mass gets an exact draw among its free items after 10,000 rejections; ValueError if a user
    has interacted with every item.
    """
    kernel = _sample_negatives_parallel if _parallel(len(users)) else _sample_negatives_serial
    failures = kernel(key, row_ids, users, owned, owned_offsets, prob, alias, out)
    if failures:
        raise ValueError(
            f"sample_negatives: {failures} row(s) belong to a user who has interacted with every one "
            f"of the {len(prob)} items, so no negative exists; drop such users when preparing the data"
        )
    return out


@numba.njit(parallel=True, cache=True)
def _sample_candidates(key, seq_items, seq_offsets, owned, owned_offsets, prob, alias, count, out):
    num_items = prob.shape[0]
    for u in numba.prange(seq_offsets.shape[0] - 1):
        lo = owned_offsets[u]
        hi = owned_offsets[u + 1]
        out[u, 0] = seq_items[seq_offsets[u + 1] - 1]
        state = row_state(key, u)
        filled = 1
        attempts = 0
        while filled < count:
            attempts += 1
            if attempts < _MAX_REJECTIONS:
                state, idx = _alias_draw(state, prob, alias)
                item = idx + 1
            else:  # exhausted the popular items: any free one
                state, idx = next_below(state, num_items)
                item = idx + 1
            if _owns(owned, lo, hi, item):
                continue
            dup = False
            for k in range(1, filled):
                if out[u, k] == item:
                    dup = True
                    break
            if not dup:
                out[u, filled] = item
                filled += 1


@numba.njit(cache=True)
def _fewest_free_items(owned, owned_offsets, num_items):
    # (user, count) of the user with the fewest items outside its sequence.
    worst = -1
    fewest = num_items + 1
    for u in range(owned_offsets.shape[0] - 1):
        lo = owned_offsets[u]
        hi = owned_offsets[u + 1]
        distinct = 0
        for k in range(lo, hi):
            if k == lo or owned[k] != owned[k - 1]:
                distinct += 1
        if num_items - distinct < fewest:
            fewest = num_items - distinct
            worst = u
    return worst, fewest


def sample_candidates(
    seq_items: np.ndarray,
    seq_offsets: np.ndarray,
    owned: np.ndarray,
    owned_offsets: np.ndarray,
    prob: np.ndarray,
    alias: np.ndarray,
    count: int,
    seed: int,
) -> np.ndarray:
    """Per user: its last item, then count-1 distinct negatives not in its sequence ([U, count]).

    ValueError (instead of an endless loop) if a user has no item, or fewer than count-1 items
    outside its sequence.
    """
    if count < 1:
        raise ValueError(f"sample_candidates: count must be >= 1, got {count}")
    lengths = np.diff(seq_offsets)
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"sample_candidates: user {int(np.argmin(lengths))} has no interaction, so no test positive")
    user, free = _fewest_free_items(owned, owned_offsets, len(prob))
    if user >= 0 and free < count - 1:
        raise ValueError(
            f"sample_candidates: user {user} leaves only {free} of {len(prob)} items as negatives, "
            f"fewer than the {count - 1} its {count} candidates need; lower the candidate count"
        )
    out = np.zeros((len(seq_offsets) - 1, count), dtype=np.int32)
    _sample_candidates(stream_key(seed, "candidates"), seq_items, seq_offsets, owned, owned_offsets, prob, alias, count, out)
    return out
