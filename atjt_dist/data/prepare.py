"""``python -m atjt_dist.data.prepare``: raw dumps -> a dataset directory.

    python -m atjt_dist.data.prepare --format FORMAT --input PATH [PATH ...] --output DIR [options]

Formats and how their files are read: :mod:`atjt_dist.data.formats`. The steps, in order, each
logged with its counts (stdout) and recorded in ``meta.json`` under ``dropped``:

1. read      every input file, streamed; ids coded in ascending raw-id order.
2. rating    ``--min-rating X`` keeps rows with rating >= X (formats with ratings; default off).
             It runs before de-duplication, so a pair's kept row is its first *qualifying* one.
3. sort      stable by (user, time): ties keep input row order (files in the order given).
             A numba counting sort by user, then a sort of each user's rows by (time, row).
4. dedup     drop repeated (user, item) pairs, keeping the earliest (by the order of step 3).
             Default on for movielens (one rating per movie: a repeat is an artefact) and amazon
             (repeated reviews are dump artefacts); off for yelp (revisits are real), seqtxt
             (its sequences are taken as they are) and table (kept as given). ``--dedup`` /
             ``--no-dedup`` override.
5. k-core    iterative: drop users with fewer than ``--min-user-interactions`` (default 5) and
             items with fewer than ``--min-item-interactions`` (default 1, i.e. no item filter:
             the paper's ML-20M and Amazon 5-core counts are the raw files' own) until stable.
             Counts are rows left after step 4.
6. remap     users 0..U-1 and items 1..N (0 = padding) in ascending raw-id order of the
             survivors; categories 1..C (0 = none) over the categories of surviving items, by name.
7. write     :func:`atjt_dist.data.layout.write_dataset`: popularity, user folds (``--folds`` 5,
             ``--fold-seed`` 0), test candidates (``--candidates`` 64, ``--candidate-sampler``
             popularity|uniform, ``--candidate-seed`` 0), written to a temporary directory and
             renamed; a failed run leaves nothing at DIR. A non-empty DIR is refused unless
             ``--overwrite``.

Bad input (missing file or column, unknown format, unparsable line, empty result, ids that do
not fit, non-empty output) is one line on stderr and exit status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time as _time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numba
import numpy as np
import pyarrow as pa

from .formats import FORMATS, FormatOptions, PrepareError, RawInteractions, read_raw
from .layout import DatasetError, prepare_output_dir, write_dataset

TIE_BREAK = "user, then time, then input row order (files in the order given)"
ID_ORDER = "ascending raw id (numeric when every id is an integer), users from 0, items from 1; item 0 = padding"


# ---------------------------------------------------------------------------------------------
# Kernels (numba; cached on disk, so only the first run on a machine compiles them)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def order_by_user(user, num_users):
    """Stable counting sort by user code: (row order, CSR offsets [num_users + 1])."""
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    for r in range(user.shape[0]):
        offsets[user[r] + 1] += 1
    for u in range(num_users):
        offsets[u + 1] += offsets[u]
    cursor = offsets[:-1].copy()
    order = np.empty(user.shape[0], dtype=np.int64)
    for r in range(user.shape[0]):
        u = user[r]
        order[cursor[u]] = r
        cursor[u] += 1
    return order, offsets


_RUN = 16  # insertion-sorted run length of the merge sort


@numba.njit(cache=True)
def _merge_runs(src_k, src_p, dst_k, dst_p, width):
    """Merge neighbouring sorted runs of `width` from src into dst; the left run wins ties."""
    n = src_k.shape[0]
    for lo in range(0, n, 2 * width):
        mid = min(lo + width, n)
        hi = min(lo + 2 * width, n)
        i = lo
        j = mid
        for o in range(lo, hi):
            if j >= hi or (i < mid and src_k[i] <= src_k[j]):
                dst_k[o] = src_k[i]
                dst_p[o] = src_p[i]
                i += 1
            else:
                dst_k[o] = src_k[j]
                dst_p[o] = src_p[j]
                j += 1


@numba.njit(cache=True)
def stable_sort_by_key(keys, payload):
    """Sort `keys` ascending in place, carrying `payload`; equal keys keep their order.

    A bottom-up merge sort over insertion-sorted runs: small code that numba compiles
    quickly (np.argsort(kind="mergesort") in a parallel loop took ~20 s to compile).
    """
    n = keys.shape[0]
    for start in range(0, n, _RUN):
        for i in range(start + 1, min(start + _RUN, n)):
            k = keys[i]
            p = payload[i]
            j = i - 1
            while j >= start and keys[j] > k:
                keys[j + 1] = keys[j]
                payload[j + 1] = payload[j]
                j -= 1
            keys[j + 1] = k
            payload[j + 1] = p
    if n <= _RUN:
        return
    buffer_k = np.empty_like(keys)
    buffer_p = np.empty_like(payload)
    in_buffer = False
    width = _RUN
    while width < n:
        if in_buffer:
            _merge_runs(buffer_k, buffer_p, keys, payload, width)
        else:
            _merge_runs(keys, payload, buffer_k, buffer_p, width)
        in_buffer = not in_buffer
        width *= 2
    if in_buffer:
        for i in range(n):
            keys[i] = buffer_k[i]
            payload[i] = buffer_p[i]


@numba.njit(parallel=True, cache=True)
def sort_by_user_time(user, item, time, num_users):
    """Rows stably sorted by (user, time): (CSR offsets, items, times).

    Ties in time keep input row order: the counting sort by user is stable, and so is the
    sort of each user's rows by time.
    """
    order, offsets = order_by_user(user, num_users)
    items = np.empty(item.shape[0], dtype=np.int32)
    times = np.empty(item.shape[0], dtype=np.int64)
    for u in numba.prange(num_users):
        a = offsets[u]
        b = offsets[u + 1]
        keys = np.empty(b - a, dtype=np.int64)
        for k in range(a, b):
            keys[k - a] = time[order[k]]
        rows = order[a:b].copy()
        stable_sort_by_key(keys, rows)
        for k in range(a, b):
            items[k] = item[rows[k - a]]
            times[k] = keys[k - a]
    return offsets, items, times


@numba.njit(parallel=True, cache=True)
def first_of_pairs(offsets, item, num_items, chunks):
    """Keep-mask of each user's first row per item (rows in CSR order, sorted by time).

    Users are split into `chunks` (one per thread), each with its own item -> last-user table.
    """
    num_users = offsets.shape[0] - 1
    keep = np.ones(item.shape[0], dtype=np.bool_)
    chunks = max(1, min(chunks, num_users))
    for c in numba.prange(chunks):
        owner = np.full(num_items, -1, dtype=np.int32)
        for u in range(num_users * c // chunks, num_users * (c + 1) // chunks):
            for r in range(offsets[u], offsets[u + 1]):
                if owner[item[r]] == u:
                    keep[r] = False
                else:
                    owner[item[r]] = u
    return keep


@numba.njit(cache=True)
def k_core(offsets, item, num_items, min_user, min_item):
    """Iterative k-core: (keep-mask, passes, rows per user, rows per item) after it.

    Removals update the counts at once, so a pass sees earlier removals; the result is the
    unique largest subset where every user has >= min_user rows and every item >= min_item.
    """
    num_users = offsets.shape[0] - 1
    keep = np.ones(item.shape[0], dtype=np.bool_)
    user_count = offsets[1:] - offsets[:-1]
    item_count = np.zeros(num_items, dtype=np.int64)
    for r in range(item.shape[0]):
        item_count[item[r]] += 1
    passes = 0
    changed = True
    while changed:
        changed = False
        passes += 1
        for u in range(num_users):
            if user_count[u] == 0:
                continue
            for r in range(offsets[u], offsets[u + 1]):
                if keep[r] and (user_count[u] < min_user or item_count[item[r]] < min_item):
                    keep[r] = False
                    user_count[u] -= 1
                    item_count[item[r]] -= 1
                    changed = True
    return keep, passes, user_count, item_count


@numba.njit(cache=True)
def compact(offsets, item, time, keep):
    """Move the kept rows forward in place (order kept); returns (new CSR offsets, rows kept).

    In place because fresh memory is slow to fault in: the caller slices item[:n], time[:n].
    """
    new_offsets = np.zeros_like(offsets)
    j = 0
    for u in range(offsets.shape[0] - 1):
        for r in range(offsets[u], offsets[u + 1]):
            if keep[r]:
                item[j] = item[r]
                time[j] = time[r]
                j += 1
        new_offsets[u + 1] = j
    return new_offsets, j


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, log: Callable[[str], None] = print) -> Path:
    """Run the whole command for parsed arguments; returns the dataset directory."""
    clock = _Clock()
    prepare_output_dir(args.output, args.overwrite)  # refuse early, before reading gigabytes
    fmt = FORMATS[args.format]
    dedup = fmt.dedup_default if args.dedup is None else args.dedup
    inputs = [Path(p) for p in args.input]
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # sha256 runs beside the parsing (hashlib releases the GIL on large reads); a failed
        # read stops it rather than waiting for gigabytes to be hashed.
        digests = [pool.submit(_sha256, p, stop) for p in inputs]
        try:
            raw = read_raw(args.format, inputs, _format_options(args), log, with_ratings=args.min_rating is not None)
        except BaseException:
            stop.set()
            raise
        sources = [{"path": str(s.path.resolve()), "role": s.role, "bytes": s.path.stat().st_size, "sha256": d.result()} for s, d in zip(raw.sources, digests)]
    log(f"read {len(raw.user):,} rows: {len(raw.raw_users):,} users, {len(raw.raw_items):,} items, {len(raw.category_names):,} categories {clock.lap()}")
    meta = {
        "format": args.format,
        "sources": sources,
        "options": _options_record(args, dedup),
        "read": {
            "rows": len(raw.user),
            "users": len(raw.raw_users),
            "items": len(raw.raw_items),
            "categories": len(raw.category_names),
        },
        "dropped": None,  # filled below, in step order
        "time_unit": raw.time_unit,
        "order": TIE_BREAK,
        "ids": ID_ORDER,
        "category_rule": raw.category_rule,
    }
    steps = StepOptions(dedup, args.min_rating, args.min_user_interactions, args.min_item_interactions)
    seqs = build_sequences(raw, steps, log)
    del raw
    meta["dropped"] = seqs.dropped
    num_users, num_items = len(seqs.seq_offsets) - 1, len(seqs.raw_items)
    log(f"final: {num_users:,} users, {num_items:,} items, {len(seqs.seq_items):,} interactions, {len(seqs.category_names):,} categories")
    out = write_dataset(
        args.output,
        seq_items=seqs.seq_items,
        seq_offsets=seqs.seq_offsets,
        seq_times=seqs.seq_times,
        raw_users=seqs.raw_users,
        raw_items=seqs.raw_items,
        item_category=seqs.item_category,
        category_names=seqs.category_names,
        meta=meta,
        folds=args.folds,
        fold_seed=args.fold_seed,
        num_candidates=args.candidates,
        candidate_sampler=args.candidate_sampler,
        candidate_seed=args.candidate_seed,
        overwrite=args.overwrite,
    )
    log(f"wrote {out} {clock.lap()}")
    return out


def _sha256(path: Path, stop: threading.Event, chunk: int = 1 << 22) -> Optional[str]:
    """The file's hex sha256, streamed; None if `stop` is set first (or the file is missing)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                if stop.is_set():
                    return None
                digest.update(block)
    except OSError:
        return None  # read_raw reports the missing or unreadable file
    return digest.hexdigest()


def _format_options(args: argparse.Namespace) -> FormatOptions:
    delimiter = "\t" if args.delimiter in ("tab", "\\t") else args.delimiter
    return FormatOptions(
        amazon_csv_order=args.amazon_csv_order,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        category_col=args.category_col,
        delimiter=delimiter,
        block_bytes=args.block_mb << 20,
    )


def _options_record(args: argparse.Namespace, dedup: bool) -> dict:
    """Every option that shapes the result, as used (the format's defaults resolved)."""
    record = {
        "dedup": dedup,
        "min_rating": args.min_rating,
        "min_user_interactions": args.min_user_interactions,
        "min_item_interactions": args.min_item_interactions,
        "folds": args.folds,
        "fold_seed": args.fold_seed,
        "candidates": args.candidates,
        "candidate_sampler": args.candidate_sampler,
        "candidate_seed": args.candidate_seed,
    }
    if args.format == "amazon":
        record["amazon_csv_order"] = args.amazon_csv_order
    if args.format == "table":
        record.update({k: getattr(args, k) for k in ("user_col", "item_col", "time_col", "rating_col", "category_col", "delimiter")})
    return record


class _UsageError(Exception):
    pass


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help where there is one; the epilog (the steps) keeps its layout."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2 via main), no usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise _UsageError(message)


def _docstring_steps() -> str:
    """The numbered steps of the module docstring (one text for the docs and --help)."""
    text = __doc__ or ""  # None under python -OO
    if "1. read" not in text:
        return "see the module docstring of atjt_dist.data.prepare"
    return text[text.index("1. read") : text.index("\n\nBad input")]


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default is stated in its help."""
    dedup_defaults = ", ".join(f"{name} {'on' if f.dedup_default else 'off'}" for name, f in FORMATS.items())
    p = _Parser(
        prog="python -m atjt_dist.data.prepare",
        description="Read raw interaction files and write a dataset directory.",
        epilog="steps, in order:\n" + _docstring_steps(),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="raw format of the inputs")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="interaction files, then optional item-metadata files (told apart by content)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    g = p.add_argument_group("steps")
    g.add_argument(
        "--min-rating",
        type=float,
        default=None,
        metavar="X",
        help="keep rows with rating >= X (formats with ratings); default: no threshold",
    )
    g.add_argument(
        "--dedup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"drop repeated (user, item) pairs keeping the earliest; default per format: {dedup_defaults}",
    )
    g.add_argument(
        "--min-user-interactions",
        type=int,
        default=5,
        metavar="K",
        help="iterative k-core: users keep >= K interactions",
    )
    g.add_argument(
        "--min-item-interactions",
        type=int,
        default=1,
        metavar="K",
        help="iterative k-core: items keep >= K interactions (1 = no item filter)",
    )
    g = p.add_argument_group("split and test candidates (written by layout.write_dataset)")
    g.add_argument("--folds", type=int, default=5, help="user folds")
    g.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    g.add_argument("--candidates", type=int, default=64, help="test candidates per user: the last item + (C-1) negatives")
    g.add_argument(
        "--candidate-sampler",
        choices=["popularity", "uniform"],
        default="popularity",
        help="negatives by popularity^0.75 or uniform",
    )
    g.add_argument("--candidate-seed", type=int, default=0, help="seed of the candidate negatives")
    g = p.add_argument_group("format options")
    g.add_argument(
        "--amazon-csv-order",
        choices=["user-first", "item-first"],
        default=None,
        help="column order of an Amazon ratings-only CSV: user-first (2014: user,item,rating,timestamp) or "
        "item-first (2018: item,user,rating,timestamp); required when one is given",
    )
    g.add_argument("--user-col", default="user", help="table: user id column")
    g.add_argument("--item-col", default="item", help="table: item id column")
    g.add_argument("--time-col", default="time", help="table: time column (integers, timestamps or dates)")
    g.add_argument("--rating-col", default=None, help="table: rating column (optional)")
    g.add_argument("--category-col", default=None, help="table: item category column (optional)")
    g.add_argument("--delimiter", default=",", help="table: CSV delimiter ('tab' for tabs)")
    g.add_argument("--block-mb", type=int, default=16, help="read block size in MiB")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.folds < 2:
        raise PrepareError(f"--folds must be >= 2, got {args.folds}")
    if args.candidates < 2:
        raise PrepareError(f"--candidates must be >= 2 (the positive and at least one negative), got {args.candidates}")
    for flag in ("min_user_interactions", "min_item_interactions", "block_mb"):
        if getattr(args, flag) < (1 if flag == "block_mb" else 0):
            raise PrepareError(f"--{flag.replace('_', '-')} must be >= {1 if flag == 'block_mb' else 0}")
    if len(args.delimiter if args.delimiter not in ("tab", "\\t") else "\t") != 1:
        raise PrepareError(f"--delimiter must be one character (or 'tab'), got {args.delimiter!r}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; returns the exit status (0, or 2 for bad input with a one-line message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    try:
        _check_args(args)
        prepare(args)
    except (PrepareError, DatasetError, OSError, pa.ArrowException) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"prepare: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
