"""What every reader shares: the error, the options, the block and result types, the limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

BLOCK_BYTES = 16 << 20
MAX_DENSE_USERS = 2**31 - 1  # dense user ids are int32 0..U-1
MAX_DENSE_ITEMS = 2**31 - 2  # dense item ids are int32 1..N (0 = padding)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
    raw_users: pa.Array  # ascending (see the package docstring)
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
