"""Torch reference of the self-normalised weighted BCE, with analytic gradients.

    l_i = BCE(sigmoid(x_i), y_i)  (computed stably from the logit x_i)
    L   = sum_i w_i l_i / W,   W = sum_i w_i          (rows with mask_i = 0 are left out)

Gradients (METHOD.md section 5; s_i = sigmoid(x_i)):

    dL/dx_i = w_i (s_i - y_i) / W
    dL/dw_i = (l_i - L) / W

``W = 0`` (all weights zero, or every row masked) is defined as L = 0 with zero gradients: a
batch that carries no weight contributes nothing, instead of NaN.

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


def _prepare(logits, labels, weights, mask):
    w = weights.to(compute_dtype(logits))
    if w.dim() == 0 or w.numel() != logits.numel():
        w = w.expand_as(logits) if w.numel() == 1 else w
    if w.shape != logits.shape:
        raise ValueError(f"weights must have one entry per row: got {tuple(w.shape)} for logits {tuple(logits.shape)}")
    if mask is not None:
        w = w * mask.to(w.dtype)
    return w


class _WeightedBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, mask, reduce):
        w = _prepare(logits, labels, weights, mask)
        loss = bce_with_logits(logits, labels)
        sums = torch.stack([(w.double() * loss.double()).sum(), w.double().sum()])
        if reduce is not None:
            sums = reduce(sums)
        S, W = sums[0], sums[1]
        L = torch.where(W > 0, S / torch.where(W > 0, W, torch.ones_like(W)), torch.zeros_like(W))
        ctx.save_for_backward(logits, labels, w, loss, L, W)
        ctx.weights_dtype = weights.dtype
        ctx.weights_shape = weights.shape
        return L.to(compute_dtype(logits))

    @staticmethod
    def backward(ctx, grad):
        logits, labels, w, loss, L, W = ctx.saved_tensors
        if W <= 0:
            zero_w = torch.zeros(ctx.weights_shape, dtype=ctx.weights_dtype, device=logits.device)
            return torch.zeros_like(logits), None, zero_w, None, None
        dt = compute_dtype(logits)
        inv = (grad.double() / W).to(dt)
        s = torch.sigmoid(logits.to(dt))
        gx = (w * (s - labels.to(dt)) * inv).to(logits.dtype)
        gw = (loss - L.to(dt)) * inv
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
    w = _prepare(logits, labels, weights, mask)
    loss = bce_with_logits(logits, labels)
    W = w.sum()
    return (w * loss).sum() / W
