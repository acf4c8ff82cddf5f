"""The item-level recogniser ('transformer'): a replaced-item detector, ELECTRA-discriminator style.

Tokens: every valid history item (item + category + reverse-position embedding, 1 = the most
recent) and the target as one more token (reverse position 0, the place after the most recent
item). ``transformer_blocks`` pre-norm bidirectional self-attention blocks (models/transformer.py,
GELU feed-forward of width 4H) read them; a linear head gives each history item the logit of
"this item is clean" [B, L]. The sequence's logit of P(clean) comes from those by
``sequence_weight`` (recognizers/base.py: product over the valid items, or their minimum). It is
trained with per-position BCE on ``~batch.replaced`` over valid positions (the caller's loss);
the row-level BCE on the sequence logit also trains it, through the same per-item logits.

No user table: a cross-fitted recogniser never trains on the users it weights, so a user id
tells it nothing. Its EmbeddingCollection has the item and category tables only, and is called
with ``batch.kjt()`` as every model is: both the unsharded EmbeddingCollection (which reads the
features its tables name) and the sharded one (which permutes its input to its own features'
order, built from the first input's keys) ignore the extra 'user' key, so no second KJT layout
is needed. ``frozen_user_rows`` is accordingly a no-op here.

Padding never reaches a table (only valid history items are in the KJT), padded keys are masked
out of the attention, and the target token is always a valid key, so a row without history has
finite outputs (its sequence logit is MAX_LOGIT: P(clean) = 1).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ...config import RecognizerConfig
from ..base import ModelSpec, xavier_init_
from ..batch import SequenceBatch, embedding_tables, make_embedding_collection
from ..transformer import TransformerEncoder
from .base import MAX_LOGIT, Recognizer, ReversePositions, sequence_logits


def item_tables(prefix: str, dim: int, spec: ModelSpec) -> list:
    """The item and category tables of ``embedding_tables`` (names ``<prefix>_item`` and
    ``<prefix>_category``), without the user table."""
    tables = embedding_tables(prefix, dim, spec.num_users, spec.num_items, spec.num_categories)
    return [t for t in tables if "user" not in t.feature_names]


class ItemLevelRecognizer(Recognizer):
    """'transformer': forward_items(batch) -> (sequence logits [B], item logits [B, L])."""

    item_level = True

    def __init__(self, spec: ModelSpec, cfg: RecognizerConfig, table_prefix: str = "rg") -> None:
        super().__init__()
        cfg.check()
        hidden = cfg.transformer_hidden
        self.sequence_weight = cfg.sequence_weight
        self.embeddings = make_embedding_collection(item_tables(table_prefix, hidden, spec))
        self.positions = ReversePositions(spec.history_length, hidden)
        self.dropout = nn.Dropout(cfg.transformer_dropout)
        self.encoder = TransformerEncoder(
            hidden, cfg.transformer_blocks, cfg.transformer_heads, dropout=cfg.transformer_dropout,
            inner=4 * hidden, act="gelu", norm="pre", causal=False,
        )
        self.head = nn.Linear(hidden, 1)
        xavier_init_(self)
        # Start from the prior that an item is clean (P = 0.95: one replaced item in a corrupted
        # row, half the rows corrupted, histories of about ten items), not from P = 1/2 per item,
        # whose product would start every long history near weight 0 and skew the reweighted loss
        # toward short histories until the detector has learned.
        nn.init.constant_(self.head.bias, math.log(0.95 / 0.05))

    def tokens(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(token vectors [B, L + 1, H], valid-token mask [B, L + 1]); the target is token L."""
        out = self.embeddings(batch.kjt())
        B, L = len(batch), batch.history_length
        dtype = torch.get_default_dtype()  # TorchRec looks up fp32; follow float64 in gradient checks

        def padded(name: str) -> torch.Tensor:
            return out[name].to_padded_dense(desired_length=L, padding_value=0.0).to(dtype)

        def single(name: str) -> torch.Tensor:
            return out[name].values().view(B, -1).to(dtype)

        hist = padded("hist_item") + padded("hist_cat") + self.positions(batch.lengths, L).to(dtype)
        target = single("target_item") + single("target_cat") + self.positions.weight[0].to(dtype)
        mask = batch.mask
        tokens = torch.cat([hist, target[:, None, :]], dim=1)
        return tokens, torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)

    def forward_items(self, batch: SequenceBatch, frozen_user_rows: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:  # noqa: ARG002
        """(sequence logits [B], item logits [B, L]); item logits are MAX_LOGIT at padding.
        ``frozen_user_rows`` does nothing: there is no user table."""
        x, valid = self.tokens(batch)
        h = self.encoder(self.dropout(x), valid)
        mask = batch.mask
        item_logits = self.head(h[:, : mask.shape[1]]).squeeze(-1).masked_fill(~mask, MAX_LOGIT)
        return sequence_logits(item_logits, mask, self.sequence_weight), item_logits
