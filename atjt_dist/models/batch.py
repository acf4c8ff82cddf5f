"""SequenceBatch: the tensors every model reads, and their TorchRec view.

Every model (the six base recommenders and the noise recogniser) embeds its sparse inputs
through one TorchRec ``EmbeddingCollection`` with three tables:

- ``item``: rows 0..num_items (row 0 is padding and never looked up), shared by the features
  ``hist_item`` (the history, jagged) and ``target_item`` (one per row);
- ``category``: rows 0..num_categories (0 = "no category"), features ``hist_cat``/``target_cat``;
- ``user``: rows 0..num_users-1, feature ``user``.

Only real history items are looked up (the KeyedJaggedTensor holds ``lengths[r]`` values per row),
so padding never reaches a table; :func:`embed` returns the history padded back to [B, L, D]
with zeros and the mask of valid positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

FEATURES = ("user", "hist_item", "target_item", "hist_cat", "target_cat")


@dataclass
class SequenceBatch:
    """A batch of rows: (user, left-aligned history, lengths, target, label).

    ``hist[r, :lengths[r]]`` are row r's history items in time order, the rest 0.
    """

    user: torch.Tensor  # int64 [B]
    hist: torch.Tensor  # int64 [B, L]
    hist_cat: torch.Tensor  # int64 [B, L]
    lengths: torch.Tensor  # int64 [B]
    target: torch.Tensor  # int64 [B]
    target_cat: torch.Tensor  # int64 [B]
    label: torch.Tensor  # float32 [B]

    @classmethod
    def from_arrays(cls, arrays) -> "SequenceBatch":
        """From a data.dataset.BatchArrays (numpy); ids become int64 as TorchRec expects."""
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).long()  # noqa: E731
        return cls(
            user=t(arrays.user),
            hist=t(arrays.hist),
            hist_cat=t(arrays.hist_cat),
            lengths=t(arrays.lengths),
            target=t(arrays.target),
            target_cat=t(arrays.target_cat),
            label=torch.from_numpy(np.ascontiguousarray(arrays.label)).float(),
        )

    def __len__(self) -> int:
        return self.user.shape[0]

    @property
    def history_length(self) -> int:
        return self.hist.shape[1]

    @property
    def mask(self) -> torch.Tensor:
        """bool [B, L]: True at valid history positions."""
        return torch.arange(self.history_length, device=self.hist.device)[None, :] < self.lengths[:, None]

    def to(self, device: torch.device, non_blocking: bool = False) -> "SequenceBatch":
        return SequenceBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice) -> "SequenceBatch":
        """The rows ``rows`` as a new batch."""
        return SequenceBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(batches: list["SequenceBatch"]) -> "SequenceBatch":
        """Rows of several batches one after another (e.g. the recogniser's two inputs)."""
        return SequenceBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(SequenceBatch)})

    def kjt(self) -> KeyedJaggedTensor:
        """The sparse features as one KeyedJaggedTensor (keys in FEATURES order)."""
        mask = self.mask
        ones = torch.ones_like(self.lengths)
        values = torch.cat([self.user, self.hist[mask], self.target, self.hist_cat[mask], self.target_cat])
        lengths = torch.cat([ones, self.lengths, ones, self.lengths, ones])
        return KeyedJaggedTensor(keys=list(FEATURES), values=values, lengths=lengths.int())


def embedding_tables(prefix: str, dim: int, num_users: int, num_items: int, num_categories: int) -> list[EmbeddingConfig]:
    """The three tables of one model; ``prefix`` keeps table names unique in a module tree."""
    return [
        EmbeddingConfig(name=f"{prefix}_item", embedding_dim=dim, num_embeddings=num_items + 1, feature_names=["hist_item", "target_item"]),
        EmbeddingConfig(name=f"{prefix}_category", embedding_dim=dim, num_embeddings=num_categories + 1, feature_names=["hist_cat", "target_cat"]),
        EmbeddingConfig(name=f"{prefix}_user", embedding_dim=dim, num_embeddings=max(num_users, 1), feature_names=["user"]),
    ]


def make_embedding_collection(tables: list[EmbeddingConfig], device: torch.device | str = "cpu") -> EmbeddingCollection:
    """An EmbeddingCollection on ``device`` ('meta' to defer allocation to sharding)."""
    return EmbeddingCollection(tables=tables, device=torch.device(device))


@dataclass
class Embedded:
    """A batch's embeddings: user [B, D], history [B, L, D] (0 at padding), target [B, D],
    history categories [B, L, D], target category [B, D], and the history mask [B, L]."""

    user: torch.Tensor
    hist: torch.Tensor
    target: torch.Tensor
    hist_cat: torch.Tensor
    target_cat: torch.Tensor
    mask: torch.Tensor


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
    )
