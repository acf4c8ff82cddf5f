"""Corruption of recogniser batches (METHOD.md section 2): which rows are noisy, which of
their positions are replaced, and by which items.

Every draw is keyed by the global row index, so each rank corrupts its rows of a global batch
exactly as one process would.
"""

from __future__ import annotations

import numba
import numpy as np

from .rng import next_below, next_float, row_state, stream_key
from .sampling_draws import _MAX_REJECTIONS, _fisher_yates
from .sampling_execution import _CHUNK, _parallel


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
