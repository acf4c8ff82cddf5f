"""Raw ids -> int32 codes in ascending raw-id order, and item codes -> categories."""

from __future__ import annotations

from typing import Union

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .common import PrepareError


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
        chunks = [pc.dictionary_encode(pa.array(c).cast(pa.string())) if isinstance(c, np.ndarray) else c for c in chunks]
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
            raise PrepareError(f"{where}: item ids are {items.type} but the interactions' item ids are {self.raw_items.type}") from None

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
