"""The interface every base recommender implements, and what all models share.

A recommender is an ``nn.Module`` with
- ``embeddings``: its TorchRec EmbeddingCollection (tables from models.batch.embedding_tables),
  which DistributedModelParallel shards;
- ``forward(batch) -> logits [B]``: one score per row (history, target);
- ``extra_loss(batch, embedded) -> Tensor | None``: an optional self-supervised term that the
  model's paper adds to its objective (None for most models).

Models are built from a :class:`ModelSpec` (the dataset's sizes) and the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .batch import embedding_tables, make_embedding_collection


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
        self.embeddings = make_embedding_collection(
            embedding_tables(self.table_prefix, dim, spec.num_users, spec.num_items, spec.num_categories)
        )

    def extra_loss(self, batch) -> torch.Tensor | None:  # noqa: ARG002 - the interface
        """A model-specific auxiliary loss for this batch (default: none)."""
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
