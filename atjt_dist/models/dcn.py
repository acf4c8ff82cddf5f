"""DCN, Deep & Cross Network (Wang, Fu, Fu, Wang; ADKDD 2017), as a base model of the paper.

Input: the embedded fields of a row, as the paper of ATJT feeds its feature-interaction models,

    x0 = [user; mean over the valid history positions of [item; category]; target item;
          target category]                                   (5D = 40 with dim-8 embeddings)

(a row without history pools to zeros). Two networks read x0 side by side (paper, section 2):

- the cross network, L layers of the paper's equation (3),

      x_{l+1} = x0 * (x_l . w_l) + b_l + x_l,      w_l, b_l in R^{5D},

  so layer l adds the feature crosses of degree l + 1 at 2 x 5D parameters;
- the deep network, h_{k+1} = ReLU(W_k h_k + b_k) with h_0 = x0 (paper, equation (4));

and the combination layer (equation (5)) gives the logit from both outputs:

      logit = w_logits . [x_L; h_K] + b_logits.

Deviations from the paper, and why: no batch normalisation in the deep network (the paper
used it on Criteo; here a row's score must not depend on its batch or on how the batch is split
across ranks, and the other base models have none), and the project's Adagrad instead of Adam
(METHOD.md section 5). Initialisation: Xavier-uniform for every weight (the cross weight w_l as a
5D x 1 matrix) and the tables, zero biases, like the other base models.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .base import ModelSpec, Recommender, xavier_init_
from .batch import Embedded, SequenceBatch, embed
from .layers import Dropout


def embedded_fields(e: Embedded) -> torch.Tensor:
    """x0 [B, 5D] = [user; mean-pooled history [item; category]; target item; target category].

    The mean runs over the valid positions only (padding is zero in ``e`` and not counted), so
    padding never changes it; an empty history pools to zeros. Shared with Wide & Deep's deep part.
    """
    hist = torch.cat([e.hist, e.hist_cat], dim=-1)  # [B, L, 2D], 0 at padding
    count = e.mask.sum(1, keepdim=True).clamp_min(1).to(hist.dtype)
    pooled = hist.sum(1) / count
    return torch.cat([e.user, pooled, e.target, e.target_cat], dim=-1)


class CrossLayer(nn.Module):
    """One cross layer of DCN: x_{l+1} = x0 * (x_l . w) + b + x_l (paper, equation (3))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (dim + 1))  # Xavier-uniform of w as a dim x 1 matrix
        self.weight = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x . w is a scalar per row: the layer costs O(dim), not O(dim^2).
        return x0 * (x @ self.weight)[:, None] + self.bias + x


class DCN(Recommender):
    """Deep & Cross Network; forward(batch) -> logits [B]."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg.embedding_dim)
        cfg.dcn.check()
        width = 5 * cfg.embedding_dim
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(cfg.dcn.cross_layers))
        layers: list[nn.Module] = []
        inp = width
        for h in cfg.dcn.deep_hidden:
            layers += [nn.Linear(inp, h), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(Dropout(cfg.dropout))
            inp = h
        self.deep = nn.Sequential(*layers)
        # With no cross layer the cross output is x0 itself (the combination stays linear in it).
        self.logits = nn.Linear(width + (cfg.dcn.deep_hidden[-1] if cfg.dcn.deep_hidden else 0), 1)
        self.has_deep = bool(cfg.dcn.deep_hidden)
        xavier_init_(self)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        x0 = embedded_fields(embed(self.embeddings, batch))
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        parts = [x, self.deep(x0)] if self.has_deep else [x]
        return self.logits(torch.cat(parts, dim=-1)).squeeze(-1)
