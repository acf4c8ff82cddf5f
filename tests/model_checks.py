"""Checks every model must pass (used by test_models.py for each registered model)."""

from __future__ import annotations

import torch
from torch.func import functional_call

from atjt_dist.models.batch import SequenceBatch


def random_batch(spec, rows: int = 12, seed: int = 0, min_len: int = 0) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    L = spec.history_length
    lengths = torch.randint(min_len, L + 1, (rows,), generator=g)
    hist = torch.randint(1, spec.num_items + 1, (rows, L), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    hist = hist * mask
    cat_of = torch.randint(1, spec.num_categories + 1, (spec.num_items + 1,), generator=g)
    cat_of[0] = 0
    target = torch.randint(1, spec.num_items + 1, (rows,), generator=g)
    return SequenceBatch(
        user=torch.randint(0, spec.num_users, (rows,), generator=g),
        hist=hist,
        hist_cat=cat_of[hist] * mask,
        lengths=lengths,
        target=target,
        target_cat=cat_of[target],
        label=(torch.rand(rows, generator=g) > 0.5).float(),
    )


def with_garbage_padding(batch: SequenceBatch, seed: int = 1) -> SequenceBatch:
    """The same batch with random ids written into the padding positions."""
    g = torch.Generator().manual_seed(seed)
    pad = ~batch.mask
    noisy = batch.select(slice(None))
    noisy.hist = torch.where(pad, torch.randint(1, 50, batch.hist.shape, generator=g), batch.hist)
    noisy.hist_cat = torch.where(pad, torch.randint(1, 3, batch.hist.shape, generator=g), batch.hist_cat)
    return noisy


def gradcheck_parameters(model: torch.nn.Module, batch: SequenceBatch, names: list[str]) -> bool:
    """torch.autograd.gradcheck of the summed logits w.r.t. the named parameters (in float64)."""
    model = model.double()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    chosen = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def f(*values):
        state = {**params, **buffers, **dict(zip(names, values))}
        return functional_call(model, state, (batch,)).sum()

    return torch.autograd.gradcheck(f, chosen, eps=1e-6, atol=1e-5)
