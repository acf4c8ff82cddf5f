"""Numba kernels of the data path: shuffles, windows, negatives, corruption, partition.

Everything here fills preallocated buffers from the CSR sequences (``seq_items`` +
``seq_offsets``) with no per-row Python; randomness comes from :mod:`atjt_dist.data.rng`, keyed
by the global row index, so results do not depend on the number of ranks or threads.

Conventions
- Items are 1..num_items; 0 is padding. A history buffer is ``int32[B, L]``: the row's items
  in time order, left-aligned, padded with 0 after ``length`` valid entries.
- A *sample* is (user, target position): the target is ``seq_items[offsets[u] + pos]`` and the
  history is the (at most L) items before it.
- "The r-th most recent valid item" of a row of length n is column ``n - r``.
"""

from __future__ import annotations

import numba
import numpy as np

from .rng import next_below, next_float, next_u64, row_state, stream_key

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
    if len(users) < num_parts:
        raise ValueError(f"cannot split {len(users)} training users into {num_parts} parts")
    order = np.asarray(users)[permutation(len(users), seed, "partition")]
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
        a = seq_offsets[u]
        b = seq_offsets[u + 1]
        out[a:b] = np.sort(seq_items[a:b])
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


@numba.njit(inline="always", cache=True)
def _draw_negative(state, prob, alias, owned, lo, hi, num_items):
    # Rejection of the user's own items; a user who owns almost every popular item falls back
    # to a uniform scan so the loop always ends (prepare guarantees a free item exists).
    for _ in range(_MAX_REJECTIONS):
        state, idx = _alias_draw(state, prob, alias)
        item = idx + 1
        if not _owns(owned, lo, hi, item):
            return state, item
    state, start = next_below(state, num_items)
    for k in range(num_items):
        item = (start + k) % num_items + 1
        if not _owns(owned, lo, hi, item):
            return state, item
    return state, 0


@numba.njit(parallel=True, cache=True)
def _sample_negatives(key, row_ids, users, owned, owned_offsets, prob, alias, out):
    num_items = prob.shape[0]
    for r in numba.prange(users.shape[0]):
        u = users[r]
        state = row_state(key, row_ids[r])
        state, item = _draw_negative(state, prob, alias, owned, owned_offsets[u], owned_offsets[u + 1], num_items)
        out[r] = item


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
    stream ``key`` at global row ``row_ids[r]``.
    """
    _sample_negatives(key, row_ids, users, owned, owned_offsets, prob, alias, out)
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
    """Per user: its last item, then count-1 distinct negatives not in its sequence ([U, count])."""
    out = np.zeros((len(seq_offsets) - 1, count), dtype=np.int32)
    _sample_candidates(stream_key(seed, "candidates"), seq_items, seq_offsets, owned, owned_offsets, prob, alias, count, out)
    return out


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True)
def fill_windows(seq_items, seq_offsets, item_category, users, positions, hist, hist_cat, lengths, target, target_cat):
    """Fill history windows for samples (users[r], positions[r]).

    ``hist[r, :n]`` = the n = min(L, position) items before the target, in time order;
    the rest of the row is 0. Categories are gathered alongside.
    """
    L = hist.shape[1]
    for r in numba.prange(users.shape[0]):
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


# ---------------------------------------------------------------------------------------------
# Corruption (METHOD.md section 2)
# ---------------------------------------------------------------------------------------------


def noisy_rows(key: np.uint64, global_rows: int, fraction: float) -> np.ndarray:
    """Which rows of a global batch are corrupted: exactly round(fraction * rows), at random."""
    n_noisy = int(round(fraction * global_rows))
    order = _fisher_yates(global_rows, key)
    mask = np.zeros(global_rows, dtype=bool)
    mask[order[:n_noisy]] = True
    return mask


@numba.njit(parallel=True, cache=True)
def _corrupt(
    key_pos, key_item, row_ids, noisy, hist, hist_cat, lengths, item_category,
    count, shared_r, prob, alias, num_items,
):
    for r in numba.prange(hist.shape[0]):
        if not noisy[r]:
            continue
        n = lengths[r]
        if n == 0:
            continue
        pstate = row_state(key_pos, row_ids[r])
        istate = row_state(key_item, row_ids[r])
        # Distinct replaced columns: the shared r's (if given) or per-row draws.
        c = shared_r.shape[0] if shared_r.shape[0] > 0 else min(count, n)
        chosen = np.empty(c, dtype=np.int64)
        for k in range(c):
            if shared_r.shape[0] > 0:
                rr = shared_r[k]
            else:
                while True:
                    pstate, rr = next_below(pstate, n)
                    rr += 1
                    dup = False
                    for q in range(k):
                        if chosen[q] == rr:
                            dup = True
                    if not dup:
                        break
            chosen[k] = rr
            col = n - rr
            original = hist[r, col]
            # The replacement differs from the original item, so a row labelled noisy is.
            while True:
                if prob.shape[0] > 0:
                    istate, idx = _alias_draw(istate, prob, alias)
                else:
                    istate, idx = next_below(istate, num_items)
                new = idx + 1
                if new != original:
                    break
            hist[r, col] = new
            hist_cat[r, col] = item_category[new]


def shared_positions(key: np.uint64, min_length: int, count: int) -> np.ndarray:
    """The batch's shared replaced positions r (1-based from the most recent), distinct."""
    c = max(0, min(count, min_length))
    if c == 0:
        return np.zeros(0, dtype=np.int64)
    order = _fisher_yates(min_length, key)  # uniform distinct values in [0, min_length)
    return (order[:c] + 1).astype(np.int64)


def corrupt_batch(
    *,
    seed: int,
    counters: tuple[int, ...],
    row_ids: np.ndarray,
    global_noisy: np.ndarray,
    global_min_length: int,
    hist: np.ndarray,
    hist_cat: np.ndarray,
    lengths: np.ndarray,
    item_category: np.ndarray,
    num_items: int,
    count: int = 1,
    per_row_position: bool = False,
    replacement_alias: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Corrupt rows of a recogniser batch in place; returns labels (1 = clean, 0 = noisy).

    ``row_ids`` are this rank's global row indices (0..global_rows-1 within the batch);
    ``global_noisy`` (from :func:`noisy_rows`) and ``global_min_length`` describe the whole
    global batch, so every rank corrupts its rows exactly as one process would. With the
    default shared position, one r in [1, global_min_length] serves the whole batch (rows of
    length 0 cannot be corrupted and stay clean).
    """
    noisy = global_noisy[row_ids]
    if per_row_position:
        shared = np.zeros(0, dtype=np.int64)
    else:
        shared = shared_positions(stream_key(seed, "corrupt_position", *counters), global_min_length, count)
        if len(shared) == 0:
            noisy = np.zeros_like(noisy)
    if replacement_alias is None:
        prob = np.zeros(0, dtype=np.float64)
        alias = np.zeros(0, dtype=np.int32)
    else:
        prob, alias = replacement_alias
    _corrupt(
        stream_key(seed, "corrupt_position", *counters),
        stream_key(seed, "corrupt_item", *counters),
        row_ids.astype(np.int64),
        noisy,
        hist,
        hist_cat,
        lengths,
        item_category,
        count,
        shared,
        prob,
        alias,
        num_items,
    )
    labels = np.where(noisy & (lengths > 0), 0.0, 1.0).astype(np.float32)
    return labels
