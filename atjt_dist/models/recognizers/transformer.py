"""The item-level recogniser ('transformer'): a replaced-item detector, ELECTRA-discriminator style.

Tokens: every valid history item (item + category + reverse-position embedding, 1 = the most
recent) and the target as one more token (reverse position 0, the place after the most recent
item). ``transformer_blocks`` pre-norm bidirectional self-attention blocks (GELU feed-forward of
width ``transformer_inner_factor`` x H, a final LayerNorm) read them; a linear head gives each
history item the logit of "this item is clean" [B, L]. The sequence's logit of P(clean) comes
from those by ``sequence_weight`` (recognizers/base.py: product over the valid items, or their
minimum). It is trained with per-position BCE on ``~batch.replaced`` over valid positions (the
caller's loss); the row-level BCE on the sequence logit also trains it, through the same per-item
logits.

Cost. The detector runs on every row the recogniser sees (the step's positives and its
corrupted rows), so it is kept cheap (benchmarks/step.md, "recogniser kinds"):

- packed tokens: everything but the attention itself (layer norms, projections, feed-forward,
  head) runs on the valid tokens only, [N, H] with N = sum(lengths) + B, straight from TorchRec's
  jagged lookups (histories average about half of L); only the attention scatters q, k, v into
  the padded [B, L + 1] layout, and gathers its output back;
- the token layout (scatter indices, the additive key mask) is built once per forward, not per
  block, and the mask enters the scores through one ``baddbmm`` with the scaling;
- dropout is the keyed :class:`~atjt_dist.models.layers.Dropout` (eight mask bytes per 64-bit
  hash; torch's bernoulli masks took a quarter of the step), and off by default. A packed token
  is keyed by its row and its position in the row (``TokenLayout.rows_slots``), so its mask
  depends neither on the other rows' lengths nor on the split across processes.

No user table: a cross-fitted recogniser never trains on the users it weights, so a user id
tells it nothing. Its EmbeddingCollection has the item and category tables only, and is called
with ``batch.kjt()`` as every model is: both the unsharded EmbeddingCollection (which reads the
features its tables name) and the sharded one (which permutes its input to its own features'
order, built from the first input's keys) ignore the extra 'user' key, so no second KJT layout
is needed. ``frozen_user_rows`` is accordingly a no-op here.

Padding never reaches a table (only valid history items are in the KJT) nor the dense layers
(only valid tokens are packed), padded keys are masked out of the attention, and the target
token is always a valid key, so a row without history has finite outputs (its sequence logit is
MAX_LOGIT: P(clean) = 1).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...config import RecognizerConfig
from ..base import ModelSpec, xavier_init_
from ..batch import SequenceBatch, embedding_tables, make_embedding_collection
from ..layers import Dropout
from .base import MAX_LOGIT, Recognizer, ReversePositions, reverse_position_ids, sequence_logits


def item_tables(prefix: str, dim: int, spec: ModelSpec) -> list:
    """The item and category tables of ``embedding_tables`` (names ``<prefix>_item`` and
    ``<prefix>_category``), without the user table."""
    tables = embedding_tables(prefix, dim, spec.num_users, spec.num_items, spec.num_categories)
    return [t for t in tables if "user" not in t.feature_names]


class TokenLayout:
    """Where the packed tokens [N, H] sit in the padded [B, T] layout (T = L + 1, the target at
    column L), and the additive key mask of the attention; built once per forward.

    Packed order: the history tokens row by row (the order of TorchRec's jagged values), then
    the B target tokens.
    """

    def __init__(self, mask: torch.Tensor, heads: int, dtype: torch.dtype) -> None:
        B, L = mask.shape
        T = L + 1
        self.rows, self.width, self.heads = B, T, heads
        cols = torch.arange(B, device=mask.device) * T
        hist = (cols[:, None] + torch.arange(L, device=mask.device)[None, :])[mask]
        self.index = torch.cat([hist, cols + L])  # packed token -> flat padded position
        self._rows_slots: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        valid = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [B, T]: the target is always valid
        bias = torch.zeros(B, 1, 1, T, dtype=dtype, device=mask.device).masked_fill(~valid[:, None, None, :], float("-inf"))
        self.key_bias = bias.expand(B, heads, 1, T).reshape(B * heads, 1, T)

    def rows_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row [N], position in the row [N]) of each packed token: what keys its dropout mask
        (the target token at position L); built on first use."""
        if self._rows_slots is None:
            self._rows_slots = (torch.div(self.index, self.width, rounding_mode="floor"), self.index % self.width)
        return self._rows_slots

    def dropout(self, dropout: Dropout, x: torch.Tensor) -> torch.Tensor:
        """``dropout`` on packed tokens ``x`` [N, ...], each keyed by its row and position."""
        if not dropout.training or dropout.threshold == 0:
            return x
        return dropout(x, *self.rows_slots())

    def attend(self, qkv: torch.Tensor, dropout: Dropout) -> torch.Tensor:
        """Bidirectional multi-head attention over valid keys: packed q, k, v [N, 3H] -> packed
        context [N, H] (before the output projection); ``dropout`` on the probabilities."""
        B, T, heads = self.rows, self.width, self.heads
        H = qkv.shape[1] // 3
        E = H // heads
        padded = qkv.new_zeros(B * T, 3 * H).index_copy(0, self.index, qkv)
        q, k, v = (t.transpose(1, 2).reshape(B * heads, T, E) for t in padded.view(B, T, 3, heads, E).unbind(2))
        scores = torch.baddbmm(self.key_bias, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(E))
        # the probabilities [B * heads, T, T] are B rows of heads groups: keyed row by row
        ctx = torch.bmm(dropout(torch.softmax(scores, dim=-1)), v)  # [B * heads, T, E]
        return ctx.view(B, heads, T, E).transpose(1, 2).reshape(B * T, H).index_select(0, self.index)


class PackedBlock(nn.Module):
    """Pre-norm self-attention then GELU feed-forward, each with dropout and a residual, on
    packed tokens: ``forward(x [N, H], layout) -> [N, H]``."""

    def __init__(self, hidden: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-8)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-8)
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        drop = self.dropout
        x = x + layout.dropout(drop, self.out(layout.attend(self.qkv(self.norm1(x)), drop)))
        return x + layout.dropout(drop, self.fc2(layout.dropout(drop, F.gelu(self.fc1(self.norm2(x))))))


class ItemLevelRecognizer(Recognizer):
    """'transformer': forward_items(batch) -> (sequence logits [B], item logits [B, L])."""

    item_level = True

    def __init__(self, spec: ModelSpec, cfg: RecognizerConfig, table_prefix: str = "rg") -> None:
        super().__init__()
        cfg.check()
        hidden = cfg.transformer_hidden
        self.heads = cfg.transformer_heads
        self.sequence_weight = cfg.sequence_weight
        self.embeddings = make_embedding_collection(item_tables(table_prefix, hidden, spec))
        self.positions = ReversePositions(spec.history_length, hidden)
        self.dropout = Dropout(cfg.transformer_dropout)
        self.blocks = nn.ModuleList(PackedBlock(hidden, cfg.transformer_inner_factor * hidden, cfg.transformer_dropout) for _ in range(cfg.transformer_blocks))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.head = nn.Linear(hidden, 1)
        xavier_init_(self)
        # Start from the prior that an item is clean (P = 0.95: one replaced item in a corrupted
        # row, half the rows corrupted, histories of about ten items), not from P = 1/2 per item,
        # whose product would start every long history near weight 0 and skew the reweighted loss
        # toward short histories until the detector has learned.
        nn.init.constant_(self.head.bias, math.log(0.95 / 0.05))

    def tokens(self, batch: SequenceBatch) -> torch.Tensor:
        """Packed token vectors [N, H]: the valid history items row by row, then the B targets
        (TokenLayout's order)."""
        out = self.embeddings(batch.kjt())
        dtype = torch.get_default_dtype()  # TorchRec looks up fp32; follow float64 in gradient checks
        mask = batch.mask
        ids = reverse_position_ids(batch.lengths, batch.history_length, self.positions.max_len)[mask]
        hist = out["hist_item"].values() + out["hist_cat"].values()
        target = out["target_item"].values() + out["target_cat"].values()
        # F.embedding, not weight[ids]: a thread-independent backward (models/transformer.py, LearnedPositions)
        return torch.cat([hist.to(dtype) + F.embedding(ids, self.positions.weight), target.to(dtype) + self.positions.weight[0]])

    def forward_items(self, batch: SequenceBatch, frozen_user_rows: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:  # noqa: ARG002
        """(sequence logits [B], item logits [B, L]); item logits are MAX_LOGIT at padding.
        ``frozen_user_rows`` does nothing: there is no user table."""
        mask = batch.mask
        tokens = self.tokens(batch)
        layout = TokenLayout(mask, self.heads, tokens.dtype)
        x = layout.dropout(self.dropout, tokens)
        for block in self.blocks:
            x = block(x, layout)
        n_hist = x.shape[0] - len(batch)  # the history tokens come first; the head reads only those
        logits = self.head(self.final_norm(x[:n_hist])).squeeze(-1)
        item_logits = logits.new_full(mask.shape, MAX_LOGIT).masked_scatter(mask, logits)
        return sequence_logits(item_logits, mask, self.sequence_weight), item_logits
