"""The dataset directory: what it holds, how it is written, how it is opened.

Both `prepare` (real dumps) and `synthetic` (generated data) end in :func:`write_dataset`, so
every dataset directory has the same schema and the same derived parts (popularity, folds,
test candidates), computed by one piece of code.

Layout (ids are dense; item 0 and category 0 are padding / "none" and never real)::

    DIR/
      meta.json              counts, source files + sha256, options, dropped counts, schema
      interactions.parquet   user int32, item int32 (1..num_items), time int64
                             sorted by (user, time, tie-break) -- the CSR order
      users.parquet          user int32 (0..num_users-1), raw_user string, offset int64,
                             length int32, fold int8
      items.parquet          item int32 (1..num_items), raw_item string, category int32,
                             popularity int64 (interactions in the dataset)
      categories.parquet     category int32 (1..num_categories), name string
      candidates.parquet     user int32, candidates fixed_size_list<int32>[C]: the user's last
                             item (the test positive) first, then C-1 distinct negatives
      noise.parquet          (only with planted noise) user int32, position int32 (index in
                             the user's sequence), original_item int32, planted_item int32
      arrays/*.npy           the same columns as flat numpy arrays, memory-mapped by training
                             processes (several ranks on a node share one page cache copy)

The Parquet files are the record a person or another tool reads; ``arrays/`` is derived from
them by the writer (and rebuilt by :func:`open_arrays` if missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatasetError  # noqa: F401 - raised here, and imported from here by callers
from ..files import replace_directory

SCHEMA_VERSION = 1
PADDING_ITEM = 0
NO_CATEGORY = 0

ARRAY_NAMES = (
    "seq_items",  # int32 [num_interactions]  items in CSR order
    "seq_offsets",  # int64 [num_users + 1]    user u's items are seq_items[o[u]:o[u+1]]
    "fold",  # int8  [num_users]
    "item_category",  # int32 [num_items + 1]    index 0 = padding -> 0
    "popularity",  # int64 [num_items + 1]    index 0 = 0
    "candidates",  # int32 [num_users, C]
)


@dataclass
class DatasetArrays:
    """A dataset directory opened for training: read-only numpy arrays (memory-mapped)."""

    path: Path
    meta: dict
    seq_items: np.ndarray
    seq_offsets: np.ndarray
    fold: np.ndarray
    item_category: np.ndarray
    popularity: np.ndarray
    candidates: np.ndarray
    noise_users: Optional[np.ndarray]  # bool [num_users]: planted noise ground truth, if any
    #: bool [num_interactions], aligned with seq_items: the planted interactions (ground truth)
    planted: Optional[np.ndarray] = None

    @property
    def num_users(self) -> int:
        return int(self.meta["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @property
    def num_categories(self) -> int:
        return int(self.meta["num_categories"])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def assign_folds(num_users: int, folds: int, seed: int) -> np.ndarray:
    """The paper's user k-fold: a seeded permutation of users cut into `folds` near-equal parts."""
    from .sampling import permutation

    order = permutation(num_users, seed, "folds")
    fold = np.empty(num_users, dtype=np.int8)
    for k, part in enumerate(np.array_split(order, folds)):
        fold[part] = k
    return fold


def prepare_output_dir(output: str | Path, overwrite: bool) -> Path:
    """Check the output path; refuses an existing non-empty directory unless `overwrite`."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise DatasetError(f"output {output} exists and is not a directory; choose another --output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DatasetError(f"output directory {output} is not empty; pass --overwrite to replace it")
    return output


@dataclass
class DatasetContent:
    """What a dataset directory is written from (:func:`write_dataset` derives the rest: popularity,
    folds, test candidates, counts). Ids are already dense and the sequences sorted."""

    seq_items: np.ndarray
    """Items 1..num_items in CSR order: user u's, in time order, are ``seq_items[seq_offsets[u]:seq_offsets[u+1]]``."""
    seq_offsets: np.ndarray
    """num_users + 1 offsets into ``seq_items``."""
    seq_times: np.ndarray
    """The time of each interaction, aligned with ``seq_items`` (stored as int64)."""
    raw_users: pa.Array
    """``raw_users[u]`` is user u's raw id (stored as a string)."""
    raw_items: pa.Array
    """``raw_items[i - 1]`` is item i's raw id; its length is num_items."""
    item_category: np.ndarray
    """num_items + 1 entries: ``item_category[i]`` is item i's category (0 = none); entry 0 is padding."""
    category_names: pa.Array
    """``category_names[c - 1]`` is category c's name; its length is num_categories."""
    meta: dict
    """The caller's part of meta.json (format, sources, options, dropped counts)."""
    noise: Optional[dict[str, np.ndarray]] = None
    """Planted-noise ground truth, the columns of noise.parquet (user, position, original_item,
    planted_item); None for a dataset without planted noise."""


def write_dataset(
    output: str | Path,
    content: DatasetContent,
    *,
    folds: int = 5,
    fold_seed: int = 0,
    num_candidates: int = 64,
    candidate_sampler: str = "popularity",
    candidate_seed: int = 0,
    popularity_exponent: float = 0.75,
    overwrite: bool = False,
) -> Path:
    """Write a complete dataset directory atomically and return its path.

    ``content`` holds the sequences, ids, categories, the caller's meta part and any noise
    ground truth (:class:`DatasetContent`). Derived here: item popularity, the user folds
    (``folds`` parts of a permutation seeded by ``fold_seed``) and each user's test candidates
    (its last item, then ``num_candidates - 1`` negatives drawn by ``candidate_sampler``:
    'popularity', weights popularity ** ``popularity_exponent``, or 'uniform'; seeded by
    ``candidate_seed``); meta.json gets the counts, fold and candidate settings besides the
    caller's part. Everything goes to a temporary directory beside ``output`` that is renamed at
    the end: a failure leaves nothing at ``output``.
    """
    output = prepare_output_dir(output, overwrite)
    seq_items = np.ascontiguousarray(content.seq_items, dtype=np.int32)
    seq_offsets = np.ascontiguousarray(content.seq_offsets, dtype=np.int64)
    num_users, num_items = len(seq_offsets) - 1, len(content.raw_items)
    _check_ids(seq_items, num_users, num_items, content.item_category)
    popularity = np.bincount(seq_items, minlength=num_items + 1).astype(np.int64)
    popularity[PADDING_ITEM] = 0
    lengths = np.diff(seq_offsets)
    if lengths.min() < 1:
        raise DatasetError(f"user {int(np.argmin(lengths))} has no interaction; every user needs at least one")
    owned = _owned_items(seq_items, seq_offsets, num_items, num_candidates)
    fold = assign_folds(num_users, folds, fold_seed)
    settings = {
        "count": num_candidates,
        "sampler": candidate_sampler,
        "popularity_exponent": popularity_exponent,
        "seed": candidate_seed,
        "positive": "the user's last item, column 0",
    }
    candidates = _test_candidates(seq_items, seq_offsets, owned, popularity, settings)
    meta = dict(content.meta)
    meta.update(
        schema_version=SCHEMA_VERSION,
        num_users=num_users,
        num_items=num_items,
        num_interactions=int(len(seq_items)),
        num_categories=len(content.category_names),
        padding_item=PADDING_ITEM,
        folds=folds,
        fold_seed=fold_seed,
        candidates=settings,
        has_noise_ground_truth=content.noise is not None,
        written_at=_time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
    )
    derived = {"seq_items": seq_items, "seq_offsets": seq_offsets, "fold": fold, "popularity": popularity, "candidates": candidates}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        _write_tables(tmp, content, derived)
        _write_arrays(tmp / "arrays", item_category=np.ascontiguousarray(content.item_category, dtype=np.int32), **derived)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        # mkdtemp creates the directory private (0700); give it the permissions a normal
        # mkdir would (the umask's), so others on a shared cluster can read the dataset.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, output)
    return output


def _check_ids(seq_items: np.ndarray, num_users: int, num_items: int, item_category: np.ndarray) -> None:
    """Refuse an empty dataset, item ids outside 1..num_items, and a category table of another size."""
    if num_users == 0 or len(seq_items) == 0:
        raise DatasetError("the dataset is empty: no user has an interaction left")
    if seq_items.min() < 1 or seq_items.max() > num_items:
        raise DatasetError(f"item ids must lie in 1..{num_items}; found {seq_items.min()}..{seq_items.max()}")
    if len(item_category) != num_items + 1:
        raise DatasetError("item_category must have num_items + 1 entries (entry 0 is padding)")


def _owned_items(seq_items: np.ndarray, seq_offsets: np.ndarray, num_items: int, num_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's sorted items (``sampling.user_item_sets``), after checking that every user
    leaves at least ``num_candidates - 1`` items it never interacted with for its negatives."""
    from .sampling import user_item_sets

    owned, owned_offsets = user_item_sets(seq_items, seq_offsets)
    # Distinct items per user (repeats are real revisits in some datasets, e.g. Yelp).
    first = np.ones(len(owned), dtype=bool)
    first[1:] = owned[1:] != owned[:-1]
    first[seq_offsets[:-1]] = True
    distinct = np.add.reduceat(first.astype(np.int64), seq_offsets[:-1])
    max_owned = int(distinct.max())
    if num_items - max_owned < num_candidates - 1:
        raise DatasetError(
            f"user {int(np.argmax(distinct))} has interacted with {max_owned} of {num_items} items, "
            f"leaving fewer than {num_candidates - 1} negatives for its test candidates; lower --candidates"
        )
    return owned, owned_offsets


def _test_candidates(
    seq_items: np.ndarray, seq_offsets: np.ndarray, owned: tuple[np.ndarray, np.ndarray], popularity: np.ndarray, settings: dict
) -> np.ndarray:
    """int32 [num_users, count]: each user's last item, then negatives drawn as ``settings``
    (meta.json's "candidates" record) says."""
    from .sampling import build_alias, sample_candidates

    weights = popularity[1:].astype(np.float64)
    if settings["sampler"] == "popularity":
        weights = np.power(weights, settings["popularity_exponent"])
    elif settings["sampler"] == "uniform":
        weights = np.ones(len(weights), dtype=np.float64)
    else:
        raise DatasetError(f"candidate sampler {settings['sampler']!r}: expected 'popularity' or 'uniform'")
    prob, alias = build_alias(weights)
    return sample_candidates(seq_items, seq_offsets, *owned, prob, alias, settings["count"], settings["seed"])


def write_settings_of(meta: dict) -> dict:
    """The fold and candidate keyword arguments of :func:`write_dataset` as a dataset's meta.json
    records them: a dataset derived from it is written with the same ones."""
    cand = meta["candidates"]
    return {
        "folds": int(meta["folds"]),
        "fold_seed": int(meta["fold_seed"]),
        "num_candidates": int(cand["count"]),
        "candidate_sampler": cand["sampler"],
        "candidate_seed": int(cand["seed"]),
        "popularity_exponent": float(cand["popularity_exponent"]),
    }


def _write_tables(directory: Path, content: DatasetContent, derived: dict[str, np.ndarray]) -> None:
    """The Parquet files (the record; see the module docstring) of ``content`` and its derived parts."""
    seq_items, seq_offsets, candidates = derived["seq_items"], derived["seq_offsets"], derived["candidates"]
    num_users, num_items, num_categories = len(seq_offsets) - 1, len(content.raw_items), len(content.category_names)
    lengths = np.diff(seq_offsets)
    user_ids = np.arange(num_users, dtype=np.int32)
    tables = {
        "interactions": {
            "user": pa.array(np.repeat(user_ids, lengths)),
            "item": pa.array(seq_items),
            "time": pa.array(np.ascontiguousarray(content.seq_times, dtype=np.int64)),
        },
        "users": {
            "user": pa.array(user_ids),
            "raw_user": content.raw_users.cast(pa.string()),
            "offset": pa.array(seq_offsets[:-1]),
            "length": pa.array(lengths.astype(np.int32)),
            "fold": pa.array(derived["fold"]),
        },
        "items": {
            "item": pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
            "raw_item": content.raw_items.cast(pa.string()),
            "category": pa.array(np.ascontiguousarray(content.item_category[1:], dtype=np.int32)),
            "popularity": pa.array(derived["popularity"][1:]),
        },
        "categories": {
            "category": pa.array(np.arange(1, num_categories + 1, dtype=np.int32)),
            "name": content.category_names.cast(pa.string()),
        },
        "candidates": {
            "user": pa.array(user_ids),
            "candidates": pa.FixedSizeListArray.from_arrays(pa.array(candidates.reshape(-1)), candidates.shape[1]),
        },
    }
    if content.noise is not None:
        tables["noise"] = {k: pa.array(np.ascontiguousarray(v)) for k, v in content.noise.items()}
    for name, columns in tables.items():
        pq.write_table(pa.table(columns), directory / f"{name}.parquet")


def _write_arrays(directory: Path, **arrays: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(arr))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_meta(path: str | Path) -> dict:
    """meta.json of a dataset directory, with a clear error if it is not one."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(
            f"{path} is not a dataset directory (no meta.json); create one with `python -m atjt_dist.data.prepare` or `python -m atjt_dist.data.synthetic`"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{meta_file}: schema_version {meta.get('schema_version')!r}, this version reads {SCHEMA_VERSION}; prepare the dataset again")
    return meta


def read_raw_ids(path: str | Path, table: str, id_col: str, raw_col: str) -> pa.Array:
    """The column ``raw_col`` of a dataset directory's ``table`` (e.g. users.parquet's raw_user),
    in the order of the dense ids of ``id_col``."""
    t = pq.read_table(Path(path) / table, columns=[id_col, raw_col])
    order = np.argsort(t.column(id_col).to_numpy(), kind="stable")
    return t.column(raw_col).combine_chunks().take(pa.array(order))


def _arrays_from_parquet(path: Path, meta: dict) -> dict[str, np.ndarray]:
    users = pq.read_table(path / "users.parquet", columns=["offset", "length", "fold"])
    items = pq.read_table(path / "items.parquet", columns=["category", "popularity"])
    inter = pq.read_table(path / "interactions.parquet", columns=["item"])
    cand = pq.read_table(path / "candidates.parquet", columns=["candidates"])
    offsets = np.empty(meta["num_users"] + 1, dtype=np.int64)
    offsets[:-1] = users.column("offset").to_numpy()
    offsets[-1] = meta["num_interactions"]
    count = meta["candidates"]["count"]
    flat = cand.column("candidates").combine_chunks().flatten().to_numpy()
    return {
        "seq_items": inter.column("item").to_numpy().astype(np.int32),
        "seq_offsets": offsets,
        "fold": users.column("fold").to_numpy().astype(np.int8),
        "item_category": np.concatenate([[0], items.column("category").to_numpy()]).astype(np.int32),
        "popularity": np.concatenate([[0], items.column("popularity").to_numpy()]).astype(np.int64),
        "candidates": flat.reshape(-1, count).astype(np.int32),
    }


def open_arrays(path: str | Path) -> DatasetArrays:
    """Open a dataset directory for training with memory-mapped arrays.

    If ``arrays/`` is missing (a directory written by another tool) the arrays are derived
    from the Parquet files, and cached in ``arrays/`` when the directory is writable.
    """
    path = Path(path)
    meta = read_meta(path)
    array_dir = path / "arrays"
    missing = [n for n in ARRAY_NAMES if not (array_dir / f"{n}.npy").is_file()]
    if missing:
        try:
            arrays = _arrays_from_parquet(path, meta)
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise DatasetError(f"{path}: cannot read the dataset's Parquet files ({exc}); prepare it again") from None
        try:
            _write_arrays(array_dir, **arrays)
        except OSError:
            pass  # read-only dataset: use the in-memory arrays
    else:
        arrays = {n: np.load(array_dir / f"{n}.npy", mmap_mode="r") for n in ARRAY_NAMES}
    noise_users = planted = None
    if meta.get("has_noise_ground_truth"):
        truth = pq.read_table(path / "noise.parquet", columns=["user", "position"])
        noisy = truth.column("user").to_numpy().astype(np.int64)
        noise_users = np.zeros(meta["num_users"], dtype=bool)
        noise_users[noisy] = True
        planted = np.zeros(len(arrays["seq_items"]), dtype=bool)
        planted[np.asarray(arrays["seq_offsets"])[noisy] + truth.column("position").to_numpy()] = True
    ds = DatasetArrays(path=path, meta=meta, noise_users=noise_users, planted=planted, **arrays)
    _check_consistent(ds)
    return ds


def _check_consistent(ds: DatasetArrays) -> None:
    problems = []
    if len(ds.seq_offsets) != ds.num_users + 1:
        problems.append("seq_offsets does not have num_users + 1 entries")
    if len(ds.seq_items) != ds.meta["num_interactions"]:
        problems.append("the interaction count differs from meta.json")
    if len(ds.item_category) != ds.num_items + 1:
        problems.append("item_category does not have num_items + 1 entries")
    if ds.candidates.shape[0] != ds.num_users:
        problems.append("candidates does not have one row per user")
    if problems:
        raise DatasetError(f"{ds.path} is inconsistent: {'; '.join(problems)}; prepare it again")


def dataset_fingerprint(arrays: DatasetArrays) -> str:
    """A hash of what a run trains on: the sequences, the items' categories and the folds."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("seq_offsets", "seq_items", "item_category", "fold"):
        a = np.ascontiguousarray(getattr(arrays, name))
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
