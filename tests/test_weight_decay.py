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


def test_a_null_weight_decay_is_the_base_models_own():
    from atjt_dist.config.model_sections import RECOMMENDER_WEIGHT_DECAY
    from atjt_dist.models import REGISTRY

    assert set(RECOMMENDER_WEIGHT_DECAY) == set(REGISTRY)  # every model has one
    for name, wd in RECOMMENDER_WEIGHT_DECAY.items():
        cfg = build_config([f"--model.name={name}"])
        assert cfg.train.weight_decay is None and cfg.recommender_weight_decay() == wd
    assert build_config(["--model.name=sasrec", "--train.weight_decay=0"]).recommender_weight_decay() == 0.0
    assert build_config(["--model.name=din", "--train.weight_decay=1e-4"]).recommender_weight_decay() == pytest.approx(1e-4)
