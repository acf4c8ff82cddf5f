"""Sharding types, dense backends (DDP, DeepSpeed ZeRO) and launchers.

Equivalence runs compare a 2-process run with a 1-process run of the same config: every loss
and statistic is a global-batch quantity and every random draw is keyed by the global row
(tests/test_train.py), so they differ only by floating-point summation order. Adagrad divides
by sqrt(sum of squared gradients), so reduction-order rounding (~1e-8 relative per step) does
not cancel as it would with SGD, but it stays far below the tolerance used here, 1e-5 relative
(observed: <= 2e-7 over 12 steps for every sharding type and dense backend).

One mixed table plan covers every sharding type, recommender and recogniser tables alike, so
a handful of runs test them all (this machine has 2 cores; each run starts torch, TorchRec and
numba afresh).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAPER_SCHEDULE
from runs import SHORT_RUN, run_ok, torchrun

from atjt_dist.config import ConfigError, build_config

REPO = Path(__file__).resolve().parents[1]

SMALL = [
    *SHORT_RUN,
    "--atjt.recognizer.dropout=0",  # dropout across world sizes: tests/test_train.py
    "--train.weight_decay=1e-3",  # distinct decays: DeepSpeed's L2 loss term per model vs torch Adagrad's
    "--atjt.recognizer_weight_decay=2e-4",
]
#: Every sharding type on at least one table, over the recommender's and both recognisers'.
MIXED = {
    "rec_item": "table_row_wise",
    "rec_category": "column_wise",
    "rec_user": "data_parallel",
    "rg0_item": "data_parallel",
    "rg0_category": "row_wise",
    "rg0_user": "table_wise",
    "rg1_item": "column_wise",
    "rg1_category": "table_wise",
    "rg1_user": "row_wise",
}
MIXED_ARG = "--dist.table_sharding={" + ", ".join(f"{k}: {v}" for k, v in MIXED.items()) + "}"
TRAIN_KEYS = ("loss", "loss_rec", "loss_aux", "w_clean", "w_noisy", "recognizer_auc")
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_records(run_dir: Path) -> list[dict]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r.get("kind") == "train"]


def _assert_same_run(one: Path, two: Path) -> None:
    r1, r2 = _train_records(one), _train_records(two)
    assert len(r1) == len(r2) > 2
    for a, b in zip(r1, r2):
        assert a["step"] == b["step"]
        for key in TRAIN_KEYS:
            assert b[key] == pytest.approx(a[key], rel=RTOL), (a["step"], key)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    for key in ("auc", "hr@5", "ndcg@5"):
        assert m2[key] == pytest.approx(m1[key], rel=RTOL, abs=1e-6)
        assert m2["paper_compat"][key] == pytest.approx(m1["paper_compat"][key], rel=RTOL, abs=1e-6)


def _plan_lines(stderr: str) -> dict[str, str]:
    """table -> its line of the sharding plan printed on rank 0."""
    names = set(MIXED)
    out = {}
    for line in stderr.splitlines():
        first = line.split(" ", 1)[0]
        if first in names:
            out[first] = line
    return out


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_table_sharding_forms_and_errors():
    cfg = build_config(["--dist.table_sharding={rec_item: row_wise, rg0_user: table_wise}"])
    assert cfg.dist.table_sharding == {"rec_item": "row_wise", "rg0_user": "table_wise"}
    cfg = build_config(["--dist.table_sharding=rec_item=row_wise,rg0_user:table_wise", "--dist.sharding=column_wise"])
    assert cfg.dist.table_sharding == {"rec_item": "row_wise", "rg0_user": "table_wise"} and cfg.dist.sharding == "column_wise"
    for argv, words in [
        (["--dist.table_sharding=rec_item=diagonal"], ["dist.table_sharding.rec_item", "table_row_wise"]),
        (["--dist.sharding=diagonal"], ["dist.sharding", "row_wise"]),
        (["--dist.zero_stage=3"], ["dist.zero_stage", "0, 1 or 2"]),
        (["--dist.dense=fsdp"], ["dist.dense", "'deepspeed'"]),
        (["--dist.deepspeed_config=/nonexistent.json"], ["dist.deepspeed_config", "does not exist"]),
    ]:
        with pytest.raises(ConfigError) as err:
            build_config(argv)
        for w in words:
            assert w in str(err.value)


def test_unknown_table_names_list_the_models_tables():
    from atjt_dist.distributed import TableInfo, table_sharding_types

    tables = [TableInfo(n, 10, 8, "m") for n in ("rec_item", "rec_category", "rec_user", "rg0_item")]
    kinds = table_sharding_types(tables, "auto", {"rec_item": "row_wise"})
    assert kinds == {"rec_item": "row_wise", "rec_category": "auto", "rec_user": "auto", "rg0_item": "auto"}
    with pytest.raises(ValueError) as err:
        table_sharding_types(tables, "auto", {"rec_itme": "row_wise"})
    assert "'rec_itme'" in str(err.value) and "rec_item, rec_category, rec_user, rg0_item" in str(err.value)


def test_deepspeed_config_generated_and_from_file(tmp_path):
    from atjt_dist.optim import deepspeed_config

    cfg = build_config(["--dist.dense=deepspeed", "--dist.zero_stage=2", "--train.batch_size=64"])
    ds = deepspeed_config(cfg, world=2)
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed's default (1.0) would clip silently
    assert ds["zero_allow_untested_optimizer"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 32 and ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 1

    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"stage": 1, "reduce_bucket_size": 1000}}))
    ds = deepspeed_config(build_config([f"--dist.deepspeed_config={f}", "--dist.dense=deepspeed"]), world=4)
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000 and ds["gradient_clipping"] == 0.0
    for bad, words in [
        ({"optimizer": {"type": "Adam"}}, ["optimizer", "Adagrad"]),
        ({"bf16": {"enabled": True}}, ["bf16", "fp32"]),
        ({"zero_optimization": {"stage": 3}}, ["stage=3"]),
        ({"gradient_accumulation_steps": 2}, ["gradient_accumulation_steps"]),
    ]:
        f.write_text(json.dumps(bad))
        with pytest.raises(ValueError) as err:
            deepspeed_config(build_config([f"--dist.deepspeed_config={f}"]), world=1)
        for w in words:
            assert w in str(err.value)


def test_lazy_adagrad_is_torch_adagrad():
    """The DeepSpeed client optimiser computes exactly torch.optim.Adagrad's update."""
    from atjt_dist.optim import LazyAdagrad

    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=0.05, eps=1e-10, weight_decay=5e-4)
    a = torch.optim.Adagrad([{"params": [ref[0]], "lr": 0.1}, {"params": [ref[1]]}], **kw)
    b = LazyAdagrad([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]]}], **kw)
    for step in range(4):
        grads = [torch.randn_like(p) for p in ref]
        for p, q, g in zip(ref, ours, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 2:  # a parameter without a gradient is left alone by both
            ref[1].grad = ours[1].grad = None
        a.step()
        b.step()
        for p, q in zip(ref, ours):
            assert torch.equal(p, q)


def test_cpu_sequence_lookup_is_unpooled():
    """FBGEMM's CPU dense lookup sums each bag even with pooling NONE (the data_parallel bug);
    the replacement returns one row per id and the same gradients as a plain gather."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    from atjt_dist.upstream import cpu_dense_lookup_pools, sequence_lookup

    torch.manual_seed(0)
    # two tables of dim 4; features 0, 1 read table 0 and feature 2 reads table 1; batch 2
    m = DenseTableBatchedEmbeddingBagsCodegen([(10, 4), (6, 4)], feature_table_map=[0, 0, 1], pooling_mode=PoolingMode.NONE, use_cpu=True)
    indices = torch.tensor([1, 2, 3, 9, 4, 0, 5, 5])
    lengths = torch.tensor([3, 0, 1, 1, 1, 2])  # feature-major: f0 rows (3, 0), f1 (1, 1), f2 (1, 2); f0 row 1 empty
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    out = sequence_lookup(m, indices=indices, offsets=offsets)
    t0, t1 = m.split_embedding_weights()
    expected = torch.cat([t0[indices[:5]], t1[indices[5:]]])
    assert torch.equal(out, expected)
    out.sum().backward()
    grad = torch.zeros(16, 4)
    grad.index_add_(0, torch.cat([indices[:5], indices[5:] + 10]), torch.ones(8, 4))
    assert torch.equal(m.weights.grad.view(16, 4), grad)
    if cpu_dense_lookup_pools():  # the installed FBGEMM has the bug this works around
        assert m.forward(indices=indices, offsets=offsets).shape[0] != 8


@pytest.mark.slow
def test_data_parallel_tables_work_for_every_model():
    """``--dist.sharding=data_parallel`` used to fail in ``embed`` for every model
    (``split_with_sizes ... [1710, 128, 0, 1710, 128, 128]``): its sharded recommender must
    score a batch exactly as the unsharded one does, and train (the tables get gradients)."""
    import torch.distributed as dist

    from atjt_dist.distributed import init_distributed, load_full_state, shard_model, shutdown
    from atjt_dist.joint import JointModel
    from atjt_dist.models import REGISTRY, ModelSpec
    from atjt_dist.models.batch import SequenceBatch
    from atjt_dist.optim import build_optimizers

    spec = ModelSpec(num_users=50, num_items=40, num_categories=5, history_length=6)
    g = torch.Generator().manual_seed(1)
    B = 8
    lengths = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])
    hist = torch.randint(1, 41, (B, 6), generator=g) * (torch.arange(6)[None] < lengths[:, None])
    batch = SequenceBatch(
        user=torch.arange(B),
        hist=hist,
        hist_cat=(hist % 5 + 1) * (hist > 0),
        lengths=lengths,
        target=torch.randint(1, 41, (B,), generator=g),
        target_cat=torch.randint(1, 6, (B,), generator=g),
        label=torch.ones(B),
    )
    cfg0 = build_config(["--dist.sharding=data_parallel", "--dist.device=cpu"])
    ctx = init_distributed(cfg0.dist)
    try:
        for name in sorted(REGISTRY):
            cfg = build_config(["--dist.sharding=data_parallel", f"--model.name={name}", "--model.dropout=0"])
            torch.manual_seed(0)
            model = JointModel(spec, cfg)
            full = {k: v.detach().clone() for k, v in model.state_dict().items()}
            ref = JointModel(spec, cfg)
            ref.load_state_dict(full)
            ref.eval()
            build_optimizers(model, cfg)
            dmp, summary = shard_model(model, ctx, cfg.dist)
            load_full_state(dmp, full)
            assert set(summary.types.values()) == {"data_parallel"}, summary
            dmp.module.eval()
            with torch.no_grad():
                expected = ref.recommender(batch)
                got = dmp.module.recommender(batch)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
            dmp.module.train()
            dmp.module.recommender(batch).sum().backward()
            grads = [p.grad for n, p in dmp.named_parameters() if "rec_item" in n]
            assert grads and all(gr is not None and gr.abs().sum() > 0 for gr in grads), name
            del dmp, model
    finally:
        shutdown(ctx)
        assert not dist.is_initialized()


def test_dense_part_follows_the_device_under_every_dense_backend():
    """DMP moves the dense part to the device only inside its DDP wrap: under dist.dense=deepspeed
    Dice's statistics (buffers) and the dense layers would stay on the host. place_dense moves
    every parameter and buffer outside the sharded tables. Shown with the meta device as the target, which a CPU machine has."""
    from atjt_dist.distributed import init_distributed, misplaced_tensors, place_dense, shard_model, shutdown
    from atjt_dist.joint import JointModel
    from atjt_dist.models import ModelSpec

    spec = ModelSpec(num_users=50, num_items=40, num_categories=5, history_length=6)
    cfg0 = build_config(["--dist.device=cpu"])
    ctx = init_distributed(cfg0.dist)
    try:
        for dense in ("ddp", "deepspeed"):
            cfg = build_config([f"--dist.dense={dense}", "--dist.sharding=table_wise"])
            model = JointModel(spec, cfg)
            dmp, _ = shard_model(model, ctx, cfg.dist)
            assert misplaced_tensors(dmp, ctx.device) == [], dense
            dice = [n for n, _ in dmp.named_buffers() if n.endswith("running_mean")]
            assert dice, "DIN's Dice buffers are expected in the joint model"
            moved = place_dense(dmp, torch.device("meta"))
            elsewhere = misplaced_tensors(dmp, torch.device("meta"))
            # what stays behind is exactly the sharded tables' weights
            assert elsewhere and all("embeddings." in n for n in elsewhere), (dense, elsewhere)
            assert moved > len(dice)
            assert all(dict(dmp.named_buffers())[n].is_meta for n in dice), dense
            del dmp, model
    finally:
        shutdown(ctx)


def test_nccl_dead_peer_settings():
    """The NCCL watchdog must abort and hand the error to the main thread (mode 2), unless the
    user chose otherwise; the error it raises there is a collective failure for faults."""
    import torch.distributed as dist

    from atjt_dist.distributed import nccl_environment
    from atjt_dist.faults import _is_collective_failure

    assert nccl_environment({}) == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
    assert nccl_environment({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}) == {}
    assert _is_collective_failure(dist.DistBackendError("NCCL communicator was aborted on rank 1."))
    assert _is_collective_failure(RuntimeError("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7)"))
    assert not _is_collective_failure(ValueError("shape mismatch"))


# ---------------------------------------------------------------------------------------------
# Multi-process runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_reference(tiny_dataset, tmp_path_factory) -> Path:
    """A 1-process run with the mixed table plan (the reference of the 2-process runs)."""
    run = tmp_path_factory.mktemp("mixed") / "one"
    run_ok([sys.executable, "-m", "atjt_dist.train", f"--data.path={tiny_dataset}", f"--run-dir={run}", *SMALL, MIXED_ARG], run.parent)
    return run


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_sharding_type_two_processes_match_one(tiny_dataset, mixed_reference, tmp_path):
    """DDP dense backend, every sharding type (2 processes, gloo) = 1 process."""
    two = tmp_path / "two"
    proc = run_ok([*torchrun(2), f"--data.path={tiny_dataset}", f"--run-dir={two}", *SMALL, MIXED_ARG], tmp_path)
    _assert_same_run(mixed_reference, two)
    plan = _plan_lines(proc.stderr)  # rank 0 prints one line per table
    assert set(plan) == set(MIXED), proc.stderr[-3000:]
    for table, kind in MIXED.items():
        planned = "row_wise" if kind == "table_row_wise" else kind
        assert f" {planned} " in plan[table], plan[table]
    assert "ranks 0-1  shards" in plan["rg1_user"]  # row-wise over both ranks
    assert "shards 7x4,7x4" in plan["rec_category"]  # column-wise: dim 8 split over both ranks
    assert "table_row_wise" in plan["rec_item"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_deepspeed_zero1_two_processes_match_one(tiny_dataset, mixed_reference, tmp_path):
    """DeepSpeed ZeRO-1 owns the dense layers (torchrun): the same trajectory as 1 DDP process."""
    two = tmp_path / "ds"
    run_ok([*torchrun(2), f"--data.path={tiny_dataset}", f"--run-dir={two}", *SMALL, MIXED_ARG, "--dist.dense=deepspeed", "--dist.zero_stage=1"], tmp_path)
    _assert_same_run(mixed_reference, two)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_deepspeed_launcher_zero2_matches_one_process(tiny_dataset, mixed_reference, tmp_path):
    """The deepspeed launcher (CPU accelerator, 2 local processes) with ZeRO-2."""
    two = tmp_path / "dsl"
    deepspeed = Path(sys.executable).parent / "deepspeed"
    run_ok(
        [
            str(deepspeed),
            "--num_nodes=1",
            "--num_gpus=2",
            f"--master_port={_free_port()}",
            "--no_local_rank",
            "--module",
            "atjt_dist.train",
            f"--data.path={tiny_dataset}",
            f"--run-dir={two}",
            *SMALL,
            MIXED_ARG,
            "--dist.dense=deepspeed",
            "--dist.zero_stage=2",
        ],
        tmp_path,
        DS_ACCELERATOR="cpu",
    )
    _assert_same_run(mixed_reference, two)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_product_card_command_eight_processes(tiny_dataset, tmp_path):
    """``torchrun --nproc_per_node=8 -m atjt_dist.train`` completes on this 2-core machine
    (oversubscribed) with a small config: batch sizes divisible by 8, one epoch."""
    run = tmp_path / "eight"
    run_ok(
        [
            *torchrun(8),
            *PAPER_SCHEDULE,
            f"--data.path={tiny_dataset}",
            f"--run-dir={run}",
            "--train.batch_size=64",
            "--atjt.recognizer_batch_size=32",
            "--train.epochs=1",
            "--train.log_every=2",
            "--eval.batch_users=64",
            "--no-train.progress_bar",
        ],
        tmp_path,
        timeout=1200,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["users"] == 120 and metrics["steps"] == 6
    for key in ("auc", "hr@5", "ndcg@5"):
        assert 0.0 <= metrics[key] <= 1.0
    assert _train_records(run)


# ---------------------------------------------------------------------------------------------
# The dense backends' state, and the input pipeline
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dense", ["ddp", "deepspeed"])
def test_dense_backend_state_round_trip(tiny_dataset, tmp_path, dense):
    """state_dict() after 3 steps, loaded into a fresh run (with the model's and the tables'
    optimiser state), continues exactly as the uninterrupted run (one process, in this one)."""
    import io
    import itertools

    from atjt_dist.distributed import init_distributed, misplaced_tensors, shutdown
    from atjt_dist.trainer import Trainer

    args = [f"--data.path={tiny_dataset}", *SMALL, f"--dist.dense={dense}", "--dist.zero_stage=2", "--dist.table_sharding={rec_user: data_parallel}"]
    ctx = init_distributed(build_config(args).dist)  # one group for both runs: DeepSpeed caches its groups per process
    try:
        first = Trainer(build_config([*args, f"--run-dir={tmp_path / 'a'}"]), ctx)
        try:
            plans = list(itertools.islice(first.schedule.steps(), 5))
            for plan in plans[:3]:
                first.train_step(plan)
            buffer = io.BytesIO()  # what a checkpoint would do with it
            torch.save((first.model.state_dict(), first.model.fused_optimizer.state_dict(), first.dense_optimizer.state_dict()), buffer)
            expected = [float(first.train_step(plan)[0].stats["loss"]) for plan in plans[3:]]
            assert misplaced_tensors(first.model, first.ctx.device) == []
        finally:
            first.close()
        second = Trainer(build_config([*args, f"--run-dir={tmp_path / 'b'}"]), ctx)
        try:
            buffer.seek(0)
            model_state, sparse_state, dense_state = torch.load(buffer, weights_only=False)
            second.model.load_state_dict(model_state)
            second.model.fused_optimizer.load_state_dict(sparse_state)
            second.dense_optimizer.load_state_dict(dense_state)
            got = [float(second.train_step(plan)[0].stats["loss"]) for plan in plans[3:]]
        finally:
            second.close()
    finally:
        shutdown(ctx)
    assert got == expected


def test_prefetch_plans_window():
    from types import SimpleNamespace

    from atjt_dist.prefetch import prefetch_plans

    steps = [SimpleNamespace(step=i) for i in range(10)]
    assert [p.step for p in prefetch_plans(iter(steps), 3, 7)] == [3, 4, 5, 6]


def test_prefetcher_thread_keeps_order_raises_and_stops():
    """The worker thread's logic (CPU: no pinning or streams; gpu_check.py runs the CUDA copy)."""
    import threading

    from atjt_dist.models.batch import SequenceBatch
    from atjt_dist.prefetch import DevicePrefetcher

    def build(i):
        if i == 7:
            raise RuntimeError("sampler failed at 7")
        n = torch.full((2,), i)
        b = SequenceBatch(user=n, hist=n[:, None], hist_cat=n[:, None], lengths=torch.ones(2, dtype=torch.long), target=n, target_cat=n, label=n.float())
        return (b, None)

    got = [(i, int(b[0].user[0])) for i, b in DevicePrefetcher(range(5), build, torch.device("cpu"))]
    assert got == [(i, i) for i in range(5)]
    with pytest.raises(RuntimeError, match="sampler failed at 7"):
        for _ in DevicePrefetcher(range(10), build, torch.device("cpu")):
            pass
    pre = DevicePrefetcher(range(1000), build, torch.device("cpu"), depth=1)
    for i, _ in pre:
        if i == 2:
            break  # the consumer stops early (train.max_steps): the worker ends too
    pre.thread.join(timeout=10)
    assert not pre.thread.is_alive() and not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())


def test_numba_samplers_do_not_raise_torchs_thread_count():
    """With OMP_NUM_THREADS=1 (torchrun's default per process) both torch and numba's parallel
    samplers run one thread after init_distributed, also once a sampler kernel has run
    (numba's OpenMP pool would otherwise reset torch's count to the number of cores)."""
    code = (
        "import numpy as np, numba, torch\n"
        "from atjt_dist.config import DistConfig\n"
        "from atjt_dist.distributed import init_distributed, shutdown\n"
        "from atjt_dist.data.dataset import _locate\n"
        "ctx = init_distributed(DistConfig())\n"
        "n = 100000; out = np.zeros(n, np.int64)\n"
        "_locate(np.arange(n + 1), np.arange(n), np.zeros(n, np.int64), np.arange(n), out, out.copy())  # a parallel sampler kernel\n"
        "print(torch.get_num_threads(), numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)\n"
        "shutdown(ctx)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    torch_threads, numba_threads, pool = map(int, out.stdout.split())
    assert pool == 2  # the pool has 2 threads, and neither library uses more than torchrun asked for
    assert (torch_threads, numba_threads) == (1, 1)


def test_the_prefetch_thread_runs_numba_with_the_process_thread_count():
    """numba's thread count is per thread: the worker takes the caller's (align_cpu_threads),
    not numba's default of one per core (which oversubscribes the cores under torchrun)."""
    import numba

    from atjt_dist.prefetch import DevicePrefetcher

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs numba to allow 2 or more threads (a machine with 2+ cores)")
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        seen = [counts for _, counts in DevicePrefetcher(range(3), lambda i: (numba.get_num_threads(),), torch.device("cpu"))]
    finally:
        numba.set_num_threads(before)
    assert seen == [(1,)] * 3  # a fresh thread would report NUMBA_NUM_THREADS
