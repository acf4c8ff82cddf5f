"""The self-normalised weighted BCE reference: value, analytic gradients, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import atjt_kernels as K


def _data(n=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=dtype) * 3
    y = (torch.rand(n, generator=g) > 0.5).to(dtype)
    w = torch.rand(n, generator=g, dtype=dtype) + 0.05
    return x, y, w


def test_value_is_the_definition():
    x, y, w = _data()
    expected = (w * F.binary_cross_entropy_with_logits(x, y, reduction="none")).sum() / w.sum()
    assert torch.allclose(K.weighted_bce(x, y, w), expected)


def test_gradcheck_logits_and_weights():
    x, y, w = _data(n=9)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: K.weighted_bce(a, y, b), (x, w))


def test_analytic_gradients_match_the_formulas():
    x, y, w = _data(n=13, seed=3)
    x.requires_grad_()
    w.requires_grad_()
    L = K.weighted_bce(x, y, w)
    L.backward()
    W = w.detach().sum()
    l = F.binary_cross_entropy_with_logits(x.detach(), y, reduction="none")
    assert torch.allclose(x.grad, w.detach() * (torch.sigmoid(x.detach()) - y) / W)
    assert torch.allclose(w.grad, (l - L.detach()) / W)


def test_mask_leaves_rows_out():
    x, y, w = _data(n=10)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    assert torch.allclose(K.weighted_bce(x, y, w, mask=mask), K.weighted_bce(x[mask], y[mask], w[mask]))
    x.requires_grad_()
    K.weighted_bce(x, y, w, mask=mask).backward()
    assert torch.all(x.grad[~mask] == 0)


def test_zero_total_weight_is_zero_loss_and_zero_gradient():
    x, y, _ = _data(n=5)
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    x.requires_grad_()
    L = K.weighted_bce(x, y, w)
    L.backward()
    assert L.item() == 0.0
    assert torch.all(x.grad == 0) and torch.all(w.grad == 0)


def test_extreme_logits_are_finite():
    x = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    w = torch.ones(4, requires_grad=True)
    L = K.weighted_bce(x, y, w)
    L.backward()
    assert torch.isfinite(L) and L.item() == pytest.approx(50.0, rel=1e-6)
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_reduce_makes_two_halves_equal_the_whole():
    """Two 'ranks' with a summing reduce give the global loss and their rows' share of its gradient."""
    x, y, w = _data(n=12, seed=5)
    xa, xb = x[:5].clone().requires_grad_(), x[5:].clone().requires_grad_()
    wa, wb = w[:5].clone().requires_grad_(), w[5:].clone().requires_grad_()

    # the "all-reduce" sums both halves' [S, W]; emulate it with the other half's sums, detached
    def sums(xx, ww, yy):
        l = F.binary_cross_entropy_with_logits(xx.detach(), yy, reduction="none")
        return torch.stack([(ww.detach() * l).sum(), ww.detach().sum()]).double()

    La = K.weighted_bce(xa, y[:5], wa, reduce=lambda s: s + sums(xb, wb, y[5:]))
    Lb = K.weighted_bce(xb, y[5:], wb, reduce=lambda s: s + sums(xa, wa, y[:5]))
    full_x, full_w = x.clone().requires_grad_(), w.clone().requires_grad_()
    L = K.weighted_bce(full_x, y, full_w)
    (La + Lb).backward()  # each half's gradient only reaches its rows
    L.backward()
    assert torch.allclose(La, L) and torch.allclose(Lb, L)
    assert torch.allclose(torch.cat([xa.grad, xb.grad]), full_x.grad)
    assert torch.allclose(torch.cat([wa.grad, wb.grad]), full_w.grad)


def test_float32_matches_autograd_version():
    x, y, w = _data(n=64, dtype=torch.float32)
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    K.weighted_bce(x1, y, w1).backward()
    K.weighted_bce_autograd(x2, y, w2).backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6) and torch.allclose(w1.grad, w2.grad, atol=1e-6)
