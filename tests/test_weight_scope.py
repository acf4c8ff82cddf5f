"""atjt.weight_scope: the weights of a user's sliding rows from the user's latest window ('user')
or from each row's own window ('row')."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atjt_dist.config import build_config
from atjt_dist.data.dataset import TrainingData
from atjt_dist.schedule import Schedule
from atjt_dist.trainer import Trainer


def _config(dataset, run_dir, *extra: str):
    return build_config(
        [
            f"--data.path={dataset}",
            f"--run-dir={run_dir}",
            "--train.batch_size=64",
            "--atjt.recognizer_batch_size=32",
            "--atjt.recognizer_warmup_steps=0",  # the first step is a joint one
            "--atjt.recognizer.dropout=0",  # a row's weight depends on its input alone
            "--no-train.progress_bar",
            "--checkpoint.every=0",
            "--no-log.tensorboard",
            *extra,
        ]
    )


def test_latest_windows_are_each_users_last_training_sample(tiny_dataset):
    for split in ("kfold", "loo"):
        data = TrainingData(tiny_dataset, split=split, mode="sliding", history_length=5)
        users = data.train_users[:50]
        rows = data.latest_windows(users, np.arange(100, 150))
        seq = np.asarray(data.arrays.seq_items)
        offsets = np.asarray(data.arrays.seq_offsets)
        assert np.array_equal(rows.row_ids, np.arange(100, 150))
        for r, u in enumerate(users):
            last = offsets[u] + data.last_train_pos[u]  # the user's last training item
            n = min(5, int(data.last_train_pos[u]))
            assert rows.target[r] == seq[last]
            assert rows.lengths[r] == n
            assert np.array_equal(rows.hist[r, :n], seq[last - n : last])


@pytest.mark.parametrize("scope, mode, expected", [("user", "sliding", True), ("row", "sliding", False), ("user", "paper", False)])
def test_weight_batch_only_for_user_scope_in_sliding_mode(tiny_dataset, tmp_path, scope, mode, expected):
    cfg = _config(tiny_dataset, tmp_path, f"--atjt.weight_scope={scope}", f"--data.mode={mode}", "--atjt.enabled=true")
    data = TrainingData.from_config(tiny_dataset, cfg)
    schedule = Schedule(data, cfg)
    plan = next(iter(schedule.steps()))
    rec = schedule.recommender_batch(plan)
    weights = schedule.weight_batch(plan, rec)
    if not expected:  # the positives themselves are scored
        assert weights is None
        return
    n = len(rec) // 2
    assert np.array_equal(weights.user, rec.user[:n]) and np.array_equal(weights.row_ids, rec.row_ids[:n])
    assert np.array_equal(weights.target, data.latest_windows(rec.user[:n], rec.row_ids[:n]).target)
    # a user's sliding rows have different targets, one latest window
    assert len(np.unique(rec.target[:n])) > len(np.unique(weights.target))


@pytest.mark.parametrize("scope", ["user", "row"])
def test_a_users_rows_share_one_weight_under_user_scope(tiny_dataset, tmp_path, scope):
    cfg = _config(tiny_dataset, tmp_path, f"--atjt.weight_scope={scope}", "--data.mode=sliding", "--atjt.enabled=true")
    trainer = Trainer(cfg)
    try:
        plan = next(iter(trainer.schedule.steps()))
        _, out, rec, _ = trainer.train_step(plan)
    finally:
        trainer.close()
    users = rec.user[: len(rec) // 2]
    w = out.weight_logits.detach()
    repeated = [u for u in users.unique().tolist() if int((users == u).sum()) > 1]
    assert repeated, "the step should hold several rows of some user"
    spread = max(float(w[users == u].max() - w[users == u].min()) for u in repeated)
    if scope == "user":
        assert spread == 0.0
    else:  # each row's own window: a user's rows differ
        assert spread > 1e-4
    assert torch.isfinite(w).all()
