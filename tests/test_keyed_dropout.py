"""Keyed dropout (models/layers.py, Dropout): a row's mask is a function of (seed, step, layer,
call, global row, element), so a row is dropped out the same way in a batch of any size, on any
process; the drop rate is p (rounded to 1/256) and the kept units are scaled by 1 / (1 - p).
The end-to-end check (1 vs 2 processes with the recogniser's dropout on) is in test_train.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_checks import random_batch
from torch import nn

from atjt_dist.config import RecognizerConfig, build_config
from atjt_dist.models import ModelSpec, build_recognizer, build_recommender
from atjt_dist.models.layers import (
    Dropout,
    _as_int64,
    dropout_rows,
    dropout_step,
    keep_mask,
    layer_id,
    mix64,
    mix64_,
    name_dropout_layers,
)
from atjt_dist.models.recognizers.transformer import TokenLayout

SPEC = ModelSpec(num_users=30, num_items=40, num_categories=5, history_length=7)


def _masks(shape, row_ids, seed=3, step=5, layer=11, threshold=128, **kw) -> torch.Tensor:
    """A layer's first mask in a step, for rows with global ids ``row_ids``."""
    with dropout_step(seed, step), dropout_rows(row_ids):
        return keep_mask(torch.Size(shape), torch.device("cpu"), threshold, layer, **kw)


def test_the_hash_is_splitmix64():
    values = [0, 1, 2, (1 << 63) - 1, -(1 << 63), -1, 0x0123456789ABCDEF]
    values += torch.randint(-(1 << 62), 1 << 62, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    z = torch.tensor(values, dtype=torch.int64)
    assert mix64_(z.clone()).tolist() == [_as_int64(mix64(v)) for v in values]
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF  # splitmix64's first output from seed 0


@pytest.mark.parametrize("shape", [(40, 7, 16), (40, 3)])
def test_a_rows_mask_is_the_same_in_the_batch_in_half_of_it_and_in_any_order(shape):
    rows = torch.arange(1000, 1000 + shape[0])
    whole = _masks(shape, rows)
    half = _masks((shape[0] // 2, *shape[1:]), rows[shape[0] // 2 :])
    assert torch.equal(whole[shape[0] // 2 :], half)
    perm = torch.randperm(shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(_masks(shape, rows[perm]), whole[perm])
    # another seed, step, layer or call draws another mask
    for other in (_masks(shape, rows, seed=4), _masks(shape, rows, step=6), _masks(shape, rows, layer=12)):
        assert not torch.equal(other, whole)
    with dropout_step(3, 5), dropout_rows(rows):
        first = keep_mask(torch.Size(shape), torch.device("cpu"), 128, 11)
        second = keep_mask(torch.Size(shape), torch.device("cpu"), 128, 11)
    assert torch.equal(first, whole) and not torch.equal(second, whole)


def test_groups_of_rows_and_packed_tokens_are_keyed_by_their_row():
    B, heads, T, H = 12, 2, 5, 16
    rows = torch.arange(50, 50 + B)
    # attention probabilities [B * heads, T, T]: row-major groups of B rows
    whole = _masks((B * heads, T, T), rows)
    assert torch.equal(whole[heads * B // 2 :], _masks((B // 2 * heads, T, T), rows[B // 2 :]))
    # packed tokens: the same masks for a row's tokens whatever the other rows' lengths; with H a
    # multiple of 8 they are exactly the padded layout's [B, T, H] masks at the valid positions
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, T, (B,), generator=g)
    mask = torch.arange(T - 1)[None, :] < lengths[:, None]
    layout = TokenLayout(mask, heads=1, dtype=torch.float32)
    packed = _masks((len(layout.index), H), rows, rows=layout.rows_slots()[0], slots=layout.rows_slots()[1])
    padded = _masks((B, T, H), rows).reshape(B * T, H)
    assert torch.equal(packed, padded[layout.index])
    half = TokenLayout(mask[B // 2 :], heads=1, dtype=torch.float32)
    packed_half = _masks((len(half.index), H), rows[B // 2 :], rows=half.rows_slots()[0], slots=half.rows_slots()[1])
    assert torch.equal(packed_half, padded.view(B, T, H)[B // 2 :].reshape(-1, H)[half.index])


@pytest.mark.parametrize("p", [0.5, 0.2, 0.1])
def test_the_drop_rate_is_p_and_kept_units_are_scaled(p):
    layer = Dropout(p).train()
    x = torch.ones(4000, 19, 8)
    with dropout_step(0, 0), dropout_rows(torch.arange(4000)):
        y = layer(x)
        z = layer(x)  # the layer's second call in the step
    dropped = y == 0
    n = dropped.numel()
    assert abs(layer.effective_p - p) <= 1 / 512
    assert abs(dropped.float().mean().item() - layer.effective_p) < 5 * np.sqrt(p * (1 - p) / n)
    # no position of a row is favoured, nor any row
    per_element = dropped.float().mean(0)
    assert (per_element - layer.effective_p).abs().max() < 5 * np.sqrt(p * (1 - p) / 4000)
    per_row = dropped.float().flatten(1).mean(1)
    assert per_row.std().item() == pytest.approx(np.sqrt(p * (1 - p) / (19 * 8)), rel=0.1)
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - layer.effective_p)))
    # two calls' masks are independent: they agree on p^2 + (1-p)^2 of the units
    agree = ((z == 0) == dropped).float().mean().item()
    q = layer.effective_p
    assert agree == pytest.approx(q * q + (1 - q) * (1 - q), abs=5 * np.sqrt(0.25 / n))


def test_eval_mode_and_use_outside_a_training_step():
    layer = Dropout(0.5)
    x = torch.randn(64, 10)
    assert layer.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    layer.train()
    # outside a step: keyed from torch's generator, so repeatable under the same seed
    torch.manual_seed(0)
    a, b = layer(x), layer(x)
    torch.manual_seed(0)
    assert torch.equal(layer(x), a) and not torch.equal(a, b)
    # inside a step the rows must be named
    with dropout_step(0, 0), pytest.raises(RuntimeError, match="dropout_rows"):
        layer(x)
    with dropout_step(0, 0), dropout_rows(torch.arange(5)), pytest.raises(ValueError, match="row-major"):
        layer(x)  # 64 entries are not groups of 5 rows


def test_layer_ids_come_from_module_paths():
    def tree():
        return nn.ModuleDict({"a": nn.Sequential(nn.Linear(2, 2), Dropout(0.5)), "b": Dropout(0.1)})

    one, two = tree(), tree()
    name_dropout_layers(one)
    name_dropout_layers(two)
    assert one["a"][1].layer_id == two["a"][1].layer_id == layer_id("a.1")
    assert one["b"].layer_id == layer_id("b") != one["a"][1].layer_id


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind in ("din", "transformer"):
        cfg = RecognizerConfig(kind=kind, dropout=0.5, transformer_dropout=0.25)
        model = build_recognizer(SPEC, cfg, table_prefix="rg")
    else:
        flags = {"sasrec": ["--model.sasrec.dropout=0.2"], "fearec": ["--model.fearec.dropout=0.5", "--model.fearec.attention_dropout=0.5"]}
        cfg = build_config([f"--model.name={kind}", *flags[kind], f"--data.history_length={SPEC.history_length}"])
        model = build_recommender(SPEC, cfg.model)
    name_dropout_layers(model)
    return model.train()


@pytest.mark.parametrize("kind", ["din", "transformer", "sasrec", "fearec"])
def test_a_model_computes_a_row_the_same_in_a_batch_and_in_half_of_it(kind):
    """What a process with half the global batch computes for its rows: the same outputs (dropout
    on) as the whole batch in one process gives them, because the masks follow the global row."""
    model = _model(kind)
    batch = random_batch(SPEC, rows=16, seed=2, min_len=1)
    batch.row_ids = torch.arange(100, 116)
    second = batch.select(slice(8, 16))

    def run(b, step=7, rows=True):
        with torch.no_grad(), dropout_step(42, step), dropout_rows(b.row_ids if rows else torch.arange(len(b))):
            return model(b)

    whole = run(batch)
    assert torch.allclose(run(second), whole[8:], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(run(batch, step=8), whole, atol=1e-6, rtol=1e-5)  # dropout is on
    # keyed by local positions instead, the half batch would draw the first half's masks
    assert not torch.allclose(run(second, rows=False), whole[8:], atol=1e-6, rtol=1e-5)
    model.eval()
    assert torch.allclose(model(second), model(batch)[8:], atol=1e-6, rtol=1e-5)


def test_recogniser_rows_are_numbered_after_the_recommenders_whatever_the_world(tiny_dataset):
    from conftest import PAPER_SCHEDULE

    from atjt_dist.data.dataset import TrainingData
    from atjt_dist.schedule import Schedule

    cfg = build_config([*PAPER_SCHEDULE, "--train.batch_size=64", "--atjt.recognizer_batch_size=32", "--atjt.num_parts=3"])

    def schedule(rank, world):
        data = TrainingData(
            tiny_dataset, history_length=cfg.data.history_length, seed=cfg.seed, rank=rank, world=world, split=cfg.data.split, mode=cfg.data.mode
        )
        return Schedule(data, cfg)

    plan = next(iter(schedule(0, 1).steps()))
    assert len(plan.recognizer_batches) == 2
    one = schedule(0, 1).recognizer_batch(plan)
    assert np.array_equal(one.row_ids, np.arange(128, 128 + 64))  # 2 x 64 recommender rows first
    halves = [schedule(r, 2).recognizer_batch(plan) for r in range(2)]
    both = np.concatenate([h.row_ids for h in halves])
    assert np.array_equal(np.sort(both), one.row_ids)
    for h in halves:  # the same row id holds the same row in either world
        where = np.searchsorted(one.row_ids, h.row_ids)
        assert np.array_equal(one.hist[where], h.hist) and np.array_equal(one.label[where], h.label)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_cpu_masks():
    rows = torch.arange(300, 364)
    cpu = _masks((64, 19, 32), rows)
    with dropout_step(3, 5), dropout_rows(rows.cuda()):
        cuda = keep_mask(torch.Size((64, 19, 32)), torch.device("cuda"), 128, 11)
    assert torch.equal(cuda.cpu(), cpu)


def test_exempt_rows_pass_every_layout_unchanged_and_the_others_are_dropped_as_before():
    """atjt.weight_dropout=false: the weights' rows pass the recogniser's dropout unchanged (as
    in eval mode) in the same pass as L_D's rows, whose masks stay what they were."""
    layer = Dropout(0.5).train()
    layer.layer_id = 9
    B, heads, T, H = 8, 2, 5, 16
    rows = torch.arange(200, 200 + B)
    exempt = torch.arange(B) < 3
    x = torch.randn(B * heads, T, H) + 3.0  # no zeros: a dropped unit shows as 0
    with dropout_step(1, 2), dropout_rows(rows):
        plain = layer(x)
    with dropout_step(1, 2), dropout_rows(rows, exempt):
        mixed = layer(x)
    by_row = mixed.view(B, heads, T, H)
    assert torch.equal(by_row[:3], x.view(B, heads, T, H)[:3])
    assert torch.equal(by_row[3:], plain.view(B, heads, T, H)[3:])
    assert (by_row[3:] == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    # packed entries name their rows: an entry of an exempt row passes unchanged
    entry_rows = torch.tensor([0, 0, 1, 4, 4, 7, 2])
    tokens = torch.randn(len(entry_rows), H) + 3.0
    with dropout_step(1, 2), dropout_rows(rows, exempt):
        out = layer(tokens, rows=entry_rows, slots=torch.zeros_like(entry_rows))
    kept = exempt[entry_rows]
    assert torch.equal(out[kept], tokens[kept])
    assert (out[~kept] == 0).any()
