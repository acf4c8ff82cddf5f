"""Streaming reads (byte and line blocks, delimited files, JSON lines) and the bad-line diagnosis."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Optional, Sequence

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from .common import BLOCK_BYTES, INT64_MAX, INT64_MIN, PrepareError


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_line(path: Path, limit: int = 1 << 20) -> str:
    """The first non-blank line of a file (decompressed), for telling file kinds apart."""
    try:
        with _open_binary(path) as f:
            for _ in range(1000):
                line = f.readline(limit)
                if not line:
                    return ""
                if line.strip():
                    return line.decode("latin-1").rstrip("\r\n")
    except (OSError, EOFError) as exc:
        raise PrepareError(f"{path}: cannot be read ({exc})") from None
    return ""


def iter_byte_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Yield the file (decompressed) as uint8 blocks of whole lines.

    Each block ends just after a newline, except the last one if the file does not end with
    one; a line longer than the block makes a longer block. The blocks are views of one
    reused buffer (no copy per block): a consumer must not keep them past its iteration.
    """
    buf = bytearray(block_bytes)
    filled = 0  # bytes at the start of buf carried over from the previous read
    with pa.input_stream(str(path), compression="detect") as stream:
        while True:
            if filled == len(buf):  # no newline in a whole buffer: a longer one, same content
                buf = bytearray(buf) + bytearray(len(buf))
            with memoryview(buf) as view:
                got = stream.readinto(view[filled:])
            if got == 0:  # end of file
                if filled:
                    yield np.frombuffer(buf, dtype=np.uint8, count=filled)
                return
            size = filled + got
            end = buf.rfind(b"\n", 0, size) + 1
            if end == 0:
                filled = size
                continue
            yield np.frombuffer(buf, dtype=np.uint8, count=end)
            buf[: size - end] = buf[end:size]
            filled = size - end


def iter_line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, pa.Array]]:
    """Yield (1-based number of the block's first line, its lines as large_binary, ends removed).

    A final line without a newline counts. Line ends are ``\\n`` or ``\\r\\n``; they are
    stripped with numpy masks, not per line.
    """
    line_no = 1
    for buf in iter_byte_blocks(path, block_bytes):
        lines = _lines_array(buf)
        yield line_no, lines
        line_no += len(lines)


@numba.njit(cache=True)
def _split_lines(buf, data, offsets):
    """Copy `buf` into `data` without line ends (\\n or \\r\\n), line k ending at offsets[k+1];
    returns (lines, bytes). A last line without a newline counts."""
    size = 0
    lines = 0
    offsets[0] = 0
    for i in range(buf.shape[0]):
        c = buf[i]
        if c == 10:
            if size > offsets[lines] and data[size - 1] == 13:
                size -= 1  # the \r of \r\n
            lines += 1
            offsets[lines] = size
        else:
            data[size] = c
            size += 1
    if buf.shape[0] > 0 and buf[buf.shape[0] - 1] != 10:
        lines += 1
        offsets[lines] = size
    return lines, size


def _lines_array(buf: np.ndarray) -> pa.Array:
    """The block's lines as a large_binary array (one numba pass, no Python per line)."""
    data = np.empty(len(buf), dtype=np.uint8)
    offsets = np.empty(len(buf) + 2, dtype=np.int64)  # untouched slots cost address space only
    lines, size = _split_lines(buf, data, offsets)
    return pa.Array.from_buffers(pa.large_binary(), lines, [None, pa.py_buffer(offsets[: lines + 1].copy()), pa.py_buffer(data[:size])])


LineCheck = Callable[[str], Optional[str]]


def _first_bad_line(path: Path, check: LineCheck, encoding: str, skip: int) -> Optional[tuple[int, str]]:
    """Scan in Python for the first line that `check` rejects (the error path only)."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            if number <= skip:
                continue
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError:
                return number, f"not valid {encoding.upper()} text"
            if not line.strip():
                continue
            reason = check(line)
            if reason:
                return number, reason
    return None


def raise_bad_line(path: Path, check: LineCheck, cause: str, encoding: str = "utf-8", skip: int = 0) -> NoReturn:
    """Raise a PrepareError naming the first bad line of `path` (or Arrow's message if none)."""
    found = _first_bad_line(path, check, encoding, skip)
    if found is not None:
        raise PrepareError(f"{path}, line {found[0]}: {found[1]}")
    if "straddl" in cause:
        raise PrepareError(f"{path}: a line is longer than the read block; raise --block-mb")
    raise PrepareError(f"{path}: cannot be parsed ({cause.splitlines()[0] if cause else 'unknown error'})")


def _check_value(text: str, kind: str, name: str) -> Optional[str]:
    """Why `text` is not a valid value of `kind` ('id', 'int', 'float', 'str'), or None."""
    if kind == "str":
        return None if text != "" else f"{name} is empty"
    if kind in ("id", "int"):
        try:
            value = int(text)
        except ValueError:
            return f"{name} is not an integer: {text!r}"
        if not INT64_MIN <= value <= INT64_MAX:
            return f"{name} {text} does not fit in a 64-bit integer"
        return None
    try:
        float(text)
    except ValueError:
        return f"{name} is not a number: {text!r}"
    return None


def delimited_check(separator: str, fields: Sequence[tuple[int, str, str]], ncols: Optional[int], quoting: bool) -> LineCheck:
    """A line check for delimited text: field count, then each (index, name, kind) field."""

    def check(line: str) -> Optional[str]:
        parts = next(csv.reader([line], delimiter=separator)) if quoting else line.split(separator)
        if ncols is not None and len(parts) != ncols:
            return f"expected {ncols} fields separated by {separator!r}, found {len(parts)}"
        for index, name, kind in fields:
            if index >= len(parts):
                return f"no {name} field"
            reason = _check_value(parts[index].strip(), kind, name)
            if reason:
                return reason
        return None

    return check


def json_check(required: dict[str, str], optional: dict[str, str] = {}) -> LineCheck:  # noqa: B006
    """A line check for JSON lines: an object with the required keys of the right kinds."""
    kinds = {"str": str, "int": int, "float": (int, float), "list": list}
    names = {"str": "a string", "int": "an integer", "float": "a number", "list": "a list"}

    def check(line: str) -> Optional[str]:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return f"not valid JSON ({exc.args[0].split(':')[0]})"
        if not isinstance(obj, dict):
            return "not a JSON object"
        for key, kind in {**required, **optional}.items():
            value = obj.get(key)
            if value is None:
                if key in required:
                    return f"no {key!r} value"
                continue
            if isinstance(value, bool) or not isinstance(value, kinds[kind]):
                return f"{key!r} should be {names[kind]}, found {type(value).__name__} {value!r:.40}"
            if kind == "str" and key in required and value == "":
                return f"{key!r} is empty"
            if kind == "int" and not INT64_MIN <= value <= INT64_MAX:
                return f"{key!r} {value} does not fit in a 64-bit integer"
        return None

    return check


def _null_or_empty(array: pa.Array) -> bool:
    if array.null_count:
        return True
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return bool(pc.any(pc.equal(pc.utf8_length(array), 0)).as_py())
    return False


def read_delimited(
    path: Path,
    *,
    columns: dict[str, pa.DataType],
    check: LineCheck,
    separator: str,
    names: Optional[list[str]] = None,
    quoting: bool = True,
    encoding: str = "utf8",
    block_bytes: int = BLOCK_BYTES,
    required: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """Stream the named columns of a delimited file (header unless `names` is given)."""
    read_opts = pacsv.ReadOptions(column_names=names, block_size=block_bytes, encoding=encoding)
    parse_opts = pacsv.ParseOptions(delimiter=separator, quote_char='"' if quoting else False)
    convert = pacsv.ConvertOptions(include_columns=list(columns), column_types=columns)
    header = 0 if names else 1
    py_encoding = "latin-1" if encoding.lower() in ("latin-1", "latin1", "iso-8859-1") else "utf-8"
    try:
        reader = pacsv.open_csv(pa.input_stream(str(path), compression="detect"), read_opts, parse_opts, convert)
    except pa.ArrowKeyError:
        _raise_missing_columns(path, list(columns), separator)
    except pa.ArrowInvalid as exc:
        if "does not exist" in str(exc) or "include_columns" in str(exc):
            _raise_missing_columns(path, list(columns), separator)
        raise_bad_line(path, check, str(exc), py_encoding, header)
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise_bad_line(path, check, str(exc), py_encoding, header)
        if any(_null_or_empty(batch.column(c)) for c in required):
            raise_bad_line(path, check, "a required value is missing", py_encoding, header)
        yield batch


def _raise_missing_columns(path: Path, wanted: list[str], separator: str) -> NoReturn:
    header = next(csv.reader([first_line(path)], delimiter=separator), [])
    missing = [c for c in wanted if c not in header]
    raise PrepareError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has {', '.join(header) or 'nothing'}")


def read_json_lines(path: Path, schema: pa.Schema, check: LineCheck, required: Sequence[str], block_bytes: int) -> Iterator[pa.RecordBatch]:
    """Stream JSON lines with an explicit schema; other fields are skipped, not converted."""
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    opts = pajson.ReadOptions(block_size=block_bytes)
    try:
        reader = pajson.open_json(pa.input_stream(str(path), compression="detect"), read_options=opts, parse_options=parse)
    except pa.ArrowInvalid as exc:
        raise_bad_line(path, check, str(exc))
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise_bad_line(path, check, str(exc))
        if any(_null_or_empty(batch.column(c)) for c in required):
            raise_bad_line(path, check, "a required value is missing")
        yield batch
