"""Yelp: the academic dataset's review file and, optionally, its business file."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from .columns import _first_of_split, _float_or_none
from .common import Block, FormatOptions, ItemBlock, PrepareError
from .streaming import first_line, json_check, raise_bad_line, read_json_lines


def _yelp_role(path: Path, options: FormatOptions) -> tuple[str, Callable]:
    line = first_line(path)
    try:
        keys = json.loads(line).keys()
    except (ValueError, AttributeError):
        raise PrepareError(f"{path}, line 1: not valid JSON; expected a Yelp review or business file") from None
    if "review_id" in keys:
        return "interactions (reviews)", _read_yelp_reviews
    if "business_id" in keys and "user_id" not in keys:
        return "items (businesses)", _read_yelp_business
    raise PrepareError(f"{path}: neither a Yelp review file (review_id, user_id, business_id, date) nor a business file")


def _yelp_date_ok(text: str) -> bool:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            _dt.datetime.strptime(text, fmt)
            return True
        except ValueError:
            pass
    return False


def _yelp_review_check(line: str) -> Optional[str]:
    reason = json_check({"user_id": "str", "business_id": "str", "date": "str"}, {"stars": "float"})(line)
    if reason is None and not _yelp_date_ok(json.loads(line)["date"]):
        return f"date {json.loads(line)['date']!r} is neither YYYY-MM-DD nor YYYY-MM-DD HH:MM:SS"
    return reason


def parse_yelp_dates(dates: pa.Array) -> pa.Array:
    """Unix seconds (null where unparsable) from ``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM:SS``."""
    dates = pc.utf8_trim_whitespace(dates)
    full = pc.if_else(pc.equal(pc.utf8_length(dates), 10), pc.binary_join_element_wise(dates, " 00:00:00", ""), dates)
    stamps = pc.strptime(full, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    return stamps.cast(pa.int64())


def _read_yelp_reviews(path: Path, options: FormatOptions) -> Iterator[Block]:
    schema = pa.schema([("user_id", pa.string()), ("business_id", pa.string()), ("date", pa.string()), ("stars", pa.float64())])
    for batch in read_json_lines(path, schema, _yelp_review_check, ["user_id", "business_id", "date"], options.block_bytes):
        seconds = parse_yelp_dates(batch.column("date"))
        if seconds.null_count:
            raise_bad_line(path, _yelp_review_check, "an unparsable date")
        yield Block(batch.column("user_id"), batch.column("business_id"), seconds.to_numpy(), _float_or_none(batch, "stars"))


def _read_yelp_business(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    schema = pa.schema([("business_id", pa.string()), ("categories", pa.string())])
    check = json_check({"business_id": "str"}, {"categories": "str"})
    for batch in read_json_lines(path, schema, check, ["business_id"], options.block_bytes):
        yield ItemBlock(batch.column("business_id"), _first_of_split(batch.column("categories"), ","))
