"""Readers of raw interaction dumps: one per format, streamed block by block.

Every reader turns its input files into one :class:`RawInteractions`: the interactions in file
order (input files concatenated in the order given) as numpy arrays of int32 id *codes*, int64
times and optional ratings, plus each item's category. Nothing is filtered here (``prepare``
does that, and counts what it drops).

Streaming, no Python per row
    CSV-like files go through ``pyarrow.csv.open_csv`` (column selection, explicit types),
    JSON lines through ``pyarrow.json.open_json`` (explicit schema, extra fields ignored), line
    files (``seqtxt``, ``movies.dat``, the 2014 Amazon metadata) through
    :func:`iter_line_blocks`, which cuts byte blocks at newlines into Arrow arrays with numpy.
    MovieLens rating files (four plain numbers per line) take a numba fast path
    (:func:`read_rating_lines`, about 3x pyarrow's CSV reader per core as measured here) and
    fall back to pyarrow on anything unusual. String ids are dictionary-encoded per block
    (:class:`IdEncoder`) and the per-block dictionaries unified once at the end; integer ids
    are coded once (a direct-address table, or a sort when sparse). The file never exists as
    Python objects.

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

import ast
import csv
import datetime as _dt
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Optional, Sequence, Union

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

BLOCK_BYTES = 16 << 20
MAX_DENSE_USERS = 2**31 - 1  # dense user ids are int32 0..U-1
MAX_DENSE_ITEMS = 2**31 - 2  # dense item ids are int32 1..N (0 = padding)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# ml-100k's u.genre, in the order of u.item's 19 flag columns.
# fmt: off
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
# fmt: on
NO_GENRES = "(no genres listed)"


class PrepareError(ValueError):
    """Bad input or options; the one-line message names the file, line or option to fix."""


@dataclass
class FormatOptions:
    """Reader options (the ``prepare`` command-line flags of the same names)."""

    amazon_csv_order: Optional[str] = None  # 'user-first' (2014) | 'item-first' (2018)
    user_col: str = "user"
    item_col: str = "item"
    time_col: str = "time"
    rating_col: Optional[str] = None
    category_col: Optional[str] = None
    delimiter: str = ","
    block_bytes: int = BLOCK_BYTES


@dataclass
class Source:
    """One input file and what it was read as."""

    path: Path
    role: str  # e.g. "interactions (u.data)", "items (u.item)"


@dataclass
class RawInteractions:
    """Everything read, before any filtering; rows in file order."""

    user: np.ndarray  # int32 codes into raw_users
    item: np.ndarray  # int32 codes into raw_items
    time: np.ndarray  # int64
    rating: Optional[np.ndarray]  # float64 (NaN = missing), or None: the files have no ratings
    raw_users: pa.Array  # ascending (see the module docstring)
    raw_items: pa.Array
    item_category: np.ndarray  # int32 per item code: index into category_names, -1 = none
    category_names: pa.Array  # string, ascending
    sources: list[Source]
    time_unit: str
    category_rule: str


@dataclass
class Block:
    """A block of interactions as read (raw ids)."""

    user: pa.Array
    item: pa.Array
    time: np.ndarray
    rating: Optional[np.ndarray] = None
    category: Optional[pa.Array] = None  # per row (the table format's category column)


@dataclass
class ItemBlock:
    """A block of item metadata: raw item ids and category names (null = none)."""

    item: pa.Array
    category: pa.Array


# ---------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------


def _as_id_array(values: pa.Array, what: str, where: str) -> pa.Array:
    """Ids are integers (as int64) or strings; anything else is refused."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values.cast(pa.string())
    raise PrepareError(f"{where}: {what} ids must be integers or strings, found type {values.type}")


def ascending_order(values: pa.Array) -> np.ndarray:
    """Indices that sort ids: numerically if all are integers or decimal strings, else bytewise."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_string(values.type) and pc.all(pc.match_substring_regex(values, r"^-?[0-9]{1,18}$")).as_py():
        keys = pa.table({"n": values.cast(pa.int64()), "s": values})
        return pc.sort_indices(keys, sort_keys=[("n", "ascending"), ("s", "ascending")]).to_numpy()
    return pc.sort_indices(values).to_numpy()


@numba.njit(cache=True)
def _dense_int_codes(values, lo, span):
    """Codes of integer ids in ascending order via a direct-address table over [lo, lo+span)."""
    seen = np.zeros(span, dtype=np.bool_)
    for r in range(values.shape[0]):
        seen[values[r] - lo] = True
    rank = np.empty(span, dtype=np.int32)
    count = 0
    for j in range(span):
        rank[j] = count
        if seen[j]:
            count += 1
    vocab = np.empty(count, dtype=np.int64)
    for j in range(span):
        if seen[j]:
            vocab[rank[j]] = lo + j
    codes = np.empty(values.shape[0], dtype=np.int32)
    for r in range(values.shape[0]):
        codes[r] = rank[values[r] - lo]
    return codes, vocab


def encode_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 codes, ascending distinct values) of int64 ids: a direct-address table when the
    ids are dense enough (MovieLens), else a sort (np.unique)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span <= max(2 * len(values), 1 << 20):
        return _dense_int_codes(values, np.int64(lo), span)
    vocab, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int32), vocab


class IdEncoder:
    """Raw ids -> int32 codes in ascending raw-id order, block by block.

    Integer ids are kept as int64 blocks and coded once at the end (:func:`encode_ints`).
    String ids are dictionary-encoded per block with Arrow; :meth:`finish` unifies the
    dictionaries (one hash pass over the distinct ids) and renumbers the codes in ascending
    order. If integer and string blocks mix (two files), all are compared as strings.
    """

    def __init__(self, what: str):
        self.what = what
        self._chunks: list[Union[np.ndarray, pa.DictionaryArray]] = []

    def add(self, ids: Union[pa.Array, np.ndarray], where: str) -> None:
        """Add one block of raw ids (integers or strings, no nulls)."""
        if isinstance(ids, np.ndarray):
            ids = pa.array(ids)
        ids = _as_id_array(ids, self.what, where)
        if pa.types.is_integer(ids.type):
            self._chunks.append(ids.to_numpy())
        else:
            self._chunks.append(pc.dictionary_encode(ids))

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        """(codes int32 in add order, vocabulary in ascending order)."""
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.int32), pa.array([], pa.string())
        if all(isinstance(c, np.ndarray) for c in chunks):
            codes, vocab = encode_ints(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])
            return codes, pa.array(vocab)
        chunks = [
            pc.dictionary_encode(pa.array(c).cast(pa.string())) if isinstance(c, np.ndarray) else c for c in chunks
        ]
        unified = pa.table({"id": pa.chunked_array(chunks)}).unify_dictionaries().column("id")
        del chunks
        vocab = unified.chunk(0).dictionary
        codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in unified.chunks])
        order = ascending_order(vocab)
        rank = np.empty(len(vocab), dtype=np.int32)
        rank[order] = np.arange(len(vocab), dtype=np.int32)
        return rank[codes], vocab.take(pa.array(order))


class CategoryMap:
    """Item code -> category, from metadata blocks; the first entry of an item wins."""

    def __init__(self, raw_items: pa.Array):
        self.raw_items = raw_items
        self.assigned = np.zeros(len(raw_items), dtype=bool)
        self._items: list[np.ndarray] = []
        self._names: list[pa.Array] = []

    def add(self, items: pa.Array, names: pa.Array, where: str) -> None:
        """Record the categories of the listed items (unknown items are ignored)."""
        names = pc.utf8_trim_whitespace(names.cast(pa.string()))
        valid = pc.fill_null(pc.not_equal(names, ""), False)
        items, names = items.filter(valid), names.filter(valid)
        if len(items) == 0 or len(self.raw_items) == 0:
            return
        items = self._as_vocab_type(_as_id_array(items, "item", where), where)
        pos = pc.fill_null(pc.index_in(items, value_set=self.raw_items), -1).to_numpy()
        rows = np.flatnonzero(pos >= 0)
        codes, first = np.unique(pos[rows], return_index=True)
        rows = rows[first]
        fresh = ~self.assigned[codes]
        codes, rows = codes[fresh], rows[fresh]
        self.assigned[codes] = True
        self._items.append(codes)
        self._names.append(names.take(pa.array(rows)))

    def _as_vocab_type(self, items: pa.Array, where: str) -> pa.Array:
        if items.type == self.raw_items.type:
            return items
        try:
            return items.cast(self.raw_items.type)
        except pa.ArrowInvalid:
            raise PrepareError(
                f"{where}: item ids are {items.type} but the interactions' item ids are {self.raw_items.type}"
            ) from None

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        """(category index per item code, -1 = none; category names ascending)."""
        item_category = np.full(len(self.raw_items), -1, dtype=np.int32)
        names = IdEncoder("category")
        for chunk in self._names:
            names.add(chunk, "categories")
        codes, vocab = names.finish()
        if self._items:
            item_category[np.concatenate(self._items)] = codes
        return item_category, vocab


# ---------------------------------------------------------------------------------------------
# Low-level streaming and the bad-line diagnosis
# ---------------------------------------------------------------------------------------------


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
    return pa.Array.from_buffers(
        pa.large_binary(), lines, [None, pa.py_buffer(offsets[: lines + 1].copy()), pa.py_buffer(data[:size])]
    )


# ---------------------------------------------------------------------------------------------
# Fast path: plain numeric rating lines (u.data, ratings.dat, ratings.csv)
# ---------------------------------------------------------------------------------------------
# pyarrow's general CSV parser read an ML-20M-sized ratings.csv at ~120 MB/s on this project's
# 2-core machines; these lines are four plain numbers, which numba parses at ~400 MB/s per core,
# in parallel over pieces of each block. Anything unusual (quotes, spaces, exponents, a bad line)
# sends the whole file to the pyarrow reader, which either parses it or names the bad line.

_POW10 = np.array([10.0**k for k in range(16)])


@numba.njit(cache=True)
def _line_cuts(buf, start, pieces):
    """Piece boundaries in buf[start:], each at the start of a line."""
    n = buf.shape[0]
    cuts = np.empty(pieces + 1, dtype=np.int64)
    cuts[0] = start
    cuts[pieces] = n
    for p in range(1, pieces):
        c = max(start + (n - start) * p // pieces, cuts[p - 1])
        while 0 < c < n and buf[c - 1] != 10:
            c += 1
        cuts[p] = c
    return cuts


@numba.njit(parallel=True, cache=True)
def _count_lines(buf, cuts):
    """Lines per piece (a last line without a newline counts)."""
    pieces = cuts.shape[0] - 1
    counts = np.zeros(pieces, dtype=np.int64)
    for p in numba.prange(pieces):
        k = 0
        for i in range(cuts[p], cuts[p + 1]):
            k += buf[i] == 10
        if cuts[p + 1] > cuts[p] and buf[cuts[p + 1] - 1] != 10:
            k += 1
        counts[p] = k
    return counts


@numba.njit(cache=True)
def _parse_rating_piece(buf, start, end, sep0, sep1, users, items, ratings, times, row):
    """Parse lines 'int SEP int SEP decimal SEP int' of buf[start:end] into the columns from
    `row` on; returns (next row, -1) or (row, byte offset of the first line it cannot read)."""
    pos = start
    while pos < end:
        if buf[pos] == 10 or (buf[pos] == 13 and pos + 1 < end and buf[pos + 1] == 10):
            pos += 1 if buf[pos] == 10 else 2  # blank line
            continue
        line = pos
        for field in range(4):
            negative = pos < end and buf[pos] == 45
            if negative:
                pos += 1
            value = 0
            digits = 0
            decimals = -1  # -1: no decimal point seen
            while pos < end:
                c = buf[pos]
                if 48 <= c <= 57:
                    if digits >= 18:
                        return row, line  # long numbers go to pyarrow, which checks the range
                    value = value * 10 + (c - 48)
                    digits += 1
                    if decimals >= 0:
                        decimals += 1
                elif c == 46 and field == 2 and decimals < 0:
                    decimals = 0
                else:
                    break
                pos += 1
            if digits == 0 or decimals == 0 or decimals > 15:
                return row, line
            if negative:
                value = -value
            if field == 0:
                users[row] = value
            elif field == 1:
                items[row] = value
            elif field == 2:
                # Exact operands, one rounding: the same double as strtod for <= 15 digits.
                ratings[row] = value / _POW10[max(decimals, 0)]
            else:
                times[row] = value
            if field < 3:
                if pos < end and buf[pos] == sep0 and (sep1 == 0 or (pos + 1 < end and buf[pos + 1] == sep1)):
                    pos += 1 if sep1 == 0 else 2
                else:
                    return row, line
        if pos < end and buf[pos] == 13:
            pos += 1
        if pos < end and buf[pos] != 10:
            return row, line
        pos += 1
        row += 1
    return row, -1


@numba.njit(parallel=True, cache=True)
def _parse_rating_pieces(buf, cuts, first_rows, sep0, sep1, users, items, ratings, times, rows, bad):
    for p in numba.prange(cuts.shape[0] - 1):
        end_row, bad_at = _parse_rating_piece(
            buf, cuts[p], cuts[p + 1], sep0, sep1, users, items, ratings, times, first_rows[p]
        )
        rows[p] = end_row - first_rows[p]
        bad[p] = bad_at


class _RatingColumns:
    """The fast path's output: four columns, sized once from the file size when it is known,
    so that blocks are parsed straight into their final place (no per-block arrays to
    concatenate: fresh memory is slow to fault in on these machines)."""

    def __init__(self, size_hint: int):
        self.size_hint = size_hint  # bytes in the file, 0 if unknown (compressed)
        self.n = 0
        self.columns = [np.empty(0, dtype=t) for t in (np.int64, np.int64, np.float64, np.int64)]

    def reserve(self, rows: int, block_bytes: int) -> None:
        """Room for `rows` more rows; the first reservation extrapolates to the whole file."""
        need = self.n + rows
        if need <= len(self.columns[0]):
            return
        estimate = int(rows / max(block_bytes, 1) * self.size_hint * 1.02) + 1024
        capacity = max(need, estimate, 2 * len(self.columns[0]))
        grown = [np.empty(capacity, dtype=c.dtype) for c in self.columns]
        for old, new in zip(self.columns, grown):
            new[: self.n] = old[: self.n]
        self.columns = grown

    def parse(self, buf: np.ndarray, start: int, separator: bytes) -> bool:
        """Append the block's rows; False if a line is not four plain numbers."""
        pieces = 4 * numba.get_num_threads() if len(buf) > (1 << 20) else 1
        cuts = _line_cuts(buf, start, pieces)
        counts = _count_lines(buf, cuts)
        self.reserve(int(counts.sum()), len(buf) - start)
        first_rows = self.n + np.concatenate([[0], np.cumsum(counts)[:-1]])
        rows = np.zeros(pieces, dtype=np.int64)
        bad = np.zeros(pieces, dtype=np.int64)
        sep1 = separator[1] if len(separator) > 1 else 0
        with numba.parallel_chunksize(1):  # pieces go to whichever thread is free
            _parse_rating_pieces(buf, cuts, first_rows, separator[0], sep1, *self.columns, rows, bad)
        if (bad >= 0).any():
            return False
        for first, count in zip(first_rows, rows):  # blank lines leave gaps: close them
            if first != self.n:
                for column in self.columns:
                    column[self.n : self.n + count] = column[first : first + count]
            self.n += int(count)
        return True

    def block(self) -> Block:
        user, item, rating, time = (c[: self.n] for c in self.columns)
        return Block(user, item, time, rating)


def read_rating_lines(path: Path, separator: bytes, header: bool, block_bytes: int) -> Optional[list[Block]]:
    """A whole numeric ratings file as one Block, or None if a line is not plain numbers."""
    columns = _RatingColumns(0 if path.suffix == ".gz" else path.stat().st_size)
    for k, buf in enumerate(iter_byte_blocks(path, block_bytes)):
        start = 0
        if k == 0 and header:
            newline = bytes(buf[: 1 << 16]).find(b"\n")
            if newline < 0:
                return None
            start = newline + 1
        if not columns.parse(buf, start, separator):
            return None
    return [columns.block()]


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


def delimited_check(
    separator: str, fields: Sequence[tuple[int, str, str]], ncols: Optional[int], quoting: bool
) -> LineCheck:
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
    raise PrepareError(
        f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has {', '.join(header) or 'nothing'}"
    )


def read_json_lines(
    path: Path, schema: pa.Schema, check: LineCheck, required: Sequence[str], block_bytes: int
) -> Iterator[pa.RecordBatch]:
    """Stream JSON lines with an explicit schema; other fields are skipped, not converted."""
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    opts = pajson.ReadOptions(block_size=block_bytes)
    try:
        reader = pajson.open_json(
            pa.input_stream(str(path), compression="detect"), read_options=opts, parse_options=parse
        )
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


def _float_or_none(batch: pa.RecordBatch, name: str) -> Optional[np.ndarray]:
    if name not in batch.schema.names:
        return None
    return pc.fill_null(batch.column(name).cast(pa.float64()), np.nan).to_numpy()


def _int64(array: pa.Array) -> np.ndarray:
    return array.cast(pa.int64()).to_numpy()


def _last_of_lists(lists: pa.Array) -> pa.Array:
    """The last element of each list (null for empty or null lists), vectorised via offsets."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    # Offsets index the whole child array (slices included); null lists are masked below.
    ends = lists.offsets.to_numpy()[1:]
    flat = lists.values
    index = pa.array(np.where(lengths > 0, ends - 1, 0), mask=lengths == 0)
    return flat.take(index) if len(flat) else pa.nulls(len(lists), flat.type)


def _first_of_split(strings: pa.Array, separator: str) -> pa.Array:
    return pc.list_element(pc.split_pattern(strings, separator, max_splits=1), 0)


# ---------------------------------------------------------------------------------------------
# movielens
# ---------------------------------------------------------------------------------------------


def _movielens_role(path: Path, options: FormatOptions) -> tuple[str, Callable]:
    line = first_line(path)
    header = line.replace(" ", "").replace('"', "")
    if "::" in line:
        parts = line.split("::")
        if len(parts) == 4 and all(_check_value(p, "float", "") is None for p in parts):
            return "interactions (ratings.dat)", _read_ratings_dat
        if len(parts) == 3 and _check_value(parts[0], "int", "") is None:
            return "items (movies.dat)", _read_movies_dat
    elif "\t" in line and len(line.split("\t")) == 4:
        return "interactions (u.data)", _read_u_data
    elif line.count("|") == 23:
        return "items (u.item)", _read_u_item
    elif header.startswith("userId,movieId,rating,timestamp"):
        return "interactions (ratings.csv)", _read_ratings_csv
    elif header.startswith("movieId,title,genres"):
        return "items (movies.csv)", _read_movies_csv
    raise PrepareError(
        f"{path}: not a MovieLens file this reader knows (u.data, u.item, ratings.dat, movies.dat, "
        f"ratings.csv or movies.csv); its first line is {line[:80]!r}"
    )


_ML_FIELDS = [(0, "user id", "id"), (1, "item id", "id"), (2, "rating", "float"), (3, "timestamp", "int")]
_ML_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "time": pa.int64()}


def _ml_block(batch: pa.RecordBatch, user="user", item="item", rating="rating", time="time") -> Block:
    return Block(batch.column(user), batch.column(item), _int64(batch.column(time)), _float_or_none(batch, rating))


def _read_u_data(path: Path, options: FormatOptions) -> Iterator[Block]:
    fast = read_rating_lines(path, b"\t", False, options.block_bytes)
    if fast is not None:
        yield from fast
        return
    check = delimited_check("\t", _ML_FIELDS, 4, quoting=False)
    for batch in read_delimited(
        path,
        columns=_ML_TYPES,
        names=["user", "item", "rating", "time"],
        separator="\t",
        quoting=False,
        check=check,
        block_bytes=options.block_bytes,
        required=list(_ML_TYPES),
    ):
        yield _ml_block(batch)


def _read_ratings_dat(path: Path, options: FormatOptions) -> Iterator[Block]:
    # "::" is not a one-character delimiter; splitting on ":" leaves empty columns in between.
    fast = read_rating_lines(path, b"::", False, options.block_bytes)
    if fast is not None:
        yield from fast
        return
    names = ["user", "_a", "item", "_b", "rating", "_c", "time"]
    check = delimited_check("::", _ML_FIELDS, 4, quoting=False)
    for batch in read_delimited(
        path,
        columns=_ML_TYPES,
        names=names,
        separator=":",
        quoting=False,
        check=check,
        block_bytes=options.block_bytes,
        required=list(_ML_TYPES),
    ):
        yield _ml_block(batch)


def _read_ratings_csv(path: Path, options: FormatOptions) -> Iterator[Block]:
    fast = read_rating_lines(path, b",", True, options.block_bytes)
    if fast is not None:
        yield from fast
        return
    columns = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
    check = delimited_check(",", _ML_FIELDS, None, quoting=True)
    for batch in read_delimited(
        path, columns=columns, separator=",", check=check, block_bytes=options.block_bytes, required=list(columns)
    ):
        yield _ml_block(batch, "userId", "movieId", "rating", "timestamp")


def _read_u_item(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    flags = [f"g{k}" for k in range(len(ML100K_GENRES))]
    names = ["item", "title", "release", "video", "url", *flags]
    fields = [(0, "movie id", "id")] + [(5 + k, f"genre flag {k + 1}", "int") for k in range(len(flags))]
    columns = {"item": pa.int64(), **{f: pa.int8() for f in flags}}
    check = delimited_check("|", fields, len(names), quoting=False)
    for batch in read_delimited(
        path,
        columns=columns,
        names=names,
        separator="|",
        quoting=False,
        encoding="latin-1",
        check=check,
        block_bytes=options.block_bytes,
        required=list(columns),
    ):
        matrix = np.stack([batch.column(f).to_numpy() for f in flags], axis=1)
        flagged = matrix.any(axis=1)
        first = np.argmax(matrix != 0, axis=1)
        genres = pa.array(ML100K_GENRES).take(pa.array(first, mask=~flagged))
        yield ItemBlock(batch.column("item"), genres)


def _read_movies_dat(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    def check(line: str) -> Optional[str]:
        parts = line.split("::")
        if len(parts) < 3:
            return "expected movie id::title::genres"
        return _check_value(parts[0], "id", "movie id")

    for _, lines in iter_line_blocks(path, options.block_bytes):
        lines = lines.filter(pc.greater(pc.binary_length(lines), 0))
        parts = pc.split_pattern(lines, "::")
        if len(lines) and pc.min(pc.list_value_length(parts)).as_py() < 3:
            raise_bad_line(path, check, "a line has fewer than 3 fields", "latin-1")
        try:
            movie = pc.list_element(parts, 0).cast(pa.string()).cast(pa.int64())
            genres = _last_of_lists(parts).cast(pa.string())
        except pa.ArrowInvalid as exc:
            raise_bad_line(path, check, str(exc), "latin-1")
        yield ItemBlock(movie, _first_genre(genres))


def _read_movies_csv(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    columns = {"movieId": pa.int64(), "genres": pa.string()}
    check = delimited_check(",", [(0, "movieId", "id")], None, quoting=True)
    for batch in read_delimited(
        path,
        columns=columns,
        separator=",",
        check=check,
        block_bytes=options.block_bytes,
        encoding="latin-1",
        required=["movieId"],
    ):
        yield ItemBlock(batch.column("movieId"), _first_genre(batch.column("genres")))


def _first_genre(genres: pa.Array) -> pa.Array:
    first = _first_of_split(genres, "|")
    return pc.if_else(pc.equal(first, NO_GENRES), pa.scalar(None, pa.string()), first)


# ---------------------------------------------------------------------------------------------
# amazon
# ---------------------------------------------------------------------------------------------

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
    schema = pa.schema(
        [("reviewerID", pa.string()), ("asin", pa.string()), ("unixReviewTime", pa.int64()), ("overall", pa.float64())]
    )
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
    names = (
        ["user", "item", "rating", "time"]
        if options.amazon_csv_order == "user-first"
        else ["item", "user", "rating", "time"]
    )
    kinds = {"user": "str", "item": "str", "rating": "float", "time": "int"}
    check = delimited_check(
        ",", [(k, f"{n} id" if n in ("user", "item") else n, kinds[n]) for k, n in enumerate(names)], 4, quoting=True
    )
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
            raise PrepareError(
                f"{path}, line {first_no + int(row)}: not a Python dict literal with 'categories' ({type(exc).__name__})"
            ) from None
    return pa.array(values, pa.large_string())


# ---------------------------------------------------------------------------------------------
# yelp
# ---------------------------------------------------------------------------------------------


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
    raise PrepareError(
        f"{path}: neither a Yelp review file (review_id, user_id, business_id, date) nor a business file"
    )


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
    schema = pa.schema(
        [("user_id", pa.string()), ("business_id", pa.string()), ("date", pa.string()), ("stars", pa.float64())]
    )
    for batch in read_json_lines(
        path, schema, _yelp_review_check, ["user_id", "business_id", "date"], options.block_bytes
    ):
        seconds = parse_yelp_dates(batch.column("date"))
        if seconds.null_count:
            raise_bad_line(path, _yelp_review_check, "an unparsable date")
        yield Block(
            batch.column("user_id"), batch.column("business_id"), seconds.to_numpy(), _float_or_none(batch, "stars")
        )


def _read_yelp_business(path: Path, options: FormatOptions) -> Iterator[ItemBlock]:
    schema = pa.schema([("business_id", pa.string()), ("categories", pa.string())])
    check = json_check({"business_id": "str"}, {"categories": "str"})
    for batch in read_json_lines(path, schema, check, ["business_id"], options.block_bytes):
        yield ItemBlock(batch.column("business_id"), _first_of_split(batch.column("categories"), ","))


# ---------------------------------------------------------------------------------------------
# seqtxt
# ---------------------------------------------------------------------------------------------


def _seqtxt_role(path: Path, options: FormatOptions) -> tuple[str, Callable]:
    return "interactions (sequences)", _read_seqtxt


def _read_seqtxt(path: Path, options: FormatOptions) -> Iterator[Block]:
    for _, lines in iter_line_blocks(path, options.block_bytes):
        try:
            text = lines.cast(pa.large_string())
        except pa.ArrowInvalid:
            raise_bad_line(path, lambda line: None, "not valid UTF-8")
        tokens = pc.utf8_split_whitespace(text)
        lengths = pc.list_value_length(tokens).to_numpy()
        starts = tokens.offsets.to_numpy()[:-1]
        flat = tokens.values
        # Each token's position in its line: 0 is the user, 1.. the items in time order.
        line_of_token = np.repeat(np.arange(len(lengths)), lengths)
        position = np.arange(len(flat), dtype=np.int64) - starts[line_of_token]
        is_item = position > 0
        users = flat.take(pa.array(starts[line_of_token[is_item]]))
        yield Block(users, flat.filter(pa.array(is_item)), position[is_item] - 1)


def check_seqtxt_users(path: Path, user_codes_by_line: np.ndarray) -> None:
    """One line per user: a repeated user is an error naming both lines (found by a rescan)."""
    counts = np.bincount(user_codes_by_line)
    if counts.size == 0 or counts.max() <= 1:
        return
    lines: dict[str, list[int]] = {}
    with _open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            parts = raw.split()
            if len(parts) > 1:
                lines.setdefault(parts[0].decode("utf-8", "replace"), []).append(number)
    user, numbers = next((u, n) for u, n in lines.items() if len(n) > 1)
    raise PrepareError(
        f"{path}, lines {numbers[0]} and {numbers[1]}: user {user} has two sequences; a seqtxt file has one line per user"
    )


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------


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
            raise PrepareError(
                f"{path}: rating column {columns['rating']!r} has type {column.type}; it must be numeric"
            )
        rating = _float_or_none(batch, columns["rating"])
    category = batch.column(columns["category"]).cast(pa.string()) if "category" in columns else None
    return Block(batch.column(columns["user"]), batch.column(columns["item"]), time, rating, category), unit


def _read_table_csv(path: Path, options: FormatOptions) -> Iterator[tuple[Block, str]]:
    columns = _table_columns(options)
    header = next(csv.reader([first_line(path)], delimiter=options.delimiter), [])
    missing = [name for name in columns.values() if name not in header]
    if missing:
        raise PrepareError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has {', '.join(header)}"
        )
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
        raise PrepareError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; the file has {', '.join(names)}"
        )
    rows_before = 0
    for batch in parquet.iter_batches(batch_size=1 << 20, columns=list(columns.values())):
        for role in ("user", "item", "time"):
            column = batch.column(columns[role])
            if _null_or_empty(column):
                bad = np.flatnonzero(
                    pc.fill_null(pc.is_null(column), True).to_numpy(zero_copy_only=False) | _empty_mask(column)
                )
                raise PrepareError(
                    f"{path}, row {rows_before + int(bad[0]) + 1}: column {columns[role]!r} is missing or empty"
                )
        yield _table_block(batch, columns, path)
        rows_before += batch.num_rows


def _empty_mask(column: pa.Array) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(pc.equal(pc.utf8_length(column), 0), False).to_numpy(zero_copy_only=False)
    return np.zeros(len(column), dtype=bool)


# ---------------------------------------------------------------------------------------------
# The format registry and the one entry point
# ---------------------------------------------------------------------------------------------


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
        return np.concatenate(
            [r if r is not None else np.full(len(t), np.nan) for r, t in zip(self.ratings, self.times)]
        )


def _check_inputs(paths: Sequence[Union[str, Path]]) -> list[Path]:
    if not paths:
        raise PrepareError("no input files; pass --input PATH [PATH ...]")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise PrepareError(
                f"input file {path} does not exist" if not path.exists() else f"input {path} is not a file"
            )
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
        raise PrepareError(
            f"none of the inputs is a {format_name} interactions file: " + "; ".join(f"{p} is {r}" for p, r, _ in roles)
        )
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
    time = (
        collector.times[0] if len(collector.times) == 1 else np.concatenate([np.zeros(0, np.int64), *collector.times])
    )
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


def _read_categories(
    raw_items: pa.Array, table_blocks: list[ItemBlock], item_files: list, options: FormatOptions, log
) -> tuple[np.ndarray, pa.Array]:
    """Categories of the items read: from the table's own column, then from metadata files."""
    categories = CategoryMap(raw_items)
    for block in table_blocks:
        categories.add(block.item, block.category, "table")
    for path, role, reader in item_files:
        for block in reader(path, options):
            categories.add(block.item, block.category, str(path))
        log(f"read item categories from {path} [{role}]")
    return categories.finish()
