"""Steps 2-6 of ``python -m atjt_dist.data.prepare``: raw interactions -> dense CSR sequences.

Rating threshold, sort by (user, time), de-duplication, k-core and the remap to dense ids, each
logged with its counts and recorded for ``meta.json``'s ``dropped`` (the steps are described in
the module docstring of :mod:`atjt_dist.data.prepare`).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass
from typing import Callable, Optional

import numba
import numpy as np
import pyarrow as pa

from .formats import PrepareError, RawInteractions
from .prepare_kernels import compact, first_of_pairs, k_core, sort_by_user_time

# How rows are ordered and ids assigned: meta.json states both (its "order" and "ids").
TIE_BREAK = "user, then time, then input row order (files in the order given)"
ID_ORDER = "ascending raw id (numeric when every id is an integer), users from 0, items from 1; item 0 = padding"


@dataclass
class StepOptions:
    """Filtering options (the command-line flags of the same names)."""

    dedup: bool = False  # drop repeated (user, item) pairs (the format's default if not given)
    min_rating: Optional[float] = None
    min_user_interactions: int = 5
    min_item_interactions: int = 1


@dataclass
class Sequences:
    """The prepared dataset, ready for write_dataset."""

    seq_items: np.ndarray
    seq_offsets: np.ndarray
    seq_times: np.ndarray
    raw_users: pa.Array
    raw_items: pa.Array
    item_category: np.ndarray  # [num_items + 1], 0 = none
    category_names: pa.Array
    dropped: list[dict]


class _Clock:
    def __init__(self) -> None:
        self.t = _time.perf_counter()

    def lap(self) -> str:
        now = _time.perf_counter()
        out, self.t = f"({now - self.t:.2f} s)", now
        return out


class _StepRecord:
    """Each step's counts, in order (meta.json's ``dropped``), and its log line with its time."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.clock = _Clock()
        self.dropped: list[dict] = []

    def step(self, entry: Optional[dict], line: str) -> None:
        if entry is not None:
            self.dropped.append(entry)
        self.log(f"{line} {self.clock.lap()}")


def _count(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def _nonempty(rows: int, after: str) -> None:
    if rows == 0:
        raise PrepareError(f"no interactions left after {after}")


def build_sequences(raw: RawInteractions, steps: StepOptions, log: Callable[[str], None] = print) -> Sequences:
    """Steps 2-6 of the module docstring on raw interactions; returns dense CSR sequences."""
    record = _StepRecord(log)
    _nonempty(len(raw.user), "reading: the input files hold no interactions")
    user, item, time = _rating_threshold(raw, steps.min_rating, record)
    with numba.parallel_chunksize(1024):  # users in small chunks: sequence lengths are skewed
        offsets, item, time = sort_by_user_time(user, item, time, len(raw.raw_users))
    del user
    record.step(None, f"sorted {len(item):,} rows by ({TIE_BREAK})")
    offsets, item, time = _drop_duplicates(offsets, item, time, len(raw.raw_items), steps.dedup, record)
    offsets, item, time, user_count, item_count = _k_core(offsets, item, time, len(raw.raw_items), steps, record)
    return _remap(raw, offsets, user_count, item_count, item, time, record.dropped)


def _rating_threshold(raw: RawInteractions, min_rating: Optional[float], record: _StepRecord):
    if min_rating is None:
        record.dropped.append({"step": "rating_threshold", "min_rating": None, "rows": 0, "skipped": True})
        return raw.user, raw.item, raw.time
    if raw.rating is None:
        raise PrepareError("--min-rating: these input files have no ratings")
    keep = raw.rating >= min_rating  # NaN (a missing rating) never passes
    user, item, time = raw.user[keep], raw.item[keep], raw.time[keep]
    dropped = len(keep) - len(user)
    record.step(
        {"step": "rating_threshold", "min_rating": min_rating, "rows": dropped},
        f"rating >= {min_rating:g}: dropped {dropped:,} rows below it, {len(user):,} left",
    )
    _nonempty(len(user), f"the rating threshold (--min-rating {min_rating:g})")
    return user, item, time


def _drop_duplicates(offsets, item, time, num_items: int, dedup: bool, record: _StepRecord):
    if not dedup:
        record.step({"step": "duplicates", "rows": 0, "skipped": True}, "duplicates: kept (de-duplication is off)")
        return offsets, item, time
    keep = first_of_pairs(offsets, item, num_items, numba.get_num_threads())
    removed = len(keep) - _count(keep)
    if removed:
        offsets, n = compact(offsets, item, time, keep)
        item, time = item[:n], time[:n]
    record.step(
        {"step": "duplicates", "rows": removed},
        f"duplicates: dropped {removed:,} repeated (user, item) rows, kept the earliest",
    )
    return offsets, item, time


def _k_core(offsets, item, time, num_items: int, steps: StepOptions, record: _StepRecord):
    min_user, min_item = steps.min_user_interactions, steps.min_item_interactions
    users_before = _count(np.diff(offsets))
    items_before = _count(np.bincount(item, minlength=num_items))
    keep, passes, user_count, item_count = k_core(offsets, item, num_items, min_user, min_item)
    removed = len(keep) - _count(keep)
    if removed:
        offsets, n = compact(offsets, item, time, keep)
        item, time = item[:n], time[:n]
    entry = {
        "step": "k_core",
        "min_user_interactions": min_user,
        "min_item_interactions": min_item,
        "passes": int(passes),
        "rows": removed,
        "users": users_before - _count(user_count),
        "items": items_before - _count(item_count),
    }
    record.step(
        entry,
        f"k-core (users >= {min_user}, items >= {min_item}): removed {entry['users']:,} users, {entry['items']:,} items, {removed:,} rows in {passes} passes",
    )
    _nonempty(len(item), f"the k-core filter (--min-user-interactions {min_user}, --min-item-interactions {min_item})")
    return offsets, item, time, user_count, item_count


def _remap(raw: RawInteractions, offsets, user_count, item_count, item, time, dropped) -> Sequences:
    """Dense ids for the survivors; codes are ascending raw ids, so cumsum keeps that order."""
    user_alive = user_count > 0
    item_alive = item_count > 0
    item_id = np.cumsum(item_alive, dtype=np.int64).astype(np.int32)  # code -> 1..N
    seq_offsets = np.concatenate([[0], offsets[1:][user_alive]]).astype(np.int64)

    codes = raw.item_category[item_alive]
    used = np.unique(codes[codes >= 0])
    category_id = np.zeros(len(raw.category_names) + 1, dtype=np.int32)  # shifted: code -1 -> 0
    category_id[used + 1] = np.arange(1, len(used) + 1, dtype=np.int32)
    item_category = np.zeros(_count(item_alive) + 1, dtype=np.int32)
    item_category[1:] = category_id[codes + 1]
    return Sequences(
        seq_items=item_id[item],
        seq_offsets=seq_offsets,
        seq_times=time,
        raw_users=raw.raw_users.filter(pa.array(user_alive)),
        raw_items=raw.raw_items.filter(pa.array(item_alive)),
        item_category=item_category,
        category_names=raw.category_names.take(pa.array(used, type=pa.int64())),
        dropped=dropped,
    )
