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

Execution
- Each batch kernel is one function over a range of rows; the serial version runs it over the
  batch, the parallel one over chunks of it in a ``prange`` loop, with the same bits either
  way. Batches smaller than :data:`PARALLEL_MIN_ROWS` run serially: a training batch of a few
  hundred rows costs tens of microseconds, less than waking and joining a thread team
  (benchmarks/sampler.md), and each rank's loader is a process of its own.
- On a real-sized dataset the data path is bound by cache misses (random users' offsets, items
  and item sets), not by arithmetic, and each row's misses form a chain (user -> offset ->
  items). The kernels prefetch ahead: while row r is computed, the lines of row r+8 and the
  offset of row r+16 are requested, so that the misses of different rows overlap.
- Per-row loops call no helper that takes arrays (the alias draw and the binary search are
  written out where it matters): with such a call in its loop, even an inlined one, the
  corruption loop measured five times slower (most likely numba's reference counting of the
  array arguments at every call).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from llvmlite.binding import llvm_version_info
from numba.core import cgutils, types
from numba.extending import intrinsic

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


# ---------------------------------------------------------------------------------------------
# Execution: prefetching, serial or parallel
# ---------------------------------------------------------------------------------------------

# Prefetch distance of the batch kernels, in rows: row r + _AHEAD's cache lines are requested
# while row r is computed, and row r + 2 * _AHEAD's offsets before that (see the module
# docstring; 4 to 16 measure alike, 2 and 32 worse). _CHUNK rows make one task of a parallel
# loop, and from PARALLEL_MIN_ROWS rows the public functions run their parallel loop.
_AHEAD = 8
_CHUNK = 1024
PARALLEL_MIN_ROWS = 16_384


# llvm.prefetch's name carries its pointer type: "p0" with LLVM's opaque pointers (LLVM >= 15,
# every llvmlite numba supports now), "p0i8" before.
_PREFETCH = "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to bring ``arr[idx]`` into the cache (no effect on results; no bounds check)."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty, _ = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


def _parallel(rows: int) -> bool:
    return rows >= PARALLEL_MIN_ROWS and numba.get_num_threads() > 1


# ---------------------------------------------------------------------------------------------
# Negatives and test candidates
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Corruption (METHOD.md section 2)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _noisy_mask(global_rows, key, n_noisy):
    order = _fisher_yates(global_rows, key)
    mask = np.zeros(global_rows, dtype=np.bool_)
    for i in range(n_noisy):
        mask[order[i]] = True
    return mask


def noisy_rows(key: np.uint64, global_rows: int, fraction: float) -> np.ndarray:
    """Which rows of a global batch are corrupted: exactly round(fraction * rows), at random."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"noisy_rows: fraction must be in [0, 1], got {fraction}")
    return _noisy_mask(int(global_rows), key, int(round(fraction * global_rows)))


@numba.njit(cache=True)
def _corrupt_rows(
    key_pos,
    key_item,
    row_ids,
    noisy,
    hist,
    hist_cat,
    lengths,
    item_category,
    count,
    shared_r,
    prob,
    alias,
    num_items,
    chosen,
    labels,
    r0,
    r1,
):
    # Returns how many noisy rows are shorter than a shared r (left untouched; the caller raises).
    bad = 0
    shared = shared_r.shape[0] > 0
    r_max = 0
    for k in range(shared_r.shape[0]):
        r_max = max(r_max, shared_r[k])
    for r in range(r0, r1):
        labels[r] = 1.0
        n = lengths[r]
        if not noisy[r] or n == 0:
            continue
        if r_max > n:
            bad += 1
            continue
        pstate = row_state(key_pos, row_ids[r])
        istate = row_state(key_item, row_ids[r])
        # Distinct replaced columns: the shared r's, or `count` distinct per-row draws.
        c = shared_r.shape[0] if shared else min(count, n)
        for k in range(c):
            if shared:
                rr = shared_r[k]
            else:
                while True:
                    pstate, rr = next_below(pstate, n)
                    rr += 1
                    dup = False
                    for q in range(k):
                        if chosen[r, q] == rr:
                            dup = True
                            break
                    if not dup:
                        break
                chosen[r, k] = rr
            col = n - rr
            original = hist[r, col]
            # The replacement differs from the original item, so a row labelled noisy is (a
            # popularity table whose only item is the original falls back to uniform draws).
            tries = 0
            while True:
                if prob.shape[0] > 0 and tries < _MAX_REJECTIONS:
                    istate, idx = next_below(istate, prob.shape[0])
                    istate, x = next_float(istate)
                    if x >= prob[idx]:
                        idx = alias[idx]
                else:
                    istate, idx = next_below(istate, num_items)
                tries += 1
                new = idx + 1
                if new != original:
                    break
            hist[r, col] = new
            hist_cat[r, col] = item_category[new]
        labels[r] = 0.0
    return bad


@numba.njit(cache=True)
def _corrupt_serial(
    key_pos,
    key_item,
    row_ids,
    noisy,
    hist,
    hist_cat,
    lengths,
    item_category,
    count,
    shared_r,
    prob,
    alias,
    num_items,
    chosen,
    labels,
):
    return _corrupt_rows(
        key_pos,
        key_item,
        row_ids,
        noisy,
        hist,
        hist_cat,
        lengths,
        item_category,
        count,
        shared_r,
        prob,
        alias,
        num_items,
        chosen,
        labels,
        0,
        hist.shape[0],
    )


@numba.njit(parallel=True, cache=True)
def _corrupt_parallel(
    key_pos,
    key_item,
    row_ids,
    noisy,
    hist,
    hist_cat,
    lengths,
    item_category,
    count,
    shared_r,
    prob,
    alias,
    num_items,
    chosen,
    labels,
):
    rows = hist.shape[0]
    bad = 0
    for c in numba.prange((rows + _CHUNK - 1) // _CHUNK):
        r0 = c * _CHUNK
        bad += _corrupt_rows(
            key_pos,
            key_item,
            row_ids,
            noisy,
            hist,
            hist_cat,
            lengths,
            item_category,
            count,
            shared_r,
            prob,
            alias,
            num_items,
            chosen,
            labels,
            r0,
            min(rows, r0 + _CHUNK),
        )
    return bad


def shared_positions(key: np.uint64, min_length: int, count: int) -> np.ndarray:
    """The batch's shared replaced positions r (1-based from the most recent), distinct."""
    c = max(0, min(count, min_length))
    if c == 0:
        return np.zeros(0, dtype=np.int64)
    order = _fisher_yates(int(min_length), key)  # uniform distinct values in [0, min_length)
    return order[:c] + 1  # int64


_EMPTY_F64 = np.zeros(0, dtype=np.float64)
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_CHOSEN = np.zeros((0, 0), dtype=np.int64)


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
    default shared position, ``count`` distinct r in [1, global_min_length] serve the whole
    batch: ``global_min_length`` must be the shortest *non-empty* history of the global batch
    (rows of length 0 cannot be corrupted and stay clean). ValueError if a noisy row is
    shorter than a shared r, or if ``global_min_length`` is 0 while this rank has a noisy row
    with a history. With ``per_row_position``, each noisy row draws its own ``count``
    distinct r in [1, its length].
    """
    if count < 1:
        raise ValueError(f"corrupt_batch: count must be >= 1, got {count}")
    if num_items < 2:
        raise ValueError("corrupt_batch: a replacement must differ from the original, which needs >= 2 items")
    row_ids = np.asarray(row_ids, dtype=np.int64)
    noisy = global_noisy[row_ids]
    key_pos = stream_key(seed, "corrupt_position", *counters)
    if per_row_position:
        shared = _EMPTY_I64
        chosen = np.empty((len(row_ids), count), dtype=np.int64)
    else:
        if global_min_length < 1 and (lengths[noisy] > 0).any():
            raise ValueError(
                "corrupt_batch: global_min_length is 0 but this rank has noisy rows with a history; "
                "pass the shortest non-empty history length of the global batch"
            )
        shared = shared_positions(key_pos, global_min_length, count)
        if len(shared) == 0:
            noisy = np.zeros_like(noisy)
        chosen = _EMPTY_CHOSEN
    if replacement_alias is None:
        prob, alias = _EMPTY_F64, _EMPTY_I32
    else:
        prob, alias = replacement_alias
        if len(prob) != num_items:
            raise ValueError(f"corrupt_batch: replacement_alias covers {len(prob)} items, not num_items={num_items}")
    labels = np.empty(len(row_ids), dtype=np.float32)
    kernel = _corrupt_parallel if _parallel(len(row_ids)) else _corrupt_serial
    bad = kernel(
        key_pos,
        stream_key(seed, "corrupt_item", *counters),
        row_ids,
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
        chosen,
        labels,
    )
    if bad:
        raise ValueError(
            f"corrupt_batch: {bad} noisy row(s) are shorter than the shared position r drawn in "
            f"[1, global_min_length={global_min_length}]; global_min_length must be the shortest "
            "non-empty history of the global batch"
        )
    return labels
