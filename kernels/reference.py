"""Torch reference of the self-normalised weighted BCE, with analytic gradients.

    l_i = BCE(sigmoid(x_i), y_i)  (computed stably from the logit x_i)
    L   = sum_i w_i l_i / W,   W = sum_i w_i          (rows with mask_i = 0 are left out)

Gradients (METHOD.md section 5; s_i = sigmoid(x_i)):

    dL/dx_i = w_i (s_i - y_i) / W
    dL/dw_i = (l_i - L) / W

``W = 0`` (all weights zero, or every row masked) is defined as L = 0 with zero gradients: a
batch that carries no weight contributes nothing, instead of NaN.

A masked row is left out entirely: its weight gradient is 0 too (it does not enter L), and its
logit may be anything (NaN included) without reaching L or another row's gradient.

Weights: one per row, or ``weights.numel() == N / k`` for an integer k: weight j then covers rows
j*k .. j*k+k-1 of the flattened logits (e.g. logits [B, T] with weights [B]; a single weight
covers every row), and its gradient is the sum over its rows.

``reduce`` (optional) sums a float64 vector over ranks (e.g. an all-reduce): with it, S and W are
the global sums, every rank gets the global L, and each rank's gradients are its rows' share of
the global gradient. This is what keeps a data-parallel run equal to a single-process one.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs (fp32 accumulation), fp64 for fp64 (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def bce_with_logits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row binary cross-entropy on logits, stable for |x| large."""
    dt = compute_dtype(x)
    return F.binary_cross_entropy_with_logits(x.to(dt), y.to(dt), reduction="none")


def rows_per_weight(n_rows: int, n_weights: int) -> int:
    """k such that each weight covers k consecutive rows (1: one weight per row)."""
    if n_weights == n_rows:
        return 1
    if n_weights == 0 or n_rows % n_weights:
        raise ValueError(
            f"weights must have one entry per row, or one per k consecutive rows (N divisible by their count): got {n_weights} weights for {n_rows} rows"
        )
    return n_rows // n_weights


def _prepare(logits, labels, weights, mask):
    """(per-row weights in the compute dtype, rows kept or None, k rows per weight)."""
    k = rows_per_weight(logits.numel(), weights.numel())
    w = weights.to(compute_dtype(logits)).reshape(-1)
    if k > 1:
        w = w.repeat_interleave(k)
    w = w.reshape(logits.shape)
    keep = None
    if mask is not None:
        if mask.numel() != logits.numel():
            raise ValueError(f"mask must have one entry per row: got {tuple(mask.shape)} for logits {tuple(logits.shape)}")
        keep = mask.reshape(logits.shape) != 0
        w = torch.where(keep, w, torch.zeros_like(w))
    return w, keep, k


class _WeightedBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, mask, reduce):
        w, keep, k = _prepare(logits, labels, weights, mask)
        loss = bce_with_logits(logits, labels.reshape(logits.shape))
        wl = w.double() * loss.double()
        if keep is not None:  # a masked row's logit may be anything, NaN included
            wl = torch.where(keep, wl, torch.zeros_like(wl))
        sums = torch.stack([wl.sum(), w.double().sum()])
        if reduce is not None:
            sums = reduce(sums)
        S, W = sums[0], sums[1]
        L = torch.where(W > 0, S / torch.where(W > 0, W, torch.ones_like(W)), torch.zeros_like(W))
        ctx.save_for_backward(logits, labels, w, loss, L, W, keep)
        ctx.weights_dtype = weights.dtype
        ctx.weights_shape = weights.shape
        ctx.rows_per_weight = k
        return L.to(compute_dtype(logits))

    @staticmethod
    def backward(ctx, grad):
        # No branch on W's value: the backward never synchronises with the device.
        logits, labels, w, loss, L, W, keep = ctx.saved_tensors
        dt = compute_dtype(logits)
        pos = W > 0
        inv = torch.where(pos, grad.double() / torch.where(pos, W, torch.ones_like(W)), torch.zeros_like(W)).to(dt)
        keep = pos if keep is None else keep & pos  # W <= 0: zero gradients, even for infinite logits
        s = torch.sigmoid(logits.to(dt))
        gx = torch.where(keep, w * (s - labels.reshape(logits.shape).to(dt)) * inv, 0.0).to(logits.dtype)
        gw = torch.where(keep, (loss - L.to(dt)) * inv, 0.0)
        if ctx.rows_per_weight > 1:
            gw = gw.reshape(-1, ctx.rows_per_weight).sum(dim=1)
        return gx, None, gw.to(ctx.weights_dtype).reshape(ctx.weights_shape), None, None


def weighted_bce_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    reduce: Reduce = None,
) -> torch.Tensor:
    """Self-normalised weighted BCE on logits (scalar), differentiable in logits and weights."""
    return _WeightedBCE.apply(logits, labels, weights, mask, reduce)


def weighted_bce_autograd(logits, labels, weights, mask=None):
    """The same loss written with plain autograd ops (a check of the analytic gradients)."""
    w = _prepare(logits, labels, weights, mask)[0]
    loss = bce_with_logits(logits, labels.reshape(logits.shape))
    W = w.sum()
    return (w * loss).sum() / W
