"""Dice's evaluation statistics: recomputed exactly over training batches (PreciseBN)."""

from __future__ import annotations

import torch

from atjt_dist.models.layers import MLP, Dice, dice_layers, population_statistics


def test_population_statistics_are_the_pooled_moments_of_every_batch_seen():
    torch.manual_seed(0)
    mlp = MLP(6, [5, 4], 1, "dice")
    batches = [torch.randn(n, 6) * 3 + 1 for n in (7, 13, 4)]
    with torch.no_grad(), population_statistics(mlp) as layers:
        assert len(layers) == 2
        for x in batches:
            mlp(x)
    # the first Dice layer sees the first linear layer's outputs of all 24 rows at once
    first = torch.cat([mlp.linears[0](x) for x in batches]).detach()
    d = dice_layers(mlp)[0]
    torch.testing.assert_close(d.running_mean, first.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.running_var, first.var(0, unbiased=False), rtol=1e-4, atol=1e-5)
    assert all(layer.population_moments is None for layer in dice_layers(mlp))


def test_population_statistics_respect_the_mask_and_leave_unseen_layers_alone():
    d = Dice(3)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    with torch.no_grad(), population_statistics(d):
        d(x, mask)
    valid = x[mask]
    torch.testing.assert_close(d.running_mean, valid.mean(0))
    unseen = Dice(3)
    with population_statistics(unseen):
        pass
    torch.testing.assert_close(unseen.running_mean, torch.zeros(3))
    torch.testing.assert_close(unseen.running_var, torch.ones(3))


def test_running_averages_still_update_outside_the_block():
    d = Dice(2, momentum=0.5)
    d(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(d.running_mean, torch.tensor([1.0, 1.5]))
