"""``python -m atjt_dist.data.prepare``: raw dumps -> a dataset directory.

    python -m atjt_dist.data.prepare --format FORMAT --input PATH [PATH ...] --output DIR [options]

Formats and how their files are read: :mod:`atjt_dist.data.formats`; steps 2-6:
:mod:`atjt_dist.data.prepare_steps`, with its numba kernels in :mod:`atjt_dist.data.prepare_kernels`.
The steps, in order, each logged with its counts (stdout) and recorded in ``meta.json`` under
``dropped``:

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

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

import pyarrow as pa

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..files import sha256_file
from .formats import FORMATS, FormatOptions, PrepareError, read_raw
from .layout import DatasetContent, prepare_output_dir, write_dataset
from .prepare_kernels import compact, first_of_pairs, k_core, order_by_user, sort_by_user_time, stable_sort_by_key
from .prepare_steps import ID_ORDER, TIE_BREAK, Sequences, StepOptions, _Clock, build_sequences

# The steps' kernels and types are part of this command's interface (tests and callers import
# them from here).
__all__ = [
    "ID_ORDER",
    "TIE_BREAK",
    "PrepareOptions",
    "Sequences",
    "StepOptions",
    "build_sequences",
    "compact",
    "first_of_pairs",
    "k_core",
    "main",
    "order_by_user",
    "prepare",
    "sort_by_user_time",
    "stable_sort_by_key",
]


PROG = "python -m atjt_dist.data.prepare"
_DEDUP_DEFAULTS = ", ".join(f"{name} {'on' if f.dedup_default else 'off'}" for name, f in FORMATS.items())


@dataclass
class PrepareOptions:
    """prepare's options: its whole command line (it reads raw files, no config)."""

    reads_config: ClassVar[bool] = False

    format: Optional[str] = option(None, "raw format of the inputs", metavar="FORMAT", required=True, choices=tuple(FORMATS))
    input: list[Path] = option([], "interaction files, then optional item-metadata files (told apart by content)", metavar="PATH", required=True, spaced=True)
    output: Optional[Path] = option(None, "dataset directory to write", metavar="DIR", required=True)
    overwrite: bool = option(False, "replace a non-empty DIR")
    # the steps
    min_rating: Optional[float] = option(None, "keep rows with rating >= X (formats with ratings); default: no threshold", metavar="X")
    dedup: Optional[bool] = option(None, f"drop repeated (user, item) pairs keeping the earliest; default per format: {_DEDUP_DEFAULTS}")
    min_user_interactions: int = option(5, "iterative k-core: users keep >= K interactions", metavar="K")
    min_item_interactions: int = option(1, "iterative k-core: items keep >= K interactions (1 = no item filter)", metavar="K")
    # the split and the test candidates (written by layout.write_dataset)
    folds: int = option(5, "user folds")
    fold_seed: int = option(0, "seed of the fold assignment")
    candidates: int = option(64, "test candidates per user: the last item + (C-1) negatives", metavar="C")
    candidate_sampler: str = option("popularity", "negatives by popularity^0.75 or uniform", metavar="SAMPLER", choices=("popularity", "uniform"))
    candidate_seed: int = option(0, "seed of the candidate negatives")
    # the formats' options
    amazon_csv_order: Optional[str] = option(
        None,
        "column order of an Amazon ratings-only CSV: user-first (2014: user,item,rating,timestamp) or "
        "item-first (2018: item,user,rating,timestamp); required when one is given",
        metavar="ORDER",
        choices=("user-first", "item-first"),
    )
    user_col: str = option("user", "table: user id column", metavar="NAME")
    item_col: str = option("item", "table: item id column", metavar="NAME")
    time_col: str = option("time", "table: time column (integers, timestamps or dates)", metavar="NAME")
    rating_col: Optional[str] = option(None, "table: rating column (optional)", metavar="NAME")
    category_col: Optional[str] = option(None, "table: item category column (optional)", metavar="NAME")
    delimiter: str = option(",", "table: CSV delimiter ('tab' for tabs)", metavar="CHAR")
    block_mb: int = option(16, "read block size in MiB", metavar="MIB")
    debug: bool = option(False, "show tracebacks")


def prepare(args: PrepareOptions, log: Callable[[str], None] = print) -> Path:
    """Run the whole command for its options; returns the dataset directory."""
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
    content = DatasetContent(
        seq_items=seqs.seq_items,
        seq_offsets=seqs.seq_offsets,
        seq_times=seqs.seq_times,
        raw_users=seqs.raw_users,
        raw_items=seqs.raw_items,
        item_category=seqs.item_category,
        category_names=seqs.category_names,
        meta=meta,
    )
    out = write_dataset(
        args.output,
        content,
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
    try:
        return sha256_file(path, stop, chunk)
    except OSError:
        return None  # read_raw reports the missing or unreadable file


def _format_options(args: PrepareOptions) -> FormatOptions:
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


def _options_record(args: PrepareOptions, dedup: bool) -> dict:
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


def _docstring_steps() -> str:
    """The numbered steps of the module docstring (one text for the docs and --help)."""
    text = __doc__ or ""  # None under python -OO
    if "1. read" not in text:
        return "see the module docstring of atjt_dist.data.prepare"
    return text[text.index("1. read") : text.index("\n\nBad input")]


def _check_args(args: PrepareOptions) -> None:
    if args.folds < 2:
        raise PrepareError(f"--folds must be >= 2, got {args.folds}")
    if args.candidates < 2:
        raise PrepareError(f"--candidates must be >= 2 (the positive and at least one negative), got {args.candidates}")
    for flag in ("min_user_interactions", "min_item_interactions", "block_mb"):
        if getattr(args, flag) < (1 if flag == "block_mb" else 0):
            raise PrepareError(f"--{flag.replace('_', '-')} must be >= {1 if flag == 'block_mb' else 0}")
    if len(args.delimiter if args.delimiter not in ("tab", "\\t") else "\t") != 1:
        raise PrepareError(f"--delimiter must be one character (or 'tab'), got {args.delimiter!r}")


def _main(argv: list[str]) -> int:
    opts = pop_command_options(argv, PrepareOptions)
    _check_args(opts)
    prepare(opts)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; returns the exit status (0, or 2 for bad input with a one-line message)."""
    errors = (PrepareError, OSError, pa.ArrowException)  # bad input files, beside the usual user errors
    return run_cli(_main, None if argv is None else list(argv), PROG, __doc__ or "", PrepareOptions, errors, "steps, in order:\n" + _docstring_steps())


if __name__ == "__main__":
    sys.exit(main())
