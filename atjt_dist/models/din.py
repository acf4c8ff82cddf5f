"""DIN, Deep Interest Network (Zhou et al., KDD 2018), as the paper's first base model.

Items are represented as [item embedding; category embedding] (2D = 16 with dim 8). A local
activation unit scores each history item against the target from [h; t; h - t; h * t]
(4 x 16 = 64 -> 32 -> 1 with Dice), the scores are softmax-normalised over the valid positions
and pool the history; an MLP over [user; pooled history; target] (8 + 16 + 16 = 40 -> 256 -> 64
-> 1 with Dice) gives the logit.

Unlike the authors' code, which re-created Dice's batch normalisation and alpha on every call (so
they never learned), Dice here is a module whose alpha and running statistics persist and learn.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..config import ModelConfig
from .base import ModelSpec, Recommender, xavier_init_
from .batch import Embedded, SequenceBatch, embed
from .layers import MLP, TargetAttention


class DIN(Recommender):
    """Deep Interest Network; forward(batch) -> logits [B]."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg.embedding_dim)
        item_dim = 2 * cfg.embedding_dim
        self.attention = TargetAttention(item_dim, cfg.din.attention_hidden, "dice", normalise="softmax")
        self.mlp = MLP(cfg.embedding_dim + 2 * item_dim, cfg.din.mlp_hidden, 1, "dice", cfg.dropout)
        xavier_init_(self)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        return din_logits(embed(self.embeddings, batch), self.attention, self.mlp)


def din_logits(e: Embedded, attention: TargetAttention, mlp: MLP, history: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """DIN's scoring of looked-up rows, shared by the recommender and the paper's recogniser:
    [item; category] history and target, the target attention's pooled history, and the MLP over
    [user; pooled; target] -> logits [B]. ``history`` transforms the history vectors [B, L, 2D]
    before the attention reads them (the position-aware recogniser adds its positions there)."""
    hist = torch.cat([e.hist, e.hist_cat], dim=-1)
    if history is not None:
        hist = history(hist)
    target = torch.cat([e.target, e.target_cat], dim=-1)
    pooled = attention(hist, target, e.mask)
    return mlp(torch.cat([e.user, pooled, target], dim=-1)).squeeze(-1)
