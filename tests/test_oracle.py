"""The planted-noise oracle: ground-truth weights built with the recommender batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atjt_dist import train
from atjt_dist.config import ConfigError, SyntheticConfig, build_config
from atjt_dist.data.dataset import TrainingData
from atjt_dist.data.synthetic import ensure_dataset
from atjt_dist.schedule import Schedule

SMALL = dict(
    users=900,
    items=200,
    clusters=8,
    mean_length=14.0,
    min_length=5,
    noisy_user_share=0.3,
    noisy_item_share=0.3,
    noise_kind="random",
    noise_in_targets=True,
    clean_test_fold=0,
)


@pytest.fixture(scope="module")
def noisy_dataset(tmp_path_factory):
    return ensure_dataset(SyntheticConfig(**SMALL, cache_dir=str(tmp_path_factory.mktemp("synthetic"))))


def _batches(path, oracle):
    data = TrainingData(path, mode="sliding", seed=7)
    space = data.sample_space(data.train_users)
    order = data.epoch_order(space, 0, 0)
    return data, [data.recommender_batch(space, order, i, 128, counters=(0, 0, i), oracle=oracle) for i in range(6)]


def _planted_in_history(data, b) -> np.ndarray:
    """For each history cell of ``b``, whether the item there is a planted one of its user (by
    value: synthetic noise never plants an item the user already has)."""
    a = data.arrays
    offsets = np.asarray(a.seq_offsets)
    planted_items = [set(np.asarray(a.seq_items)[offsets[u] : offsets[u + 1]][a.planted[offsets[u] : offsets[u + 1]]].tolist()) for u in b.user]
    return np.array([[bool(b.hist[r, c]) and b.hist[r, c] in planted_items[r] for c in range(b.hist.shape[1])] for r in range(len(b))])


def test_user_oracle_zeroes_every_row_of_a_planted_noise_user(noisy_dataset):
    data, batches = _batches(noisy_dataset, "user")
    _, plain = _batches(noisy_dataset, None)
    for b, p in zip(batches, plain):
        assert np.array_equal(b.weight, (~data.arrays.noise_users[b.user]).astype(np.float32))
        assert np.array_equal(b.hist, p.hist) and np.array_equal(b.target, p.target)  # data unchanged
        assert p.weight is None
    assert 0 < np.concatenate([b.weight for b in batches]).mean() < 1


def test_item_oracle_removes_planted_items_and_zeroes_planted_targets(noisy_dataset):
    data, batches = _batches(noisy_dataset, "item")
    _, plain = _batches(noisy_dataset, None)
    removed = 0
    for b, p in zip(batches, plain):
        assert not _planted_in_history(data, b).any()
        in_plain = _planted_in_history(data, p)
        removed += in_plain.sum()
        # what is left is the plain history without its planted cells, in order, left-aligned
        for r in range(len(b)):
            kept = p.hist[r, : p.lengths[r]][~in_plain[r, : p.lengths[r]]]
            assert np.array_equal(b.hist[r, : b.lengths[r]], kept) and not b.hist[r, b.lengths[r] :].any()
        half = len(b) // 2
        assert np.array_equal(b.target, p.target)  # the negatives are drawn exactly as without the oracle
        assert np.array_equal(b.weight[:half], b.weight[half:])  # a negative shares its positive's weight
    assert removed > 0
    weights = np.concatenate([b.weight for b in batches])
    assert 0 < (weights == 0).sum() < len(weights)


def test_item_oracle_weight_is_zero_exactly_for_planted_targets(noisy_dataset):
    data, batches = _batches(noisy_dataset, "item")
    a = data.arrays
    offsets = np.asarray(a.seq_offsets)
    for b in batches:
        half = len(b) // 2
        for r in range(half):
            u, t = b.user[r], b.target[r]
            seq = np.asarray(a.seq_items)[offsets[u] : offsets[u + 1]]
            planted = a.planted[offsets[u] : offsets[u + 1]]
            positions = np.flatnonzero(seq == t)
            assert len(positions) == 1  # synthetic sequences hold an item once
            assert b.weight[r] == (0.0 if planted[positions[0]] else 1.0)


def test_item_oracle_on_inserted_noise_leaves_exactly_the_clean_history(tmp_path):
    """With 'insert' the planted items are extra ones: the item oracle's histories are windows of
    the clean sequences, ending right before the target, and only planted targets get weight 0."""
    from atjt_dist.data.synthetic import generate

    cfg = SyntheticConfig(**{**SMALL, "noise_kind": "insert"}, cache_dir=str(tmp_path))
    clean = generate(cfg)
    data, batches = _batches(ensure_dataset(cfg), "item")
    _, plain = _batches(ensure_dataset(cfg), None)
    a = data.arrays
    offsets = np.asarray(a.seq_offsets)
    assert not np.array_equal(offsets, clean.clean_offsets)  # the sequences grew
    removed = zero = 0
    for b, p in zip(batches, plain):
        half = len(b) // 2
        for r in range(half):
            u = b.user[r]
            seq = np.asarray(a.seq_items)[offsets[u] : offsets[u + 1]]
            planted = a.planted[offsets[u] : offsets[u + 1]]
            own = clean.clean_items[clean.clean_offsets[u] : clean.clean_offsets[u + 1]]
            np.testing.assert_array_equal(seq[~planted], own)  # removing the truth gives the clean sequence
            pos = int(np.flatnonzero(seq == b.target[r])[0])
            history = seq[pos - p.lengths[r] : pos]  # the plain window
            kept = history[~planted[pos - p.lengths[r] : pos]]
            n_own = int((~planted[:pos]).sum())  # own items before the target
            assert np.array_equal(b.hist[r, : b.lengths[r]], kept) and not b.hist[r, b.lengths[r] :].any()
            np.testing.assert_array_equal(kept, own[n_own - len(kept) : n_own])  # a clean window
            assert b.weight[r] == (0.0 if planted[pos] else 1.0)
            removed += p.lengths[r] - b.lengths[r]
            zero += b.weight[r] == 0.0
        assert np.array_equal(b.weight[:half], b.weight[half:])
    assert removed > 0 and zero > 0


def test_oracle_needs_ground_truth(tiny_dataset):
    cfg = build_config([f"--data.path={tiny_dataset}", "--objective.name=oracle", "--train.batch_size=64"])
    data = TrainingData(tiny_dataset, seed=cfg.seed, mode=cfg.data.mode)
    with pytest.raises(ConfigError, match="planted-noise ground truth"):
        Schedule(data, cfg)


@pytest.mark.parametrize("method", ["oracle", "oracle_item"])
def test_oracle_trains_end_to_end(noisy_dataset, tmp_path, method):
    run = tmp_path / method
    argv = [
        f"--data.path={noisy_dataset}",
        f"--objective.name={method}",
        "--data.mode=sliding",
        "--train.lr=0.05",
        "--train.max_steps=12",
        "--train.log_every=6",
        "--no-train.progress_bar",
        "--checkpoint.every=0",
        "--no-log.tensorboard",
        f"--run-dir={run}",
    ]
    assert train.main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == method and 0.0 < metrics["auc"] < 1.0


def test_item_level_scores_are_exported_and_audited(noisy_dataset, tmp_path):
    """The transformer recogniser's per-item P(noisy): in metrics.json as an AUC against the
    planted items, and in score's table, aligned with each window's history."""
    import pyarrow.parquet as pq

    from atjt_dist.commands.score import score_run

    run = tmp_path / "transformer"
    argv = [
        f"--data.path={noisy_dataset}",
        "--atjt.recognizer.kind=transformer",
        "--atjt.recognizer_warmup_steps=40",
        "--atjt.recognizer_lrs=[0.1]",
        "--train.max_steps=60",
        "--train.log_every=20",
        "--no-train.progress_bar",
        "--checkpoint.every=0",
        "--no-log.tensorboard",
        f"--run-dir={run}",
    ]
    assert train.main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["noise_item_auc"] <= 1.0 and 0.0 <= metrics["noise_weight_auc"] <= 1.0
    assert 0.0 < metrics["mean_weight_noisy_users"] < 1.0 and 0.0 < metrics["mean_weight_clean_users"] < 1.0
    table = score_run(run, tmp_path / "scores.parquet")
    assert table.equals(pq.read_table(tmp_path / "scores.parquet"))
    history = table.column("history").to_pylist()
    item_noise = table.column("item_noise").to_pylist()
    assert [len(h) for h in history] == [len(p) for p in item_noise]
    assert all(0.0 <= p <= 1.0 for row in item_noise for p in row)
