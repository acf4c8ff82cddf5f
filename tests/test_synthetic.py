"""The synthetic generator: determinism, schema, planted-noise ground truth, signal, CLI, cache."""

from __future__ import annotations

import dataclasses
import fcntl
import subprocess
import sys
import textwrap
import time

import numba
import numpy as np
import pyarrow.parquet as pq
import pytest

from atjt_dist.command_options import pop_command_options
from atjt_dist.config import ConfigError, SyntheticConfig, build_config
from atjt_dist.data import synthetic
from atjt_dist.data.layout import open_arrays
from atjt_dist.data.synthetic import (
    dataset_name,
    ensure_dataset,
    generate,
    generator_params,
    main,
    plant_noise,
)

# Small and fast; the noise settings are pinned so that the tests do not follow the defaults.
SMALL = dict(
    users=1500,
    items=300,
    clusters=10,
    mean_length=20.0,
    min_length=5,
    noisy_user_share=0.3,
    noisy_item_share=0.3,
    noise_kind="random",
    noise_in_targets=True,
    clean_test_fold=0,
)


def small(**overrides) -> SyntheticConfig:
    return SyntheticConfig(**{**SMALL, **overrides})


#: the kinds that replace items in place ('insert' grows the sequences: tested on its own below)
REPLACING = tuple(k for k in synthetic.NOISE_KINDS if k != "insert")


@pytest.fixture(scope="module")
def data():
    return generate(small())


def lengths_of(d) -> np.ndarray:
    return np.diff(d.seq_offsets)


def user_items(d, u, clean=True) -> np.ndarray:
    items, offsets = (d.clean_items, d.clean_offsets) if clean else (d.seq_items, d.seq_offsets)
    return items[offsets[u] : offsets[u + 1]]


def assert_same(a, b) -> None:
    for f in ("clean_items", "clean_offsets", "seq_items", "seq_offsets", "seq_times", "item_category"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    for k in a.noise:
        np.testing.assert_array_equal(a.noise[k], b.noise[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays(data):
    assert_same(data, generate(small()))


def test_different_seed_differs(data):
    other = generate(small(seed=1))
    n = min(len(other.clean_items), len(data.clean_items))
    assert np.mean(other.clean_items[:n] != data.clean_items[:n]) > 0.5
    assert not np.array_equal(np.unique(other.noise["user"]), np.unique(data.noise["user"]))


@pytest.mark.parametrize("kind", ["foreign", "insert"])
def test_result_does_not_depend_on_thread_count(monkeypatch, kind):
    cfg = small(users=3000, noisy_user_share=0.5, noise_kind=kind)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    one = generate(cfg)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 7)  # 7 uneven chunks on 2 cores
    assert_same(one, generate(cfg))


# ---------------------------------------------------------------------------------------------
# Schema and ground truth
# ---------------------------------------------------------------------------------------------


def test_written_dataset_has_the_common_schema(tmp_path, data):
    cfg = small()
    out = synthetic.write(cfg, tmp_path / "ds")
    ds = open_arrays(out)
    assert ds.meta["format"] == "synthetic"
    assert ds.meta["generator"] == generator_params(cfg)
    assert ds.meta["noise"]["planted_items"] == len(data.noise["user"])
    assert (ds.num_users, ds.num_items, ds.num_categories) == (cfg.users, cfg.items, cfg.clusters)
    np.testing.assert_array_equal(ds.seq_items, data.seq_items)
    np.testing.assert_array_equal(ds.seq_offsets, data.seq_offsets)
    np.testing.assert_array_equal(ds.item_category, data.item_category)
    assert ds.item_category[0] == 0 and set(np.unique(ds.item_category[1:])) == set(range(1, cfg.clusters + 1))
    last = data.seq_offsets[1:] - 1
    np.testing.assert_array_equal(ds.candidates[:, 0], data.seq_items[last])  # the written last item
    np.testing.assert_array_equal(ds.fold, data.fold)  # the folds generate() kept clean are the stored ones
    clean_fold = ds.fold == cfg.clean_test_fold
    np.testing.assert_array_equal(ds.candidates[clean_fold, 0], data.clean_items[last][clean_fold])
    assert ds.meta["noise"]["clean_test_fold"] == cfg.clean_test_fold
    planted_last = data.noise["position"] == lengths_of(data)[data.noise["user"]] - 1
    assert ds.meta["noise"]["planted_last_items"] == planted_last.sum() > 0
    np.testing.assert_array_equal(np.flatnonzero(ds.noise_users), np.unique(data.noise["user"]))
    noise = pq.read_table(out / "noise.parquet")
    assert noise.column_names == ["user", "position", "original_item", "planted_item"]
    assert all(str(t) == "int32" for t in noise.schema.types)
    times = pq.read_table(out / "interactions.parquet").column("time").to_numpy()
    same_user = np.ones(len(times) - 1, dtype=bool)
    same_user[data.seq_offsets[1:-1] - 1] = False
    assert np.all(np.diff(times)[same_user] > 0)  # time order = sequence order


def test_ground_truth_is_exactly_the_difference(data):
    changed = np.flatnonzero(data.clean_items != data.seq_items)
    truth = data.noise
    flat = data.seq_offsets[truth["user"]] + truth["position"]
    np.testing.assert_array_equal(flat, changed)  # same set, sorted by (user, position)
    np.testing.assert_array_equal(truth["original_item"], data.clean_items[flat])
    np.testing.assert_array_equal(truth["planted_item"], data.seq_items[flat])


@pytest.mark.parametrize("in_targets", [True, False])
@pytest.mark.parametrize("user_share,item_share", [(0.3, 0.3), (0.1, 0.6), (1.0, 0.05), (0.5, 1.0)])
def test_shares_are_as_configured(user_share, item_share, in_targets):
    d = generate(small(noisy_user_share=user_share, noisy_item_share=item_share, noise_in_targets=in_targets))
    users, counts = np.unique(d.noise["user"], return_counts=True)
    eligible = np.sum(d.fold != 0)  # the clean test fold's users are never drawn
    assert eligible == 1200 and len(users) == int(np.floor(user_share * eligible + 0.5))
    span = lengths_of(d)[users] - (0 if in_targets else 1)  # replaceable positions
    expected = np.maximum(1, np.floor(item_share * span + 0.5))
    np.testing.assert_array_equal(counts, np.minimum(expected, span))
    assert abs(counts.sum() / span.sum() - item_share) < 0.02 + 0.5 / span.mean()


@pytest.mark.parametrize("fold", [0, 3])
@pytest.mark.parametrize("seed", [0, 5])
def test_the_clean_test_fold_is_never_noisy(tmp_path, fold, seed):
    cfg = small(noisy_user_share=1.0, clean_test_fold=fold, seed=seed)
    d = generate(cfg)
    ds = open_arrays(synthetic.write(cfg, tmp_path / "ds"))
    np.testing.assert_array_equal(ds.fold, d.fold)  # the stored folds (seeded by cfg.seed)
    clean = ds.fold == fold
    assert clean.sum() == 300 and not ds.noise_users[clean].any()
    assert ds.noise_users[~clean].all()  # user_share = 1: every other user is noisy
    flat_clean = np.repeat(clean, lengths_of(d))
    np.testing.assert_array_equal(d.seq_items[flat_clean], d.clean_items[flat_clean])


def test_without_a_clean_fold_every_fold_gets_noise():
    d = generate(small(clean_test_fold=None))
    users = np.unique(d.noise["user"])
    assert len(users) == int(np.floor(0.3 * 1500 + 0.5))
    assert np.all(np.bincount(d.fold[users], minlength=5) > 50)


def test_noise_in_targets_replaces_last_items_and_the_truth_says_so(data):
    # data: the defaults (noise_in_targets on, item_share 0.3): about 30% of noisy users' last items.
    last = data.seq_offsets[1:] - 1
    replaced = np.flatnonzero(data.seq_items[last] != data.clean_items[last])
    noisy_users = np.unique(data.noise["user"])
    assert 0.2 < len(replaced) / len(noisy_users) < 0.4
    at_last = data.noise["position"] == lengths_of(data)[data.noise["user"]] - 1
    np.testing.assert_array_equal(data.noise["user"][at_last], replaced)
    np.testing.assert_array_equal(data.noise["original_item"][at_last], data.clean_items[last[replaced]])
    np.testing.assert_array_equal(data.noise["planted_item"][at_last], data.seq_items[last[replaced]])
    # A planted target is a false positive: not the user's own item, rarely in its clusters.
    cat = data.item_category
    own = [set(cat[user_items(data, u)[:-1]]) for u in replaced[:300]]
    off = np.mean([cat[data.seq_items[last[u]]] not in c for u, c in zip(replaced[:300], own)])
    assert off > 0.6, off


@pytest.mark.parametrize("overrides", [dict(noisy_user_share=0.0), dict(noisy_item_share=0.0)])
def test_zero_share_plants_nothing(overrides):
    d = generate(small(**overrides))
    assert len(d.noise["user"]) == 0
    np.testing.assert_array_equal(d.seq_items, d.clean_items)


@pytest.mark.parametrize("kind", REPLACING)
def test_without_noise_in_targets_the_last_item_is_never_replaced(kind):
    # Even when every other item is replaced, the last item (the leave-one-out test positive)
    # stays the true one; the second-to-last (the leave-one-out training target) is replaced.
    d = generate(small(noisy_user_share=1.0, noisy_item_share=1.0, noise_kind=kind, noise_in_targets=False, clean_test_fold=None))
    last = d.seq_offsets[1:] - 1
    np.testing.assert_array_equal(d.seq_items[last], d.clean_items[last])
    assert np.all(d.noise["position"] < lengths_of(d)[d.noise["user"]] - 1)
    assert len(d.noise["user"]) == (lengths_of(d) - 1).sum()  # ...and all others were
    assert np.all(d.seq_items[last - 1] != d.clean_items[last - 1])


@pytest.mark.parametrize("kind", REPLACING)
def test_with_noise_in_targets_every_item_of_a_noisy_user_can_be_replaced(kind):
    d = generate(small(noisy_user_share=1.0, noisy_item_share=1.0, noise_kind=kind))
    noisy = d.fold != 0
    assert len(d.noise["user"]) == lengths_of(d)[noisy].sum()
    last = d.seq_offsets[1:] - 1
    assert np.all(d.seq_items[last][noisy] != d.clean_items[last][noisy])
    np.testing.assert_array_equal(d.seq_items[last][~noisy], d.clean_items[last][~noisy])


@pytest.mark.parametrize("kind", synthetic.NOISE_KINDS)
def test_planted_items_are_new_to_the_user(kind):
    d = generate(small(noise_kind=kind, noisy_item_share=0.5))
    assert np.all(d.noise["planted_item"] != d.noise["original_item"])
    for u in np.unique(d.noise["user"])[:200]:
        clean, noisy = user_items(d, u), user_items(d, u, clean=False)
        assert len(np.unique(clean)) == len(clean)  # users never repeat an item
        assert len(np.unique(noisy)) == len(noisy)  # nor does planting create a repeat
        planted = d.noise["planted_item"][d.noise["user"] == u]
        assert not np.isin(planted, clean).any()


# ---------------------------------------------------------------------------------------------
# The signal: histories predict the next item; planted items do not fit
# ---------------------------------------------------------------------------------------------


def transitions(d, users_mask, items):
    """(previous item, item, flat index) for every non-first position of the masked users."""
    user_of = np.repeat(np.arange(len(users_mask)), lengths_of(d))
    first = np.zeros(len(items), dtype=bool)
    first[d.seq_offsets[:-1]] = True
    idx = np.flatnonzero(~first & users_mask[user_of])
    return items[idx - 1], items[idx], idx


def bigram_top(d, users_mask, k=10):
    """Top-k next items after each item, counted on the masked users' clean sequences."""
    prev, nxt, _ = transitions(d, users_mask, d.clean_items)
    counts = np.zeros((d.item_category.shape[0],) * 2)
    np.add.at(counts, (prev, nxt), 1.0)
    popularity = np.bincount(nxt, minlength=counts.shape[0]) * 1e-6  # breaks ties
    return np.argsort(-(counts + popularity), axis=1)[:, :k], np.argsort(-popularity)[:k]


def test_histories_predict_the_next_item_and_noise_does_not_fit():
    d = generate(small(users=4000, items=500))
    noisy = np.zeros(4000, dtype=bool)
    noisy[d.noise["user"]] = True
    train = np.arange(4000) < 2000
    top, popular = bigram_top(d, train & ~noisy)
    prev, nxt, _ = transitions(d, ~train & ~noisy, d.clean_items)
    bigram_hr = np.mean((top[prev] == nxt[:, None]).any(axis=1))
    popular_hr = np.mean(np.isin(nxt, popular))
    assert bigram_hr > 0.3 and bigram_hr > 4 * popular_hr, (bigram_hr, popular_hr)

    flat = d.seq_offsets[d.noise["user"]] + d.noise["position"]
    flat = flat[(d.noise["position"] > 0) & ~train[d.noise["user"]]]
    planted_hr = np.mean((top[d.seq_items[flat - 1]] == d.seq_items[flat][:, None]).any(axis=1))
    assert planted_hr < bigram_hr / 10, (planted_hr, bigram_hr)
    cat = d.item_category
    assert np.mean(cat[prev] == cat[nxt]) > 0.8  # clean: the cluster walk is sticky
    assert np.mean(cat[d.seq_items[flat - 1]] == cat[d.seq_items[flat]]) < 0.25  # noise: off-cluster


def own_cluster_share(d, users, items):
    """Per planted item: does its cluster occur among the user's clean, unreplaced items?"""
    cat = d.item_category
    hits = []
    for u, item in zip(users, items):
        keep = ~np.isin(np.arange(lengths_of(d)[u]), d.noise["position"][d.noise["user"] == u])
        hits.append(cat[item] in set(cat[user_items(d, u)[keep]]))
    return np.mean(hits)


@pytest.mark.parametrize("kind", REPLACING)
def test_planted_items_are_off_the_users_taste(kind):
    d = generate(small(noisy_item_share=0.5, noise_kind=kind))
    users, sample = d.noise["user"][:600], slice(0, 600)
    # The replaced originals fit the rest of the user's history; the planted items do not.
    assert own_cluster_share(d, users, d.noise["original_item"][sample]) > 0.85
    assert own_cluster_share(d, users, d.noise["planted_item"][sample]) < 0.35


def test_random_noise_is_uniform():
    d = generate(small(noisy_item_share=0.5))
    per_item = np.bincount(d.noise["planted_item"], minlength=301)[1:]
    popularity = np.bincount(d.clean_items, minlength=301)[1:]
    assert abs(np.corrcoef(per_item, popularity)[0, 1]) < 0.2  # not drawn by popularity
    assert per_item.min() > 0 and per_item.max() < 4 * per_item.mean()


def test_popular_noise_follows_popularity():
    rand = generate(small(noise_kind="random"))
    pop = generate(small(noise_kind="popular"))
    popularity = np.bincount(pop.clean_items, minlength=301)
    top_decile = np.argsort(-popularity[1:])[:30] + 1
    # Users own the most popular items more often, and planted items are never owned: the
    # skew is damped, but still clearly there.
    share = {k: np.isin(d.noise["planted_item"], top_decile).mean() for k, d in (("pop", pop), ("rand", rand))}
    assert share["pop"] > 1.5 * share["rand"], share
    per_item = np.bincount(pop.noise["planted_item"], minlength=301)[1:]
    assert np.corrcoef(per_item, popularity[1:])[0, 1] > 0.5


def donor_runs(d, u, planted, owners):
    """Split a planted block into maximal runs taken, in order, from one other user each."""
    runs, start = 0, 0
    while start < len(planted):
        end = start + 1
        donors = owners[int(planted[start])] - {u}
        while end < len(planted) and donors & owners[int(planted[end])]:
            donors = donors & owners[int(planted[end])]
            end += 1
        assert donors, f"user {u}: planted item {planted[start]} belongs to no other user"
        seq = list(user_items(d, min(donors)))
        order = [seq.index(int(i)) for i in planted[start:end]]
        assert np.all(np.diff(order) % len(seq) >= 1)  # in the donor's (cyclic) order
        runs, start = runs + 1, end
    return runs


def test_foreign_noise_is_a_burst_from_another_user():
    d = generate(small(noise_kind="foreign", noisy_item_share=0.3))
    owners = {}  # item -> users whose clean sequence holds it
    for u in range(1500):
        for item in user_items(d, u):
            owners.setdefault(int(item), set()).add(u)
    runs = []
    for u in np.unique(d.noise["user"])[:200]:
        rows = d.noise["user"] == u
        np.testing.assert_array_equal(np.diff(d.noise["position"][rows]), 1)  # one contiguous block
        runs.append(donor_runs(d, u, d.noise["planted_item"][rows], owners))
    # Mostly one other person; a second only when the first one's sequence runs out.
    assert np.mean(np.array(runs) == 1) > 0.8, np.bincount(runs)


# ---------------------------------------------------------------------------------------------
# plant_noise on any CSR dataset
# ---------------------------------------------------------------------------------------------


def tiny_csr():
    lengths = np.array([1, 6, 9, 4, 12, 7, 8, 10])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(0)
    items = np.concatenate([rng.choice(np.arange(1, 101), n, replace=False) for n in lengths]).astype(np.int32)
    return items, offsets, np.bincount(items, minlength=101)


@pytest.mark.parametrize("kind", REPLACING)
def test_plant_noise_on_a_csr_dataset_respects_eligibility(kind):
    items, offsets, popularity = tiny_csr()
    before = items.copy()
    eligible = np.array([0, 2, 3, 5, 6])  # user 0 has no history: never eligible
    noisy = plant_noise(items, offsets, 100, popularity, user_share=1.0, item_share=0.5, kind=kind, seed=3, eligible_users=eligible)
    new, truth = noisy.seq_items, noisy.truth
    np.testing.assert_array_equal(items, before)  # input untouched
    np.testing.assert_array_equal(noisy.seq_offsets, offsets)  # replacing: same lengths
    np.testing.assert_array_equal(noisy.origin, np.arange(len(items)))
    np.testing.assert_array_equal(np.unique(truth["user"]), [2, 3, 5, 6])
    flat = offsets[truth["user"]] + truth["position"]
    np.testing.assert_array_equal(np.flatnonzero(new != items), flat)
    mask = np.zeros(8, dtype=bool)
    mask[eligible] = True
    by_mask = plant_noise(items, offsets, 100, popularity, user_share=1.0, item_share=0.5, kind=kind, seed=3, eligible_users=mask)
    np.testing.assert_array_equal(by_mask.seq_items, new)
    other = plant_noise(items, offsets, 100, popularity, user_share=1.0, item_share=0.5, kind=kind, seed=4, eligible_users=eligible)
    assert not np.array_equal(other.seq_items, new)


@pytest.mark.parametrize("kind", REPLACING)
def test_plant_noise_include_last(kind):
    items, offsets, popularity = tiny_csr()
    lengths = np.diff(offsets)
    args = dict(user_share=1.0, item_share=1.0, kind=kind, seed=3)
    noisy = plant_noise(items, offsets, 100, popularity, include_last=True, **args)
    new, truth = noisy.seq_items, noisy.truth
    assert len(truth["user"]) == lengths[1:].sum()  # every item of every user with a history
    np.testing.assert_array_equal(np.flatnonzero(new != items), offsets[truth["user"]] + truth["position"])
    last = offsets[1:] - 1
    assert np.all(new[last[1:]] != items[last[1:]]) and new[last[0]] == items[last[0]]  # user 0: 1 item
    noisy = plant_noise(items, offsets, 100, popularity, include_last=False, **args)
    np.testing.assert_array_equal(noisy.seq_items[last], items[last])
    assert len(noisy.truth["user"]) == (lengths[1:] - 1).sum()


# ---------------------------------------------------------------------------------------------
# 'insert': extra items inserted, the sequences grow
# ---------------------------------------------------------------------------------------------


def without_truth(items: np.ndarray, offsets: np.ndarray, truth: dict) -> np.ndarray:
    """The sequences with the planted positions removed (flat, CSR order)."""
    return np.delete(items, offsets[truth["user"]] + truth["position"])


def expected_counts(lengths: np.ndarray, item_share: float, include_last: bool) -> np.ndarray:
    span = lengths - (0 if include_last else 1)
    return np.minimum(np.maximum(1, np.floor(item_share * span + 0.5)), span).astype(np.int64)


@pytest.mark.parametrize("in_targets", [True, False])
def test_insert_grows_noisy_users_and_removing_the_truth_gives_the_clean_sequences(in_targets):
    d = generate(small(noise_kind="insert", noise_in_targets=in_targets))
    truth = d.noise
    users, counts = np.unique(truth["user"], return_counts=True)
    assert len(users) == int(np.floor(0.3 * 1200 + 0.5))
    clean_len, new_len = np.diff(d.clean_offsets), lengths_of(d)
    np.testing.assert_array_equal(counts, expected_counts(clean_len[users], 0.3, in_targets))
    grown = np.zeros(1500, dtype=np.int64)
    grown[users] = counts
    np.testing.assert_array_equal(new_len, clean_len + grown)  # everyone else keeps its length
    assert len(d.seq_items) == len(d.clean_items) + len(truth["user"])
    # Nothing replaced: the rest of each sequence is the clean one, in order.
    np.testing.assert_array_equal(without_truth(d.seq_items, d.seq_offsets, truth), d.clean_items)
    flat = d.seq_offsets[truth["user"]] + truth["position"]
    np.testing.assert_array_equal(d.seq_items[flat], truth["planted_item"])
    assert np.all(truth["original_item"] == 0) and np.all(truth["planted_item"] >= 1)
    for u in np.flatnonzero(grown == 0)[:300]:
        np.testing.assert_array_equal(user_items(d, u, clean=False), user_items(d, u))
    # Times: the clean ones, and an inserted item takes a neighbour's (time order = sequence order).
    clean_times = generate_times(small())
    np.testing.assert_array_equal(without_truth(d.seq_times, d.seq_offsets, truth), clean_times)
    same_user = np.ones(len(d.seq_times) - 1, dtype=bool)
    same_user[d.seq_offsets[1:-1] - 1] = False
    assert np.all(np.diff(d.seq_times)[same_user] >= 0)
    # The last item: the user's own without noise_in_targets; sometimes an inserted one with it.
    at_last = truth["position"] == new_len[truth["user"]] - 1
    if in_targets:
        assert 0 < at_last.sum() < len(users)
    else:
        assert not at_last.any()
        np.testing.assert_array_equal(d.seq_items[d.seq_offsets[1:] - 1], d.clean_items[d.clean_offsets[1:] - 1])


def generate_times(cfg) -> np.ndarray:
    return synthetic.generate_clean(cfg)[2]


def test_insert_is_deterministic_and_written_with_its_grown_offsets(tmp_path):
    cfg = small(noise_kind="insert", users=600)
    d = generate(cfg)
    assert_same(d, generate(cfg))
    out = synthetic.write(cfg, tmp_path / "ds")
    ds = open_arrays(out)
    np.testing.assert_array_equal(ds.seq_items, d.seq_items)
    np.testing.assert_array_equal(ds.seq_offsets, d.seq_offsets)
    flat = d.seq_offsets[d.noise["user"]] + d.noise["position"]
    np.testing.assert_array_equal(np.flatnonzero(ds.planted), flat)  # the ground truth, as training reads it
    np.testing.assert_array_equal(ds.candidates[:, 0], d.seq_items[d.seq_offsets[1:] - 1])  # the grown last items
    assert ds.meta["num_interactions"] == len(d.seq_items) and ds.meta["noise"]["kind"] == "insert"
    assert "inserted" in ds.meta["noise"]["last_item"]
    times = pq.read_table(out / "interactions.parquet").column("time").to_numpy()
    np.testing.assert_array_equal(times, d.seq_times)


@pytest.mark.parametrize("include_last", [False, True])
def test_plant_noise_insert_on_a_csr_dataset(monkeypatch, include_last):
    items, offsets, popularity = tiny_csr()
    before = items.copy()
    eligible = np.array([0, 2, 3, 5, 6])  # user 0 has no history: never eligible
    args = dict(user_share=1.0, item_share=1.0, kind="insert", seed=3, eligible_users=eligible, include_last=include_last)
    noisy = plant_noise(items, offsets, 100, popularity, **args)
    truth = noisy.truth
    np.testing.assert_array_equal(items, before)  # input untouched
    lengths = np.diff(offsets)
    grown = np.zeros(8, dtype=np.int64)
    grown[[2, 3, 5, 6]] = lengths[[2, 3, 5, 6]] - (0 if include_last else 1)  # item_share 1: k = s
    np.testing.assert_array_equal(np.diff(noisy.seq_offsets), lengths + grown)
    np.testing.assert_array_equal(np.unique(truth["user"]), [2, 3, 5, 6])
    np.testing.assert_array_equal(without_truth(noisy.seq_items, noisy.seq_offsets, truth), items)
    np.testing.assert_array_equal(noisy.seq_items[noisy.seq_offsets[truth["user"]] + truth["position"]], truth["planted_item"])
    # origin: own items map to themselves, an inserted one to the same user's interaction before
    # it (or, at the start, after it)
    flat = noisy.seq_offsets[truth["user"]] + truth["position"]
    own = np.ones(len(noisy.seq_items), dtype=bool)
    own[flat] = False
    np.testing.assert_array_equal(noisy.origin[own], np.arange(len(items)))
    user_of = np.repeat(np.arange(8), np.diff(noisy.seq_offsets))
    origin_user = np.repeat(np.arange(8), lengths)[noisy.origin]
    np.testing.assert_array_equal(origin_user, user_of)
    for f in flat:
        before = np.flatnonzero(own[:f])
        if len(before) and user_of[before[-1]] == user_of[f]:
            expected = noisy.origin[before[-1]]
        else:  # inserted at the start: the user's first own item
            expected = noisy.origin[f + np.flatnonzero(own[f:])[0]]
        assert noisy.origin[f] == expected, f
    # the last item: the user's own unless include_last (then, at item_share 1, often inserted)
    at_last = truth["position"] == np.diff(noisy.seq_offsets)[truth["user"]] - 1
    assert at_last.any() == include_last
    # planted items are new to the user and distinct
    for u in (2, 3, 5, 6):
        seq = noisy.seq_items[noisy.seq_offsets[u] : noisy.seq_offsets[u + 1]]
        assert len(np.unique(seq)) == len(seq)
    # a pure function of the arguments: the same on another call and any thread count
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    again = plant_noise(items, offsets, 100, popularity, **args)
    for name in ("seq_items", "seq_offsets", "origin"):
        np.testing.assert_array_equal(getattr(again, name), getattr(noisy, name))
    for k in truth:
        np.testing.assert_array_equal(again.truth[k], truth[k])
    other = plant_noise(items, offsets, 100, popularity, **{**args, "seed": 4})
    assert not np.array_equal(other.truth["planted_item"], truth["planted_item"])


def test_plant_noise_insert_many_users_is_the_same_on_any_thread_count(monkeypatch):
    # Enough users for several chunks (_run_chunks uses one thread per 256 rows at most).
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, 30, 3000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.concatenate([rng.choice(np.arange(1, 501), n, replace=False) for n in lengths]).astype(np.int32)
    args = dict(user_share=0.6, item_share=0.4, kind="insert", seed=9)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    one = plant_noise(items, offsets, 500, np.bincount(items, minlength=501), **args)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 7)
    many = plant_noise(items, offsets, 500, np.bincount(items, minlength=501), **args)
    for name in ("seq_items", "seq_offsets", "origin"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name))
    for k in one.truth:
        np.testing.assert_array_equal(one.truth[k], many.truth[k])
    np.testing.assert_array_equal(without_truth(one.seq_items, one.seq_offsets, one.truth), items)


def test_every_noise_kind_is_a_config_choice():
    import typing

    hint = typing.get_type_hints(SyntheticConfig)["noise_kind"]
    assert typing.get_args(hint) == synthetic.NOISE_KINDS


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="gaussian"), "noise kind"),
        (dict(user_share=1.5), "user_share"),
        (dict(item_share=-0.1), "item_share"),
        (dict(popularity=np.ones(5)), "popularity"),
        (dict(eligible_users=np.array([0, 99])), "eligible_users"),
    ],
)
def test_plant_noise_rejects_bad_arguments(kwargs, match):
    items, offsets, popularity = tiny_csr()
    args = dict(popularity=popularity, user_share=0.5, item_share=0.5, kind="random", seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plant_noise(items, offsets, 100, args.pop("popularity"), **args)


def test_an_unknown_noise_kind_lists_every_kind():
    items, offsets, popularity = tiny_csr()
    with pytest.raises(ValueError, match="expected one of random, popular, foreign, insert"):
        plant_noise(items, offsets, 100, popularity, user_share=0.5, item_share=0.5, kind="gaussian", seed=0)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_defaults_are_valid_and_bad_values_name_the_key():
    SyntheticConfig().check()
    with pytest.raises(ConfigError, match="data.synthetic.noisy_user_share"):
        build_config(["--data.synthetic.noisy_user_share=1.5"])
    with pytest.raises(ConfigError, match="data.synthetic.items"):
        build_config(["--data.synthetic.items=50"])
    with pytest.raises(ConfigError, match="taste_clusters"):
        SyntheticConfig(clusters=2, taste_clusters=3).check()
    with pytest.raises(ConfigError, match="mean_length"):
        SyntheticConfig(mean_length=float("nan")).check()
    with pytest.raises(ConfigError, match="data.synthetic.clean_test_fold"):
        build_config(["--data.synthetic.clean_test_fold=5"])
    with pytest.raises(ConfigError, match="data.synthetic.noise_in_targets"):
        build_config(["--data.synthetic.noise_in_targets=sometimes"])
    cfg = build_config(["--data.synthetic.clean_test_fold=null", "--data.synthetic.noise_in_targets=false"])
    assert cfg.data.synthetic.clean_test_fold is None and cfg.data.synthetic.noise_in_targets is False


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["--output", str(out), "--users", "300", "--items", "200", "--noise-kind", "foreign", "--noisy-user-share", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    ds = open_arrays(out)
    assert ds.meta["generator"]["noise_kind"] == "foreign"
    assert ds.num_users == 300 and ds.noise_users.sum() == 120  # half of the 240 users outside fold 0


def test_cli_accepts_the_insert_kind(tmp_path):
    out = tmp_path / "ds"
    assert main(["--output", str(out), "--users", "300", "--items", "200", "--noise-kind", "insert"]) == 0
    ds = open_arrays(out)
    clean = len(generate_times(SyntheticConfig(users=300, items=200)))
    assert ds.meta["noise"]["kind"] == "insert" and ds.meta["noise"]["planted_items"] > 0
    assert ds.meta["num_interactions"] == clean + ds.meta["noise"]["planted_items"]


def test_cli_parses_booleans_and_none(tmp_path):
    out = tmp_path / "ds"
    assert main(["--output", str(out), "--users", "300", "--items", "200", "--noise-in-targets", "false", "--clean-test-fold", "none"]) == 0
    ds = open_arrays(out)
    assert ds.meta["generator"]["noise_in_targets"] is False and ds.meta["generator"]["clean_test_fold"] is None
    assert ds.noise_users[ds.fold == 0].any()


def test_cli_every_config_field_is_an_option():
    options = {f.name: f for f in dataclasses.fields(synthetic.SyntheticOptions)}
    for f in dataclasses.fields(SyntheticConfig):
        assert options[f.name].default == f.default and options[f.name].metadata["help"] == f.metadata["help"], f.name
    assert {"output", "overwrite", "debug"} <= set(options)


def test_cli_options_keep_their_spellings():
    """The argparse version's values: booleans as words, 'none' for an optional field, a Literal's choices."""
    for word, expected in (("false", False), ("no", False), ("0", False), ("off", False), ("TRUE", True), ("1", True), ("on", True)):
        assert pop_command_options(["--noise-in-targets", word], synthetic.SyntheticOptions).noise_in_targets is expected
    opts = pop_command_options(["--clean-test-fold", "none", "--cache-dir=null", "--noise-kind", "popular", "--users=-5"], synthetic.SyntheticOptions)
    assert opts.clean_test_fold is None and opts.cache_dir is None and opts.noise_kind == "popular" and opts.users == -5
    assert pop_command_options(["--no-noise-in-targets", "--overwrite"], synthetic.SyntheticOptions).noise_in_targets is False


def test_cli_help_lists_the_generator_options(capsys):
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"usage: {synthetic.PROG} [options] ")
    expected = ("--output DIR", "--users N Number of users to generate. (default: 12800)", "one of random, popular, foreign, insert", "--[no-]noise-in-targets")
    assert all(text in out for text in expected), out


@pytest.mark.parametrize(
    "argv",
    [
        ["--users", "-5"],
        ["--users", "abc"],
        ["--noise-kind", "gaussian"],
        ["--bogus"],
        ["--mean-length", "nan"],
        ["--items", "50"],
        ["--noise-in-targets", "maybe"],
        ["--clean-test-fold", "5"],
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv):
    out = tmp_path / "ds"
    assert main(["--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{synthetic.PROG}: error: ") and argv[0] in err  # the flag is named
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_cli_without_output_fills_the_cache(tmp_path, capsys):
    assert main(["--cache-dir", str(tmp_path), "--users", "200", "--items", "150"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / dataset_name(SyntheticConfig(users=200, items=150)))
    assert open_arrays(path).num_users == 200


def test_cli_debug_shows_the_exception(tmp_path):
    with pytest.raises(ConfigError, match="--items"):
        main(["--output", str(tmp_path / "ds"), "--items", "50", "--debug"])


def test_cli_overwrite_without_output_is_an_error(tmp_path, capsys):
    assert main(["--overwrite", "--cache-dir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_non_empty_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--output", str(out), "--users", "300", "--items", "200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and (out / "keep.txt").read_text() == "mine"
    assert main(["--output", str(out), "--users", "300", "--items", "200", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary directory left


def test_cli_runs_as_a_module(tmp_path):
    out = tmp_path / "ds"
    ok = subprocess.run(
        [sys.executable, "-m", "atjt_dist.data.synthetic", "--output", str(out), "--users", "200", "--items", "150"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out) and open_arrays(out).num_users == 200
    bad = subprocess.run(
        [sys.executable, "-m", "atjt_dist.data.synthetic", "--output", str(out), "--users", "200"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def test_ensure_dataset_generates_once_then_reuses(tmp_path, monkeypatch):
    cfg = small(cache_dir=str(tmp_path))
    path = ensure_dataset(cfg)
    assert path.parent == tmp_path and path.name == dataset_name(cfg)
    assert open_arrays(path).meta["generator"] == generator_params(cfg)

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(synthetic, "write", no_regeneration)
    assert ensure_dataset(cfg) == path
    other = small(cache_dir=str(tmp_path), noise_kind="popular")
    assert dataset_name(other) != dataset_name(cfg)
    assert dataset_name(small(cache_dir="/elsewhere")) == dataset_name(cfg)  # where is not what


def test_ensure_dataset_uses_atjt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATJT_CACHE", str(tmp_path / "env-cache"))
    path = ensure_dataset(small(users=200, items=150))
    assert path.parent == tmp_path / "env-cache" and (path / "meta.json").is_file()


@pytest.mark.multiprocess
def test_ensure_dataset_from_two_processes_at_once(tmp_path):
    cfg = small(cache_dir=str(tmp_path))
    script = textwrap.dedent(f"""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from atjt_dist.config import SyntheticConfig
        from atjt_dist.data.synthetic import ensure_dataset
        cfg = SyntheticConfig(**{dataclasses.asdict(cfg)!r})
        print("ready", flush=True)
        print(ensure_dataset(cfg))
    """)
    with open(tmp_path / f"{dataset_name(cfg)}.lock", "a") as lock:
        # Hold the lock until both have started, so that both find no dataset and queue on it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        time.sleep(0.3)
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    paths = {r[0].strip() for r in results}
    assert paths == {str(tmp_path / dataset_name(cfg))}
    assert sum(r[1].count("generating the synthetic dataset") for r in results) == 1
    assert open_arrays(paths.pop()).num_users == cfg.users
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dataset_name(cfg), f"{dataset_name(cfg)}.lock"])


# ---------------------------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ml20m_sized_generation():
    """138k users, 26.7k items, ~20M interactions in memory (about 10-20 s, 0.6 GB on 2 cores)."""
    cfg = SyntheticConfig(users=138_493, items=26_744, mean_length=20_000_263 / 138_493, min_length=20)
    d = generate(cfg)
    assert abs(len(d.seq_items) - 20_000_263) < 0.01 * 20_000_263
    assert lengths_of(d).min() >= 20 and lengths_of(d).max() <= 26_744 // 2
    eligible = np.sum(d.fold != cfg.clean_test_fold)
    assert len(np.unique(d.noise["user"])) == int(np.floor(cfg.noisy_user_share * eligible + 0.5))
    assert not np.isin(d.noise["user"], np.flatnonzero(d.fold == cfg.clean_test_fold)).any()
    assert d.seq_items.min() >= 1 and d.seq_items.max() <= 26_744
