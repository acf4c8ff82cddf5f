"""Synthetic sequential-recommendation data with planted noise and its ground truth.

The embedded default dataset of the training job, and a test bed where the noise is known.

The clean generative model (every draw is counter-based, keyed by item or user id, so the data
is a pure function of the config, whatever the number of threads):

- **Catalogue.** Items 1..M are dealt round-robin from a seeded shuffle into C clusters of
  near-equal size; the cluster is the item's category. Inside a cluster the item of rank r has
  popularity weight (r + 1)^-a (Zipf, ``zipf_exponent``). Every item has ``successors`` links
  to other items of its cluster, drawn uniformly (think "next episode", "accessory of").
- **Users.** A user's length is ``min_length`` plus an exponential tail (mean ``mean_length``,
  capped at M/2). Its taste is a sparse mixture: ``taste_clusters`` distinct clusters with
  Dirichlet(1) weights.
- **Sequences.** Step t: with probability ``successor_prob`` the next item is a random successor
  link of the previous item; otherwise the user stays in its current cluster with probability
  ``stickiness`` or jumps to a cluster drawn from its taste, and picks an item there by Zipf
  popularity. A user never repeats an item (like ratings: each item once), so the test positive
  and sampled negatives are never trivially in the history.

So the recent history predicts the next item well, at two levels a small DIN can learn: the
cluster (a category embedding, through target attention) and the item (successor links).

Planted noise (:func:`plant_noise`, usable on any CSR dataset): a share of users, drawn
uniformly, get ``round(item_share * (n - 1))`` (at least one) items of their history replaced,
or, with ``insert``, that many extra items inserted. A planted item is never one of the user's
own items (so it is unrelated to the user's taste and to its sequential context, and the
difference clean vs noisy is exactly the ground truth):

- ``random``: drawn uniformly from the catalogue, at random positions. This is exactly the
  corruption ATJT's recogniser is trained on (METHOD.md section 2), so ATJT should catch it.
- ``popular``: drawn by popularity, at random positions (noise a popularity prior explains).
- ``foreign``: a contiguous block of positions filled by consecutive items of another user's
  sequence (a shared account: someone else's session inside this user's history).
- ``insert``: items drawn uniformly (as ``random``) inserted between the user's own items, at
  random slots, nothing replaced (stray interactions added to a true history). The noisy
  user's sequence grows by the number inserted, so the CSR offsets change; an inserted
  interaction takes the time of the one before it (of the one after it at the start of a
  sequence), so time order stays sequence order. Removing the planted positions gives back
  the clean sequence exactly.

**The last item.** It is the training target of the paper's one-sample-per-user protocol and
the test positive (column 0 of the stored candidates). With ``noise_in_targets`` (the default)
a noisy user's last item may be replaced like any other, so some training positives are false
positives (what T-CE / R-CE target, and a history/target mismatch ATJT's recogniser can see);
with ``insert`` an inserted item may land after the last one and become the new last item.
With ``clean_test_fold`` (the default: fold 0, the default test fold) the test users get no
noise at all, so test metrics measure true preferences. ``noise_in_targets=false`` never
replaces the last item, and never inserts after it (for ``data.split=loo``, whose test
positives are the last items).

**The default size** is set by the training schedule, not by realism. In the paper protocol a
run has users / 80 steps (2 phases of 4 epochs, each over half of the 80% training users, in
batches of 256), and each phase's freshly initialised recogniser (Adagrad, lr 0.023) only
starts to separate corrupted from clean rows after some tens of steps. The defaults (12,800
users: 160 steps, 80 per phase; 1,000 items; a taste of 2 clusters, stickiness 0.95, so most windows stay in one
cluster; short sequences, mean 12, so one replaced item is a large part of a window) keep the
default ``python -m atjt_dist.train`` at a few CPU-minutes while its recognisers still learn to
rank planted-noise users below clean ones (though in 80 steps their weights stay too close to
0.5 to change the test metrics). The measured numbers are in docs/results.md
("Default synthetic data"). The earlier default (100,000 users, 2,000 items, a taste of 3
clusters, stickiness 0.8, mean length 30) gave the recognisers 624 steps per phase, but a run
took an estimated 25 CPU-minutes.

Usage::

    python -m atjt_dist.data.synthetic --output DIR [--users N --items M --noise-kind popular ...]
    python -m atjt_dist.data.synthetic            # generate (or find) the cached default dataset

``ensure_dataset(cfg)`` is what the training job calls: it returns the cached directory for a
generator config, generating it once under a file lock (several ranks may call it at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numba
import numpy as np
import pyarrow as pa

from ..config import ConfigError, SyntheticConfig
from .layout import DatasetError, assign_folds, prepare_output_dir, read_meta, write_dataset
from .rng import next_below, next_float, row_state, stream_key
from .sampling import build_alias, permutation

log = logging.getLogger(__name__)

# Bump when the generator's output for a given config changes: cached datasets are keyed by it.
GENERATOR_VERSION = 3
NOISE_KINDS = ("random", "popular", "foreign", "insert")
_KIND_CODE = {k: i for i, k in enumerate(NOISE_KINDS)}
_INSERT = _KIND_CODE["insert"]
_MAX_REJECTIONS = 32  # Zipf / alias draws before a deterministic scan for a free item
_EPOCH = 1_500_000_000  # synthetic timestamps start in 2017 (seconds)


@dataclass
class SyntheticData:
    """A generated dataset in memory: CSR sequences before and after planting noise."""

    clean_items: np.ndarray  # int32 [N]: the sequences as generated
    clean_offsets: np.ndarray  # int64 [U + 1]: of clean_items
    seq_items: np.ndarray  # int32 [N']: with planted noise (what is written); N' > N only with 'insert'
    seq_offsets: np.ndarray  # int64 [U + 1]: of seq_items (clean_offsets but with 'insert')
    seq_times: np.ndarray  # int64 [N']: of seq_items, non-decreasing per user (increasing but with 'insert')
    item_category: np.ndarray  # int32 [M + 1]: cluster 1..C of each item, 0 for padding
    noise: dict[str, np.ndarray]  # ground truth: user, position, original_item, planted_item
    fold: np.ndarray  # int8 [U]: the k-fold fold of each user, as the dataset stores it


# ---------------------------------------------------------------------------------------------
# A small open-addressing set of item ids (per user, inside numba kernels)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _set_new(n):
    cap = 16
    while cap < 2 * n:
        cap <<= 1
    return np.zeros(cap, dtype=np.int32)  # 0 = empty: item ids start at 1


@numba.njit(cache=True)
def _set_has(table, item):
    mask = table.shape[0] - 1
    h = (item * 2654435761) & mask
    while table[h] != 0:
        if table[h] == item:
            return True
        h = (h + 1) & mask
    return False


@numba.njit(cache=True)
def _set_add(table, item):
    mask = table.shape[0] - 1
    h = (item * 2654435761) & mask
    while table[h] != 0:
        if table[h] == item:
            return
        h = (h + 1) & mask
    table[h] = item


# ---------------------------------------------------------------------------------------------
# Catalogue: clusters, Zipf popularity, successor links
# ---------------------------------------------------------------------------------------------


@dataclass
class Catalogue:
    """Items grouped by cluster (members in popularity-rank order) with Zipf CDFs and links."""

    item_cluster: np.ndarray  # int32 [M + 1]: 1..C (0 for padding)
    cluster_offsets: np.ndarray  # int64 [C + 1]: cluster c's members are members[o[c]:o[c+1]]
    members: np.ndarray  # int32 [M]: items, by cluster then rank
    cdf: np.ndarray  # float64 [M]: cumulative Zipf weight within each cluster
    successors: np.ndarray  # int32 [M + 1, S]: successor links of each item (row 0 unused)


def build_catalogue(cfg: SyntheticConfig) -> Catalogue:
    """Deal items into clusters, give them Zipf popularity ranks and successor links."""
    m, c = cfg.items, cfg.clusters
    order = permutation(m, cfg.seed, "synthetic", 0)  # slot j holds item order[j] + 1
    slot_cluster = np.arange(m) % c
    slot_rank = np.arange(m) // c
    item_cluster = np.zeros(m + 1, dtype=np.int32)
    item_cluster[order + 1] = slot_cluster + 1
    by_cluster = np.argsort(slot_cluster, kind="stable")  # stable: ranks stay increasing
    members = (order[by_cluster] + 1).astype(np.int32)
    sizes = np.bincount(slot_cluster, minlength=c)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    weights = np.power(slot_rank[by_cluster] + 1.0, -cfg.zipf_exponent)
    cdf = np.cumsum(weights)
    cdf -= np.repeat(cdf[offsets[:-1]] - weights[offsets[:-1]], sizes)  # restart per cluster
    successors = np.zeros((m + 1, cfg.successors), dtype=np.int32)
    _link_successors(stream_key(cfg.seed, "synthetic", 1), item_cluster, offsets, members, successors)
    return Catalogue(item_cluster, offsets, members, cdf, successors)


@numba.njit(cache=True)
def _link_successors(key, item_cluster, offsets, members, out):
    for item in range(1, out.shape[0]):
        state = row_state(key, item)
        c = item_cluster[item] - 1
        lo = offsets[c]
        size = offsets[c + 1] - lo
        for s in range(out.shape[1]):
            # Distinct links to other items when the cluster is big enough; bounded retries.
            cand = item
            for _ in range(_MAX_REJECTIONS):
                state, j = next_below(state, size)
                cand = members[lo + j]
                dup = cand == item
                for q in range(s):
                    if out[item, q] == cand:
                        dup = True
                if not dup:
                    break
            out[item, s] = cand


# ---------------------------------------------------------------------------------------------
# Users: lengths, tastes, sequences, times
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _draw_lengths(key, min_length, mean_length, cap, out):
    for u in range(out.shape[0]):
        state = row_state(key, u)
        state, x = next_float(state)
        extra = -np.log(1.0 - x) * (mean_length - min_length)
        out[u] = min(min_length + np.int64(extra), cap)


@numba.njit(cache=True)
def _zipf_in_cluster(state, c, offsets, members, cdf):
    lo = offsets[c]
    hi = offsets[c + 1]
    state, x = next_float(state)
    x *= cdf[hi - 1]
    while lo < hi - 1:  # first index with cdf > x
        mid = (lo + hi - 1) >> 1
        if cdf[mid] > x:
            hi = mid + 1
        else:
            lo = mid + 1
    return state, members[lo]


@numba.njit(cache=True)
def _free_item(state, c, offsets, members, cdf, owned):
    """An item the user does not own: Zipf in cluster c, then a scan of c, then of any cluster."""
    for _ in range(_MAX_REJECTIONS):
        state, item = _zipf_in_cluster(state, c, offsets, members, cdf)
        if not _set_has(owned, item):
            return state, item
    num_clusters = offsets.shape[0] - 1
    state, start = next_below(state, num_clusters)
    for k in range(num_clusters):  # lengths <= M/2 guarantee a free item somewhere
        cc = (c + k) % num_clusters if k == 0 else (start + k) % num_clusters
        for j in range(offsets[cc], offsets[cc + 1]):
            if not _set_has(owned, members[j]):
                return state, members[j]
    return state, members[0]


@numba.njit(cache=True)
def _draw_taste(state, num_clusters, k, clusters, cum):
    for i in range(k):
        while True:  # k distinct clusters (k <= C)
            state, c = next_below(state, num_clusters)
            dup = False
            for q in range(i):
                if clusters[q] == c:
                    dup = True
            if not dup:
                break
        clusters[i] = c
        state, x = next_float(state)
        cum[i] = -np.log(1.0 - x) + (cum[i - 1] if i > 0 else 0.0)  # Dirichlet(1) via Exp(1)
    return state


@numba.njit(cache=True)
def _pick_cluster(state, clusters, cum):
    state, x = next_float(state)
    x *= cum[cum.shape[0] - 1]
    for i in range(cum.shape[0]):
        if x < cum[i]:
            return state, clusters[i]
    return state, clusters[cum.shape[0] - 1]


@numba.njit(cache=True)
def _draw_user(
    state,
    items,
    item_cluster,
    cl_offsets,
    members,
    cdf,
    successors,
    taste_k,
    successor_prob,
    stickiness,
):
    """One user's sequence into ``items`` (its slice of the CSR array)."""
    clusters = np.empty(taste_k, dtype=np.int64)
    cum = np.empty(taste_k, dtype=np.float64)
    state = _draw_taste(state, cl_offsets.shape[0] - 1, taste_k, clusters, cum)
    state, cur = _pick_cluster(state, clusters, cum)
    owned = _set_new(items.shape[0])
    prev = 0
    for t in range(items.shape[0]):
        item = 0
        if prev > 0:
            state, x = next_float(state)
            if x < successor_prob:
                state, s = next_below(state, successors.shape[1])
                item = successors[prev, s]
                if _set_has(owned, item):
                    item = 0  # already seen: fall back to the cluster walk
        if item == 0:
            if t > 0:
                state, x = next_float(state)
                if x >= stickiness:
                    state, cur = _pick_cluster(state, clusters, cum)
            state, item = _free_item(state, cur, cl_offsets, members, cdf, owned)
        cur = item_cluster[item] - 1
        _set_add(owned, item)
        items[t] = item
        prev = item


@numba.njit(cache=True)
def _draw_times(state, times):
    # A start in a two-year window, then gaps of 1 s to 3 days.
    state, t0 = next_below(state, 2 * 365 * 86400)
    clock = _EPOCH + t0
    for t in range(times.shape[0]):
        state, gap = next_below(state, 3 * 86400)
        clock += 1 + gap
        times[t] = clock


@numba.njit(nogil=True, cache=True)
def _draw_sequences(
    lo,
    hi,
    key,
    time_key,
    offsets,
    item_cluster,
    cl_offsets,
    members,
    cdf,
    successors,
    taste_k,
    successor_prob,
    stickiness,
    out_items,
    out_times,
):
    for u in range(lo, hi):
        a = offsets[u]
        b = offsets[u + 1]
        _draw_user(
            row_state(key, u),
            out_items[a:b],
            item_cluster,
            cl_offsets,
            members,
            cdf,
            successors,
            taste_k,
            successor_prob,
            stickiness,
        )
        _draw_times(row_state(time_key, u), out_times[a:b])


def _run_chunks(kernel, work_offsets: np.ndarray, *args) -> None:
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


def generate_clean(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The clean sequences: (seq_items int32, seq_offsets int64, seq_times int64, item_category)."""
    cat = build_catalogue(cfg)
    lengths = np.empty(cfg.users, dtype=np.int64)
    _draw_lengths(stream_key(cfg.seed, "synthetic", 2), cfg.min_length, float(cfg.mean_length), cfg.items // 2, lengths)
    offsets = np.zeros(cfg.users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.empty(offsets[-1], dtype=np.int32)
    times = np.empty(offsets[-1], dtype=np.int64)
    _run_chunks(
        _draw_sequences,
        offsets,
        stream_key(cfg.seed, "synthetic", 3),
        stream_key(cfg.seed, "synthetic", 4),
        offsets,
        cat.item_cluster,
        cat.cluster_offsets,
        cat.members,
        cat.cdf,
        cat.successors,
        cfg.taste_clusters,
        cfg.successor_prob,
        cfg.stickiness,
        items,
        times,
    )
    return items, offsets, times, cat.item_cluster


# ---------------------------------------------------------------------------------------------
# Planted noise
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _free_uniform(state, num_items, owned):
    for _ in range(_MAX_REJECTIONS):
        state, i = next_below(state, num_items)
        if not _set_has(owned, i + 1):
            return state, i + 1
    return _scan_free(state, num_items, owned)


@numba.njit(cache=True)
def _free_popular(state, prob, alias, num_items, owned):
    for _ in range(_MAX_REJECTIONS):
        state, i = next_below(state, prob.shape[0])
        state, x = next_float(state)
        if x >= prob[i]:
            i = alias[i]
        if not _set_has(owned, i + 1):
            return state, i + 1
    return _scan_free(state, num_items, owned)


@numba.njit(cache=True)
def _scan_free(state, num_items, owned):
    # A user owning (nearly) every item: scan from a random start; 0 if nothing is free.
    state, start = next_below(state, num_items)
    for k in range(num_items):
        item = (start + k) % num_items + 1
        if not _set_has(owned, item):
            return state, item
    return state, 0


@numba.njit(cache=True)
def _noise_positions(state, n_hist, k, contiguous, out):
    """k distinct positions in [0, n_hist), increasing: a random block, or a uniform subset."""
    if contiguous:
        state, start = next_below(state, n_hist - k + 1)
        for j in range(k):
            out[j] = start + j
        return state
    chosen = 0
    for i in range(n_hist):  # selection sampling (Knuth's algorithm S): sorted, no scratch
        if chosen == k:
            break
        state, x = next_below(state, n_hist - i)
        if x < k - chosen:
            out[chosen] = i
            chosen += 1
    return state


@numba.njit(cache=True)
def _foreign_items(state, u, seq_items, seq_offsets, owned, k, out):
    """Fill out[:k] with consecutive items of a random other user that u does not own.

    A shared account: another person's session. When that person's sequence runs out, the
    run continues with a further random user. Returns how many were filled (all, but for
    a pathological dataset).
    """
    num_users = seq_offsets.shape[0] - 1
    filled = 0
    if num_users < 2:
        return state, filled
    for _ in range(_MAX_REJECTIONS):
        if filled == k:
            break
        state, v = next_below(state, num_users - 1)
        v += v >= u  # any user but u
        a = seq_offsets[v]
        n = seq_offsets[v + 1] - a
        if n == 0:
            continue
        state, j0 = next_below(state, n)
        for s in range(n):
            item = seq_items[a + (j0 + s) % n]
            if not _set_has(owned, item):
                _set_add(owned, item)
                out[filled] = item
                filled += 1
                if filled == k:
                    break
    return state, filled


@numba.njit(cache=True)
def _plant_user(
    state,
    u,
    kind,
    include_last,
    seq_items,
    seq_offsets,
    prob,
    alias,
    num_items,
    out_items,
    positions,
    original,
    planted,
):
    """Plant len(positions) noise items into user u's slice of ``out_items``; fills the truth."""
    a = seq_offsets[u]
    n = seq_offsets[u + 1] - a
    k = positions.shape[0]
    owned = _set_new(n + k)
    for j in range(n):  # the user's own items (and, below, what was planted) are excluded
        _set_add(owned, seq_items[a + j])
    span = n if include_last else n - 1  # positions that may be replaced
    state = _noise_positions(state, span, k, kind == 2, positions)
    filled = 0
    if kind == 2:
        state, filled = _foreign_items(state, u, seq_items, seq_offsets, owned, k, planted)
    for j in range(filled, k):
        if kind == 1:
            state, item = _free_popular(state, prob, alias, num_items, owned)
        else:
            state, item = _free_uniform(state, num_items, owned)
        if item == 0:  # the user owns every item: any item but the original
            state, x = next_below(state, num_items - 1)
            item = x + 1
            item += item >= seq_items[a + positions[j]]
        _set_add(owned, item)
        planted[j] = item
    for j in range(k):
        p = a + positions[j]
        original[j] = seq_items[p]
        out_items[p] = planted[j]


@numba.njit(cache=True)
def _insert_user(state, u, include_last, seq_items, seq_offsets, num_items, positions, planted):
    """Draw len(positions) items new to user u and their slots in its grown sequence.

    The k slots are a uniform sorted subset of the grown sequence's n + k positions, all but the
    last one without ``include_last`` (the last item stays the user's own). The user's items
    keep their order in the remaining slots (plant_noise merges them).
    """
    a = seq_offsets[u]
    n = seq_offsets[u + 1] - a
    k = positions.shape[0]
    owned = _set_new(n + k)
    for j in range(n):
        _set_add(owned, seq_items[a + j])
    span = n + k if include_last else n + k - 1
    state = _noise_positions(state, span, k, False, positions)
    for j in range(k):
        state, item = _free_uniform(state, num_items, owned)
        if item == 0:  # the user owns every item: any item (a repeat)
            state, x = next_below(state, num_items)
            item = x + 1
        _set_add(owned, item)
        planted[j] = item


@numba.njit(nogil=True, cache=True)
def _plant(
    lo,
    hi,
    key,
    kind,
    include_last,
    seq_items,
    seq_offsets,
    users,
    row_offsets,
    prob,
    alias,
    num_items,
    out_items,
    out_pos,
    out_orig,
    out_planted,
):
    # Reads only the input sequences (donors may be noisy users too) and writes only row r's
    # user slice and truth rows: no row depends on another, whatever the thread schedule.
    # 'insert' writes only the truth rows (plant_noise merges them into the grown sequences).
    for r in range(lo, hi):
        a = row_offsets[r]
        b = row_offsets[r + 1]
        if kind == _INSERT:
            _insert_user(
                row_state(key, users[r]),
                users[r],
                include_last,
                seq_items,
                seq_offsets,
                num_items,
                out_pos[a:b],
                out_planted[a:b],
            )
            out_orig[a:b] = 0  # nothing replaced
        else:
            _plant_user(
                row_state(key, users[r]),
                users[r],
                kind,
                include_last,
                seq_items,
                seq_offsets,
                prob,
                alias,
                num_items,
                out_items,
                out_pos[a:b],
                out_orig[a:b],
                out_planted[a:b],
            )


def _merge_inserted(
    seq_items: np.ndarray,
    seq_offsets: np.ndarray,
    user: np.ndarray,
    position: np.ndarray,
    planted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grown CSR sequences of 'insert' and the origin of each interaction (see PlantedNoise).

    ``user``, ``position`` (in the grown sequence), ``planted``: the truth rows, sorted by
    (user, position). The slots that are not planted hold the input items, in order.
    """
    extra = np.bincount(user, minlength=len(seq_offsets) - 1).astype(np.int64)
    offsets = seq_offsets.copy()
    offsets[1:] += np.cumsum(extra)
    flat = offsets[user] + position
    inserted = np.zeros(int(offsets[-1]), dtype=bool)
    inserted[flat] = True
    items = np.empty(len(inserted), dtype=np.int32)
    items[flat] = planted
    items[~inserted] = seq_items
    origin = np.empty(len(inserted), dtype=np.int64)
    origin[~inserted] = np.arange(len(seq_items), dtype=np.int64)
    # The input interaction before an inserted one is the (count of own items before it) - 1:
    # the same user's unless it is at the start of the sequence, then the user's first item.
    kept_before = np.cumsum(~inserted)[flat]
    origin[flat] = np.maximum(kept_before - 1, seq_offsets[user])
    return items, offsets, origin


class PlantedNoise(NamedTuple):
    """What :func:`plant_noise` returns: the noisy CSR sequences and the ground truth."""

    seq_items: np.ndarray  # int32 [N']: the sequences with noise (N' = N + inserted items)
    seq_offsets: np.ndarray  # int64 [U + 1]: their offsets (the input's, but with 'insert')
    #: int64 [N']: the input interaction each output one continues: itself, or for an inserted
    #: item the user's interaction before it (after it at the start of a sequence). Carry any
    #: per-interaction column (times) with ``column[origin]``.
    origin: np.ndarray
    truth: dict[str, np.ndarray]  # user, position (in the output sequence), original_item, planted_item


def _eligible(lengths: np.ndarray, eligible_users: Optional[np.ndarray]) -> np.ndarray:
    """Users that may receive noise: a history of >= 1 item, within eligible_users if given."""
    ok = lengths >= 2
    if eligible_users is not None:
        eligible_users = np.asarray(eligible_users)
        mask = np.zeros(len(lengths), dtype=bool)
        if eligible_users.dtype == bool:
            if eligible_users.shape != mask.shape:
                raise ValueError(f"eligible_users as a mask needs {len(lengths)} entries, got {eligible_users.shape}")
            mask = eligible_users
        else:
            if len(eligible_users) and (eligible_users.min() < 0 or eligible_users.max() >= len(lengths)):
                raise ValueError(f"eligible_users must be user ids in 0..{len(lengths) - 1}")
            mask[eligible_users] = True
        ok &= mask
    return np.flatnonzero(ok)


def plant_noise(
    seq_items: np.ndarray,
    seq_offsets: np.ndarray,
    num_items: int,
    popularity: np.ndarray,
    *,
    user_share: float,
    item_share: float,
    kind: str,
    seed: int,
    eligible_users: Optional[np.ndarray] = None,
    include_last: bool = False,
) -> PlantedNoise:
    """Plant noise into the sequences of a CSR dataset; returns the noisy sequences, their
    offsets, each output interaction's origin and the ground truth (:class:`PlantedNoise`).

    ``round(user_share * E)`` users are drawn uniformly among the E eligible ones (users with at
    least 2 items, restricted to ``eligible_users``: ids or a bool mask). A drawn user of n items
    gets ``k = max(1, round(item_share * s))`` of its first s items replaced, s = n with
    ``include_last`` (the last item too: the training target of the paper protocol, and the
    test positive under leave-one-out) and s = n - 1 without (the last item never is). The
    replacements are items the user does not own, drawn by ``kind``: 'random' (uniform, at
    random positions), 'popular' (proportional to ``popularity``, int [num_items + 1], entry 0
    unused, at random positions), or 'foreign' (a contiguous block filled by consecutive items
    of another random user). 'insert' replaces nothing: it inserts k items drawn as 'random'
    at random slots, so the user's sequence grows to n + k and the offsets change; without
    ``include_last`` no item is inserted after the last one (it stays the last), with it an
    inserted item may become the new last item. ``item_share = 0`` plants nothing. The ground
    truth holds one row per planted item, sorted by (user, position): int32 columns user,
    position (in the output sequence), original_item (0 for 'insert'), planted_item. The input
    is not modified; the result is a pure function of the arguments (not of the thread count).
    """
    if kind not in _KIND_CODE:
        raise ValueError(f"noise kind {kind!r}: expected one of {', '.join(NOISE_KINDS)}")
    for name, share in (("user_share", user_share), ("item_share", item_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if num_items < 2:
        raise ValueError("planting noise needs at least 2 items")
    seq_items = np.ascontiguousarray(seq_items, dtype=np.int32)
    seq_offsets = np.ascontiguousarray(seq_offsets, dtype=np.int64)
    popularity = np.asarray(popularity)
    if popularity.shape != (num_items + 1,):
        raise ValueError(f"popularity needs num_items + 1 = {num_items + 1} entries, got {popularity.shape}")
    lengths = np.diff(seq_offsets)

    candidates = _eligible(lengths, eligible_users)
    n_noisy = int(np.floor(user_share * len(candidates) + 0.5))
    users = np.sort(candidates[permutation(len(candidates), seed, "plant_noise", 0)[:n_noisy]])
    span = lengths[users] - (0 if include_last else 1)
    counts = np.floor(item_share * span + 0.5).astype(np.int64)
    counts = np.clip(counts, 1 if item_share > 0 else 0, span)
    row_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(row_offsets[-1])

    if kind == "popular":
        prob, alias = build_alias(popularity[1:].astype(np.float64))
    else:
        prob, alias = np.ones(1), np.zeros(1, dtype=np.int32)
    # 'insert' leaves out_items alone: the grown sequences are merged from the truth below.
    out_items = seq_items.copy() if kind != "insert" else np.empty(0, dtype=np.int32)
    position = np.empty(total, dtype=np.int32)
    original = np.empty(total, dtype=np.int32)
    planted = np.empty(total, dtype=np.int32)
    _run_chunks(
        _plant,
        row_offsets,
        stream_key(seed, "plant_noise", 1),
        _KIND_CODE[kind],
        bool(include_last),
        seq_items,
        seq_offsets,
        users.astype(np.int64),
        row_offsets,
        prob,
        alias,
        int(num_items),
        out_items,
        position,
        original,
        planted,
    )
    truth = {
        "user": np.repeat(users, counts).astype(np.int32),
        "position": position,
        "original_item": original,
        "planted_item": planted,
    }
    if kind == "insert":
        out_items, out_offsets, origin = _merge_inserted(seq_items, seq_offsets, truth["user"], position, planted)
    else:
        out_offsets, origin = seq_offsets.copy(), np.arange(len(seq_items), dtype=np.int64)
    return PlantedNoise(out_items, out_offsets, origin, truth)


# ---------------------------------------------------------------------------------------------
# The dataset: generate, write, cache
# ---------------------------------------------------------------------------------------------


def generator_params(cfg: SyntheticConfig) -> dict:
    """The config fields that determine the data (all but cache_dir), plus the generator version."""
    params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "cache_dir"}
    params["version"] = GENERATOR_VERSION
    return params


def generate(cfg: SyntheticConfig) -> SyntheticData:
    """Generate the clean sequences, then plant the configured noise (see the module docstring)."""
    cfg.check()
    clean, offsets, times, item_category = generate_clean(cfg)
    popularity = np.bincount(clean, minlength=cfg.items + 1)
    # The folds write() stores (same function, same arguments): the clean fold is known up front.
    fold = assign_folds(cfg.users, cfg.folds, cfg.seed)
    eligible = None if cfg.clean_test_fold is None else fold != cfg.clean_test_fold
    noisy = plant_noise(
        clean,
        offsets,
        cfg.items,
        popularity,
        user_share=cfg.noisy_user_share,
        item_share=cfg.noisy_item_share,
        kind=cfg.noise_kind,
        seed=cfg.seed,
        eligible_users=eligible,
        include_last=cfg.noise_in_targets,
    )
    return SyntheticData(
        clean,
        offsets,
        noisy.seq_items,
        noisy.seq_offsets,
        times[noisy.origin],
        item_category,
        noisy.truth,
        fold,
    )


def _last_item_note(cfg: SyntheticConfig) -> str:
    """What the noise may do to a noisy user's last item (meta.json's noise.last_item)."""
    if cfg.noise_kind == "insert":
        if cfg.noise_in_targets:
            return "an inserted item may follow it and become the last item (a false-positive training target)"
        return "never an inserted item: always the user's own last item"
    if cfg.noise_in_targets:
        return "replaced like any other item of a noisy user (a false-positive training target)"
    return "never replaced"


def write(cfg: SyntheticConfig, output: str | Path, *, overwrite: bool = False) -> Path:
    """Generate the dataset of ``cfg`` and write it to ``output`` (atomically); returns the path."""
    started = time.perf_counter()
    data = generate(cfg)
    noisy_users = len(np.unique(data.noise["user"]))
    last = data.noise["position"] == np.diff(data.seq_offsets)[data.noise["user"]] - 1
    meta = {
        "format": "synthetic",
        "generator": generator_params(cfg),
        "noise": {
            "kind": cfg.noise_kind,
            "noisy_users": noisy_users,
            "planted_items": int(len(data.noise["user"])),
            "planted_last_items": int(last.sum()),
            "last_item": _last_item_note(cfg),
            "clean_test_fold": cfg.clean_test_fold,
        },
        "generation_seconds": round(time.perf_counter() - started, 3),
    }
    return write_dataset(
        output,
        seq_items=data.seq_items,
        seq_offsets=data.seq_offsets,
        seq_times=data.seq_times,
        raw_users=pa.array(np.arange(cfg.users, dtype=np.int64)).cast(pa.string()),
        raw_items=pa.array(np.arange(1, cfg.items + 1, dtype=np.int64)).cast(pa.string()),
        item_category=data.item_category,
        category_names=pa.array([f"cluster{c}" for c in range(1, cfg.clusters + 1)]),
        meta=meta,
        folds=cfg.folds,
        fold_seed=cfg.seed,  # the assignment generate() used for clean_test_fold
        candidate_seed=cfg.seed,
        noise=data.noise,
        overwrite=overwrite,
    )


def cache_root(cfg: SyntheticConfig) -> Path:
    """cfg.cache_dir, else $ATJT_CACHE, else ~/.cache/atjt-dist."""
    root = cfg.cache_dir or os.environ.get("ATJT_CACHE") or Path.home() / ".cache" / "atjt-dist"
    return Path(root).expanduser()


def dataset_name(cfg: SyntheticConfig) -> str:
    """The cache directory name: sizes for people, a hash of every generator parameter for safety."""
    digest = hashlib.sha256(json.dumps(generator_params(cfg), sort_keys=True).encode()).hexdigest()
    return f"synthetic-u{cfg.users}-i{cfg.items}-{digest[:12]}"


def _is_cached(path: Path, cfg: SyntheticConfig) -> bool:
    try:
        return read_meta(path).get("generator") == generator_params(cfg)
    except (DatasetError, OSError, ValueError):
        return False


def ensure_dataset(cfg: SyntheticConfig) -> Path:
    """The cached dataset directory of ``cfg``, generated on first use.

    Safe when several processes (ranks, also on other nodes of a shared file system with
    working flock) call it at once: generation runs under an exclusive lock on a file beside
    the dataset, and the others find the finished directory when they get the lock.
    """
    cfg.check()
    root = cache_root(cfg)
    path = root / dataset_name(cfg)
    if _is_cached(path, cfg):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _is_cached(path, cfg):  # another process may have finished meanwhile
                log.info("generating the synthetic dataset %s (once per config)", path)
                write(cfg, path, overwrite=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(tp):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null") else tp(text)

    parse.__name__ = f"{tp.__name__} or none"  # argparse names the type in its error message
    return parse


def _option_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return {"choices": typing.get_args(tp)}
    if origin is typing.Union:  # Optional[str], Optional[int]: 'none' is None
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return {"type": _optional(_parse_bool if inner is bool else inner), "metavar": inner.__name__.upper()}
    if tp is bool:
        return {"type": _parse_bool, "metavar": "{true,false}"}
    return {"type": tp}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m atjt_dist.data.synthetic",
        description="Write a synthetic dataset with planted noise and its ground truth.",
    )
    p.add_argument("--output", help="dataset directory to write (default: the cache, see --cache-dir)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    hints = typing.get_type_hints(SyntheticConfig)
    for f in dataclasses.fields(SyntheticConfig):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default})",
            **_option_type(hints[f.name]),
        )
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """The CLI: write a dataset to --output, or make sure the cached one exists; print its path."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    cfg = SyntheticConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)})
    try:
        cfg.check(key=lambda f: "--" + f.replace("_", "-"))
        if args.output is None:
            if args.overwrite:
                raise ConfigError("--overwrite needs --output (to regenerate the cache, delete its directory)")
            path = ensure_dataset(cfg)
        else:
            prepare_output_dir(args.output, args.overwrite)  # fail before generating, not after
            path = write(cfg, args.output, overwrite=args.overwrite)
    except (ConfigError, DatasetError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())  # one line
        print(f"python -m atjt_dist.data.synthetic: error: {message}", file=sys.stderr)
        return 2
    meta = read_meta(path)
    log.info(
        "%s: %d users, %d items, %d interactions; %d noisy users, %d planted items (%s)",
        path,
        meta["num_users"],
        meta["num_items"],
        meta["num_interactions"],
        meta["noise"]["noisy_users"],
        meta["noise"]["planted_items"],
        meta["noise"]["kind"],
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
