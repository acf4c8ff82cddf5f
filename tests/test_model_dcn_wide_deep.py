"""DCN and Wide & Deep: the cross layer, the wide part's crossed features and hashing, their
TorchRec tables, the paper configs, and short training runs on the tiny dataset.

(The checks every model passes, shapes, padding, determinism, gradients, are in test_models.py.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PAPER_SCHEDULE
from model_checks import random_batch, with_garbage_padding

from atjt_dist.config import ConfigError, DCNConfig, ModelConfig, WideDeepConfig, build_config
from atjt_dist.models import ModelSpec, build_recommender
from atjt_dist.models.batch import embed
from atjt_dist.models.dcn import CrossLayer, embedded_fields
from atjt_dist.models.wide_deep import WIDE_PACK, WidePart, hash_cross
from atjt_dist.optim import _is_table

SPEC = ModelSpec(num_users=30, num_items=40, num_categories=5, history_length=7)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def _model(name, **kw):
    torch.manual_seed(0)
    return build_recommender(SPEC, ModelConfig(name=name, **kw)).eval()


# --------------------------------------------------------------------------------------------
# DCN
# --------------------------------------------------------------------------------------------


def test_cross_layer_is_the_formula_on_a_hand_built_example():
    layer = CrossLayer(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 0.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x0 = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, -1.0]])
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    # row 0: x.w = 0.5 - 2 = -1.5 -> x0 * -1.5 + b + x; row 1: x.w = 0 -> b + x
    expected = torch.tensor([[-1.5 + 0.1 + 0.5, -3.0 + 0.2 - 1.0, -4.5 + 0.3 + 2.0], [1.1, 1.2, 1.3]])
    assert torch.allclose(layer(x0, x), expected)


def test_dcn_is_cross_and_deep_networks_joined_by_one_linear_layer():
    model = _model("dcn")
    batch = random_batch(SPEC, rows=8)
    e = embed(model.embeddings, batch)
    x0 = embedded_fields(e)
    # x0 = [user; mean of the valid [item; category]; target item; target category]
    hist = torch.cat([e.hist, e.hist_cat], -1)
    for r in range(len(batch)):
        n = int(batch.lengths[r])
        pooled = hist[r, :n].mean(0) if n else torch.zeros(hist.shape[-1])
        assert torch.allclose(x0[r], torch.cat([e.user[r], pooled, e.target[r], e.target_cat[r]]), atol=1e-6)
    x = x0
    for layer in model.cross:
        x = x0 * (x * layer.weight).sum(-1, keepdim=True) + layer.bias + x
    expected = model.logits(torch.cat([x, model.deep(x0)], -1)).squeeze(-1)
    assert len(model.cross) == DCNConfig().cross_layers
    assert torch.allclose(model(batch), expected, atol=1e-6)


def test_dcn_without_deep_or_cross_network():
    batch = random_batch(SPEC, rows=5)
    cross_only = _model("dcn", dcn=DCNConfig(cross_layers=2, deep_hidden=[]))
    deep_only = _model("dcn", dcn=DCNConfig(cross_layers=0, deep_hidden=[16]))
    for model in (cross_only, deep_only):
        assert model(batch).shape == (5,)
    with pytest.raises(ConfigError, match="without a network"):
        DCNConfig(cross_layers=0, deep_hidden=[]).check()
    with pytest.raises(ConfigError, match="model.dcn.cross_layers"):
        DCNConfig(cross_layers=-1).check()


# --------------------------------------------------------------------------------------------
# Wide & Deep: hashing and crossed features
# --------------------------------------------------------------------------------------------


def test_hashing_is_deterministic_in_range_and_spreads_pairs():
    items = torch.arange(41)
    left, right = items.repeat_interleave(41), items.repeat(41)  # every (history, target) pair
    buckets = 2**18
    h = hash_cross(left, right, 41, buckets, "item")
    assert torch.equal(h, hash_cross(left.clone(), right.clone(), 41, buckets, "item"))
    assert h.dtype == torch.int64 and int(h.min()) >= 0 and int(h.max()) < buckets
    # 1681 pairs in 2^18 buckets: about 1681^2 / 2^19 = 5 colliding pairs are expected
    assert len(h) - len(torch.unique(h)) < 20
    # the pair is ordered, and each cross has its own hash
    assert not torch.equal(h, hash_cross(right, left, 41, buckets, "item"))
    assert not torch.equal(h, hash_cross(left, right, 41, buckets, "category"))
    # pinned values: buckets must never change (trained wide weights are indexed by them)
    assert hash_cross(torch.tensor([3, 0]), torch.tensor([7, 1]), 41, buckets, "item").tolist() == [
        ((3 * 41 + 7) * 1_500_450_271 + 1_023_694_981) % (2**31 - 1) % buckets,
        (1 * 1_500_450_271 + 1_023_694_981) % (2**31 - 1) % buckets,
    ]
    # exact in int64 with huge vocabularies: no overflow, no negative bucket
    big = torch.tensor([3_000_000_000, 2**31 - 2, 123])
    hb = hash_cross(big, big.flip(0), 3_000_000_001, buckets, "item")
    assert int(hb.min()) >= 0 and int(hb.max()) < buckets


def _cross_ids(model, batch):
    ids = model.wide.ids(batch)
    rows = torch.repeat_interleave(torch.arange(len(batch)), batch.lengths)
    return ids, rows


def test_crossed_features_follow_the_history_target_pairs():
    model = _model("wide_deep")
    batch = random_batch(SPEC, rows=10, min_len=2)
    ids, rows = _cross_ids(model, batch)
    item_ids, lengths = ids["wide_cross_item"]
    assert torch.equal(lengths, batch.lengths)
    # one crossed id per valid history position: hash(history item, target)
    mask = batch.mask
    expect = hash_cross(batch.hist[mask], batch.target[rows], SPEC.num_items + 1, model.wide.buckets, "item")
    assert torch.equal(item_ids, expect)
    expect_cat = hash_cross(batch.hist_cat[mask], batch.target_cat[rows], SPEC.num_categories + 1, model.wide.buckets, "category")
    assert torch.equal(ids["wide_cross_cat"][0], expect_cat)
    # the same ids again (deterministic), and padding never reaches them
    assert torch.equal(model.wide.ids(batch)["wide_cross_item"][0], item_ids)
    assert torch.equal(model.wide.ids(with_garbage_padding(batch))["wide_cross_item"][0], item_ids)

    # another target changes every crossed item id of its row, and only of its row
    other = batch.select(slice(None))
    other.target = batch.target.clone()
    other.target[0] = batch.target[0] % SPEC.num_items + 1
    changed = model.wide.ids(other)["wide_cross_item"][0] != item_ids
    assert changed[rows == 0].all() and not changed[rows != 0].any()
    # another history item changes exactly its position's crossed id
    other = batch.select(slice(None))
    other.hist = batch.hist.clone()
    other.hist[1, 1] = batch.hist[1, 1] % SPEC.num_items + 1
    changed = model.wide.ids(other)["wide_cross_item"][0] != item_ids
    assert int(changed.sum()) == 1 and int(changed.nonzero()) == int(batch.lengths[0]) + 1


def test_wide_part_is_the_sum_of_the_weights_of_its_features():
    model = _model("wide_deep")
    assert all(float(p.abs().sum()) == 0 for p in model.wide.parameters())  # a linear model starts at 0
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.wide.parameters():
            p.normal_()
    tables = {n.split(".")[-2].removeprefix("rec_wide_"): p for n, p in model.wide.named_parameters()}
    flat = {k: v.detach().reshape(-1) for k, v in tables.items()}  # packed: id i = row i//4, column i%4
    batch = random_batch(SPEC, rows=9)
    ids, rows = _cross_ids(model, batch)
    expected = flat["user"][batch.user] + flat["item"][batch.target] + flat["category"][batch.target_cat]
    crossed = flat["cross_item"][ids["wide_cross_item"][0]] + flat["cross_category"][ids["wide_cross_cat"][0]]
    expected = expected.index_add(0, rows, crossed)
    assert torch.allclose(model.wide(batch), expected, atol=1e-6)
    # and the model is wide + deep
    deep = model.deep(embedded_fields(embed(model.embeddings, batch))).squeeze(-1)
    assert torch.allclose(model(batch), deep + expected, atol=1e-5)
    # the crossed features move the score with the (history, target) pair, not only the deep part
    other = batch.select(slice(None))
    other.hist = torch.where(batch.mask, batch.hist % SPEC.num_items + 1, batch.hist)
    assert not torch.allclose(model.wide(batch), model.wide(other))


def test_wide_tables_are_torchrec_tables_with_a_complete_input():
    model = _model("wide_deep")
    configs = model.wide.embeddings.embedding_configs()
    assert [c.name for c in configs] == ["rec_wide_user", "rec_wide_item", "rec_wide_category", "rec_wide_cross_item", "rec_wide_cross_category"]
    assert all(c.embedding_dim % 4 == 0 and c.embedding_dim == WIDE_PACK for c in configs)  # FBGEMM's rule
    assert configs[3].num_embeddings == math.ceil(WideDeepConfig().cross_buckets / WIDE_PACK)
    # the KJT carries exactly the wide tables' features, one value per id
    batch = random_batch(SPEC, rows=6)
    kjt = WidePart.kjt(model.wide.ids(batch))
    assert sorted(kjt.keys()) == sorted(f for c in configs for f in c.feature_names)
    assert int(kjt.lengths().sum()) == kjt.values().numel() == 3 * 6 + 2 * int(batch.lengths.sum())
    # every table parameter gets the fused sparse optimiser, alone and inside the joint model
    tables = [n for n, _ in model.named_parameters() if "embeddings" in n]
    assert len(tables) == 8 and all(_is_table(n) and _is_table(f"recommender.{n}") for n in tables)


def test_wide_deep_config_checks_and_gradients_reach_the_wide_tables():
    for bad in (WideDeepConfig(cross_buckets=0), WideDeepConfig(cross_buckets=2**31), WideDeepConfig(deep_hidden=[])):
        with pytest.raises(ConfigError, match="model.wide_deep"):
            bad.check()
    model = _model("wide_deep").train()
    batch = random_batch(SPEC, rows=6, min_len=1)
    model(batch).sum().backward()
    grads = {n.split(".")[-2]: p.grad for n, p in model.wide.named_parameters()}
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())


# --------------------------------------------------------------------------------------------
# Paper configs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, check",
    [
        ("dcn", lambda m: m.dcn.cross_layers == 6 and m.dcn.deep_hidden == [1024, 1024]),
        ("wide_deep", lambda m: m.wide_deep.deep_hidden == [1024, 512, 256] and m.wide_deep.cross_buckets == 2**18),
    ],
)
def test_paper_configs_load_and_build(name, check):
    cfg = build_config(["--config", str(CONFIGS / f"{name}.yaml")])
    assert cfg.model.name == name and cfg.model.embedding_dim == 8 and check(cfg.model)
    model = build_recommender(SPEC, cfg.model).eval()
    assert model(random_batch(SPEC, rows=3)).shape == (3,)


# --------------------------------------------------------------------------------------------
# Training on the tiny dataset
# --------------------------------------------------------------------------------------------


def _train(tiny_dataset, run_dir, name, *extra):
    from atjt_dist.metrics import candidate_metrics
    from atjt_dist.trainer import Trainer

    cfg = build_config(
        [
            *PAPER_SCHEDULE,
            "--data.path",
            str(tiny_dataset),
            f"--model.name={name}",
            "--train.batch_size=64",
            f"--run-dir={run_dir}",
            "--no-train.progress_bar",
            "--train.log_every=3",
            *extra,
        ]
    )
    trainer = Trainer(cfg)
    try:
        trainer.train()
        metrics = trainer.evaluate()
        data = trainer.data
        popularity = torch.from_numpy(np.asarray(data.arrays.popularity, dtype=np.float64))
        candidates = torch.from_numpy(np.asarray(data.arrays.candidates)[data.test_users].astype(np.int64))
        popular = candidate_metrics(popularity[candidates], k=cfg.eval.k)
    finally:
        trainer.close()
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"], metrics, popular


@pytest.mark.parametrize("name", ["dcn", "wide_deep"])
def test_training_lowers_the_loss_and_beats_popularity(tiny_dataset, tmp_path, name):
    records, metrics, popular = _train(tiny_dataset, tmp_path, name, "--atjt.enabled=false", "--train.epochs=3")
    losses = [r["loss"] for r in records]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.02, losses
    assert metrics["users"] == 120
    assert metrics["auc"] > popular["auc"] + 0.1, (metrics, popular)
    assert metrics["hr@5"] > popular["hr@5"] + 0.1, (metrics, popular)


def test_training_with_atjt(tiny_dataset, tmp_path):
    """Wide & Deep under ATJT: its two embedding collections and the recognisers' in one tree."""
    records, metrics, _ = _train(tiny_dataset, tmp_path, "wide_deep", "--train.epochs=1", "--atjt.recognizer_batch_size=32")
    assert records and all(math.isfinite(r[k]) for r in records for k in ("loss", "loss_rec", "loss_aux", "w_clean", "w_noisy"))
    assert 0.0 <= metrics["auc"] <= 1.0
