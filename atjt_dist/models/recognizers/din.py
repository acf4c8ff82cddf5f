"""The paper's noise recogniser ('din') and its position-aware variant ('din_pos').

'din' (METHOD.md section 4): a DIN-like target-attention network with its own embeddings: dim-8
user, item and category tables; an attention MLP over [h; t; h - t; h * t] (64 -> 32 -> 1,
PReLU, dropout 0.5) whose scores are masked but not softmax-normalised; an MLP over [user;
pooled history; target] (40 -> 256 -> 64 -> 1, PReLU). Xavier-uniform initialisation. The
output is a logit; sigmoid(logit) = P(clean) is the sequence weight w.

'din_pos': the same network plus a learned reverse-position embedding (1 = the most recent
valid history item) added to each history item's [item; category] vector before the attention.
The attention is otherwise order-blind, yet corruption replaces the r-th most recent item, and in
sliding mode nearly always the most recent one (METHOD.md section 2). Its position table is
created after the shared layers are initialised, so for the same seed those layers equal 'din''s.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...config import RecognizerConfig
from ..base import ModelSpec, xavier_init_
from ..batch import SequenceBatch, embed, embedding_tables, make_embedding_collection
from ..din import din_logits
from ..layers import MLP, TargetAttention
from .base import Recognizer, ReversePositions, user_lookup


class NoiseRecognizer(Recognizer):
    """The paper's recogniser ('din'): forward(batch) -> logits [B]; P(clean) = sigmoid(logits)."""

    item_level = False

    def __init__(self, spec: ModelSpec, cfg: RecognizerConfig, table_prefix: str = "rg") -> None:
        super().__init__()
        dim = cfg.embedding_dim
        self.embeddings = make_embedding_collection(embedding_tables(table_prefix, dim, spec.num_users, spec.num_items, spec.num_categories))
        self.attention = TargetAttention(2 * dim, cfg.attention_hidden, "prelu", cfg.dropout, normalise="none")
        self.mlp = MLP(dim + 4 * dim, cfg.mlp_hidden, 1, "prelu")
        xavier_init_(self)

    def history(self, hist: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:  # noqa: ARG002 - the hook
        """The history vectors [B, L, 2D] the attention reads (a hook for 'din_pos')."""
        return hist

    def forward_items(self, batch: SequenceBatch, frozen_user_rows: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(sequence logits [B], None): this network scores whole sequences only."""
        e = embed(user_lookup(self.embeddings, frozen_user_rows), batch)
        return din_logits(e, self.attention, self.mlp, lambda hist: self.history(hist, batch)), None


class PositionAwareRecognizer(NoiseRecognizer):
    """'din_pos': the paper's recogniser with reverse-position embeddings on the history."""

    def __init__(self, spec: ModelSpec, cfg: RecognizerConfig, table_prefix: str = "rg") -> None:
        super().__init__(spec, cfg, table_prefix)
        self.positions = ReversePositions(spec.history_length, 2 * cfg.embedding_dim)

    def history(self, hist: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """[item; category] + the item's reverse-position embedding (0 at padding)."""
        return hist + self.positions(batch.lengths, hist.shape[1]).to(hist.dtype)
