"""Model checks: shapes, padding, determinism, gradients, Dice, the registry."""

from __future__ import annotations

import pytest
import torch
from model_checks import gradcheck_parameters, random_batch, with_garbage_padding

from atjt_dist.config import ModelConfig, RecognizerConfig
from atjt_dist.models import REGISTRY, ModelSpec, NoiseRecognizer, build_recommender
from atjt_dist.models.layers import Dice

SPEC = ModelSpec(num_users=30, num_items=40, num_categories=5, history_length=7)


def _model(name):
    torch.manual_seed(0)
    if name == "recognizer":
        return NoiseRecognizer(SPEC, RecognizerConfig(dropout=0.0))
    return build_recommender(SPEC, ModelConfig(name=name))


ALL = sorted(REGISTRY) + ["recognizer"]


@pytest.mark.parametrize("name", ALL)
def test_one_logit_per_row(name):
    out = _model(name)(random_batch(SPEC, rows=12))
    assert out.shape == (12,) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_padding_never_changes_a_score(name):
    model = _model(name).eval()
    batch = random_batch(SPEC, rows=16, min_len=1)
    assert torch.allclose(model(batch), model(with_garbage_padding(batch)))


@pytest.mark.parametrize("name", ALL)
def test_history_changes_the_score(name):
    model = _model(name).eval()
    batch = random_batch(SPEC, rows=16, min_len=3)
    other = batch.select(slice(None))
    other.hist = torch.where(batch.mask, (batch.hist % SPEC.num_items) + 1, batch.hist)
    assert not torch.allclose(model(batch), model(other))


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_model(name):
    batch = random_batch(SPEC)
    assert torch.equal(_model(name).eval()(batch), _model(name).eval()(batch))


@pytest.mark.parametrize("name", ALL)
def test_rows_are_independent_in_eval(name):
    model = _model(name).eval()
    batch = random_batch(SPEC, rows=10)
    whole = model(batch)
    assert torch.allclose(whole[:4], model(batch.select(slice(0, 4))), atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_on_a_tiny_instance(name):
    """Analytic vs numerical gradients of the dense layers (float64; TorchRec's lookups are
    fp32 by construction, so the tables are checked by training tests instead)."""
    model = _model(name)
    model.train()
    batch = random_batch(SPEC, rows=6, min_len=1)
    # every small dense tensor (biases, Dice/PReLU slopes, the output layer): a numerical
    # Jacobian costs two forward passes per element, so the big matrices are left out
    dense = [n for n, p in model.named_parameters() if "embeddings" not in n and p.numel() <= 64]
    assert len(dense) >= 3
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert gradcheck_parameters(model, batch, dense)
    finally:
        torch.set_default_dtype(previous)


def test_empty_history_gives_a_finite_score():
    model = _model("din").eval()
    batch = random_batch(SPEC, rows=4)
    batch.lengths[:] = 0
    batch.hist[:] = 0
    batch.hist_cat[:] = 0
    assert torch.isfinite(model(batch)).all()


def test_dice_alpha_and_statistics_learn():
    torch.manual_seed(0)
    dice = Dice(3)
    opt = torch.optim.SGD(dice.parameters(), lr=0.5)
    x = torch.randn(64, 3) * 2 + 1
    dice(x).pow(2).sum().backward()
    assert dice.alpha.grad is not None and dice.alpha.grad.abs().sum() > 0
    opt.step()
    assert dice.alpha.abs().sum() > 0  # alpha is a persistent parameter that moved
    assert not torch.allclose(dice.running_mean, torch.zeros(3))  # running stats were updated
    dice.eval()
    assert torch.allclose(dice(x[:1]), dice(x[:2])[:1])  # eval: no batch dependence


def test_dice_statistics_ignore_masked_positions():
    dice = Dice(2)
    x = torch.randn(4, 5, 2)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, :3] = True
    y1 = dice(x, mask)
    x2 = x.clone()
    x2[:, 3:] = 1e6  # garbage at masked positions
    y2 = dice(x2, mask)
    assert torch.allclose(y1[:, :3], y2[:, :3])


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="din"):
        build_recommender(SPEC, ModelConfig(name="nosuch"))


def test_every_batch_field_converts_from_numpy_to_tensors():
    """BatchArrays and SequenceBatch share one field list (data/batch_fields.py); from_arrays
    converts each field with its dtype (ids int64, floats float32, booleans kept)."""
    from dataclasses import fields

    import numpy as np

    from atjt_dist.data.batch_fields import BatchFields
    from atjt_dist.data.dataset import BatchArrays
    from atjt_dist.models.batch import SequenceBatch

    R, L = 3, 4
    ids = np.arange(R * L, dtype=np.int32).reshape(R, L)
    arrays = BatchArrays(
        user=np.arange(R, dtype=np.int64),
        hist=ids,
        hist_cat=ids + 1,
        lengths=np.array([4, 2, 0], dtype=np.int32),
        target=np.array([5, 6, 7], dtype=np.int32),
        target_cat=np.array([1, 2, 3], dtype=np.int32),
        label=np.array([1, 0, 1], dtype=np.float32),
        neg_seq=ids + 2,
        candidates=ids[:, :2],
        replaced=ids % 2 == 0,
        weight=np.array([1, 0, 1], dtype=np.float32),
        row_ids=np.array([10, 11, 12], dtype=np.int64),
    )
    batch = SequenceBatch.from_arrays(arrays)
    assert [f.name for f in fields(SequenceBatch)] == [f.name for f in fields(BatchArrays)] == [f.name for f in fields(BatchFields)]
    for f in fields(BatchFields):
        value = getattr(batch, f.name)
        expected = {"label": torch.float32, "weight": torch.float32, "replaced": torch.bool}.get(f.name, torch.int64)
        assert value.dtype == expected, f.name
        assert np.array_equal(value.numpy(), getattr(arrays, f.name)), f.name
