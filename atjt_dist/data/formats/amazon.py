"""Amazon: reviews JSON lines, ratings-only CSV, 2014 (Python literal) and 2018 (JSON) metadata."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import _float_or_none, _int64, _last_of_lists, _ml_block
from .common import Block, FormatOptions, ItemBlock, PrepareError
from .streaming import (
    delimited_check,
    first_line,
    iter_line_blocks,
    json_check,
    raise_bad_line,
    read_delimited,
    read_json_lines,
)

_PY_STR = r"""(?:u?'(?:[^'\\]|\\.)*'|u?"(?:[^"\\]|\\.)*")"""
_PY_PATH = rf"\[(?:{_PY_STR}, )*{_PY_STR}\]"
AMAZON_2014_ASIN = r"'asin': u?'(?P<asin>[^'\\]*)'"
AMAZON_2014_CATEGORIES_KEY = "'categories': "
# Applied to the text after the key (anchored: RE2 then reads only the category lists).
AMAZON_2014_LAST_CATEGORY = rf"^\[(?:(?:{_PY_PATH}|\[\]), )*\[(?:{_PY_STR}, )*(?P<last>{_PY_STR})\]\]"


def last_category_literals(text: pa.Array) -> pa.Array:
    """The last element of the last category path of each 2014 metadata line, still quoted
    (null where the line has none, or where the expression cannot read it)."""
    after_key = _last_of_lists(pc.split_pattern(text, AMAZON_2014_CATEGORIES_KEY, max_splits=1))
    return pc.struct_field(pc.extract_regex(after_key, AMAZON_2014_LAST_CATEGORY), "last")


def _amazon_role(path: Path, options: FormatOptions) -> tuple[str, Callable]:
    line = first_line(path).lstrip()
    if line.startswith("{'") or line.startswith("{u'"):
        if "'reviewerID'" in line:
            raise PrepareError(f"{path}: reviews as Python literals are not read; convert them to JSON lines")
        return "items (2014 metadata)", _read_amazon_meta_2014
    if line.startswith("{"):
        try:
            keys = json.loads(line).keys()
        except (ValueError, AttributeError):
            raise PrepareError(f"{path}, line 1: not valid JSON") from None
        if "reviewerID" in keys:
            return "interactions (reviews JSON)", _read_amazon_reviews
        if "asin" in keys:
            return "items (2018 metadata)", _read_amazon_meta_2018
        raise PrepareError(f"{path}: a JSON file with neither 'reviewerID' (reviews) nor 'asin' (metadata)")
    if options.amazon_csv_order not in ("user-first", "item-first"):
        raise PrepareError(
            f"{path}: an Amazon ratings-only CSV; say its column order with --amazon-csv-order "
            "user-first (2014: user,item,rating,timestamp) or item-first (2018: item,user,rating,timestamp)"
        )
    return f"interactions (ratings CSV, {options.amazon_csv_order})", _read_amazon_csv


def _read_amazon_reviews(path: Path, options: FormatOptions) -> Iterator[Block]:
    schema = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()), ("unixReviewTime", pa.int64()), ("overall", pa.float64())])
    required = {"reviewerID": "str", "asin": "str", "unixReviewTime": "int"}
    check = json_check(required, {"overall": "float"})
    for batch in read_json_lines(path, schema, check, list(required), options.block_bytes):
        yield Block(
            batch.column("reviewerID"),
            batch.column("asin"),
            _int64(batch.column("unixReviewTime")),
            _float_or_none(batch, "overall"),
        )


def _read_amazon_csv(path: Path, options: FormatOptions) -> Iterator[Block]:
    names = ["user", "item", "rating", "time"] if options.amazon_csv_order == "user-first" else ["item", "user", "rating", "time"]
    kinds = {"user": "str", "item": "str", "rating": "float", "time": "int"}
    check = delimited_check(",", [(k, f"{n} id" if n in ("user", "item") else n, kinds[n]) for k, n in enumerate(names)], 4, quoting=True)
    columns = {"user": pa.string(), "item": pa.string(), "rating": pa.float64(), "time": pa.int64()}
    for batch in read_delimited(
        path,
        columns=columns,
        names=names,
        separator=",",
        check=check,
        block_bytes=options.block_bytes,
        required=list(columns),
    ):
        yield _ml_block(batch)


def _read_amazon_meta_2018(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    schema = pa.schema([("asin", pa.string()), ("category", pa.list_(pa.string()))])
    check = json_check({"asin": "str"}, {"category": "list"})
    for batch in read_json_lines(path, schema, check, ["asin"], options.block_bytes):
        yield ItemBlock(batch.column("asin"), _last_of_lists(batch.column("category")))


def _read_amazon_meta_2014(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    for first_no, lines in iter_line_blocks(path, options.block_bytes):
        try:
            text = lines.cast(pa.large_string())
        except pa.ArrowInvalid:
            raise_bad_line(path, _python_literal_check, "not valid UTF-8")
        asin = pc.struct_field(pc.extract_regex(text, AMAZON_2014_ASIN), "asin")
        blank = pc.match_substring_regex(text, r"^\s*$")  # anchored: stops at the first non-space
        if pc.any(pc.and_(pc.is_null(asin), pc.invert(blank))).as_py():
            raise_bad_line(path, _python_literal_check, "a line has no 'asin'")
        last = last_category_literals(text)
        names = _unquote_python_strings(last)
        missed = pc.and_(pc.is_null(last), pc.match_substring(text, "'categories'")).to_numpy(zero_copy_only=False)
        if missed.any():
            names = _literal_eval_categories(path, text, names, np.flatnonzero(missed), first_no)
        keep = pc.invert(blank)
        yield ItemBlock(asin.filter(keep).cast(pa.string()), names.filter(keep).cast(pa.string()))


def _unquote_python_strings(literals: pa.Array) -> pa.Array:
    body = pc.replace_substring_regex(literals, r"""^u?['"]|['"]$""", "")
    return pc.replace_substring_regex(body, r"""\\(['"\\])""", r"\1")


def _python_literal_check(line: str) -> Optional[str]:
    try:
        obj = ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        return f"not a Python dict literal ({type(exc).__name__})"
    if not isinstance(obj, dict) or not isinstance(obj.get("asin"), str):
        return "no 'asin'"
    return None


def _literal_eval_categories(path: Path, text: pa.Array, names: pa.Array, rows: np.ndarray, first_no: int) -> pa.Array:
    """The few lines the expression cannot read: parse them as Python literals."""
    values = names.to_pylist()
    for row in rows:
        line = text[int(row)].as_py()
        try:
            obj = ast.literal_eval(line)
            paths = obj.get("categories") or []
            values[row] = str(paths[-1][-1]) if paths and paths[-1] else None
        except (ValueError, SyntaxError, TypeError, AttributeError, IndexError, MemoryError, RecursionError) as exc:
            raise PrepareError(f"{path}, line {first_no + int(row)}: not a Python dict literal with 'categories' ({type(exc).__name__})") from None
    return pa.array(values, pa.large_string())
