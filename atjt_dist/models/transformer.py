"""Self-attention blocks shared by the Transformer recommenders (SASRec, FEARec, S3Rec).

Everything works on left-aligned sequences, as :class:`~atjt_dist.models.batch.SequenceBatch`
stores them: ``x`` [B, L, H] with the valid items at positions 0..n-1 and padding after, and a
bool ``mask`` [B, L] that is True at valid positions::

    pos = LearnedPositions(max_len=spec.history_length, hidden=64)
    x = item_emb + pos(lengths, width=L, align="end")       # [B, L, H], 0 at padding
    enc = TransformerEncoder(hidden=64, blocks=2, heads=1, dropout=0.2, norm="pre", causal=True)
    h = enc(x, mask)                                        # [B, L, H], 0 at padding

Guarantees (tested in tests/test_model_sasrec_fearec.py through SASRec):

- ``causal=True``: the output at position t depends on the inputs at positions <= t only;
  ``causal=False`` (bidirectional, e.g. S3Rec's pre-training) on every valid position.
- Padding never influences a valid position (padded keys are masked out), and the output is 0
  at padding. A query always may attend to itself, so a row without any valid position gives
  zeros, never NaN.
- Nothing depends on the padded width L beyond the valid positions: a batch padded to a wider
  L gives the same outputs at the valid positions.

Position ids (:func:`position_ids`) are counted either from the oldest item of the window
(``align='start'``: position t has id t, as RecBole-style right-padded code does) or from the
most recent one (``align='end'``: the most recent valid item always has id max_len - 1, as
SASRec's and S3Rec's left-padded inputs do). Both are independent of the padded width.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Dropout

Align = Literal["start", "end"]


def position_ids(lengths: torch.Tensor, width: int, max_len: int, align: Align = "start") -> torch.Tensor:
    """int64 [B, width] position ids in [0, max_len) of left-aligned rows of ``lengths`` items.

    ``'start'``: id t at position t. ``'end'``: id max_len - n + t, so the most recent item (t =
    n - 1) always gets id max_len - 1. Padding positions get id 0 (callers mask them). Rows are
    expected to hold at most ``max_len`` items (ids are clamped into range otherwise).
    """
    t = torch.arange(width, device=lengths.device)[None, :]
    ids = t if align == "start" else (max_len - lengths[:, None]) + t
    ids = torch.where(t < lengths[:, None], ids, torch.zeros_like(ids))
    return ids.clamp(0, max_len - 1)


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings (a [max_len, hidden] table, ``weight``).

    ``forward(lengths, width, align)`` -> [B, width, hidden], 0 at padding positions.
    """

    def __init__(self, max_len: int, hidden: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, hidden))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, lengths: torch.Tensor, width: int, align: Align = "start") -> torch.Tensor:
        ids = position_ids(lengths, width, self.max_len, align)
        valid = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        # F.embedding, not self.weight[ids]: the backward of advanced indexing (index_put_ with
        # accumulate) sums repeated ids in a thread-dependent order on CPU, so two runs of the
        # same seed drifted apart (docs/results.md, Determinism); embedding's backward does not.
        return F.embedding(ids, self.weight) * valid[..., None].to(self.weight.dtype)


def attention_mask(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """bool [B, 1, L, L]: query t may attend to key s (valid keys, s <= t if causal, and always
    itself, so that no row is fully masked)."""
    L = mask.shape[1]
    allowed = mask[:, None, None, :].expand(-1, 1, L, -1)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return allowed | torch.eye(L, dtype=torch.bool, device=mask.device)


def scaled_dot_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
    """softmax(q k^T / sqrt(E), over allowed keys) v for [B, heads, L, E] inputs; dropout on the
    attention probabilities."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return dropout(torch.softmax(scores, dim=-1)) @ v


class MultiHeadSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with an output projection.

    ``forward(x [B, L, H], allowed [B, 1, L, L] from attention_mask) -> [B, L, H]``.
    """

    def __init__(self, hidden: int, heads: int, attention_dropout: float = 0.0) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"{heads} attention heads must divide the hidden size {hidden}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = Dropout(attention_dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        ctx = scaled_dot_attention(q, k, v, allowed, self.dropout)  # [B, heads, L, E]
        return self.out(ctx.transpose(1, 2).reshape(B, L, H))


def activation(name: str) -> nn.Module:
    """'relu' (SASRec) or 'gelu' (BERT-style: S3Rec, FEARec; exact erf form)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}: expected 'relu' or 'gelu'")


class FeedForward(nn.Module):
    """Point-wise feed-forward: Linear(H, inner) -> activation -> dropout -> Linear(inner, H)."""

    def __init__(self, hidden: int, inner: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.act = activation(act)
        self.dropout = Dropout(dropout)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Self-attention then feed-forward, each with dropout, a residual and a LayerNorm.

    ``norm='pre'`` (SASRec's equations): x + Dropout(f(LayerNorm(x))) for each sub-layer.
    ``norm='post'`` (BERT, RecBole, S3Rec): LayerNorm(x + Dropout(f(x))).
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        inner: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        act: str = "gelu",
        norm: Literal["pre", "post"] = "pre",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.norm = norm
        self.attention = MultiHeadSelfAttention(hidden, heads, attention_dropout)
        self.feed_forward = FeedForward(hidden, inner, act, dropout)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm == "pre":
            x = x + self.dropout(self.attention(self.norm1(x), allowed))
            return x + self.dropout(self.feed_forward(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attention(x, allowed)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerBlock` s over left-aligned sequences.

    ``forward(x [B, L, H], mask [B, L] bool) -> [B, L, H]``, 0 at padding. With ``norm='pre'`` a
    final LayerNorm follows the last block (SASRec's); ``inner`` defaults to ``hidden``
    (SASRec's feed-forward width; BERT-style models pass 4 * hidden). The caller embeds and
    (for post-norm models) normalises the input; padded input rows need not be zero.
    """

    def __init__(
        self,
        hidden: int,
        blocks: int,
        heads: int,
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        inner: int | None = None,
        act: str = "relu",
        norm: Literal["pre", "post"] = "pre",
        causal: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.causal = causal
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, inner or hidden, dropout, attention_dropout, act, norm, eps) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden, eps=eps) if norm == "pre" else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        """``causal`` overrides the constructor's choice for this call (S3Rec pre-trains
        bidirectionally and fine-tunes causally with the same weights)."""
        allowed = attention_mask(mask, self.causal if causal is None else causal)
        keep = mask[..., None].to(x.dtype)
        x = x * keep
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.final_norm(x) * keep


__all__ = [
    "FeedForward",
    "LearnedPositions",
    "MultiHeadSelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "attention_mask",
    "position_ids",
    "scaled_dot_attention",
]
