"""Readers of raw interaction dumps: one per format, streamed block by block.

Every reader turns its input files into one :class:`RawInteractions`: the interactions in file
order (input files concatenated in the order given) as numpy arrays of int32 id *codes*, int64
times and optional ratings, plus each item's category. Nothing is filtered here (``prepare``
does that, and counts what it drops).

Modules
    ``common``        :class:`PrepareError`, :class:`FormatOptions`, :class:`Source`,
                      :class:`RawInteractions`, :class:`Block`, :class:`ItemBlock`, the limits.
    ``ids``           :class:`IdEncoder`, :func:`encode_ints`, :func:`ascending_order` (id
                      codes) and :class:`CategoryMap` (item code -> category).
    ``streaming``     byte and line blocks (:func:`iter_line_blocks`), the delimited and JSON
                      lines block readers, the line checks and the bad-line diagnosis.
    ``rating_lines``  the numba fast path for MovieLens rating files (:func:`read_rating_lines`).
    ``columns``       small Arrow column helpers shared by the readers.
    ``movielens``, ``amazon``, ``yelp``, ``seqtxt``, ``table``
                      one format each: its ``_*_role`` function (which file is what) and readers.
    this package      the registry :data:`FORMATS` and the entry point :func:`read_raw`.

Streaming, no Python per row
    CSV-like files go through ``pyarrow.csv.open_csv`` (column selection, explicit types),
    JSON lines through ``pyarrow.json.open_json`` (explicit schema, extra fields ignored), line
    files (``seqtxt``, ``movies.dat``, the 2014 Amazon metadata) through
    :func:`~.streaming.iter_line_blocks`, which cuts byte blocks at newlines into Arrow arrays
    with numpy. MovieLens rating files (four plain numbers per line) take a numba fast path
    (:func:`~.rating_lines.read_rating_lines`, about 3x pyarrow's CSV reader per core as
    measured here) and fall back to pyarrow on anything unusual. String ids are
    dictionary-encoded per block (:class:`~.ids.IdEncoder`) and the per-block dictionaries
    unified once at the end; integer ids are coded once (a direct-address table, or a sort when
    sparse). The file never exists as Python objects.

Id codes
    Codes are assigned in ascending raw-id order: numerically when every raw id is an integer
    (or a decimal string such as Beauty.txt's), else by UTF-8 bytes. ``prepare`` keeps this
    order, so dense ids do not depend on row order or block size.

Bad lines
    When Arrow rejects a block (or a required value is null or unparsable), the reader scans
    the file again in Python up to the first bad line, to name the file, the 1-based physical
    line number and what is wrong. That slow scan happens only on the error path.

Formats (``FORMATS``; how files are told apart is in each ``_*_role`` function)
    movielens  ml-100k ``u.data`` (+ ``u.item``, category = first genre flagged);
               ml-1m/10m ``ratings.dat`` (+ ``movies.dat``); ml-20m/25m/latest ``ratings.csv``
               (+ ``movies.csv``). Category = first listed genre; "(no genres listed)" = none.
               Item files are read as latin-1 (titles are discarded; ids and genres are ASCII).
    amazon     reviews JSON lines, 2014 or 2018 (``reviewerID, asin, unixReviewTime``,
               ``overall`` as rating), optionally gzipped; ratings-only CSV without header, whose
               column order is given by ``--amazon-csv-order``: ``user-first`` (2014:
               user,item,rating,timestamp) or ``item-first`` (2018: item,user,rating,timestamp).
               It is never guessed: both orders parse, and a wrong guess swaps users and items.
               Metadata: 2014 Python-literal lines (``'categories'``: list of paths) or 2018
               JSON lines (``category``: one path); category = last element of the (last) path.
    yelp       ``yelp_academic_dataset_review.json`` (``user_id, business_id, date``, ``stars``
               as rating; dates ``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM:SS``) and optionally
               ``yelp_academic_dataset_business.json`` (category = first of ``categories``).
    seqtxt     one file, one user per line, ``user item item ...`` in time order; time =
               position; a user on two lines is an error.
    table      CSV (header) or Parquet with user/item/time columns named by options, optional
               rating and category columns (an item's category = its first non-empty one).

The 2014 Amazon metadata is not JSON; its ``asin`` and last category are extracted with RE2
regular expressions on whole blocks of lines (``pyarrow.compute.extract_regex``). Only lines that
mention ``'categories'`` but defeat the expression (e.g. an empty last path) are parsed one by
one with ``ast.literal_eval`` -- a handful of item-metadata lines, never the interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .amazon import _amazon_role
from .common import (
    MAX_DENSE_ITEMS,
    MAX_DENSE_USERS,
    Block,
    FormatOptions,
    ItemBlock,
    PrepareError,
    RawInteractions,
    Source,
)
from .ids import CategoryMap, IdEncoder, _as_id_array
from .movielens import _movielens_role
from .seqtxt import _seqtxt_role, check_seqtxt_users
from .streaming import first_line
from .table import _table_role
from .yelp import _yelp_role

__all__ = [
    "FORMATS",
    "Block",
    "Format",
    "FormatOptions",
    "ItemBlock",
    "PrepareError",
    "RawInteractions",
    "Source",
    "read_raw",
]


@dataclass(frozen=True)
class Format:
    """A raw format: how its files are told apart, and its conventions."""

    role: Callable[[Path, FormatOptions], tuple[str, Callable]]
    time_unit: str
    category_rule: str
    dedup_default: bool  # are repeated (user, item) pairs artefacts of the dump?


FORMATS: dict[str, Format] = {
    # A MovieLens user rates a movie once: a repeat would be an artefact.
    "movielens": Format(_movielens_role, "s", "first genre (u.item: first genre flagged)", dedup_default=True),
    # Repeated reviews are dump artefacts (product variants, re-crawls).
    "amazon": Format(_amazon_role, "s", "last element of the item's (last) category path", dedup_default=True),
    # Revisits are real.
    "yelp": Format(_yelp_role, "s", "first of the business's categories", dedup_default=False),
    # Already-prepared sequences, taken as they are.
    "seqtxt": Format(_seqtxt_role, "position", "none", dedup_default=False),
    # A generic table is kept as given.
    "table": Format(_table_role, "as given", "the first non-empty category of the item's rows", dedup_default=False),
}


class _Collector:
    """Accumulates blocks: ids are encoded as they come, values kept as numpy chunks."""

    def __init__(self) -> None:
        self.users = IdEncoder("user")
        self.items = IdEncoder("item")
        self.times: list[np.ndarray] = []
        self.ratings: list[Optional[np.ndarray]] = []
        self.item_categories: list[ItemBlock] = []  # per block, first row of each item
        self.units: set[str] = set()
        self.rows = 0

    def add(self, block: Union[Block, tuple[Block, str]], where: str) -> None:
        """Take one block (the table format's readers also give the block's time unit)."""
        if isinstance(block, tuple):
            block, unit = block
            self.units.add(unit)
        self.rows += len(block.time)
        self.users.add(block.user, where)
        self.items.add(block.item, where)
        self.times.append(np.ascontiguousarray(block.time, dtype=np.int64))
        self.ratings.append(block.rating)
        if block.category is not None:
            # Keep each item's first row that names a category (a small table per block).
            named = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(block.category), ""), False)
            items, names = block.item.filter(named), block.category.filter(named)
            codes = pc.dictionary_encode(_as_id_array(items, "item", where)).indices.to_numpy()
            _, first = np.unique(codes, return_index=True)
            index = pa.array(first)
            self.item_categories.append(ItemBlock(items.take(index), names.take(index)))

    def ratings_array(self) -> Optional[np.ndarray]:
        if all(r is None for r in self.ratings):
            return None
        return np.concatenate([r if r is not None else np.full(len(t), np.nan) for r, t in zip(self.ratings, self.times)])


def _check_inputs(paths: Sequence[Union[str, Path]]) -> list[Path]:
    if not paths:
        raise PrepareError("no input files; pass --input PATH [PATH ...]")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise PrepareError(f"input file {path} does not exist" if not path.exists() else f"input {path} is not a file")
        if not first_line(path):
            raise PrepareError(f"input file {path} is empty (no non-blank line)")
        out.append(path)
    return out


def read_raw(
    format_name: str,
    paths: Sequence[Union[str, Path]],
    options: Optional[FormatOptions] = None,
    log: Callable[[str], None] = lambda _: None,
    with_ratings: bool = True,
) -> RawInteractions:
    """Read the input files of one format into :class:`RawInteractions` (nothing filtered).

    Interaction files are read first, in the order given, then item-metadata files (their
    categories are looked up against the items just read); an item listed twice keeps its first
    category. ``with_ratings=False`` skips assembling the ratings (``rating`` is then None).
    Raises :class:`PrepareError` for any bad input.
    """
    if format_name not in FORMATS:
        raise PrepareError(f"unknown format {format_name!r}; expected one of {', '.join(FORMATS)}")
    fmt = FORMATS[format_name]
    options = options or FormatOptions()
    roles = [(path, *fmt.role(path, options)) for path in _check_inputs(paths)]
    interactions = [(p, r, f) for p, r, f in roles if r.startswith("interactions")]
    item_files = [(p, r, f) for p, r, f in roles if r.startswith("items")]
    if not interactions:
        raise PrepareError(f"none of the inputs is a {format_name} interactions file: " + "; ".join(f"{p} is {r}" for p, r, _ in roles))
    if format_name == "seqtxt" and len(interactions) > 1:
        raise PrepareError("seqtxt reads one sequence file (a user on two files would have two sequences)")

    collector = _Collector()
    for path, role, reader in interactions:
        before = collector.rows
        for block in reader(path, options):
            collector.add(block, str(path))
        log(f"read {collector.rows - before:,} interactions from {path} [{role}]")
    user, raw_users = collector.users.finish()
    item, raw_items = collector.items.finish()
    if len(raw_users) > MAX_DENSE_USERS or len(raw_items) > MAX_DENSE_ITEMS:
        raise PrepareError(f"{len(raw_users):,} users / {len(raw_items):,} items do not fit in int32 dense ids")
    time = collector.times[0] if len(collector.times) == 1 else np.concatenate([np.zeros(0, np.int64), *collector.times])
    if format_name == "seqtxt":
        check_seqtxt_users(interactions[0][0], user[time == 0])  # position 0 starts a line
    if len(collector.units) > 1:
        raise PrepareError(f"the input tables' time columns have different units: {', '.join(sorted(collector.units))}")

    item_category, category_names = _read_categories(raw_items, collector.item_categories, item_files, options, log)
    return RawInteractions(
        user=user,
        item=item,
        time=time,
        rating=collector.ratings_array() if with_ratings else None,
        raw_users=raw_users,
        raw_items=raw_items,
        item_category=item_category,
        category_names=category_names,
        sources=[Source(p, r) for p, r, _ in roles],
        time_unit=next(iter(collector.units)) if collector.units else fmt.time_unit,
        category_rule=fmt.category_rule if (item_files or collector.item_categories) else "none",
    )


def _read_categories(raw_items: pa.Array, table_blocks: list[ItemBlock], item_files: list, options: FormatOptions, log) -> tuple[np.ndarray, pa.Array]:
    """Categories of the items read: from the table's own column, then from metadata files."""
    categories = CategoryMap(raw_items)
    for block in table_blocks:
        categories.add(block.item, block.category, "table")
    for path, role, reader in item_files:
        for block in reader(path, options):
            categories.add(block.item, block.category, str(path))
        log(f"read item categories from {path} [{role}]")
    return categories.finish()
