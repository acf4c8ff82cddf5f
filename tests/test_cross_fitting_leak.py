"""The cross-fitting leak fix: L_R never moves a recogniser's rows of the users it weights."""

from __future__ import annotations

import pytest
import torch

from atjt_dist.config import build_config
from atjt_dist.trainer import Trainer


def _dense(t) -> torch.Tensor:
    """A (possibly sharded) table of the DMP model as one dense tensor (one process: all rows)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if not isinstance(t, ShardedTensor):
        return t.detach().clone()
    out = torch.full(tuple(t.size()), float("nan"))
    for shard in t.local_shards():
        index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        out[index] = shard.tensor.detach()
    return out


@pytest.mark.parametrize("isolate, scope", [(True, "row"), (False, "row"), (True, "user")])
def test_weighted_users_recogniser_rows_move_only_without_the_fix(tiny_dataset, tmp_path, isolate, scope):
    cfg = build_config(
        [
            f"--data.path={tiny_dataset}",
            f"--run-dir={tmp_path / str(isolate)}",
            "--data.mode=sliding",
            f"--atjt.weight_scope={scope}",  # 'user': the weights score each user's latest window
            "--train.batch_size=64",
            "--atjt.recognizer_batch_size=32",
            "--no-train.progress_bar",
            "--checkpoint.every=0",
            "--no-log.tensorboard",
            f"--atjt.isolate_weighted_users={str(isolate).lower()}",
            "--atjt.recognizer.dropout=0",
            "--atjt.recognizer_warmup_steps=0",  # the first step is then a joint one
        ]
    )
    trainer = Trainer(cfg)
    try:
        plans = iter(trainer.schedule.steps())
        plan = next(plans)
        key = f"recognizers.{plan.phase}.embeddings.embeddings.rg{plan.phase}_user.weight"
        before = _dense(trainer.model.state_dict()[key])
        batches = trainer._batches(plan)
        rec, aux = batches.rec, batches.aux
        weighted = rec.user[: len(rec) // 2].unique()
        trained = aux.user.unique()
        assert not set(weighted.tolist()) & set(trained.tolist())  # cross-fitting: disjoint users
        trainer.train_step(plan, batches)
        after = _dense(trainer.model.state_dict()[key])
    finally:
        trainer.close()
    moved = (after - before).abs().amax(1)
    assert moved[trained].max() > 0  # L_D trains the recogniser's rows of its own users
    if isolate:
        assert torch.equal(after[weighted], before[weighted])
    else:  # the authors' graph: L_R (and weight decay) reach the weighted users' rows
        assert moved[weighted].min() > 0
