"""The objectives: baseline, ATJT, T-CE and R-CE as the papers define them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atjt_dist.config import ConfigError, build_config
from atjt_dist.models.batch import SequenceBatch
from atjt_dist.objective import StepOutput, compute_losses, objective_name, tce_drop_rate, tce_keep_mask


def _rec(rows=8, seed=0):
    """A pointwise batch: rows/2 positives then their negatives."""
    g = torch.Generator().manual_seed(seed)
    half = rows // 2
    z = torch.zeros(rows, 3, dtype=torch.long)
    return SequenceBatch(
        user=torch.arange(rows) % half,
        hist=z,
        hist_cat=z,
        lengths=torch.full((rows,), 3),
        target=torch.arange(rows),
        target_cat=torch.zeros(rows, dtype=torch.long),
        label=torch.cat([torch.ones(half), torch.zeros(half)]),
    ), torch.randn(rows, generator=g) * 2


def test_objective_names_resolve():
    assert objective_name(build_config([])) == "atjt"
    assert objective_name(build_config(["--atjt.enabled=false"])) == "bce"
    assert objective_name(build_config(["--objective.name=tce"])) == "tce"
    with pytest.raises(ValueError, match="contradicts"):
        build_config(["--objective.name=atjt", "--atjt.enabled=false"])


def test_baseline_is_the_mean_bce():
    rec, x = _rec()
    x.requires_grad_()
    losses = compute_losses(StepOutput(rec_logits=x), rec, None, build_config(["--atjt.enabled=false"]), "recommender", 0)
    expected = F.binary_cross_entropy_with_logits(x, rec.label)
    assert torch.allclose(losses.backward, expected)
    assert torch.allclose(losses.stats["loss"], expected.detach())


def test_atjt_weights_are_shared_by_a_positive_and_its_negative():
    rec, x = _rec()
    w_logits = torch.randn(4, requires_grad=True)
    x.requires_grad_()
    cfg = build_config([])
    losses = compute_losses(StepOutput(rec_logits=x, weight_logits=w_logits), rec, None, cfg, "joint", 0)
    w = torch.sigmoid(w_logits) ** cfg.atjt.weight_exponent
    rows_w = torch.cat([w, w])
    l = F.binary_cross_entropy_with_logits(x, rec.label, reduction="none")
    assert torch.allclose(losses.backward, (rows_w * l).sum() / rows_w.sum())
    losses.backward.backward()
    assert w_logits.grad is not None and w_logits.grad.abs().sum() > 0  # not detached by default


@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5])
def test_atjt_weights_are_p_clean_to_the_weight_exponent(gamma):
    rec, x = _rec()
    w_logits = torch.randn(4)
    cfg = build_config([f"--atjt.weight_exponent={gamma}"])
    losses = compute_losses(StepOutput(rec_logits=x, weight_logits=w_logits), rec, None, cfg, "joint", 0)
    w = torch.sigmoid(w_logits) ** gamma
    rows_w = torch.cat([w, w])
    l = F.binary_cross_entropy_with_logits(x, rec.label, reduction="none")
    assert torch.allclose(losses.backward, (rows_w * l).sum() / rows_w.sum())
    assert torch.allclose(losses.stats["weight_sum"], w.sum())


def test_atjt_weight_exponent_must_be_positive():
    with pytest.raises(ConfigError, match=r"atjt\.weight_exponent.*> 0"):
        build_config(["--atjt.weight_exponent=0"])


def test_atjt_detach_stops_the_gradient_to_the_weights():
    rec, x = _rec()
    w_logits = torch.randn(4, requires_grad=True)
    losses = compute_losses(StepOutput(rec_logits=x.requires_grad_(), weight_logits=w_logits), rec, None, build_config(["--atjt.detach"]), "joint", 0)
    losses.backward.backward()
    assert w_logits.grad is None or torch.all(w_logits.grad == 0)


def test_atjt_adds_lambda_times_the_recognizer_loss():
    rec, x = _rec()
    aux, _ = _rec(rows=6, seed=1)
    aux_logits = torch.randn(6)
    cfg = build_config(["--atjt.aux_weight=3"])
    out = StepOutput(rec_logits=x, weight_logits=torch.zeros(4), aux_logits=aux_logits)
    losses = compute_losses(out, rec, aux, cfg, "joint", 0)
    l_r = F.binary_cross_entropy_with_logits(x, rec.label)  # w = 0.5 everywhere = plain mean
    l_d = F.binary_cross_entropy_with_logits(aux_logits, aux.label)
    assert torch.allclose(losses.backward, l_r + 3 * l_d)
    clean = aux.label > 0.5
    assert torch.allclose(losses.stats["w_clean_sum"], torch.sigmoid(aux_logits)[clean].sum())


def test_tce_drop_rate_ramps_linearly_to_its_maximum():
    cfg = build_config(["--objective.name=tce", "--objective.tce_max_drop=0.2", "--objective.tce_ramp_steps=100"])
    assert tce_drop_rate(cfg, 0) == 0.0
    assert tce_drop_rate(cfg, 50) == pytest.approx(0.1)
    assert tce_drop_rate(cfg, 100) == pytest.approx(0.2) and tce_drop_rate(cfg, 10_000) == pytest.approx(0.2)


def test_tce_drops_the_positives_with_the_largest_loss():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0.0])
    logits = torch.tensor([3.0, -4.0, 0.5, -1.0, 9.0, 9.0, -9.0, -9.0])  # positives' losses: rows 1 > 3 > 2 > 0
    keep = tce_keep_mask(logits, labels, drop_rate=0.25)  # 0.25 x 8 rows = 2 dropped
    assert keep.tolist() == [True, False, True, False, True, True, True, True]
    assert tce_keep_mask(logits, labels, 0.0).all()


def test_tce_loss_is_the_mean_over_kept_rows():
    rec, x = _rec()
    cfg = build_config(["--objective.name=tce", "--objective.tce_ramp_steps=10", "--objective.tce_max_drop=0.25"])
    losses = compute_losses(StepOutput(rec_logits=x), rec, None, cfg, "recommender", step=10)
    keep = tce_keep_mask(x, rec.label, 0.25)
    assert (~keep).sum() == 2
    assert torch.allclose(losses.backward, F.binary_cross_entropy_with_logits(x[keep], rec.label[keep]))


def test_rce_is_the_authors_weighted_mean_with_detached_weights():
    rec, x = _rec()
    x.requires_grad_()
    cfg = build_config(["--objective.name=rce", "--objective.rce_beta=0.25"])
    losses = compute_losses(StepOutput(rec_logits=x), rec, None, cfg, "recommender", 0)
    x2 = x.detach().clone().requires_grad_()
    p = torch.sigmoid(x2).detach()
    w = torch.where(rec.label > 0.5, p, 1 - p).pow(0.25)
    expected = (F.binary_cross_entropy_with_logits(x2, rec.label, reduction="none") * w).mean()
    assert torch.allclose(losses.backward, expected, atol=1e-6)
    losses.backward.backward()
    expected.backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
