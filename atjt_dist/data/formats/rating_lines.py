"""Fast path: plain numeric rating lines (u.data, ratings.dat, ratings.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numba
import numpy as np

from .common import Block
from .streaming import iter_byte_blocks

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
        end_row, bad_at = _parse_rating_piece(buf, cuts[p], cuts[p + 1], sep0, sep1, users, items, ratings, times, first_rows[p])
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
