"""Arrow column helpers shared by the format readers."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .common import Block


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


def _ml_block(batch: pa.RecordBatch, user="user", item="item", rating="rating", time="time") -> Block:
    return Block(batch.column(user), batch.column(item), _int64(batch.column(time)), _float_or_none(batch, rating))
