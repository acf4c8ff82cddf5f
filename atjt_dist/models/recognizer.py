"""The noise recogniser g: P(clean | history, target) for a training sequence.

A DIN-like target-attention network with its own embeddings (METHOD.md section 4): dim-8 user,
item and category tables; an attention MLP over [h; t; h - t; h * t] (64 -> 32 -> 1, PReLU,
dropout 0.5) whose scores are masked but not softmax-normalised; an MLP over [user; pooled
history; target] (40 -> 256 -> 64 -> 1, PReLU). Xavier-uniform initialisation. The output is a
logit; sigmoid(logit) = P(clean) is the sequence weight w.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import RecognizerConfig
from .base import ModelSpec, xavier_init_
from .batch import SequenceBatch, embed, embedding_tables, make_embedding_collection
from .layers import MLP, TargetAttention


class NoiseRecognizer(nn.Module):
    """forward(batch) -> logits [B]; P(clean) = sigmoid(logits)."""

    def __init__(self, spec: ModelSpec, cfg: RecognizerConfig, table_prefix: str = "rg") -> None:
        super().__init__()
        dim = cfg.embedding_dim
        self.embeddings = make_embedding_collection(
            embedding_tables(table_prefix, dim, spec.num_users, spec.num_items, spec.num_categories)
        )
        self.attention = TargetAttention(2 * dim, cfg.attention_hidden, "prelu", cfg.dropout, normalise="none")
        self.mlp = MLP(dim + 4 * dim, cfg.mlp_hidden, 1, "prelu")
        xavier_init_(self)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        e = embed(self.embeddings, batch)
        hist = torch.cat([e.hist, e.hist_cat], dim=-1)
        target = torch.cat([e.target, e.target_cat], dim=-1)
        pooled = self.attention(hist, target, e.mask)
        return self.mlp(torch.cat([e.user, pooled, target], dim=-1)).squeeze(-1)
