"""MovieLens: ml-100k ``u.data``/``u.item``, ml-1m/10m ``.dat`` files, ml-20m/25m/latest ``.csv`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import _first_of_split, _last_of_lists, _ml_block
from .common import Block, FormatOptions, ItemBlock, PrepareError
from .rating_lines import read_rating_lines
from .streaming import _check_value, delimited_check, first_line, iter_line_blocks, raise_bad_line, read_delimited

# ml-100k's u.genre, in the order of u.item's 19 flag columns.
# fmt: off
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
# fmt: on
NO_GENRES = "(no genres listed)"


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
        f"{path}: not a MovieLens file this reader knows (u.data, u.item, ratings.dat, movies.dat, ratings.csv or movies.csv); its first line is {line[:80]!r}"
    )


_ML_FIELDS = [(0, "user id", "id"), (1, "item id", "id"), (2, "rating", "float"), (3, "timestamp", "int")]
_ML_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "time": pa.int64()}


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
    for batch in read_delimited(path, columns=columns, separator=",", check=check, block_bytes=options.block_bytes, required=list(columns)):
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
