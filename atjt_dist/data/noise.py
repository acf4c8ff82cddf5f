"""Planted noise: known noise put into the sequences of a CSR dataset, with its ground truth.

:func:`plant_noise` works on any CSR sequences (the synthetic generator's, or a real dataset's);
:func:`plant_into_dataset` writes a noisy copy of a dataset directory (the audit command's).

A share of users, drawn uniformly, get ``round(item_share * (n - 1))`` (at least one) items of
their history replaced, or, with ``insert``, that many extra items inserted. A planted item is
never one of the user's own items (so it is unrelated to the user's taste and to its sequential
context, and the difference clean vs noisy is exactly the ground truth):

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

Every draw is counter-based, keyed by user id, so the noise is a pure function of the arguments
and the seed, whatever the number of threads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

import numba
import numpy as np
import pyarrow.parquet as pq

from ..config import ConfigError
from ..files import replace_directory
from .layout import DatasetArrays, DatasetContent, DatasetError, open_arrays, read_meta, read_raw_ids, write_dataset, write_settings_of
from .rng import next_below, next_float, row_state, stream_key
from .sampling import build_alias, permutation
from .synthetic_kernels import MAX_REJECTIONS, run_chunks, set_add, set_has, set_new

NOISE_KINDS = ("random", "popular", "foreign", "insert")
_KIND_CODE = {k: i for i, k in enumerate(NOISE_KINDS)}
_INSERT = _KIND_CODE["insert"]


# ---------------------------------------------------------------------------------------------
# Kernels: one noisy user per row
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _free_uniform(state, num_items, owned):
    for _ in range(MAX_REJECTIONS):
        state, i = next_below(state, num_items)
        if not set_has(owned, i + 1):
            return state, i + 1
    return _scan_free(state, num_items, owned)


@numba.njit(cache=True)
def _free_popular(state, prob, alias, num_items, owned):
    for _ in range(MAX_REJECTIONS):
        state, i = next_below(state, prob.shape[0])
        state, x = next_float(state)
        if x >= prob[i]:
            i = alias[i]
        if not set_has(owned, i + 1):
            return state, i + 1
    return _scan_free(state, num_items, owned)


@numba.njit(cache=True)
def _scan_free(state, num_items, owned):
    # A user owning (nearly) every item: scan from a random start; 0 if nothing is free.
    state, start = next_below(state, num_items)
    for k in range(num_items):
        item = (start + k) % num_items + 1
        if not set_has(owned, item):
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
    for _ in range(MAX_REJECTIONS):
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
            if not set_has(owned, item):
                set_add(owned, item)
                out[filled] = item
                filled += 1
                if filled == k:
                    break
    return state, filled


@numba.njit(cache=True)
def _plant_user(state, u, kind, include_last, seq_items, seq_offsets, prob, alias, num_items, out_items, positions, original, planted):
    """Plant len(positions) noise items into user u's slice of ``out_items``; fills the truth."""
    a = seq_offsets[u]
    n = seq_offsets[u + 1] - a
    k = positions.shape[0]
    owned = set_new(n + k)
    for j in range(n):  # the user's own items (and, below, what was planted) are excluded
        set_add(owned, seq_items[a + j])
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
        set_add(owned, item)
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
    owned = set_new(n + k)
    for j in range(n):
        set_add(owned, seq_items[a + j])
    span = n + k if include_last else n + k - 1
    state = _noise_positions(state, span, k, False, positions)
    for j in range(k):
        state, item = _free_uniform(state, num_items, owned)
        if item == 0:  # the user owns every item: any item (a repeat)
            state, x = next_below(state, num_items)
            item = x + 1
        set_add(owned, item)
        planted[j] = item


@numba.njit(nogil=True, cache=True)
def _plant(lo, hi, key, kind, include_last, seq_items, seq_offsets, users, row_offsets, prob, alias, num_items, out_items, out_pos, out_orig, out_planted):
    # Reads only the input sequences (donors may be noisy users too) and writes only row r's
    # user slice and truth rows: no row depends on another, whatever the thread schedule.
    # 'insert' writes only the truth rows (plant_noise merges them into the grown sequences).
    for r in range(lo, hi):
        a = row_offsets[r]
        b = row_offsets[r + 1]
        u = users[r]
        if kind == _INSERT:
            _insert_user(row_state(key, u), u, include_last, seq_items, seq_offsets, num_items, out_pos[a:b], out_planted[a:b])
            out_orig[a:b] = 0  # nothing replaced
        else:
            state = row_state(key, u)
            _plant_user(state, u, kind, include_last, seq_items, seq_offsets, prob, alias, num_items, out_items, out_pos[a:b], out_orig[a:b], out_planted[a:b])


# ---------------------------------------------------------------------------------------------
# Planting into CSR sequences
# ---------------------------------------------------------------------------------------------


def _merge_inserted(
    seq_items: np.ndarray, seq_offsets: np.ndarray, user: np.ndarray, position: np.ndarray, planted: np.ndarray
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
    users, counts = _noisy_users(np.diff(seq_offsets), eligible_users, user_share, item_share, seed, include_last)
    out_items, truth = _plant_rows(seq_items, seq_offsets, popularity, users, counts, kind, seed, include_last)
    if kind == "insert":
        out_items, out_offsets, origin = _merge_inserted(seq_items, seq_offsets, truth["user"], truth["position"], truth["planted_item"])
    else:
        out_offsets, origin = seq_offsets.copy(), np.arange(len(seq_items), dtype=np.int64)
    return PlantedNoise(out_items, out_offsets, origin, truth)


def _noisy_users(
    lengths: np.ndarray, eligible_users: Optional[np.ndarray], user_share: float, item_share: float, seed: int, include_last: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The noisy users (sorted ids) and how many items each gets (see :func:`plant_noise`)."""
    candidates = _eligible(lengths, eligible_users)
    n_noisy = int(np.floor(user_share * len(candidates) + 0.5))
    users = np.sort(candidates[permutation(len(candidates), seed, "plant_noise", 0)[:n_noisy]])
    span = lengths[users] - (0 if include_last else 1)
    counts = np.floor(item_share * span + 0.5).astype(np.int64)
    counts = np.clip(counts, 1 if item_share > 0 else 0, span)
    return users, counts


def _plant_rows(
    seq_items: np.ndarray, seq_offsets: np.ndarray, popularity: np.ndarray, users: np.ndarray, counts: np.ndarray, kind: str, seed: int, include_last: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the kernels: ``counts[r]`` planted items for user ``users[r]`` (items 1..len(popularity) - 1).
    Returns the sequences with the replacements (empty for 'insert', whose grown sequences are
    merged from the truth) and the ground truth."""
    row_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(row_offsets[-1])
    if kind == "popular":
        prob, alias = build_alias(popularity[1:].astype(np.float64))
    else:
        prob, alias = np.ones(1), np.zeros(1, dtype=np.int32)
    out_items = seq_items.copy() if kind != "insert" else np.empty(0, dtype=np.int32)
    position = np.empty(total, dtype=np.int32)
    original = np.empty(total, dtype=np.int32)
    planted = np.empty(total, dtype=np.int32)
    run_chunks(
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
        int(len(popularity) - 1),
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
    return out_items, truth


# ---------------------------------------------------------------------------------------------
# A noisy copy of a dataset directory
# ---------------------------------------------------------------------------------------------


def plant_into_dataset(
    source: str | Path,
    output: str | Path,
    *,
    kind: str,
    user_share: float,
    item_share: float,
    seed: int,
    fold: int,
    include_last: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write a copy of the dataset ``source`` with noise planted in its training users'
    histories (users outside k-fold ``fold``) to ``output``; returns the noise summary (also
    in the copy's meta.json under "noise").

    Folds and test candidates are the source's (checked, and the candidates copied), and test
    users' sequences are unchanged (checked). Bad settings raise ConfigError, named as the
    audit command's options.
    """
    source, output = Path(source), Path(output)
    if kind not in NOISE_KINDS:
        raise ConfigError(f"--noise-kind {kind!r}: expected one of {', '.join(NOISE_KINDS)}")
    for name, share in (("--user-share", user_share), ("--item-share", item_share)):
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {share}")
    a = open_arrays(source)
    meta = read_meta(source)
    folds = int(meta["folds"])
    if not 0 <= fold < folds:
        raise ConfigError(f"data.fold={fold}: the dataset at {source} has folds 0..{folds - 1}")
    train = np.asarray(a.fold) != fold
    noisy = _plant_training_users(a, train, kind=kind, user_share=user_share, item_share=item_share, seed=seed, include_last=include_last)
    summary = {
        "kind": kind,
        "user_share": user_share,
        "item_share": item_share,
        "seed": seed,
        "fold": fold,
        "include_last": include_last,
        "eligible_users": int(train.sum()),
        "noisy_users": int(len(np.unique(noisy.truth["user"]))),
        "planted_items": int(len(noisy.truth["user"])),
        "test_users": "untouched (fold %d); folds and test candidates copied from the source" % fold,
    }
    new_meta = {
        "format": "audit",
        "source": str(source.resolve()),
        "source_meta": {key: meta[key] for key in ("format", "sources", "options") if key in meta},
        "noise": summary,
    }
    staging = output.with_name(f".{output.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    write_dataset(staging, _noisy_content(source, a, noisy, new_meta), **write_settings_of(meta))
    _keep_source_test_data(source, a, meta, staging)
    try:
        replace_directory(staging, output, overwrite)
    except FileExistsError:
        raise DatasetError(f"{output} exists; choose another run directory") from None
    return summary


def _plant_training_users(a: DatasetArrays, train: np.ndarray, **settings) -> PlantedNoise:
    """:func:`plant_noise` into the users of the mask ``train``; checks that no other user changed."""
    offsets = np.asarray(a.seq_offsets, dtype=np.int64)
    items = np.asarray(a.seq_items, dtype=np.int32)
    noisy = plant_noise(items, offsets, a.num_items, np.asarray(a.popularity), eligible_users=train, **settings)
    test_rows = np.repeat(~train, np.diff(offsets))
    noisy_test_rows = np.repeat(~train, np.diff(noisy.seq_offsets))
    if not np.array_equal(noisy.seq_items[noisy_test_rows], items[test_rows]) or np.any(~train[noisy.truth["user"]]):
        raise AssertionError("planted noise reached a test user")  # plant_noise's contract
    return noisy


def _noisy_content(source: Path, a: DatasetArrays, noisy: PlantedNoise, meta: dict) -> DatasetContent:
    """What the noisy copy of ``source`` is written from: the noisy sequences, their times (an
    inserted interaction takes its origin's), and the source's raw ids and categories."""
    times = pq.read_table(source / "interactions.parquet", columns=["time"]).column("time").to_numpy()[noisy.origin]
    return DatasetContent(
        seq_items=noisy.seq_items,
        seq_offsets=noisy.seq_offsets,
        seq_times=times,
        raw_users=read_raw_ids(source, "users.parquet", "user", "raw_user"),
        raw_items=read_raw_ids(source, "items.parquet", "item", "raw_item"),
        item_category=np.asarray(a.item_category),
        category_names=read_raw_ids(source, "categories.parquet", "category", "name"),
        meta=meta,
        noise=noisy.truth,
    )


def _keep_source_test_data(source: Path, a: DatasetArrays, meta: dict, staging: Path) -> None:
    """Check that the copy at ``staging`` has the source's folds, and give it the source's test
    candidates (write_dataset drew them from the noisy popularity); removes ``staging`` on failure."""
    try:
        written = np.load(staging / "arrays" / "fold.npy")
        if not np.array_equal(written, np.asarray(a.fold)):
            raise DatasetError(f"{source}: its folds are not those of fold_seed {meta['fold_seed']}; prepare it again")
        # The source's candidates: the test users' evaluation must not change with the noise.
        shutil.copyfile(source / "candidates.parquet", staging / "candidates.parquet")
        np.save(staging / "arrays" / "candidates.npy", np.ascontiguousarray(np.asarray(a.candidates)))
        written_meta = json.loads((staging / "meta.json").read_text())
        written_meta["candidates"]["copied_from"] = str(source.resolve())
        (staging / "meta.json").write_text(json.dumps(written_meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
