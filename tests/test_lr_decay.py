"""train.lr_decay: the recommender's learning rate over the steps that train it (optim.py,
Trainer.recommender_lr), applied to its fused tables and dense layers, never to a recogniser."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_cross_fitting_leak import _dense

from atjt_dist.config import ConfigError, build_config
from atjt_dist.optim import lr_decay_factor
from atjt_dist.schedule import RECOGNIZER_ONLY
from atjt_dist.trainer import Trainer


def _cfg(*flags: str):
    return build_config(list(flags))


def test_the_decay_factor_holds_then_falls_to_zero_after_the_last_step():
    linear = _cfg("--train.lr_decay=linear", "--train.lr_decay_start=0")
    assert [lr_decay_factor(linear, k, 4) for k in range(4)] == [1.0, 0.75, 0.5, 0.25]
    held = _cfg("--train.lr_decay=linear", "--train.lr_decay_start=0.5")
    assert [lr_decay_factor(held, k, 4) for k in range(4)] == [1.0, 1.0, 1.0, 0.5]
    cosine = _cfg("--train.lr_decay=cosine", "--train.lr_decay_start=0")
    assert lr_decay_factor(cosine, 0, 10) == pytest.approx(1.0)
    assert lr_decay_factor(cosine, 5, 10) == pytest.approx(0.5)
    assert lr_decay_factor(cosine, 9, 10) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.1)))
    none = _cfg("--train.lr_decay=none")
    assert {lr_decay_factor(none, k, 4) for k in range(4)} == {1.0}
    with pytest.raises(ConfigError, match="train.lr_decay_start"):
        _cfg("--train.lr_decay_start=1.0")


@pytest.mark.parametrize("variant", ["joint", "two_stage"])
def test_recommender_steps_are_counted_as_the_schedule_runs_them(tiny_dataset, tmp_path, variant):
    cfg = _cfg(
        f"--data.path={tiny_dataset}",
        f"--run-dir={tmp_path}",
        "--train.batch_size=64",
        "--train.epochs=2",
        "--atjt.recognizer_batch_size=32",
        "--atjt.recognizer_warmup_steps=3",
        f"--atjt.variant={variant}",
        "--no-train.progress_bar",
        "--no-log.tensorboard",
    )
    trainer = Trainer(cfg)
    try:
        s = trainer.schedule
        plans = list(s.steps())
        trains = [p for p in plans if p.stage != RECOGNIZER_ONLY]
        assert [s.recommender_step(p) for p in trains] == list(range(len(trains)))
        assert s.recommender_steps() == len(trains)
        for limit in (1, 5, len(plans) // 2, len(plans)):
            assert s.recommender_steps(limit) == sum(p.stage != RECOGNIZER_ONLY for p in plans[:limit])
    finally:
        trainer.close()


def test_a_zero_learning_rate_freezes_the_recommender_and_not_the_recogniser(tiny_dataset, tmp_path):
    """The lr reaches the fused tables' kernel and the dense groups; the recogniser keeps its own."""
    from atjt_dist.optim import set_recommender_lr

    cfg = _cfg(
        f"--data.path={tiny_dataset}",
        f"--run-dir={tmp_path}",
        "--train.batch_size=64",
        "--atjt.recognizer_batch_size=32",
        "--atjt.recognizer_warmup_steps=0",
        "--no-train.progress_bar",
        "--checkpoint.every=0",
        "--no-log.tensorboard",
    )
    trainer = Trainer(cfg)
    try:
        plan = next(iter(trainer.schedule.steps()))
        batches = trainer._batches(plan)
        before = {k: _dense(v) for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
        trainer.train_step(plan, batches)
        set_recommender_lr(trainer.model, trainer.dense_optimizer, 0.0)  # what train_step set, overridden
        second = trainer._batches(next(p for p in trainer.schedule.steps() if p.step == 1))
        mid = {k: _dense(v) for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
        # one more step with the recommender's lr at 0 (train_step would reset it: call the parts)
        rec, aux, weight_rows = second
        out = trainer.dense_optimizer.forward(rec, aux, plan.phase, plan.stage, weight_rows)
        from atjt_dist.objective import compute_losses

        losses = compute_losses(out, rec, aux, trainer.cfg, plan.stage, 1)
        trainer.dense_optimizer.backward(losses.backward, trainer.model.module.idle_dense_parameters(plan.phase, plan.stage))
        trainer.dense_optimizer.step()
        after = {k: _dense(v) for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    finally:
        trainer.close()
    rec_keys = [k for k in after if k.startswith("recommender.") and "running" not in k]
    rg_keys = [k for k in after if k.startswith(f"recognizers.{plan.phase}.") and "running" not in k]
    assert any(".embeddings." in k for k in rec_keys) and any(".embeddings." not in k for k in rec_keys)
    assert any(not torch.equal(mid[k], before[k]) for k in rec_keys)  # the first step trained it
    for k in rec_keys:
        assert torch.equal(after[k], mid[k]), k
    assert any(not torch.equal(after[k], mid[k]) for k in rg_keys)


def test_the_logged_learning_rate_follows_the_schedule(tiny_dataset, tmp_path):
    from atjt_dist.trainer import run_training

    cfg = _cfg(
        f"--data.path={tiny_dataset}",
        f"--run-dir={tmp_path}",
        "--train.batch_size=64",
        "--train.epochs=1",
        "--atjt.enabled=false",
        "--train.log_every=1",
        "--no-train.progress_bar",
        "--checkpoint.every=0",
        "--no-log.tensorboard",
        "--no-log.user_weights",
    )
    trainer, _ = run_training(cfg)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    lrs = [r["lr"] for r in records if r.get("kind", r.get("type")) == "train"]
    total = len(lrs)
    assert total > 4
    start = total // 2  # the default: held for the first half, then linear to 0
    assert lrs == pytest.approx([0.05 * min(1.0, (total - k) / (total - start)) for k in range(total)])
    assert lrs[start] == 0.05 and lrs[-1] < lrs[start + 1] < 0.05
