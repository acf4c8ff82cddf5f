"""FEARec, frequency enhanced hybrid attention (Du et al., SIGIR 2023), as a base model.

The encoder (the authors' code, sudaada/FEARec, is the reference for every detail):

- input: LayerNorm(item embedding + learned position), dropout;
- ``blocks`` post-norm blocks, each a hybrid attention layer then a GELU feed-forward layer,
  LayerNorm(x + Dropout(f(x))) around each (eps 1e-12, as the code);
- hybrid attention of block i over a sequence of length L (the model's history length):
  q, k, v projections; their spectra (rFFT over the sequence) are cut to block i's band of the
  L//2+1 frequency bins, the *frequency ramp* (``global_ratio``: the first block sees the
  highest frequencies, the last one the lowest; see :func:`frequency_band`);
  * frequency-domain attention (auto-correlation): R(tau) = irFFT(Q conj(K)) averaged over heads
    and channels; the top int(topk_factor * ln L) delays of each sequence, softmax-weighted by
    R, aggregate the values shifted by their delay;
  * time-domain attention: scaled dot-product self-attention (causal, padding masked) over the
    band-limited q, k, v (back in the time domain);
  * output (1 - alpha) * frequency + alpha * time (``time_attention_share`` = alpha), then a
    projection;
- the sequence's representation is the last valid position of the last block; a candidate's
  score is its dot product with the item embedding (shared table).

Regulariser (:meth:`FEARec.extra_loss`): two dropout views z', z'' of every training sequence;
``contrastive_weight`` x InfoNCE(z', z'') with dot-product similarity / ``temperature`` and the
other 2(N - 1) views of the batch as negatives, plus ``frequency_weight`` x
mean |rFFT(z') - rFFT(z'')| (the code's frequency-domain regulariser, FFT over the hidden
dimension). The negatives are the *global* batch: the views are all-gathered (with gradient)
across ranks, so W processes optimise the same loss as one process with the whole batch; the
dropout masks, keyed by each sequence's global row (models/layers.py, Dropout), are also the
same on any number of processes.

Causality. An FFT over a sequence mixes every position into every other, so running the
encoder once over a history and reading position t would let t see the future. FEARec (like
RecBole, on which its code is built) trains on prefixes instead: each prefix of a user's
sequence is a sample whose representation is read at its last position. :meth:`FEARec.encode`
does exactly that: the hidden state at position t is the encoder run on the prefix 0..t alone
(all L prefixes of a row in one batched pass), so it depends on items 0..t only, and next-item
training at t scores exactly what a pointwise forward of that prefix scores. This costs L
encoder passes per row in next-item training (memory O(B L^2 H)); the pointwise forward and
evaluation run one pass per row. Within a prefix, the padding after it is zero and never
reaches the spectra (q, k, v are masked), and sequences are always laid out on the model's
length L, so the result does not depend on how much padding a batch carries.

Deliberate differences from the authors' code:
- Delays look back: the value aggregated for position t is v[t - tau], the position whose key
  the correlation R(tau) = sum_s q[s + tau] k[s] pairs with the query; delays reach at most the
  first item (tau <= n - 1). The code rolls the other way (v[t + tau], circularly), which at
  the last position reads padding or wraps to the oldest items.
- Delays are chosen per sequence in training as in inference (the code's training path shares
  the delays of the batch mean), so a row's encoding never depends on the other rows, or on
  how a batch is split across ranks.
- Padding contributes nothing to the spectra (the code's padding carries position embeddings).
- Only unsupervised (dropout) views: the code's best setting also contrasts a "semantic" view,
  another user's sequence with the same target, which needs a different sampler.
- Band-limited time-domain attention is always on (the code's ``dual_domain=True, std=True``
  of fearec.sh); the unused learnable filter (``use_filter``) is left out.
- The embedding tables have ``hidden`` dimensions; ``model.embedding_dim`` is not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..collectives import rank, world_size
from ..config import ModelConfig
from .base import ModelSpec, SequentialRecommender
from .batch import Embedded, SequenceBatch, embed
from .layers import Dropout, dropout_rows
from .transformer import (
    FeedForward,
    LearnedPositions,
    attention_mask,
    scaled_dot_attention,
)

LAYER_NORM_EPS = 1e-12  # the authors' code (BERT's value)
INIT_STD = 0.02  # the authors' initializer_range


def frequency_band(block: int, blocks: int, length: int, global_ratio: float) -> tuple[int, int]:
    """[lo, hi): the rFFT bins (of L//2+1) that hybrid attention block ``block`` sees.

    As the authors' code: with global_ratio > 1/blocks the bands have width global_ratio and
    slide by floor(bins * (1 - global_ratio) / (blocks - 1)) from the top of the spectrum down;
    otherwise the spectrum is cut into ``blocks`` disjoint bands, highest first. A band is never
    empty.
    """
    bins = length // 2 + 1
    if blocks > 1 and global_ratio > 1.0 / blocks:
        width, step = global_ratio, math.floor(bins * (1.0 - global_ratio) / (blocks - 1))
    else:
        width, step = 1.0 / blocks, bins / blocks
    lo = max(int(bins * (1.0 - width) - block * step), 0)
    hi = min(max(int(bins - block * step), lo + 1), bins)
    return lo, hi


class HybridAttention(nn.Module):
    """One hybrid attention layer over [N, L, H] sequences (valid slots ``mask``, left-aligned).

    Returns LayerNorm(x + Dropout(W_o((1 - alpha) * autocorrelation + alpha * attention))).
    """

    def __init__(self, hidden: int, heads: int, length: int, band: tuple[int, int], alpha: float, topk: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.alpha = alpha
        self.topk = max(1, min(topk, length))
        self.band = band
        self.qkv = nn.Linear(hidden, 3 * hidden)  # the code's query, key and value layers, fused
        self.dense = nn.Linear(hidden, hidden)
        self.attention_dropout = Dropout(attention_dropout)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def _band_limited(self, spectrum: torch.Tensor) -> torch.Tensor:
        lo, hi = self.band
        keep = torch.zeros(spectrum.shape[1], dtype=torch.bool, device=spectrum.device)
        keep[lo:hi] = True
        return spectrum * keep[None, :, None]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        N, L, H = x.shape
        keep = mask[..., None].to(x.dtype)
        # Padding must not reach the spectra: zero q, k, v there (the biases would not be).
        q, k, v = (self.qkv(x) * keep).chunk(3, dim=-1)
        qf = self._band_limited(torch.fft.rfft(q, dim=1))  # [N, L//2+1, H]
        kf = self._band_limited(torch.fft.rfft(k, dim=1))

        # Frequency domain: auto-correlation R(tau) = sum_s q[s + tau] . k[s] / H over the band
        # (averaging over heads and channels commutes with the inverse FFT).
        corr = torch.fft.irfft((qf * kf.conj()).mean(-1), n=L, dim=1)  # [N, L]: one value per delay
        last = (mask.sum(1) - 1).clamp_min(0)
        delays = torch.arange(L, device=x.device)
        corr = corr.masked_fill(delays[None, :] > last[:, None], float("-inf"))  # look back at most to the first item
        top, lag = corr.topk(self.topk, dim=1)  # [N, k]
        weights = torch.softmax(top, dim=1)
        freq = torch.zeros_like(v)
        for i in range(self.topk):  # v[t - tau_i] (0 before the first item)
            src = (delays[None, :] - lag[:, i : i + 1]) % L
            freq = freq + weights[:, i, None, None] * v.gather(1, src[..., None].expand(-1, -1, H))
        context = freq

        if self.alpha > 0:  # time domain: self-attention over the band-limited q, k, v
            vt = torch.fft.irfft(self._band_limited(torch.fft.rfft(v, dim=1)), n=L, dim=1)
            qt, kt = torch.fft.irfft(qf, n=L, dim=1), torch.fft.irfft(kf, n=L, dim=1)
            split = lambda t: t.view(N, L, self.heads, H // self.heads).transpose(1, 2)
            att = scaled_dot_attention(split(qt), split(kt), split(vt), attention_mask(mask, causal=True), self.attention_dropout)
            context = (1.0 - self.alpha) * freq + self.alpha * att.transpose(1, 2).reshape(N, L, H)
        return self.norm(x + self.dropout(self.dense(context)))


class FEABlock(nn.Module):
    """Hybrid attention, then LayerNorm(x + Dropout(FFN(x))) with a GELU feed-forward."""

    def __init__(
        self, hidden: int, heads: int, inner: int, length: int, band: tuple[int, int], alpha: float, topk: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.attention = HybridAttention(hidden, heads, length, band, alpha, topk, dropout, attention_dropout)
        self.feed_forward = FeedForward(hidden, inner, "gelu")
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.norm(x + self.dropout(self.feed_forward(x))) * mask[..., None].to(x.dtype)


class FEARec(SequentialRecommender):
    """forward(batch) -> logits [B]; sequence_logits(batch) -> next-item logits [B, L] x 2;
    extra_loss(batch) -> the contrastive regulariser (sum over sequences, sequences)."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig) -> None:
        c = cfg.fearec
        c.check()
        super().__init__(spec, c.hidden)
        self.cfg = c
        L = self.length = spec.history_length
        self.positions = LearnedPositions(L, c.hidden)
        self.input_norm = nn.LayerNorm(c.hidden, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(c.dropout)
        topk = int(c.topk_factor * math.log(L)) if L > 1 else 1
        self.blocks = nn.ModuleList(
            FEABlock(
                c.hidden, c.heads, c.inner, L, frequency_band(i, c.blocks, L, c.global_ratio), c.time_attention_share, topk, c.dropout, c.attention_dropout
            )
            for i in range(c.blocks)
        )
        self._views_source: tuple[SequenceBatch, Embedded] | None = None
        for name, p in self.named_parameters():  # the authors' init: N(0, 0.02) weights, zero biases
            if p.dim() == 2:
                nn.init.normal_(p, std=INIT_STD)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    # -- the encoder ------------------------------------------------------------------------

    def _fit(self, hist: torch.Tensor) -> torch.Tensor:
        """[B, W, H] -> [B, L, H] on the model's length (rows hold at most L items)."""
        W = hist.shape[1]
        if W >= self.length:
            return hist[:, : self.length]
        return F.pad(hist, (0, 0, 0, self.length - W))

    def represent(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """FEARec's representation [N, H] of N left-aligned sequences ``items`` [N, L, H] (0 at
        padding) of ``lengths`` items: the last block's output at the last valid position."""
        L = self.length
        mask = torch.arange(L, device=items.device)[None, :] < lengths[:, None]
        x = self.input_norm(items + self.positions(lengths, L, self.cfg.positions))
        x = self.dropout(x) * mask[..., None].to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x[torch.arange(len(x), device=x.device), (lengths - 1).clamp_min(0)]

    def encode(self, batch: SequenceBatch, embedded: Embedded) -> torch.Tensor:
        """Hidden states [B, W, H]: position t is the representation of the prefix 0..t alone."""
        self._remember(batch, embedded)
        B, W, H = embedded.hist.shape
        L = self.length
        hist = self._fit(embedded.hist)
        t = torch.arange(L, device=hist.device)
        prefix_len = torch.minimum(t[None, :] + 1, batch.lengths[:, None])  # [B, L]
        in_prefix = (t[None, None, :] < prefix_len[..., None]).to(hist.dtype)  # [B, L(prefix), L(slot)]
        prefixes = hist[:, None, :, :] * in_prefix[..., None]  # [B, L, L, H]
        h = self.represent(prefixes.reshape(B * L, L, H), prefix_len.reshape(-1)).view(B, L, H)
        h = h * (t[None, :] < batch.lengths[:, None])[..., None].to(h.dtype)
        return h[:, :W] if W <= L else F.pad(h, (0, 0, 0, W - L))

    def last_hidden(self, batch: SequenceBatch, embedded: Embedded) -> torch.Tensor:
        """The representation at the last position: one encoder pass per row (not per prefix)."""
        self._remember(batch, embedded)
        h = self.represent(self._fit(embedded.hist), batch.lengths)
        return h * (batch.lengths > 0)[:, None].to(h.dtype)

    def score_pairs(self, batch: SequenceBatch) -> torch.Tensor:
        # Encoding each history once (the base class) made FEARec's default run fall below
        # popularity on the CI dataset (AUC 0.48 vs 0.54); until that is understood, FEARec
        # scores every row from its own encoding, as before.
        return self(batch)

    # -- the regulariser --------------------------------------------------------------------

    def _remember(self, batch: SequenceBatch, embedded: Embedded) -> None:
        # extra_loss reuses the training forward's lookups: one lookup per step, so the tables'
        # fused optimiser applies one update per step, as for every other model.
        self._views_source = (batch, embedded) if self.training else None

    def extra_loss(self, batch: SequenceBatch) -> tuple[torch.Tensor, int] | None:
        """(sum over this rank's sequences of the weighted contrastive terms, their count).

        The sequences are every row of a next-item batch, or the positives (first half) of a
        pointwise batch, whose second half repeats their histories with negative targets.
        """
        c = self.cfg
        source, self._views_source = self._views_source, None
        if c.contrastive_weight == 0 and c.frequency_weight == 0:
            return None
        e = source[1] if source is not None and source[0] is batch else embed(self.embeddings, batch)
        rows = len(batch) if batch.neg_seq is not None else len(batch) // 2
        items, lengths = self._fit(e.hist[:rows]), batch.lengths[:rows]
        # two dropout views (two calls of each dropout layer), of the batch's first rows
        with dropout_rows(None if batch.row_ids is None else batch.row_ids[:rows]):
            z1, z2 = self.represent(items, lengths), self.represent(items, lengths)
        total = z1.new_zeros(())
        if c.contrastive_weight > 0:
            z1_all, z2_all, offset = gather_views(z1, z2)
            total = total + c.contrastive_weight * info_nce_sum(z1, z2, z1_all, z2_all, offset, c.temperature)
        if c.frequency_weight > 0:
            total = total + c.frequency_weight * frequency_gap(z1, z2).sum()
        return total, rows


def gather_views(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Both views of the global batch (ranks' rows in rank order, gradients flow back to their
    owners) and this rank's offset in it; every rank has the same number of rows."""
    if world_size() == 1:
        return z1, z2, 0
    from torch.distributed.nn.functional import all_gather

    both = torch.cat(all_gather(torch.stack([z1, z2])), dim=1)  # [2, N, H]
    return both[0], both[1], rank() * z1.shape[0]


def info_nce_sum(z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor, z2_all: torch.Tensor, offset: int, temperature: float) -> torch.Tensor:
    """Sum over local sequences i of (l(z1_i) + l(z2_i)) / 2, where l(a) is the cross-entropy of
    picking a's other view among all 2N global views but a itself (dot product / temperature):
    the authors' InfoNCE, whose mean over the N sequences is their loss."""
    n, N = z1.shape[0], z1_all.shape[0]
    sim = torch.cat([z1, z2]) @ torch.cat([z1_all, z2_all]).T / temperature  # [2n, 2N]
    i = torch.arange(n, device=z1.device) + offset
    own = torch.cat([i, i + N])
    other = torch.cat([i + N, i])
    sim = sim.masked_fill(F.one_hot(own, 2 * N).bool(), float("-inf"))
    return F.cross_entropy(sim, other, reduction="sum") / 2


def frequency_gap(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """[N]: mean over frequencies of |rFFT(z1) - rFFT(z2)| (orthonormal FFT over the hidden
    dimension), the authors' frequency-domain regulariser per sequence."""
    return (torch.fft.rfft(z1, dim=-1, norm="ortho") - torch.fft.rfft(z2, dim=-1, norm="ortho")).abs().mean(-1)
