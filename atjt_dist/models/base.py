"""The interface every base recommender implements, and what all models share.

A recommender is an ``nn.Module`` with
- ``embeddings``: its TorchRec EmbeddingCollection (tables from models.batch.embedding_tables),
  which DistributedModelParallel shards;
- ``forward(batch) -> logits [B]``: one score per row (history, target);
- ``score_pairs(batch) -> logits [B]``: the same for a pointwise training batch, whose second
  half repeats the first half's users and histories with negative targets (a model may use it
  to encode each history once; by default it is ``forward``);
- ``extra_loss(batch, embedded) -> Tensor | None``: an optional self-supervised term that the
  model's paper adds to its objective (None for most models).

Models are built from a :class:`ModelSpec` (the dataset's sizes) and the config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .batch import embedding_tables, make_embedding_collection
from .layers import dropout_rows


@dataclass(frozen=True)
class ModelSpec:
    """Sizes a model needs from the dataset."""

    num_users: int
    num_items: int
    num_categories: int
    history_length: int


class Recommender(nn.Module):
    """Base class: owns the embedding collection of one model."""

    #: table-name prefix, unique per model in a module tree
    table_prefix = "rec"

    def __init__(self, spec: ModelSpec, dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.dim = dim
        self.embeddings = make_embedding_collection(embedding_tables(self.table_prefix, dim, spec.num_users, spec.num_items, spec.num_categories))

    def apply_pretrained(self, full_state: dict, cfg, data) -> None:  # noqa: ARG002 - the interface
        """Overwrite entries of ``full_state`` (the unsharded model's state, keys prefixed
        ``recommender.``) with pre-trained tensors, before the model is sharded. Default: no
        pre-training (S3Rec loads its pre-training checkpoint here)."""

    def score_pairs(self, batch) -> torch.Tensor:
        """Logits [B] of a pointwise training batch: rows [0, B/2) are positives, rows [B/2, B)
        one negative each, with the same users and histories in the same order
        (data.dataset.TrainingData.recommender_batch). Default: ``forward(batch)``."""
        return self(batch)

    def extra_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor] | None:  # noqa: ARG002 - the interface
        """A model-specific auxiliary loss for this batch, already multiplied by its coefficient,
        as (sum over this rank's rows, number of rows); the objective divides by the global row
        count so it is a mean over the global batch. Default: none."""
        return None


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform weights for every Linear and embedding table, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith(".weight") and "embeddings." in name and p.dim() == 2:
            with torch.no_grad():
                nn.init.xavier_uniform_(p)


class SequentialRecommender(Recommender):
    """A recommender that encodes the history causally, one hidden state per position.

    Subclasses implement :meth:`encode`; the output layer is shared: the score of item v after
    position t is the dot product of the hidden state h_t with v's output vector
    (:meth:`item_vectors`, by default the item embedding, as in SASRec). Output vectors use the
    item embedding only: negatives carry no category lookup, and a positive that did would let
    a model tell them apart by the category alone.

    - Pointwise (the paper's form, and evaluation): ``forward(batch)`` scores the target from
      the hidden state at the last valid position.
    - Next-item (the models' native training): ``sequence_logits(batch)`` scores, at every valid
      position t, the item that follows it and the sampled negative ``batch.neg_seq[:, t]``.
    """

    def encode(self, batch, embedded) -> torch.Tensor:
        """Hidden states [B, L, H]; position t may only depend on positions <= t."""
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Output vectors [..., H] of items from their item embeddings [..., D]."""
        return items

    def last_hidden(self, batch, embedded) -> torch.Tensor:
        """[B, H]: the hidden state at each row's last valid position (0 for an empty history)."""
        h = self.encode(batch, embedded)
        last = (batch.lengths - 1).clamp_min(0)
        h_last = h[torch.arange(h.shape[0], device=h.device), last]
        return h_last * (batch.lengths > 0).to(h_last.dtype)[:, None]

    def forward(self, batch) -> torch.Tensor:
        from .batch import embed

        e = embed(self.embeddings, batch)
        return (self.last_hidden(batch, e) * self.item_vectors(e.target)).sum(-1)

    def score_candidates(self, batch) -> torch.Tensor:
        """[B, C]: scores of ``batch.candidates`` after each row's history, from one encoding
        per row (what ``forward`` gives each candidate as a target, C times cheaper)."""
        from .batch import embed

        e = embed(self.embeddings, batch)
        return (self.last_hidden(batch, e)[:, None, :] * self.item_vectors(e.neg)).sum(-1)

    def score_pairs(self, batch) -> torch.Tensor:
        """Each history encoded once, its positive and its negative scored from that encoding
        (as RecBole's pairwise training and this model's evaluation do): half the encoder work
        of ``forward`` on the same batch, and the same logits up to rounding when dropout is off.
        With dropout on, both scores of a history share the positive row's dropout masks."""
        half = len(batch) // 2
        histories = replace(batch.select(slice(0, half)), candidates=torch.stack([batch.target[:half], batch.target[half:]], dim=1))
        with dropout_rows(histories.row_ids):  # the dropout inputs now hold the first half's rows
            scores = self.score_candidates(histories)
        return scores.T.reshape(-1)  # positives, then negatives

    def sequence_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive logits, negative logits), each [B, L]; only positions < lengths are valid."""
        from .batch import embed

        if batch.neg_seq is None:
            raise ValueError("next-item training needs batch.neg_seq (sampled negatives per position)")
        e = embed(self.embeddings, batch)
        h = self.encode(batch, e)
        pos = (h * self.item_vectors(e.next_items())).sum(-1)
        neg = (h * self.item_vectors(e.neg)).sum(-1)
        return pos, neg
