"""The synthetic generator: clean sequential-recommendation data, then planted noise.

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

Then :func:`generate` plants the configured noise (``atjt_dist.data.noise``: kinds ``random``,
``popular``, ``foreign``, ``insert``) into a share of the users.

**The last item.** It is the training target of the paper's one-sample-per-user protocol and
the test positive (column 0 of the stored candidates). With ``noise_in_targets`` (the default)
a noisy user's last item may be replaced like any other, so some training positives are false
positives (what T-CE / R-CE target, and a history/target mismatch ATJT's recogniser can see);
with ``insert`` an inserted item may land after the last one and become the new last item.
With ``clean_test_fold`` (the default: fold 0, the default test fold) the test users get no
noise at all, so test metrics measure true preferences. ``noise_in_targets=false`` never
replaces the last item, and never inserts after it (for ``data.split=loo``, whose test
positives are the last items).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numba
import numpy as np

from ..config import SyntheticConfig
from .layout import assign_folds
from .noise import plant_noise
from .rng import next_below, next_float, row_state, stream_key
from .sampling import permutation
from .synthetic_kernels import MAX_REJECTIONS, run_chunks, set_add, set_has, set_new

# Bump when the generator's output for a given config changes: cached datasets are keyed by it.
GENERATOR_VERSION = 3
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
            for _ in range(MAX_REJECTIONS):
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
    for _ in range(MAX_REJECTIONS):
        state, item = _zipf_in_cluster(state, c, offsets, members, cdf)
        if not set_has(owned, item):
            return state, item
    num_clusters = offsets.shape[0] - 1
    state, start = next_below(state, num_clusters)
    for k in range(num_clusters):  # lengths <= M/2 guarantee a free item somewhere
        cc = (c + k) % num_clusters if k == 0 else (start + k) % num_clusters
        for j in range(offsets[cc], offsets[cc + 1]):
            if not set_has(owned, members[j]):
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
def _draw_user(state, items, item_cluster, cl_offsets, members, cdf, successors, taste_k, successor_prob, stickiness):
    """One user's sequence into ``items`` (its slice of the CSR array)."""
    clusters = np.empty(taste_k, dtype=np.int64)
    cum = np.empty(taste_k, dtype=np.float64)
    state = _draw_taste(state, cl_offsets.shape[0] - 1, taste_k, clusters, cum)
    state, cur = _pick_cluster(state, clusters, cum)
    owned = set_new(items.shape[0])
    prev = 0
    for t in range(items.shape[0]):
        item = 0
        if prev > 0:
            state, x = next_float(state)
            if x < successor_prob:
                state, s = next_below(state, successors.shape[1])
                item = successors[prev, s]
                if set_has(owned, item):
                    item = 0  # already seen: fall back to the cluster walk
        if item == 0:
            if t > 0:
                state, x = next_float(state)
                if x >= stickiness:
                    state, cur = _pick_cluster(state, clusters, cum)
            state, item = _free_item(state, cur, cl_offsets, members, cdf, owned)
        cur = item_cluster[item] - 1
        set_add(owned, item)
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
    lo, hi, key, time_key, offsets, item_cluster, cl_offsets, members, cdf, successors, taste_k, successor_prob, stickiness, out_items, out_times
):
    for u in range(lo, hi):
        a = offsets[u]
        b = offsets[u + 1]
        _draw_user(row_state(key, u), out_items[a:b], item_cluster, cl_offsets, members, cdf, successors, taste_k, successor_prob, stickiness)
        _draw_times(row_state(time_key, u), out_times[a:b])


def generate_clean(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The clean sequences: (seq_items int32, seq_offsets int64, seq_times int64, item_category)."""
    cat = build_catalogue(cfg)
    lengths = np.empty(cfg.users, dtype=np.int64)
    _draw_lengths(stream_key(cfg.seed, "synthetic", 2), cfg.min_length, float(cfg.mean_length), cfg.items // 2, lengths)
    offsets = np.zeros(cfg.users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.empty(offsets[-1], dtype=np.int32)
    times = np.empty(offsets[-1], dtype=np.int64)
    run_chunks(
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
# The dataset of a config: clean sequences, then planted noise
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
