"""table: a CSV (with header) or Parquet file with user/item/time columns named by options."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .columns import _float_or_none, _int64
from .common import Block, FormatOptions, PrepareError
from .streaming import _null_or_empty, delimited_check, first_line, raise_bad_line


def _table_role(path: Path, options: FormatOptions) -> tuple[str, Callable]:
    if path.suffix in (".parquet", ".pq"):
        return "interactions (Parquet table)", _read_table_parquet
    return "interactions (CSV table)", _read_table_csv


def _table_columns(options: FormatOptions) -> dict[str, str]:
    """Role -> column name, for the columns the options ask for."""
    columns = {"user": options.user_col, "item": options.item_col, "time": options.time_col}
    if options.rating_col:
        columns["rating"] = options.rating_col
    if options.category_col:
        columns["category"] = options.category_col
    return columns


def _table_time(array: pa.Array, path: Path, column: str) -> tuple[np.ndarray, str]:
    """int64 times and their unit: integers as given; timestamps and dates in microseconds since
    the epoch (one unit whatever the file stores: Parquet keeps CSV's seconds as milliseconds)."""
    t = array.type
    if pa.types.is_integer(t):
        return _int64(array), "as given"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if pa.types.is_timestamp(t) and t.tz is not None:
            array = array.cast(pa.timestamp(t.unit))  # the instant, in UTC
        elif pa.types.is_date(t):
            array = array.cast(pa.timestamp("s"))
        return array.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(), "us"
    raise PrepareError(f"{path}: time column {column!r} has type {t}; it must hold integers, timestamps or dates")


def _table_block(batch: pa.RecordBatch, columns: dict[str, str], path: Path) -> tuple[Block, str]:
    time, unit = _table_time(batch.column(columns["time"]), path, columns["time"])
    rating = None
    if "rating" in columns:
        column = batch.column(columns["rating"])
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise PrepareError(f"{path}: rating column {columns['rating']!r} has type {column.type}; it must be numeric")
        rating = _float_or_none(batch, columns["rating"])
    category = batch.column(columns["category"]).cast(pa.string()) if "category" in columns else None
    return Block(batch.column(columns["user"]), batch.column(columns["item"]), time, rating, category), unit


def _read_table_csv(path: Path, options: FormatOptions) -> Iterator[tuple[Block, str]]:
    columns = _table_columns(options)
    header = next(csv.reader([first_line(path)], delimiter=options.delimiter), [])
    missing = [name for name in columns.values() if name not in header]
    if missing:
        raise PrepareError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has {', '.join(header)}")
    # Ids and categories are strings (decimal ids still sort numerically); time and rating are
    # inferred from the first block and then fixed for the file.
    types = {columns[k]: pa.string() for k in ("user", "item", "category") if k in columns}
    kinds = {"user": "str", "item": "str", "time": "str", "rating": "float"}
    fields = [(header.index(name), name, kinds[role]) for role, name in columns.items() if role in kinds]
    check = delimited_check(options.delimiter, fields, len(header), quoting=True)
    read_opts = pacsv.ReadOptions(block_size=options.block_bytes)
    parse_opts = pacsv.ParseOptions(delimiter=options.delimiter)
    convert = pacsv.ConvertOptions(include_columns=list(columns.values()), column_types=types)
    try:
        reader = pacsv.open_csv(pa.input_stream(str(path), compression="detect"), read_opts, parse_opts, convert)
        for batch in reader:
            required = [columns[k] for k in ("user", "item", "time")]
            if any(_null_or_empty(batch.column(c)) for c in required):
                raise_bad_line(path, check, "a user, item or time value is missing", skip=1)
            yield _table_block(batch, columns, path)
    except pa.ArrowInvalid as exc:
        raise_bad_line(path, check, str(exc), skip=1)


def _read_table_parquet(path: Path, options: FormatOptions) -> Iterator[tuple[Block, str]]:
    columns = _table_columns(options)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepareError(f"{path}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    missing = [name for name in columns.values() if name not in names]
    if missing:
        raise PrepareError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the file has {', '.join(names)}")
    rows_before = 0
    for batch in parquet.iter_batches(batch_size=1 << 20, columns=list(columns.values())):
        for role in ("user", "item", "time"):
            column = batch.column(columns[role])
            if _null_or_empty(column):
                bad = np.flatnonzero(pc.fill_null(pc.is_null(column), True).to_numpy(zero_copy_only=False) | _empty_mask(column))
                raise PrepareError(f"{path}, row {rows_before + int(bad[0]) + 1}: column {columns[role]!r} is missing or empty")
        yield _table_block(batch, columns, path)
        rows_before += batch.num_rows


def _empty_mask(column: pa.Array) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(pc.equal(pc.utf8_length(column), 0), False).to_numpy(zero_copy_only=False)
    return np.zeros(len(column), dtype=bool)
