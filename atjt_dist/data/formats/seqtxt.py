"""seqtxt: one user per line, ``user item item ...`` in time order."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .common import Block, FormatOptions, PrepareError
from .streaming import _open_binary, iter_line_blocks, raise_bad_line


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
    raise PrepareError(f"{path}, lines {numbers[0]} and {numbers[1]}: user {user} has two sequences; a seqtxt file has one line per user")
