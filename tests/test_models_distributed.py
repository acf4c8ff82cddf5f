"""Every base model trains with ATJT on and off under ``torchrun --nproc_per_node=2``, S3Rec
with its pre-training first: one torchrun job of the reproduce command over the six models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import PAPER_SCHEDULE

MODELS = ("din", "dcn", "wide_deep", "fearec", "sasrec", "s3rec")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_all_six_models_with_and_without_atjt_on_two_processes(tiny_dataset, tmp_path):
    grid = tmp_path / "grid"
    grid.mkdir()
    for model in MODELS:
        (grid / f"tiny-{model}.yaml").write_text(f"data:\n  path: {tiny_dataset.name}\n  mode: paper\nmodel:\n  name: {model}\n")
    root = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "atjt_dist.reproduce",
        "--datasets",
        "tiny",
        "--models",
        ",".join(MODELS),
        "--methods",
        "base,atjt",
        "--seeds",
        "1",
        "--data-root",
        str(tiny_dataset.parent),
        "--grid-dir",
        str(grid),
        "--run-dir",
        str(root),
        "--train.batch_size=64",
        "--atjt.recognizer_batch_size=32",
        "--train.max_steps=6",
        "--train.log_every=3",
        "--eval.batch_users=64",
        "--no-train.progress_bar",
        "--checkpoint.every=0",
        "--log.tensorboard=false",
        "--model.s3rec.pretrain_epochs=1",
        *PAPER_SCHEDULE,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    assert (root / "tiny" / "s3rec" / "pretrain-seed1" / "pretrain.pt").is_file()
    for model in MODELS:
        for method in ("base", "atjt"):
            run = root / "tiny" / model / f"{method}-seed1"
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["steps"] == 6 and metrics["users"] == 120, (model, method)
            assert all(math.isfinite(metrics[k]) for k in ("auc", "hr@5", "ndcg@5")), (model, method)
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            train = [r for r in records if r["kind"] == "train"]
            assert len(train) == 2 and all(math.isfinite(r["loss_rec"]) for r in train), (model, method)
            if method == "atjt":  # the recogniser trained beside the recommender
                assert all(math.isfinite(r["loss_aux"]) for r in train), (model, method)
    s3rec = (root / "tiny" / "s3rec" / "atjt-seed1" / "config.yaml").read_text()
    assert "pretrain-seed1" in s3rec  # fine-tuned from the pre-training checkpoint
