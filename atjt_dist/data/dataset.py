"""A dataset directory opened for training: splits, sample spaces and per-rank batches.

The data path is stateless by construction: every batch is a pure function of
(seed, phase, epoch or cycle, batch index, rank, world size). A run's position in the data is
therefore just those counters (the trainer's schedule state), and a resumed run rebuilds
exactly the batches the uninterrupted run would have seen.

Global batches, rank slices. A global batch of B rows is the same for any number of processes;
rank r builds rows [r*B/W, (r+1)*B/W) of it. All randomness is keyed by the global row index
(:mod:`atjt_dist.data.rng`), and batch-wide quantities (which rows are corrupted, the shortest
history) are computed over the global batch, so W processes together see exactly what one
process sees. B must therefore be a multiple of W; the last incomplete batch of an epoch is
dropped (the count is logged), which keeps every rank's batch the same size.

Samples. A sample is (user, target position). In the paper's protocol ('paper') a training user
has one sample, its last training interaction; in the large-scale mode ('sliding') every
position >= 1 of the training sequence is a target. A :class:`SampleSpace` describes either
without materialising windows: sample s belongs to the user whose cumulative count covers s.

Splits. 'kfold': users of `fold` are test users, the others train on their whole sequence.
'loo': every user trains on its sequence without the last item and is tested on the last item.
The test positive is always the user's last item, scored against the stored candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numba
import numpy as np

from .batch_fields import BatchFields
from .layout import DatasetArrays, DatasetError, open_arrays
from .rng import stream_key
from .sampling import (
    build_alias,
    corrupt_batch,
    fill_windows,
    noisy_rows,
    permutation,
    sample_negatives,
    user_item_sets,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


class BatchArrays(BatchFields[np.ndarray]):
    """One rank's rows of a batch as numpy arrays (the fields: data/batch_fields.py; models/batch.py
    turns them into tensors). The samplers always set ``row_ids``."""

    def __len__(self) -> int:
        return len(self.user)

    @staticmethod
    def concat(parts: list["BatchArrays"]) -> "BatchArrays":
        """Rows of several batches one after another."""
        fields_ = {}
        for name in BatchArrays.__dataclass_fields__:
            values = [getattr(p, name) for p in parts]
            fields_[name] = None if any(v is None for v in values) else np.concatenate(values)
        return BatchArrays(**fields_)


@dataclass
class SampleSpace:
    """The samples of a set of users: user ``users[i]`` has targets first_pos[i] + 0..count-1."""

    users: np.ndarray  # int64 [n_users]
    first_pos: np.ndarray  # int64 [n_users]
    cum: np.ndarray  # int64 [n_users + 1]: cumulative sample counts

    @property
    def size(self) -> int:
        return int(self.cum[-1])


@numba.njit(parallel=True, cache=True)
def _locate(cum, users, first_pos, sample_ids, out_users, out_pos):
    for r in numba.prange(sample_ids.shape[0]):
        s = sample_ids[r]
        i = np.searchsorted(cum, s, side="right") - 1
        out_users[r] = users[i]
        out_pos[r] = first_pos[i] + (s - cum[i])


def rank_slice(global_rows: int, rank: int, world: int) -> slice:
    """Rows of a global batch that rank ``rank`` of ``world`` builds."""
    if global_rows % world:
        raise ValueError(f"a global batch of {global_rows} rows does not split over {world} ranks")
    per = global_rows // world
    return slice(rank * per, (rank + 1) * per)


class TrainingData:
    """A dataset prepared for one run: splits, sample spaces and batch builders.

    Parameters mirror DataConfig; ``rank``/``world`` choose this process's rows.
    """

    @classmethod
    def from_config(cls, path: str | Path, cfg: Config, rank: int = 0, world: int = 1) -> TrainingData:
        """The data of a run of ``cfg`` (its data section and seed) from the prepared dataset at ``path``."""
        d = cfg.data
        return cls(
            path,
            split=d.split,
            fold=d.fold,
            history_length=d.history_length,
            mode=d.mode,
            negative_sampler=d.negative_sampler,
            popularity_exponent=d.popularity_exponent,
            seed=cfg.seed,
            rank=rank,
            world=world,
        )

    def __init__(
        self,
        path: str | Path,
        *,
        split: str = "kfold",
        fold: int = 0,
        history_length: int = 19,
        mode: str = "paper",
        negative_sampler: str = "popularity",
        popularity_exponent: float = 0.75,
        seed: int = 42,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.arrays: DatasetArrays = open_arrays(path)
        self.meta = self.arrays.meta
        self.L = history_length
        self.mode = mode
        self.seed = seed
        self.rank = rank
        self.world = world
        a = self.arrays
        self.lengths = a.lengths.astype(np.int64)
        if split == "kfold":
            folds = int(self.meta["folds"])
            if not 0 <= fold < folds:
                raise DatasetError(f"data.fold={fold}: the dataset at {a.path} has folds 0..{folds - 1}")
            is_test = np.asarray(a.fold) == fold
            self.train_users = np.flatnonzero(~is_test).astype(np.int64)
            self.test_users = np.flatnonzero(is_test).astype(np.int64)
            # a training user trains on its whole sequence
            self.last_train_pos = self.lengths - 1
        elif split == "loo":
            self.train_users = np.arange(a.num_users, dtype=np.int64)
            self.test_users = np.arange(a.num_users, dtype=np.int64)
            self.last_train_pos = self.lengths - 2
        else:
            raise DatasetError(f"data.split={split!r}: expected 'kfold' or 'loo'")
        # A training sample needs a non-empty history: position >= 1.
        usable = self.last_train_pos[self.train_users] >= 1
        self.dropped_train_users = int((~usable).sum())
        if self.dropped_train_users:
            log.info("%d training users have too short a sequence for a sample and are skipped", self.dropped_train_users)
        self.train_users = self.train_users[usable]
        if len(self.train_users) == 0:
            raise DatasetError(f"{a.path}: no training user has a sequence long enough for split={split!r}")
        if len(self.test_users) == 0:
            raise DatasetError(f"{a.path}: split={split!r} fold={fold} has no test users")

        self.owned, self.owned_offsets = user_item_sets(np.asarray(a.seq_items), np.asarray(a.seq_offsets))
        pop = np.asarray(a.popularity[1:], dtype=np.float64)
        if negative_sampler == "popularity":
            weights = np.power(pop, popularity_exponent)
        elif negative_sampler == "uniform":
            weights = np.ones_like(pop)
        else:
            raise DatasetError(f"data.negative_sampler={negative_sampler!r}: expected 'popularity' or 'uniform'")
        if weights.sum() <= 0:
            weights = np.ones_like(pop)
        self.negative_alias = build_alias(weights)
        self.replacement_alias = build_alias(np.maximum(pop, 0) + (pop.sum() == 0))

    # -- sample spaces --------------------------------------------------------------------

    def sample_space(self, users: np.ndarray) -> SampleSpace:
        """The training samples of ``users`` in this run's mode."""
        users = np.asarray(users, dtype=np.int64)
        last = self.last_train_pos[users]
        if self.mode == "paper":
            first = last
            counts = np.ones(len(users), dtype=np.int64)
        elif self.mode == "sliding":
            first = np.ones(len(users), dtype=np.int64)
            counts = last
        else:
            raise DatasetError(f"data.mode={self.mode!r}: expected 'paper' or 'sliding'")
        cum = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(counts, out=cum[1:])
        return SampleSpace(users=users, first_pos=first.astype(np.int64), cum=cum)

    def epoch_order(self, space: SampleSpace, *counters: int) -> np.ndarray:
        """The shuffled sample order of one pass over ``space`` (seeded by the counters)."""
        return permutation(space.size, self.seed, "shuffle", *counters)

    @staticmethod
    def num_batches(space: SampleSpace, global_batch: int) -> int:
        """Full global batches in one pass (the incomplete last one is dropped)."""
        return space.size // global_batch

    # -- batch builders -------------------------------------------------------------------

    def _windows(self, sample_ids: np.ndarray, space: SampleSpace, row_ids: np.ndarray, label: float, oracle: Optional[str] = None) -> BatchArrays:
        n = len(sample_ids)
        users = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        _locate(space.cum, space.users, space.first_pos, sample_ids.astype(np.int64), users, pos)
        b = BatchArrays(
            user=users,
            hist=np.empty((n, self.L), dtype=np.int32),
            hist_cat=np.empty((n, self.L), dtype=np.int32),
            lengths=np.empty(n, dtype=np.int32),
            target=np.empty(n, dtype=np.int32),
            target_cat=np.empty(n, dtype=np.int32),
            label=np.full(n, label, dtype=np.float32),
            row_ids=row_ids,
        )
        a = self.arrays
        fill_windows(a.seq_items, a.seq_offsets, a.item_category, users, pos, b.hist, b.hist_cat, b.lengths, b.target, b.target_cat)
        if oracle is not None:
            b.weight = self._oracle_weights(b, pos, oracle)
        return b

    def latest_windows(self, users: np.ndarray, row_ids: np.ndarray) -> BatchArrays:
        """Each user's latest training window: its last training item as the target and the
        items before it as the history (the paper-mode sample; what atjt.weight_scope='user'
        scores), one row per entry of ``users``, keyed by ``row_ids``."""
        users = np.asarray(users, dtype=np.int64)
        space = SampleSpace(users=users, first_pos=self.last_train_pos[users], cum=np.arange(len(users) + 1, dtype=np.int64))
        return self._windows(np.arange(len(users), dtype=np.int64), space, np.asarray(row_ids, dtype=np.int64), 1.0)

    def _oracle_weights(self, b: BatchArrays, positions: np.ndarray, level: str) -> np.ndarray:
        """The ground-truth weights of an oracle that knows the planted noise (METHOD.md
        section 10): 'user' gives every row of a planted-noise user weight 0; 'item' removes
        the planted items from each history (in place: the rest move left, the order kept) and
        gives weight 0 to a row whose target is planted. Needs the dataset's noise.parquet."""
        a = self.arrays
        if a.noise_users is None:
            raise DatasetError(f"{a.path}: an oracle needs planted-noise ground truth (noise.parquet); this dataset has none")
        if level == "user":
            return (~a.noise_users[b.user]).astype(np.float32)
        target, planted_hist = self.planted_in_windows(b.user, positions, b.lengths)
        weight = (~target).astype(np.float32)
        cols = np.arange(self.L)
        keep = (cols[None, :] < b.lengths[:, None]) & ~planted_hist
        order = np.argsort(~keep, axis=1, kind="stable")  # kept items first, in time order
        b.lengths = keep.sum(1).astype(np.int32)
        now_valid = cols[None, :] < b.lengths[:, None]
        b.hist = np.where(now_valid, np.take_along_axis(b.hist, order, 1), 0).astype(np.int32)
        b.hist_cat = np.where(now_valid, np.take_along_axis(b.hist_cat, order, 1), 0).astype(np.int32)
        return weight

    def planted_in_windows(self, users: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Planted-noise ground truth of windows (the target at ``positions`` of each user's
        sequence, the ``lengths`` items before it as the left-aligned history): whether each
        target is planted [n], and each history cell [n, L] (False at padding)."""
        a = self.arrays
        start = np.asarray(a.seq_offsets)[users] + positions  # flat index of each target
        cols = np.arange(self.L)
        valid = cols[None, :] < lengths[:, None]
        flat = np.where(valid, start[:, None] - lengths[:, None] + cols[None, :], 0)
        return a.planted[start], valid & a.planted[flat]

    def recommender_batch(
        self, space: SampleSpace, order: np.ndarray, index: int, global_batch: int, counters: tuple[int, ...], oracle: Optional[str] = None
    ) -> BatchArrays:
        """This rank's rows of recommender batch ``index``: its positives, then their negatives.

        Row i of the positives and row i of the negatives share the user and the history;
        the negative's target is drawn by the negative sampler (never an item of the user).
        ``oracle`` ('user' or 'item') adds the planted-noise oracle's row weights (see
        ``_oracle_weights``); the negatives are drawn exactly as without it.
        """
        sl = rank_slice(global_batch, self.rank, self.world)
        row_ids = np.arange(sl.start, sl.stop, dtype=np.int64)
        samples = order[index * global_batch + sl.start : index * global_batch + sl.stop]
        pos = self._windows(samples, space, row_ids, 1.0, oracle)
        neg_items = np.empty(len(samples), dtype=np.int32)
        prob, alias = self.negative_alias
        sample_negatives(stream_key(self.seed, "negatives", *counters), row_ids, pos.user, self.owned, self.owned_offsets, prob, alias, neg_items)
        return BatchArrays(
            user=np.concatenate([pos.user, pos.user]),
            hist=np.concatenate([pos.hist, pos.hist]),
            hist_cat=np.concatenate([pos.hist_cat, pos.hist_cat]),
            lengths=np.concatenate([pos.lengths, pos.lengths]),
            target=np.concatenate([pos.target, neg_items]),
            target_cat=np.concatenate([pos.target_cat, self.arrays.item_category[neg_items]]),
            label=np.concatenate([pos.label, np.zeros(len(samples), dtype=np.float32)]),
            row_ids=np.concatenate([row_ids, row_ids + global_batch]),
            weight=None if pos.weight is None else np.concatenate([pos.weight, pos.weight]),
        )

    def recommender_sequences(
        self, space: SampleSpace, order: np.ndarray, index: int, global_batch: int, counters: tuple[int, ...], oracle: Optional[str] = None
    ) -> BatchArrays:
        """This rank's rows of a next-item batch: one row per sample (its history and target),
        with a sampled negative for every history position (``neg_seq``, 0 at padding).

        Position t of a row is trained to score the item that follows it (the next history
        item, the target after the last one) above ``neg_seq[r, t]``, never an item of the user.
        """
        sl = rank_slice(global_batch, self.rank, self.world)
        row_ids = np.arange(sl.start, sl.stop, dtype=np.int64)
        samples = order[index * global_batch + sl.start : index * global_batch + sl.stop]
        b = self._windows(samples, space, row_ids, 1.0, oracle)
        L = self.L
        flat_rows = (row_ids[:, None] * L + np.arange(L)[None, :]).reshape(-1)
        negatives = np.empty(len(flat_rows), dtype=np.int32)
        prob, alias = self.negative_alias
        sample_negatives(stream_key(self.seed, "negatives", *counters), flat_rows, np.repeat(b.user, L), self.owned, self.owned_offsets, prob, alias, negatives)
        b.neg_seq = np.where(np.arange(L)[None, :] < b.lengths[:, None], negatives.reshape(-1, L), 0).astype(np.int32)
        return b

    def recognizer_batch(
        self,
        space: SampleSpace,
        order: np.ndarray,
        index: int,
        global_batch: int,
        counters: tuple[int, ...],
        *,
        noise_fraction: float = 0.5,
        replace_count: int = 1,
        per_row_position: bool = True,
        replacement: str = "uniform",
    ) -> BatchArrays:
        """This rank's rows of a corrupted recogniser batch; label 1 = clean, 0 = corrupted."""
        sl = rank_slice(global_batch, self.rank, self.world)
        row_ids = np.arange(sl.start, sl.stop, dtype=np.int64)
        global_samples = order[index * global_batch : (index + 1) * global_batch]
        b = self._windows(global_samples[sl], space, row_ids, 1.0)
        # Batch-wide quantities come from the global batch so every rank agrees.
        global_min = int(min(self.L, self._min_history(space, global_samples)))
        noisy = noisy_rows(stream_key(self.seed, "corrupt_rows", *counters), global_batch, noise_fraction)
        original = b.hist.copy()
        b.label = corrupt_batch(
            seed=self.seed,
            counters=counters,
            row_ids=row_ids,
            global_noisy=noisy,
            global_min_length=global_min,
            hist=b.hist,
            hist_cat=b.hist_cat,
            lengths=b.lengths,
            item_category=np.asarray(self.arrays.item_category),
            num_items=self.arrays.num_items,
            count=replace_count,
            per_row_position=per_row_position,
            replacement_alias=self.replacement_alias if replacement == "popularity" else None,
        )
        # A replacement always differs from the item it replaces, so the changed cells are
        # exactly the replaced ones (the item-level recogniser's per-position labels).
        b.replaced = b.hist != original
        return b

    def _min_history(self, space: SampleSpace, samples: np.ndarray) -> int:
        idx = np.searchsorted(space.cum, samples, side="right") - 1
        positions = space.first_pos[idx] + (samples - space.cum[idx])
        return int(positions.min())  # history length = min(L, position)

    # -- evaluation and scoring -----------------------------------------------------------

    def user_batches(self, users: np.ndarray, users_per_batch: int) -> list[tuple[int, int]]:
        """Global batches over ``users`` as (start, size): size is users_per_batch, except the
        last batch, which is only padded up to a multiple of the world size."""
        per = -(-users_per_batch // self.world) * self.world
        out = []
        for start in range(0, len(users), per):
            size = min(per, -(-(len(users) - start) // self.world) * self.world)
            out.append((start, size))
        return out

    def user_windows(self, users: np.ndarray, positions: np.ndarray, start: int, size: int) -> tuple[BatchArrays, np.ndarray]:
        """This rank's rows of the global batch users[start:start+size]: each user's window
        ending at its position (the target). Returns the rows and a bool mask of real users
        (padding rows repeat the first user and are masked out)."""
        sl = rank_slice(size, self.rank, self.world)
        idx = np.arange(start + sl.start, start + sl.stop, dtype=np.int64)
        valid = idx < len(users)
        chosen = np.where(valid, idx, 0)
        picked = np.asarray(users, dtype=np.int64)[chosen]
        space = SampleSpace(users=picked, first_pos=np.asarray(positions, dtype=np.int64)[chosen], cum=np.arange(len(picked) + 1, dtype=np.int64))
        return self._windows(np.arange(len(picked), dtype=np.int64), space, idx, 1.0), valid

    def test_batch(self, start: int, size: int, expand: bool = True) -> tuple[BatchArrays, np.ndarray]:
        """This rank's rows of the test batch test_users[start:start+size] (from user_batches)
        and the bool mask [users] of real users.

        ``expand``: one row per (user, candidate), user-major (user 0's C candidates, then user
        1's ...), for models that score a (history, target) row; otherwise one row per user with
        its candidates in ``candidates`` (column 0 = the positive), for models that encode a
        history once and score every candidate from it.
        """
        users = self.test_users
        b, valid = self.user_windows(users, self.lengths[users] - 1, start, size)
        cand = np.asarray(self.arrays.candidates)[b.user]  # [u, C]
        if not expand:
            b.candidates = cand
            return b, valid
        C = cand.shape[1]
        rows = BatchArrays(
            user=np.repeat(b.user, C),
            hist=np.repeat(b.hist, C, axis=0),
            hist_cat=np.repeat(b.hist_cat, C, axis=0),
            lengths=np.repeat(b.lengths, C),
            target=cand.reshape(-1),
            target_cat=np.asarray(self.arrays.item_category)[cand.reshape(-1)],
            label=np.tile(np.eye(1, C, dtype=np.float32)[0], len(b.user)),
            row_ids=np.repeat(b.row_ids, C),
        )
        return rows, valid
