"""What every noise recogniser shares: the interface, frozen user rows, reverse positions, and
the sequence weight derived from per-item scores.

Interface (:class:`Recognizer`): ``forward(batch) -> seq_logits [B]`` and
``forward_items(batch, frozen_user_rows=0) -> (seq_logits [B], item_logits [B, L] or None)``;
P(clean) = sigmoid(logit). ``item_level`` says whether ``item_logits`` exist.

Frozen user rows. With ATJT's weights not detached, the recommender loss trains the recogniser
through the weights of the sequences it weights, and those users must stay unseen by it
(cross-fitting). Detaching their user embeddings is not enough: TorchRec's fused optimiser
(Adagrad with L2 weight decay) updates, inside the backward, every row that a grad-requiring
lookup touched, even with a zero gradient. :class:`FrozenUserLookup` therefore takes those
rows out of the trained lookup and reads them in a second lookup under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import JaggedTensor, KeyedJaggedTensor

from ..batch import SequenceBatch

#: the logit of P(clean) = 1 (a row without history), clipped to stay finite: sigmoid(20) = 1 - 2e-9
MAX_LOGIT = 20.0


class Recognizer(nn.Module):
    """Base class of the noise recognisers (one per ``atjt.recognizer.kind``).

    Subclasses implement :meth:`forward_items`; ``forward`` returns its sequence logits, which is
    what callers that only need the weights use.
    """

    #: True when forward_items returns per-history-item logits (the item-level detector)
    item_level: bool = False

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        """Sequence logits [B]; sigmoid = P(clean | history, target)."""
        return self.forward_items(batch)[0]

    def forward_items(self, batch: SequenceBatch, frozen_user_rows: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(sequence logits [B], item logits [B, L] or None).

        ``frozen_user_rows = k``: the first k rows are sequences being weighted; their user
        embeddings are read without gradient and never reach the fused optimiser. The outputs
        equal those of ``frozen_user_rows=0``. In a sharded run every rank must pass k > 0 or
        every rank k = 0: k > 0 costs one more (collective) embedding lookup.
        """
        raise NotImplementedError


def split_user_rows(kjt: KeyedJaggedTensor, rows: int) -> tuple[KeyedJaggedTensor, KeyedJaggedTensor]:
    """(kjt without the 'user' ids of its first ``rows`` rows, kjt with only those ids).

    Both keep every key, in ``kjt``'s order: a sharded EmbeddingCollection fixes its feature
    order from the first input it sees. Every row holds exactly one user id (SequenceBatch.kjt).
    Index arithmetic on device tensors, no host sync: values and lengths are key-major, so the
    ids to move are ``rows`` consecutive values starting after all values of earlier keys.
    """
    keys = kjt.keys()
    B = kjt.stride()
    if not 0 <= rows <= B:
        raise ValueError(f"frozen_user_rows={rows} must be in [0, batch rows = {B}]")
    u = keys.index("user")
    lengths, values = kjt.lengths(), kjt.values()
    start = lengths[: u * B].sum()  # values of the keys before 'user'
    idx = torch.arange(values.numel() - rows, device=values.device)
    kept = values.index_select(0, idx + rows * (idx >= start).to(idx.dtype))
    moved = values.index_select(0, start + torch.arange(rows, device=values.device))
    kept_lengths = lengths.clone()
    kept_lengths[u * B : u * B + rows] = 0
    moved_lengths = torch.zeros_like(lengths)
    moved_lengths[u * B : u * B + rows] = 1
    return (
        KeyedJaggedTensor(keys=keys, values=kept, lengths=kept_lengths),
        KeyedJaggedTensor(keys=keys, values=moved, lengths=moved_lengths),
    )


class FrozenUserLookup:
    """Stands in for an EmbeddingCollection in ``models.batch.embed``: the first ``rows`` rows'
    user ids are looked up under ``torch.no_grad()`` in a separate call, everything else as
    usual; the 'user' output holds all B rows in order, as the plain lookup would."""

    def __init__(self, ec: nn.Module, rows: int) -> None:
        self.ec = ec
        self.rows = rows

    def __call__(self, kjt: KeyedJaggedTensor) -> dict:
        trained, frozen = split_user_rows(kjt, self.rows)
        out = dict(self.ec(trained))
        with torch.no_grad():
            fixed = self.ec(frozen)["user"].values()
        user = torch.cat([fixed, out["user"].values()])
        out["user"] = JaggedTensor(values=user, lengths=torch.ones(kjt.stride(), dtype=torch.int32, device=user.device))
        return out


def user_lookup(ec: nn.Module, frozen_user_rows: int):
    """``ec`` itself, or a :class:`FrozenUserLookup` around it when rows are frozen (so that the
    default path is exactly the plain lookup)."""
    return FrozenUserLookup(ec, frozen_user_rows) if frozen_user_rows else ec


def reverse_position_ids(lengths: torch.Tensor, width: int, max_len: int) -> torch.Tensor:
    """int64 [B, width]: 1 at each row's most recent valid history item, 2 at the one before, ...
    (clamped to ``max_len``); 0 at padding. Counted from the end, so the id of an item says how
    far back it is, whatever the row's length: corruption picks its position the same way."""
    t = torch.arange(width, device=lengths.device)[None, :]
    ids = (lengths[:, None] - t).clamp(0, max_len)
    return torch.where(t < lengths[:, None], ids, torch.zeros_like(ids))


class ReversePositions(nn.Module):
    """A learned embedding per reverse position 0..max_len (a small dense table, not a TorchRec
    one: it has max_len + 1 rows). Row 0 is never added to a history item; the item-level
    detector uses it for the target token (the position after the most recent item).

    ``forward(lengths, width) -> [B, width, dim]``, 0 at padding.
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len + 1, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        ids = reverse_position_ids(lengths, width, self.max_len)
        valid = (ids > 0)[..., None].to(self.weight.dtype)
        return F.embedding(ids, self.weight) * valid  # not weight[ids]: see models/transformer.py, LearnedPositions


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a < 0, stable (Maechler 2012): log(-expm1(a)) near 0, log1p(-exp(a))
    below -log 2. Each branch sees an input clamped to its own range, so neither produces inf
    and torch.where's backward never multiplies 0 by inf."""
    cut = -math.log(2.0)
    near = torch.log(-torch.expm1(a.clamp(min=cut)))
    far = torch.log1p(-torch.exp(a.clamp(max=cut)))
    return torch.where(a > cut, near, far)


def sequence_logits(item_logits: torch.Tensor, mask: torch.Tensor, how: str = "product") -> torch.Tensor:
    """A sequence's logit of P(clean) [B] from its items' logits of P(item clean) [B, L].

    'product': P = prod over valid positions of sigmoid(x_t), in log space: log P = sum of
    logsigmoid, logit = log P - log(1 - P). 'min': the smallest valid item logit (sigmoid is
    monotone, so the least likely clean item's P). A row without valid positions has P = 1;
    logits are clipped to MAX_LOGIT so it stays finite.
    """
    if how == "min":
        return item_logits.masked_fill(~mask, MAX_LOGIT).amin(dim=1).clamp(max=MAX_LOGIT)
    if how != "product":
        raise ValueError(f"sequence_weight must be 'product' or 'min', got {how!r}")
    log_p = torch.where(mask, F.logsigmoid(item_logits), torch.zeros_like(item_logits)).sum(dim=1)
    # log P <= -exp(-(MAX_LOGIT + 1)) keeps log(1 - P) finite; that bound is the logit
    # MAX_LOGIT + 1, so the final clip gives a row without history exactly MAX_LOGIT.
    log_p = log_p.clamp(max=-math.exp(-(MAX_LOGIT + 1.0)))
    return (log_p - log1mexp(log_p)).clamp(max=MAX_LOGIT)
