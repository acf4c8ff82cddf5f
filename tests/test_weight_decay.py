"""Weight decay per model: train.weight_decay for the recommender, atjt.recognizer_weight_decay
for the recognisers, in the fused table optimisers and the dense groups alike (optim.py)."""

from __future__ import annotations

import pytest

from atjt_dist.config import ConfigError, build_config
from atjt_dist.trainer import Trainer

REC, RG = 1e-3, 2e-4


def test_each_model_gets_its_own_weight_decay_in_every_optimiser(tiny_dataset, tmp_path):
    cfg = build_config(
        [
            f"--data.path={tiny_dataset}",
            f"--run-dir={tmp_path}",
            f"--train.weight_decay={REC}",
            f"--atjt.recognizer_weight_decay={RG}",
            "--no-train.progress_bar",
            "--checkpoint.every=0",
            "--no-log.tensorboard",
        ]
    )
    trainer = Trainer(cfg)
    try:
        # FBGEMM's kernel arguments, per fused table group (what the backward pass applies)
        kernel_decay = {
            f"{key}/{inner}": fused._emb_module.optimizer_args.weight_decay
            for key, combined in trainer.model.fused_optimizer.optimizers
            for inner, fused in combined.optimizers
        }
        dense_groups = trainer.dense_optimizer.lr_groups()
    finally:
        trainer.close()
    assert {k.split(".")[0] for k in kernel_decay} == {"recommender", "recognizers"}
    for key, wd in kernel_decay.items():
        assert wd == pytest.approx(RG if key.startswith("recognizers.") else REC), key
    assert {(g["recommender"], g["weight_decay"]) for g in dense_groups} == {(True, REC), (False, RG)}


def test_a_negative_weight_decay_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"atjt\.recognizer_weight_decay.*>= 0"):
        build_config(["--atjt.recognizer_weight_decay=-1e-4"])
