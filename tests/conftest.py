"""Shared fixtures: the real datasets beside the repository, and a tiny prepared dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATJT_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep torch and numba to one thread per process in tests: CI machines have 2 cores and the
# multi-process tests start several processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")


#: The schedule the mechanics tests (checkpoints, processes, faults, outputs) were written for:
#: the paper's protocol, learning rates and no recogniser warm-up. Short and cheap on the tiny
#: dataset; the product defaults (sliding mode, lr 0.05, a warm-up) are tested where they matter
#: (test_defaults_learn.py, test_oracle.py, test_schedule.py).
PAPER_SCHEDULE = ["--data.mode=paper", "--train.lr=0.000815", "--atjt.recognizer_lrs=[0.023,0.025]", "--atjt.recognizer_warmup_steps=0"]


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset file {path} is not available (set ATJT_SHARED_DATA)")
    return path


def write_tiny_dataset(path: Path, users: int = 600, items: int = 120, clusters: int = 6, seed: int = 0) -> Path:
    """A small dataset with learnable structure: each user draws from one item cluster, and
    within a cluster the next item tends to follow the previous one."""
    from atjt_dist.data.layout import DatasetContent, write_dataset

    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 25, users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    item_cluster = np.arange(items) % clusters
    seq = np.empty(offsets[-1], dtype=np.int32)
    for u in range(users):
        pool = np.flatnonzero(item_cluster == rng.integers(clusters)) + 1
        start = rng.integers(len(pool))
        steps = rng.integers(0, 3, lengths[u])
        seq[offsets[u] : offsets[u + 1]] = pool[(start + np.cumsum(steps)) % len(pool)]
    category = np.concatenate([[0], item_cluster + 1]).astype(np.int32)
    return write_dataset(
        path,
        DatasetContent(
            seq_items=seq,
            seq_offsets=offsets,
            seq_times=np.arange(offsets[-1], dtype=np.int64),
            raw_users=pa.array([f"u{u}" for u in range(users)]),
            raw_items=pa.array([f"i{i}" for i in range(1, items + 1)]),
            item_category=category,
            category_names=pa.array([f"c{c}" for c in range(1, clusters + 1)]),
            meta={"format": "test"},
        ),
        num_candidates=32,
    )


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset directory (600 users, 120 items, 6 categories, 32 candidates)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")
