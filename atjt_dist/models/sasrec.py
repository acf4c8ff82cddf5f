"""SASRec, self-attentive sequential recommendation (Kang and McAuley, ICDM 2018).

Input: item embedding * sqrt(d) + a learned position embedding, dropout. Then ``blocks``
pre-norm causal self-attention blocks, each x + Dropout(SA(LayerNorm(x))) followed by
x + Dropout(FFN(LayerNorm(x))) with a ReLU feed-forward of width d, and a final LayerNorm
(models/transformer.py). The hidden state at position t is dotted with the item embedding of a
candidate (the output layer shares the item table, as in the paper); the pointwise score of a
row uses the last valid position, next-item training every position (models/base.py).

Positions (``model.sasrec.positions``). The paper left-pads every sequence to length n, so the
most recent item always gets the last position embedding: that is ``'end'`` (the default), with
id max_len - n + t for item t of a row with n items. Our histories are left-aligned, and the ids
are computed from the row's length, so they do not depend on how much padding follows. In
next-item training a position's id then depends on how many items follow it in the window (not
on which: changing a later item never changes an earlier hidden state), exactly as in the
paper's training, so only the last position is computed as in evaluation. ``'start'`` counts
from the oldest item instead (RecBole's convention): the hidden state at t is then a function of
items 0..t alone and next-item training at t scores exactly what a pointwise forward of that
prefix scores.

Differences from the authors' TensorFlow code, deliberately: the blocks follow the paper's
equations (the residual adds x, not LayerNorm(x); keys and values are normalised like the
queries); embeddings and dense weights are Xavier-uniform (the code used Glorot too). The
embedding tables have ``hidden`` dimensions (all of the model's tables share one dimension);
``model.embedding_dim`` is not used by SASRec.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .base import ModelSpec, SequentialRecommender, xavier_init_
from .batch import Embedded, SequenceBatch
from .layers import Dropout
from .transformer import LearnedPositions, TransformerEncoder


class SASRec(SequentialRecommender):
    """forward(batch) -> logits [B]; sequence_logits(batch) -> next-item logits [B, L] x 2."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig) -> None:
        c = cfg.sasrec
        c.check()
        super().__init__(spec, c.hidden)
        self.align = c.positions
        self.scale = math.sqrt(c.hidden)
        self.positions = LearnedPositions(spec.history_length, c.hidden)
        self.dropout = Dropout(c.dropout)
        self.encoder = TransformerEncoder(c.hidden, c.blocks, c.heads, dropout=c.dropout, act="relu", norm="pre", causal=True)
        xavier_init_(self)
        nn.init.xavier_uniform_(self.positions.weight)

    def encode(self, batch: SequenceBatch, embedded: Embedded) -> torch.Tensor:
        """Hidden states [B, L, H] (0 at padding); position t depends on the items at positions
        <= t only (and, with positions='end', on the row's length)."""
        mask = embedded.mask
        x = embedded.hist * self.scale + self.positions(batch.lengths, mask.shape[1], self.align)
        return self.encoder(self.dropout(x), mask)
