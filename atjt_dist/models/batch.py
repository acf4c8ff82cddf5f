"""SequenceBatch: the tensors every model reads, and their TorchRec view.

Every model (the six base recommenders and the noise recogniser) embeds its sparse inputs
through one TorchRec ``EmbeddingCollection`` with three tables:

- ``item``: rows 0..num_items (row 0 is padding and never looked up), shared by the features
  ``hist_item`` (the history, jagged), ``target_item`` (one per row) and ``neg_item`` (the
  sampled negative of every history position in next-item training, or the row's candidates
  when a sequential model is evaluated; empty otherwise);
- ``category``: rows 0..num_categories (0 = "no category"), features ``hist_cat``/``target_cat``;
- ``user``: rows 0..num_users-1, feature ``user``.

Only real history items are looked up (the KeyedJaggedTensor holds ``lengths[r]`` values per row),
so padding never reaches a table; :func:`embed` returns the history padded back to [B, L, D]
with zeros and the mask of valid positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import numpy as np
import torch
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from ..data.batch_fields import BOOL_FIELDS, FLOAT_FIELDS, BatchFields

FEATURES = ("user", "hist_item", "target_item", "neg_item", "hist_cat", "target_cat")


class SequenceBatch(BatchFields[torch.Tensor]):
    """A batch of rows as tensors (the fields: data/batch_fields.py), with its TorchRec view."""

    @classmethod
    def from_arrays(cls, arrays: BatchFields) -> "SequenceBatch":
        """From a data.dataset.BatchArrays (numpy): ids become int64 as TorchRec expects, floats
        float32, booleans stay booleans."""

        def tensor(name: str, a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.float() if name in FLOAT_FIELDS else t if name in BOOL_FIELDS else t.long()

        return cls(**{f.name: None if (a := getattr(arrays, f.name, None)) is None else tensor(f.name, a) for f in fields(BatchFields)})

    def __len__(self) -> int:
        return self.user.shape[0]

    @property
    def history_length(self) -> int:
        return self.hist.shape[1]

    @property
    def mask(self) -> torch.Tensor:
        """bool [B, L]: True at valid history positions."""
        return torch.arange(self.history_length, device=self.hist.device)[None, :] < self.lengths[:, None]

    def _map(self, fn) -> "SequenceBatch":
        return SequenceBatch(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name))) for f in fields(self)})

    def to(self, device: torch.device, non_blocking: bool = False) -> "SequenceBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def select(self, rows: torch.Tensor | slice) -> "SequenceBatch":
        """The rows ``rows`` as a new batch."""
        return self._map(lambda t: t[rows])

    def without_negatives(self) -> "SequenceBatch":
        """The batch without next-item negatives (what a pointwise model or the recogniser reads)."""
        return replace(self, neg_seq=None)

    @staticmethod
    def concat(batches: list["SequenceBatch"]) -> "SequenceBatch":
        """Rows of several batches one after another (e.g. the recogniser's two inputs)."""
        out = {}
        for f in fields(SequenceBatch):
            parts = [getattr(b, f.name) for b in batches]
            if any(p is None for p in parts):
                if not all(p is None for p in parts):
                    raise ValueError(f"cannot concatenate batches with and without {f.name}")
                out[f.name] = None
            else:
                out[f.name] = torch.cat(parts)
        return SequenceBatch(**out)

    def kjt(self) -> KeyedJaggedTensor:
        """The sparse features as one KeyedJaggedTensor (keys in FEATURES order)."""
        mask = self.mask
        ones = torch.ones_like(self.lengths)
        if self.neg_seq is not None and self.candidates is not None:
            raise ValueError("a batch carries either next-item negatives or candidates, not both")
        if self.neg_seq is not None:
            neg_values, neg_lengths = self.neg_seq[mask], self.lengths
        elif self.candidates is not None:
            neg_values = self.candidates.reshape(-1)
            neg_lengths = torch.full_like(self.lengths, self.candidates.shape[1])
        else:
            neg_values, neg_lengths = self.hist.new_zeros(0), torch.zeros_like(self.lengths)
        values = torch.cat([self.user, self.hist[mask], self.target, neg_values, self.hist_cat[mask], self.target_cat])
        lengths = torch.cat([ones, self.lengths, ones, neg_lengths, self.lengths, ones])
        return KeyedJaggedTensor(keys=list(FEATURES), values=values, lengths=lengths.int())


def embedding_tables(prefix: str, dim: int, num_users: int, num_items: int, num_categories: int) -> list[EmbeddingConfig]:
    """The three tables of one model; ``prefix`` keeps table names unique in a module tree."""
    return [
        EmbeddingConfig(name=f"{prefix}_item", embedding_dim=dim, num_embeddings=num_items + 1, feature_names=["hist_item", "target_item", "neg_item"]),
        EmbeddingConfig(name=f"{prefix}_category", embedding_dim=dim, num_embeddings=num_categories + 1, feature_names=["hist_cat", "target_cat"]),
        EmbeddingConfig(name=f"{prefix}_user", embedding_dim=dim, num_embeddings=max(num_users, 1), feature_names=["user"]),
    ]


def make_embedding_collection(tables: list[EmbeddingConfig], device: torch.device | str = "cpu") -> EmbeddingCollection:
    """An EmbeddingCollection on ``device`` ('meta' to defer allocation to sharding)."""
    return EmbeddingCollection(tables=tables, device=torch.device(device))


@dataclass
class Embedded:
    """A batch's embeddings: user [B, D], history [B, L, D] (0 at padding), target [B, D],
    history categories [B, L, D], target category [B, D], the history mask [B, L], and the
    ``neg_item`` lookups: next-item negatives [B, L, D] or candidates [B, C, D] (else None)."""

    user: torch.Tensor
    hist: torch.Tensor
    target: torch.Tensor
    hist_cat: torch.Tensor
    target_cat: torch.Tensor
    mask: torch.Tensor
    neg: Optional[torch.Tensor] = None

    def next_items(self) -> torch.Tensor:
        """[B, L, D]: the item that follows each history position (the target after the last
        one), so next-item training needs no extra lookup for its positives."""
        nxt = torch.cat([self.hist[:, 1:], torch.zeros_like(self.hist[:, :1])], dim=1)
        last = self.mask.sum(1) - 1  # index of the last valid position
        rows = torch.arange(nxt.shape[0], device=nxt.device)
        valid = last >= 0
        nxt = nxt * self.mask[..., None]
        nxt[rows[valid], last[valid]] = self.target[valid]
        return nxt


def embed(ec: torch.nn.Module, batch: SequenceBatch) -> Embedded:
    """Look up every feature of ``batch`` in ``ec`` (sharded or not) and densify."""
    out = ec(batch.kjt())
    L = batch.history_length
    B = len(batch)
    # TorchRec returns fp32 lookups; follow the default dtype (float64 in gradient checks).
    dtype = torch.get_default_dtype()

    def padded(name: str) -> torch.Tensor:
        jt = out[name]
        return jt.to_padded_dense(desired_length=L, padding_value=0.0).to(dtype)

    def single(name: str) -> torch.Tensor:
        return out[name].values().view(B, -1).to(dtype)

    return Embedded(
        user=single("user"),
        hist=padded("hist_item"),
        target=single("target_item"),
        hist_cat=padded("hist_cat"),
        target_cat=single("target_cat"),
        mask=batch.mask,
        neg=(
            padded("neg_item")
            if batch.neg_seq is not None
            else out["neg_item"].to_padded_dense(desired_length=batch.candidates.shape[1], padding_value=0.0).to(dtype)
            if batch.candidates is not None
            else None
        ),
    )
