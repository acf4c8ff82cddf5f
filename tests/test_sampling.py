"""The numba samplers of the data path (atjt_dist.data.sampling), checked against METHOD.md.

Permutations and the user partition; alias tables; negatives (popularity^0.75 by item id, never
an item of the user, rank- and thread-independent); test candidates; history windows against
a plain-Python reference; and the corruption of METHOD.md section 2 (noisy rows, positions,
replacements, labels, rank slices). Every statistical check is seeded, hence deterministic.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from atjt_dist.data import sampling as S
from atjt_dist.data.rng import stream_key

L = 19


def chi2(observed, expected) -> float:
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    keep = expected > 0
    assert observed[~keep].sum() == 0, "drew an outcome of probability 0"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def chi2_critical(df: int, z: float = 4.0) -> float:
    """Upper quantile of chi-square(df) at standard-normal z (Wilson-Hilferty); z=4: p ~ 3e-5."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


class Data:
    """CSR sequences: user u's items (1..num_items, time order) are items[offsets[u]:offsets[u+1]]."""

    def __init__(self, items, offsets, num_items, num_categories=12, seed=0):
        rng = np.random.default_rng(seed + 100)
        self.items = np.asarray(items, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.num_items = num_items
        self.num_users = len(self.offsets) - 1
        self.lengths = np.diff(self.offsets)
        self.category = np.concatenate([[0], rng.integers(1, num_categories + 1, num_items)]).astype(np.int32)
        self.owned, self.owned_offsets = S.user_item_sets(self.items, self.offsets)

    def seq(self, u):
        return self.items[self.offsets[u] : self.offsets[u + 1]]


def make_data(users=300, num_items=400, max_len=90, seed=0, heavy_free=(7, 150, 333)):
    """Random users with Zipf-ish items (ids shuffled), repeats allowed; the last user (the
    'heavy' one) owns every item except ``heavy_free``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, users)
    w = 1.0 / np.arange(1, num_items + 1)
    ids = rng.permutation(num_items) + 1
    seqs = [ids[rng.choice(num_items, n, p=w / w.sum())] for n in lengths]
    heavy = np.setdiff1d(np.arange(1, num_items + 1), heavy_free)
    seqs.append(rng.permutation(heavy))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return Data(np.concatenate(seqs), offsets, num_items, seed=seed)


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def alias_probabilities(prob, alias):
    """The exact distribution an alias table encodes."""
    n = len(prob)
    p = prob.astype(np.float64).copy()
    np.add.at(p, alias, 1.0 - prob)
    return p / n


# =============================================================================================
# Permutations and the partition
# =============================================================================================


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000])
def test_permutation_is_a_seeded_permutation(n):
    p = S.permutation(n, 3, "shuffle", 1, 2)
    assert p.dtype == np.int64
    assert np.array_equal(np.sort(p), np.arange(n))
    assert np.array_equal(p, S.permutation(n, 3, "shuffle", 1, 2))
    if n >= 17:
        assert not np.array_equal(p, S.permutation(n, 4, "shuffle", 1, 2))
        assert not np.array_equal(p, S.permutation(n, 3, "shuffle", 1, 3))
        assert not np.array_equal(p, S.permutation(n, 3, "folds", 1, 2))


def test_permutation_is_uniform_over_all_orders():
    import itertools

    index = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    counts = np.zeros(24)
    for epoch in range(4800):
        counts[index[tuple(S.permutation(4, 0, "shuffle", epoch))]] += 1
    assert chi2(counts, np.full(24, 200.0)) < chi2_critical(23)


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_partition_users_near_equal_disjoint_complete(parts):
    users = np.random.default_rng(1).permutation(5000)[:1003] * 3 + 11  # distinct, unsorted ids
    split = S.partition_users(users, parts, seed=42)
    assert len(split) == parts
    sizes = [len(p) for p in split]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(users)
    union = np.concatenate(split)
    assert len(np.unique(union)) == len(users)  # disjoint
    assert set(union.tolist()) == set(users.tolist())  # complete
    for p in split:
        assert np.all(np.diff(p) > 0)  # sorted
    again = S.partition_users(users, parts, seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
    if parts > 1:
        other = S.partition_users(users, parts, seed=43)
        assert not all(np.array_equal(a, b) for a, b in zip(split, other))


def test_partition_users_rejects_bad_input():
    with pytest.raises(ValueError):
        S.partition_users(np.arange(3), 4, seed=0)
    with pytest.raises(ValueError):
        S.partition_users(np.arange(3), 0, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        S.partition_users(np.array([1, 2, 2, 3]), 2, seed=0)


# =============================================================================================
# Alias tables and negatives
# =============================================================================================


def draw_unconstrained(prob, alias, rows, key=None):
    """Negatives for a user who owns nothing: plain draws from the alias table."""
    owned = np.zeros(0, dtype=np.int32)
    owned_offsets = np.zeros(2, dtype=np.int64)
    out = np.zeros(rows, dtype=np.int32)
    key = stream_key(0, "negatives", 0) if key is None else key
    S.sample_negatives(key, np.arange(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64), owned, owned_offsets, prob, alias, out)
    return out


def test_alias_table_encodes_the_weights_exactly():
    rng = np.random.default_rng(2)
    weights = rng.random(1000) ** 3
    weights[rng.choice(1000, 100, replace=False)] = 0.0
    prob, alias = S.build_alias(weights)
    assert prob.shape == alias.shape == (1000,)
    assert np.all((prob >= 0) & (prob <= 1)) and alias.min() >= 0 and alias.max() < 1000
    np.testing.assert_allclose(alias_probabilities(prob, alias), weights / weights.sum(), atol=1e-12)
    with pytest.raises(ValueError):
        S.build_alias(np.zeros(5))
    with pytest.raises(ValueError):
        S.build_alias(np.array([1.0, -1.0]))
    with pytest.raises(ValueError):
        S.build_alias(np.array([1.0, np.nan]))


def test_alias_draws_follow_the_weights_and_never_zero_weight_items():
    weights = np.array([5.0, 0.0, 1.0, 0.0, 3.0, 0.5, 0.0, 2.0, 8.0, 0.0, 1.5, 4.0])
    prob, alias = S.build_alias(weights)
    draws = draw_unconstrained(prob, alias, 240_000)
    counts = np.bincount(draws, minlength=len(weights) + 1)
    assert counts[0] == 0  # item ids are 1..N, never the padding id
    counts = counts[1:]
    assert np.all(counts[weights == 0] == 0)
    expected = weights / weights.sum() * len(draws)
    assert chi2(counts, expected) < chi2_critical(int((weights > 0).sum()) - 1)


def test_popularity_sampling_is_by_item_id_not_by_rank():
    # popularity by item id, deliberately not sorted: item 1 is rare, item 37 the most popular
    rng = np.random.default_rng(3)
    num_items = 60
    popularity = np.concatenate([[0], rng.permutation(np.round(1000.0 / np.arange(1, num_items + 1)))]).astype(np.int64)
    assert not np.all(np.diff(popularity[1:]) <= 0)
    weights = popularity[1:].astype(np.float64) ** 0.75  # what TrainingData builds
    prob, alias = S.build_alias(weights)
    draws = draw_unconstrained(prob, alias, 300_000)
    counts = np.bincount(draws, minlength=num_items + 1)[1:]
    expected = weights / weights.sum() * len(draws)
    assert chi2(counts, expected) < chi2_critical(num_items - 1)
    assert np.argmax(counts) + 1 == np.argmax(popularity)
    # the authors' bug (the probability vector indexed by popularity rank) would look like this
    by_rank = np.sort(weights)[::-1]
    assert chi2(counts, by_rank / by_rank.sum() * len(draws)) > 100 * chi2_critical(num_items - 1)
    # and the exponent is 0.75, not 1
    plain = popularity[1:] / popularity[1:].sum() * len(draws)
    assert chi2(counts, plain) > 10 * chi2_critical(num_items - 1)


def test_negatives_are_never_the_users_items(data):
    rng = np.random.default_rng(4)
    pop = np.bincount(data.items, minlength=data.num_items + 1)[1:].astype(np.float64)
    prob, alias = S.build_alias(pop**0.75)
    rows = 6000
    users = rng.integers(0, data.num_users, rows)
    users[::40] = data.num_users - 1  # the heavy user: 3 free items of 400
    out = np.full(rows, -1, dtype=np.int32)
    S.sample_negatives(stream_key(1, "negatives", 0, 0), np.arange(rows, dtype=np.int64), users, data.owned, data.owned_offsets, prob, alias, out)
    assert out.min() >= 1 and out.max() <= data.num_items
    for r in range(rows):
        assert out[r] not in data.seq(users[r])
    heavy = out[users == data.num_users - 1]
    assert set(heavy.tolist()) <= {7, 150, 333} and len(set(heavy.tolist())) > 1


def test_negatives_fallback_for_a_user_owning_nearly_all_the_mass():
    # 200 items; the user owns all but items 10, 20, 30, which carry ~1e-9 of the mass, so
    # 10,000 rejections fail and the exact fallback draws among the free items by weight.
    num_items = 200
    weights = np.ones(num_items)
    free = np.array([10, 20, 30])
    weights[free - 1] = [1e-9, 2e-9, 5e-9]
    prob, alias = S.build_alias(weights)
    owned = np.setdiff1d(np.arange(1, num_items + 1), free).astype(np.int32)
    owned_offsets = np.array([0, len(owned)], dtype=np.int64)
    rows = 1600
    out = np.zeros(rows, dtype=np.int32)
    S.sample_negatives(stream_key(2, "negatives"), np.arange(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64), owned, owned_offsets, prob, alias, out)
    counts = np.array([(out == f).sum() for f in free])
    assert counts.sum() == rows  # only free items
    expected = np.array([1, 2, 5]) / 8 * rows
    assert chi2(counts, expected) < chi2_critical(2)
    # zero weight on every free item: uniform among them, still never an owned item
    weights[free - 1] = 0.0
    prob, alias = S.build_alias(weights)
    S.sample_negatives(stream_key(3, "negatives"), np.arange(300, dtype=np.int64), np.zeros(300, dtype=np.int64), owned, owned_offsets, prob, alias, out[:300])
    assert set(out[:300].tolist()) == set(free.tolist())


def test_negatives_raise_for_a_user_owning_every_item():
    prob, alias = S.build_alias(np.ones(5))
    owned = np.arange(1, 6, dtype=np.int32)
    with pytest.raises(ValueError, match="every one"):
        S.sample_negatives(
            stream_key(0, "negatives"),
            np.arange(3, dtype=np.int64),
            np.zeros(3, dtype=np.int64),
            owned,
            np.array([0, 5], dtype=np.int64),
            prob,
            alias,
            np.zeros(3, dtype=np.int32),
        )


def test_negatives_are_a_function_of_key_and_row_id(data):
    rng = np.random.default_rng(5)
    prob, alias = S.build_alias(rng.random(data.num_items) + 0.1)
    rows = 1001
    users = rng.integers(0, data.num_users, rows)
    row_ids = np.arange(5000, 5000 + rows, dtype=np.int64)
    key = stream_key(7, "negatives", 2, 9)

    def draw(u, ids, k=key):
        out = np.zeros(len(u), dtype=np.int32)
        return S.sample_negatives(k, ids, u, data.owned, data.owned_offsets, prob, alias, out)

    whole = draw(users, row_ids)
    # two ranks, each with its slice of the global batch, reproduce the single process
    assert np.array_equal(np.concatenate([draw(users[:377], row_ids[:377]), draw(users[377:], row_ids[377:])]), whole)
    # any order of rows: each row only depends on (key, row id, user)
    perm = rng.permutation(rows)
    assert np.array_equal(draw(users[perm], row_ids[perm]), whole[perm])
    assert np.array_equal(draw(users, row_ids), whole)  # deterministic
    assert np.mean(draw(users, row_ids, stream_key(7, "negatives", 2, 10)) != whole) > 0.5


def test_negatives_parallel_path_equals_serial_path(data, restore_threads):
    rng = np.random.default_rng(6)
    pop = np.bincount(data.items, minlength=data.num_items + 1)[1:].astype(np.float64)
    prob, alias = S.build_alias(pop**0.75)
    rows = S.PARALLEL_MIN_ROWS + 321
    users = rng.integers(0, data.num_users - 1, rows)
    row_ids = np.arange(rows, dtype=np.int64)
    key = stream_key(8, "negatives", 1)
    outs = []
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        numba.set_num_threads(threads)
        outs.append(S.sample_negatives(key, row_ids, users, data.owned, data.owned_offsets, prob, alias, np.zeros(rows, dtype=np.int32)))
    serial = np.concatenate(
        [
            S.sample_negatives(
                key,
                row_ids[a : a + 4000],
                users[a : a + 4000],
                data.owned,
                data.owned_offsets,
                prob,
                alias,
                np.zeros(len(row_ids[a : a + 4000]), dtype=np.int32),
            )
            for a in range(0, rows, 4000)
        ]
    )
    for out in outs:
        assert np.array_equal(out, serial)


# =============================================================================================
# Test candidates
# =============================================================================================


def test_candidates_last_item_then_distinct_free_negatives(data):
    pop = np.bincount(data.items, minlength=data.num_items + 1)[1:].astype(np.float64)
    prob, alias = S.build_alias(pop**0.75)
    # the heavy user has only 3 free items: candidates of size 4 at most for this data
    cand = S.sample_candidates(data.items, data.offsets, data.owned, data.owned_offsets, prob, alias, 4, seed=1)
    assert cand.shape == (data.num_users, 4) and cand.dtype == np.int32
    assert set(cand[-1, 1:].tolist()) == {7, 150, 333}
    # the others on data without the heavy user, with 64 candidates
    d = Data(data.items[: data.offsets[-2]], data.offsets[:-1], data.num_items)
    cand = S.sample_candidates(d.items, d.offsets, d.owned, d.owned_offsets, prob, alias, 64, seed=1)
    assert cand.shape == (d.num_users, 64)
    for u in range(d.num_users):
        seq = d.seq(u)
        assert cand[u, 0] == seq[-1]
        neg = cand[u, 1:]
        assert len(np.unique(neg)) == 63
        assert neg.min() >= 1 and neg.max() <= d.num_items
        assert not np.isin(neg, seq).any()
    assert np.array_equal(cand, S.sample_candidates(d.items, d.offsets, d.owned, d.owned_offsets, prob, alias, 64, seed=1))
    other = S.sample_candidates(d.items, d.offsets, d.owned, d.owned_offsets, prob, alias, 64, seed=2)
    assert np.array_equal(other[:, 0], cand[:, 0]) and not np.array_equal(other, cand)


def test_candidates_refuse_impossible_requests(data):
    prob, alias = S.build_alias(np.ones(data.num_items))
    with pytest.raises(ValueError, match="fewer than"):  # the heavy user has 3 free items
        S.sample_candidates(data.items, data.offsets, data.owned, data.owned_offsets, prob, alias, 5, seed=0)
    empty = np.array([0, 3, 3, 5], dtype=np.int64)  # user 1 has no interaction
    items = np.array([1, 2, 3, 4, 5], dtype=np.int32)
    owned, owned_offsets = S.user_item_sets(items, empty)
    with pytest.raises(ValueError, match="no interaction"):
        S.sample_candidates(items, empty, owned, owned_offsets, prob, alias, 3, seed=0)


# =============================================================================================
# Windows
# =============================================================================================


def windows_reference(d: Data, users, positions, length):
    rows = len(users)
    hist = np.zeros((rows, length), dtype=np.int32)
    lengths = np.zeros(rows, dtype=np.int32)
    target = np.zeros(rows, dtype=np.int32)
    for r, (u, p) in enumerate(zip(users, positions)):
        seq = d.seq(u).tolist()
        h = seq[max(0, p - length) : p]  # the <= L items before the target, oldest first
        hist[r, : len(h)] = h
        lengths[r] = len(h)
        target[r] = seq[p]
    return hist, d.category[hist], lengths, target, d.category[target]


def run_windows(d: Data, users, positions, length=L):
    rows = len(users)
    bufs = [np.full((rows, length), -7, dtype=np.int32), np.full((rows, length), -7, dtype=np.int32)]
    bufs += [np.full(rows, -7, dtype=np.int32) for _ in range(3)]  # dirty buffers: all must be written
    S.fill_windows(d.items, d.offsets, d.category, np.asarray(users, dtype=np.int64), np.asarray(positions, dtype=np.int64), *bufs)
    return bufs


@pytest.mark.parametrize("length", [1, 5, L])
def test_windows_match_a_python_reference(data, length):
    rng = np.random.default_rng(7)
    rows = 700
    users = rng.integers(0, data.num_users, rows)
    positions = (rng.random(rows) * data.lengths[users]).astype(np.int64)  # 0 .. len-1
    positions[:5] = 0
    long = np.flatnonzero(data.lengths[users] > length + 3)
    positions[long[:20]] = length  # exactly L
    positions[long[20:40]] = data.lengths[users[long[20:40]]] - 1  # last item, window of L
    assert (positions < length).any() and (positions > length).any()
    got = run_windows(data, users, positions, length)
    for g, ref in zip(got, windows_reference(data, users, positions, length)):
        assert np.array_equal(g, ref)


def test_windows_parallel_path_matches_the_reference(data, restore_threads):
    rng = np.random.default_rng(8)
    rows = S.PARALLEL_MIN_ROWS + 77
    users = rng.integers(0, data.num_users, rows)
    positions = (rng.random(rows) * data.lengths[users]).astype(np.int64)
    ref = windows_reference(data, users, positions, L)
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        numba.set_num_threads(threads)
        for g, r in zip(run_windows(data, users, positions), ref):
            assert np.array_equal(g, r)


# =============================================================================================
# Corruption (METHOD.md section 2)
# =============================================================================================


@pytest.mark.parametrize("rows,fraction", [(256, 0.5), (7, 0.5), (5, 0.5), (100, 0.3), (64, 0.0), (64, 1.0), (1, 0.5)])
def test_noisy_rows_exact_count(rows, fraction):
    key = stream_key(0, "corrupt_rows", rows)
    mask = S.noisy_rows(key, rows, fraction)
    assert mask.dtype == np.bool_ and mask.shape == (rows,)
    assert mask.sum() == int(round(fraction * rows))
    assert np.array_equal(mask, S.noisy_rows(key, rows, fraction))


def test_noisy_rows_are_uniformly_chosen():
    rows, keys = 16, 4000
    hits = np.zeros(rows)
    masks = []
    for s in range(keys):
        m = S.noisy_rows(stream_key(1, "corrupt_rows", s), rows, 0.5)
        hits += m
        masks.append(m)
    assert chi2(hits, np.full(rows, keys / 2)) < chi2_critical(rows - 1)
    # as many distinct patterns as keys drawn uniformly from the C(16, 8) = 12870 would give
    patterns = 12870
    assert len({m.tobytes() for m in masks}) > 0.95 * patterns * (1 - (1 - 1 / patterns) ** keys)
    with pytest.raises(ValueError):
        S.noisy_rows(stream_key(1, "corrupt_rows"), 10, 1.5)


def window_batch(d: Data, rows, seed, min_pos=1):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, d.num_users - 1, rows)
    users = users[d.lengths[users] > min_pos][:rows]
    while len(users) < rows:
        users = np.concatenate([users, users])[:rows]
    positions = min_pos + (rng.random(rows) * (d.lengths[users] - min_pos)).astype(np.int64)
    return run_windows(d, users, positions)


def corrupt(d: Data, batch, *, seed=0, counters=(0, 0), noisy=None, fraction=0.5, rows_slice=None, global_min=None, **kw):
    hist, hist_cat, lengths, _, _ = batch
    rows = len(lengths)
    if noisy is None:
        noisy = S.noisy_rows(stream_key(seed, "corrupt_rows", *counters), rows, fraction)
    if global_min is None:
        global_min = int(lengths[lengths > 0].min())
    sl = rows_slice or slice(0, rows)
    h, c, n = hist[sl].copy(), hist_cat[sl].copy(), lengths[sl].copy()
    labels = S.corrupt_batch(
        seed=seed,
        counters=counters,
        row_ids=np.arange(rows, dtype=np.int64)[sl],
        global_noisy=noisy,
        global_min_length=global_min,
        hist=h,
        hist_cat=c,
        lengths=n,
        item_category=d.category,
        num_items=d.num_items,
        **kw,
    )
    return h, c, labels, noisy[sl]


def changed_columns(before, after):
    return [np.flatnonzero(before[r] != after[r]) for r in range(len(before))]


@pytest.mark.parametrize("count", [1, 2])
def test_corruption_shared_position(data, count):
    batch = window_batch(data, 256, seed=9, min_pos=3)
    hist, hist_cat, lengths = batch[0], batch[1], batch[2]
    h, c, labels, noisy = corrupt(data, batch, count=count)
    assert noisy.sum() == 128
    assert np.array_equal(labels, np.where(noisy, 0.0, 1.0).astype(np.float32))
    assert labels.dtype == np.float32
    # clean rows untouched; categories always those of the items
    assert np.array_equal(h[~noisy], hist[~noisy]) and np.array_equal(c[~noisy], hist_cat[~noisy])
    assert np.array_equal(c, data.category[h])
    cols = changed_columns(hist, h)
    shared_r = None
    for r in np.flatnonzero(noisy):
        assert len(cols[r]) == count  # exactly `count` items replaced (each differs from the original)
        rs = set((lengths[r] - cols[r]).tolist())  # r-th most recent: column length - r
        shared_r = rs if shared_r is None else shared_r
        assert rs == shared_r  # one set of r for the whole batch
        assert np.all(h[r, lengths[r] :] == 0)  # padding untouched
        assert h[r, : lengths[r]].min() >= 1
    assert min(shared_r) >= 1 and max(shared_r) <= lengths.min()


def test_shared_position_is_uniform_over_one_to_shortest_length(data):
    # 32 rows with histories of 6..19 items, the shortest exactly 6: r must be uniform on 1..6
    rng = np.random.default_rng(10)
    users = rng.choice(np.flatnonzero(data.lengths[:-1] > 10), 32)
    positions = 6 + (rng.random(32) * (data.lengths[users] - 6)).astype(np.int64)
    positions[0] = 6
    batch = run_windows(data, users, positions)
    assert batch[2].min() == 6
    counts = np.zeros(7)
    for step in range(1800):
        h, _, _, noisy = corrupt(data, batch, counters=(step,))
        rs = {int(batch[2][r] - np.flatnonzero(batch[0][r] != h[r])[0]) for r in np.flatnonzero(noisy)}
        assert len(rs) == 1  # shared by the batch
        counts[rs.pop()] += 1
    assert counts[0] == 0
    assert chi2(counts[1:], np.full(6, 300.0)) < chi2_critical(5)


@pytest.mark.parametrize("count", [1, 3])
def test_corruption_per_row_position(data, count):
    batch = window_batch(data, 400, seed=11, min_pos=1)
    hist, lengths = batch[0], batch[2]
    h, c, labels, noisy = corrupt(data, batch, count=count, per_row_position=True)
    assert np.array_equal(labels, np.where(noisy, 0.0, 1.0))
    assert np.array_equal(c, data.category[h])
    cols = changed_columns(hist, h)
    rs = []
    for r in range(len(lengths)):
        if not noisy[r]:
            assert len(cols[r]) == 0
            continue
        assert len(cols[r]) == min(count, lengths[r])
        assert cols[r].max() < lengths[r]
        rs.append(tuple(sorted(lengths[r] - cols[r])))
    assert len(set(rs)) > 10  # positions vary from row to row


def test_per_row_position_is_uniform_over_the_rows_own_length(data):
    # rows of length L: r uniform on 1..19 whatever the batch's shortest row
    batch = window_batch(data, 400, seed=12, min_pos=L + 1)
    assert np.all(batch[2] == L)
    counts = np.zeros(L + 1)
    for step in range(20):
        h, _, _, noisy = corrupt(data, batch, counters=(step,), per_row_position=True)
        for r in np.flatnonzero(noisy):
            (col,) = np.flatnonzero(batch[0][r] != h[r])
            counts[L - col] += 1
    assert counts[0] == 0 and counts.sum() == 4000
    assert chi2(counts[1:], np.full(L, 4000 / L)) < chi2_critical(L - 1)


def replacements(data, batch, steps, **kw):
    """(original, replacement) pairs over many corrupted batches."""
    orig, new = [], []
    for step in range(steps):
        h, _, _, noisy = corrupt(data, batch, counters=(step, 1), **kw)
        for r in np.flatnonzero(noisy):
            cols = np.flatnonzero(batch[0][r] != h[r])
            orig.extend(batch[0][r, cols].tolist())
            new.extend(h[r, cols].tolist())
    return np.array(orig), np.array(new)


def test_replacement_is_uniform_over_the_vocabulary_and_differs(data):
    batch = window_batch(data, 400, seed=13, min_pos=2)
    orig, new = replacements(data, batch, 200)
    assert np.all(orig != new)
    assert new.min() >= 1 and new.max() <= data.num_items
    # uniform over the other N-1 items: expected count of item i = sum over draws of [i != orig]/(N-1)
    n = data.num_items
    expected = (len(new) - np.bincount(orig, minlength=n + 1)[1:]) / (n - 1)
    counts = np.bincount(new, minlength=n + 1)[1:]
    assert counts.min() > 0  # every item of the vocabulary can replace (about 100 draws each)
    assert chi2(counts, expected) < chi2_critical(n - 1)


def test_replacement_by_popularity_with_an_alias_table(data):
    batch = window_batch(data, 400, seed=14, min_pos=2)
    weights = np.bincount(data.items, minlength=data.num_items + 1)[1:].astype(np.float64) + 0.5
    table = S.build_alias(weights)
    orig, new = replacements(data, batch, 200, replacement_alias=table)
    assert np.all(orig != new)
    p = weights / weights.sum()
    # a draw with original o picks i != o with probability p_i / (1 - p_o)
    per_orig = np.bincount(orig, minlength=data.num_items + 1)[1:]
    expected = np.zeros(data.num_items)
    for o in np.flatnonzero(per_orig):
        q = p / (1.0 - p[o])
        q[o] = 0.0
        expected += per_orig[o] * q
    counts = np.bincount(new, minlength=data.num_items + 1)[1:]
    assert chi2(counts, expected) < chi2_critical(data.num_items - 1)


@pytest.mark.parametrize("kw", [{}, {"count": 2}, {"per_row_position": True, "count": 2}, {"popularity": True}])
def test_corruption_two_rank_slices_equal_the_whole_batch(data, kw):
    kw = dict(kw)
    if kw.pop("popularity", False):
        kw["replacement_alias"] = S.build_alias(np.arange(1, data.num_items + 1, dtype=np.float64))
    batch = window_batch(data, 300, seed=15, min_pos=1)
    noisy = S.noisy_rows(stream_key(0, "corrupt_rows", 5), 300, 0.5)
    global_min = int(batch[2].min())
    whole = corrupt(data, batch, noisy=noisy, counters=(5,), global_min=global_min, **kw)
    parts = [corrupt(data, batch, noisy=noisy, counters=(5,), global_min=global_min, rows_slice=sl, **kw) for sl in (slice(0, 133), slice(133, 300))]
    for i in range(3):
        assert np.array_equal(np.concatenate([p[i] for p in parts]), whole[i])
    other = corrupt(data, batch, noisy=noisy, counters=(6,), global_min=global_min, **kw)
    assert not np.array_equal(other[0], whole[0])


def test_corruption_parallel_path_equals_serial_path(data, restore_threads):
    rows = S.PARALLEL_MIN_ROWS + 100
    batch = window_batch(data, rows, seed=16, min_pos=1)
    noisy = S.noisy_rows(stream_key(0, "corrupt_rows", 1), rows, 0.5)
    kw = {"noisy": noisy, "counters": (1,), "global_min": int(batch[2].min()), "per_row_position": True, "count": 2}
    outs = []
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        numba.set_num_threads(threads)
        outs.append(corrupt(data, batch, **kw))
    pieces = [corrupt(data, batch, rows_slice=slice(a, min(rows, a + 5000)), **kw) for a in range(0, rows, 5000)]
    for out in outs:
        for i in range(3):
            assert np.array_equal(np.concatenate([p[i] for p in pieces]), out[i])


def test_corruption_of_empty_rows_and_bad_arguments(data):
    batch = window_batch(data, 64, seed=17, min_pos=2)
    hist, hist_cat, lengths = batch[0].copy(), batch[1].copy(), batch[2].copy()
    noisy = np.ones(64, dtype=bool)
    # rows without history stay clean (label 1) and untouched
    lengths[:4] = 0
    hist[:4] = 0
    hist_cat[:4] = 0
    h, _, labels, _ = corrupt(data, (hist, hist_cat, lengths, None, None), noisy=noisy)
    assert np.all(labels[:4] == 1.0) and np.all(h[:4] == 0) and np.all(labels[4:] == 0.0)
    # a global_min_length of 0 (empty rows counted) would silently leave the batch clean: refused
    with pytest.raises(ValueError, match="non-empty"):
        corrupt(data, (hist, hist_cat, lengths, None, None), noisy=noisy, global_min=0)
    # a global_min_length longer than a noisy row would write outside the history: refused
    with pytest.raises(ValueError, match="shorter"):
        corrupt(data, batch, noisy=noisy, global_min=int(batch[2].max()) + 50, count=30)
    with pytest.raises(ValueError):
        corrupt(data, batch, count=0)
    with pytest.raises(ValueError):
        corrupt(data, batch, replacement_alias=S.build_alias(np.ones(data.num_items - 1)))
