"""Checkpoints: the atomic save protocol, verification, config identity (fast, in-process), and
killed-then-resumed runs that must end exactly where uninterrupted runs end (slow, end to end)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from runs import SHORT_RUN, TORCHRUN, TRAIN, clean_env, launch, ok
from torch import nn

from atjt_dist.checkpoint import (
    Checkpoints,
    check_files,
    checkpoint_step,
    committed,
    config_hash,
    dense_optimizer_state,
    load_dense_optimizer_state,
    read_record,
    rewind_metrics,
    trajectory_config,
)
from atjt_dist.config import Config, ConfigError, build_config

# ---------------------------------------------------------------------------------------------
# The protocol, in one process on a stand-in model
# ---------------------------------------------------------------------------------------------


class _FusedLike:
    """Stands in for TorchRec's fused optimiser: a KeyedOptimizer-style state by table name."""

    def __init__(self, table: nn.Parameter) -> None:
        self.table = table
        self.sum = torch.zeros_like(table)

    def state_dict(self) -> dict:
        return {"state": {"table": {"table.momentum1": self.sum}}}

    def load_state_dict(self, state: dict) -> None:
        self.sum.copy_(state["state"]["table"]["table.momentum1"])


class _Model(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = nn.Linear(4, 3)
        self.table = nn.Parameter(torch.randn(6, 2))
        self.fused_optimizer = _FusedLike(self.table)


def _trained(seed: int = 0) -> tuple[_Model, torch.optim.Optimizer]:
    model = _Model(seed)
    dense = torch.optim.Adagrad(model.layer.parameters(), lr=0.1)
    model.layer(torch.randn(5, 4)).square().sum().backward()
    dense.step()
    with torch.no_grad():
        model.fused_optimizer.sum.add_(torch.rand(6, 2))
    return model, dense


def _checkpoints(run_dir: Path, cfg: Config | None = None, hooks=None) -> Checkpoints:
    cfg = cfg or build_config(["--checkpoint.keep=2"])
    return Checkpoints(run_dir, cfg, torch.device("cpu"), "fingerprint", hooks)


def test_save_commits_keeps_the_newest_and_restores_everything(tmp_path):
    model, dense = _trained()
    ck = _checkpoints(tmp_path)
    for step in (3, 6, 9):
        torch.manual_seed(step)
        ck.save(step, model, dense, {"phase": 0})
    assert [p.name for p in committed(ck.root)] == ["step-00000009", "step-00000006"]  # keep=2
    assert sorted(p.name for p in ck.root.iterdir()) == ["step-00000006", "step-00000009"]  # nothing else left
    record = read_record(ck.root / "step-00000009")
    assert record["step"] == 9 and record["seed"] == 42 and record["world_size"] == 1
    assert {".metadata", "rng-rank00000.pt"} <= set(record["files"]) and all(len(f["sha256"]) == 64 for f in record["files"].values())
    expected_rng = torch.get_rng_state()

    fresh, fresh_dense = _Model(seed=1), None
    fresh_dense = torch.optim.Adagrad(fresh.layer.parameters(), lr=0.1)
    path, found = ck.find_resumable()
    assert path.name == "step-00000009"
    torch.manual_seed(123)
    ck.load(path, found, fresh, fresh_dense, seed=42)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh.fused_optimizer.sum, model.fused_optimizer.sum)
    for a, b in zip(dense.state_dict()["state"].values(), fresh_dense.state_dict()["state"].values()):
        assert torch.equal(a["sum"], b["sum"]) and torch.equal(a["step"], b["step"])
    assert torch.equal(torch.get_rng_state(), expected_rng)  # this rank's generator, as saved


class _DieWhileWriting:
    def __init__(self, step: int) -> None:
        self.step = step

    def in_checkpoint(self, step: int, rank: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt("the process dies here")  # what a kill leaves: files, no commit


def test_a_checkpoint_interrupted_while_written_never_replaces_the_last_good_one(tmp_path):
    model, dense = _trained()
    ck = _checkpoints(tmp_path, hooks=_DieWhileWriting(6))
    ck.save(3, model, dense)
    with pytest.raises(KeyboardInterrupt):
        ck.save(6, model, dense)
    assert (ck.root / "step-00000006.tmp" / ".metadata").is_file()  # fully written, never committed
    assert [p.name for p in committed(ck.root)] == ["step-00000003"]
    path, _ = ck.find_resumable()
    assert path.name == "step-00000003"
    ck.save(9, model, dense)  # the next commit clears the leftover
    assert sorted(p.name for p in ck.root.iterdir()) == ["step-00000003", "step-00000009"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "record"])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage):
    model, dense = _trained()
    ck = _checkpoints(tmp_path)
    ck.save(3, model, dense)
    ck.save(6, model, dense)
    newest = ck.root / "step-00000006"
    data = newest / "__0_0.distcp"
    if damage == "truncate":
        os.truncate(data, data.stat().st_size // 2)
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "delete":
        data.unlink()
    else:
        (newest / "checkpoint.json").write_text("{")
    logger, records = logging.getLogger("atjt_dist"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        path, _ = ck.find_resumable()
    finally:
        logger.removeHandler(handler)
    assert path.name == "step-00000003"
    words = {"truncate": "truncated", "flip": "sha256", "delete": "missing", "record": "unreadable"}[damage]
    message = "\n".join(records)
    assert "step-00000006 is damaged" in message and words in message and "previous checkpoint" in message
    assert (ck.root / "step-00000006.damaged").is_dir() and not newest.exists()  # never read again


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    model, dense = _trained()
    ck = _checkpoints(tmp_path)
    path = ck.save(3, model, dense)
    other = _Model(seed=1)
    other.extra = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"has no model\.extra\.bias, model\.extra\.weight"):
        ck.load(path, read_record(path), other, torch.optim.Adagrad(other.layer.parameters()), seed=42)


def test_check_files_names_each_problem(tmp_path):
    (tmp_path / "a").write_bytes(b"abcd")
    files = {"a": {"bytes": 8, "sha256": "0" * 64}, "b": {"bytes": 1, "sha256": "0" * 64}}
    problems = check_files(tmp_path, files, ["a", "b"])
    assert problems == ["a has 4 bytes, 8 were written (truncated)", "b is missing"]


def test_only_trajectory_keys_must_match_on_resume(tmp_path):
    base = ["--data.path=/x", "--run-dir=/r", "--checkpoint.every=3"]
    cfg = build_config(base)
    same = build_config(
        [
            "--data.path=/elsewhere",
            "--run-dir=/r2",
            "--resume",
            "--checkpoint.every=5",
            "--train.max_steps=7",
            "--train.log_every=9",
            "--dist.timeout_s=20",
            "--eval.batch_users=16",
        ]
    )
    assert config_hash(cfg) == config_hash(same)
    assert "train.lr" in trajectory_config(cfg) and "dist.timeout_s" not in trajectory_config(cfg)
    model, dense = _trained()
    ck = _checkpoints(tmp_path, cfg)
    path = ck.save(3, model, dense)
    record = read_record(path)
    _checkpoints(tmp_path, same).check_compatible(path, record, dense)
    other = build_config(base + ["--train.lr=0.5", "--atjt.aux_weight=10"])
    with pytest.raises(ConfigError, match=r"another config \(atjt\.aux_weight: 100\.0 -> 10\.0; train\.lr: 0\.05 -> 0\.5\)"):
        _checkpoints(tmp_path, other).check_compatible(path, record, dense)
    with pytest.raises(ConfigError, match="seed=42, this run has seed=7"):
        _checkpoints(tmp_path, build_config(base + ["--seed=7"])).check_compatible(path, record, dense)
    moved = Checkpoints(tmp_path, cfg, torch.device("cpu"), "another dataset")
    with pytest.raises(ConfigError, match="another dataset"):
        moved.check_compatible(path, record, dense)


def test_dense_optimizer_state_is_keyed_by_parameter_name():
    model, dense = _trained()
    state = dense_optimizer_state(model, dense)
    assert set(state) == {"layer.weight", "layer.bias"} and set(state["layer.bias"]) == {"step", "sum"}
    other = _Model(seed=1)
    # groups in another order: names, not positions, decide what goes where
    fresh = torch.optim.Adagrad([{"params": [other.layer.bias]}, {"params": [other.layer.weight]}], lr=0.1)
    load_dense_optimizer_state(other, fresh, state)
    assert torch.equal(fresh.state[other.layer.weight]["sum"], dense.state[model.layer.weight]["sum"])
    assert torch.equal(fresh.state[other.layer.bias]["sum"], dense.state[model.layer.bias]["sum"])


class _FakeEngine:
    """A DeepSpeed-engine-like dense backend: it writes and reads its own checkpoint files."""

    def __init__(self) -> None:
        self.loaded = None

    def save_checkpoint(self, save_dir: str, tag: str, **kwargs) -> None:
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        Path(save_dir, tag, "zero_pp_rank_0_optim_states.pt").write_bytes(b"state")

    def load_checkpoint(self, load_dir: str, tag: str, **kwargs):
        self.loaded = Path(load_dir, tag, "zero_pp_rank_0_optim_states.pt").read_bytes()
        return load_dir, {}


def test_a_deepspeed_engine_writes_its_own_checkpoint_inside_ours(tmp_path):
    model, _ = _trained()
    engine = _FakeEngine()
    ck = _checkpoints(tmp_path)
    path = ck.save(3, model, engine)
    record = read_record(path)
    assert record["dense_optimizer"] == "deepspeed" and "dense/engine/zero_pp_rank_0_optim_states.pt" in record["files"]
    fresh = _FakeEngine()
    ck.check_compatible(path, record, fresh)
    ck.load(path, record, _Model(seed=1), fresh, seed=42)
    assert fresh.loaded == b"state"
    with pytest.raises(ConfigError, match="dense optimiser is deepspeed"):
        ck.check_compatible(path, record, torch.optim.Adagrad(model.layer.parameters()))


def test_rewind_metrics_cuts_what_was_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as writer:  # the MetricsWriter keeps its file open in append mode
        writer.write('{"kind": "train", "step": 3}\n')
        writer.flush()
        size = path.stat().st_size
        writer.write('{"kind": "train", "step": 4}\n{"kind": "tr')
        writer.flush()
        rewind_metrics(path, size)
        writer.write('{"kind": "train", "step": 4}\n')
        writer.flush()
    assert path.read_text() == '{"kind": "train", "step": 3}\n{"kind": "train", "step": 4}\n'


# ---------------------------------------------------------------------------------------------
# End to end: killed and resumed runs against uninterrupted ones
# ---------------------------------------------------------------------------------------------

#: 2 phases x 2 epochs x 3 batches = 12 steps; a checkpoint every 3 steps (each also ends a log
#: window, so the resumed run's train records are the uninterrupted run's).
SMALL = [*SHORT_RUN, "--checkpoint.every=3", "--checkpoint.keep=2", "--no-log.tensorboard"]


def _tensors(dcp_dir: Path) -> dict:
    """Every tensor of a DCP checkpoint, unsharded, by flattened key."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "all.pt"
        dcp_to_torch_save(dcp_dir, target)
        tree = torch.load(target, weights_only=False)

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return {k: v for k, v in flat(tree).items() if torch.is_tensor(v)}


def _assert_same_tensors(a: Path, b: Path) -> int:
    """Every tensor of two DCP checkpoints equal bit for bit; returns how many there are."""
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), (key, (ta[key].double() - tb[key].double()).abs().max().item())
    return len(ta)


def _assert_close_tensors(a: Path, b: Path, rel: float) -> None:
    """Every tensor within ``rel`` relative L2 distance."""
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for key in ta:
        x, y = ta[key].double(), tb[key].double()
        assert (x - y).norm() <= rel * x.norm(), (key, ((x - y).norm() / x.norm()).item())


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    # 'seconds' is the process's wall time: not part of what a resume must reproduce.
    return {k: v for k, v in m.items() if isinstance(v, (int, float, dict)) and k != "seconds"}


def _train_records(run: Path) -> list[dict]:
    drop = ("time", "samples_per_s")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in records if r["kind"] == "train"]


def _assert_same_run(reference: Path, resumed: Path) -> None:
    """Bit for bit: test metrics, the final checkpoint (weights and both optimisers' state),
    the saved weights and every train record."""
    assert _metrics(resumed) == _metrics(reference)
    assert _assert_same_tensors(reference / "checkpoints" / "step-00000012", resumed / "checkpoints" / "step-00000012") > 50
    _assert_same_tensors(reference / "model", resumed / "model")
    assert _train_records(resumed) == _train_records(reference)


@pytest.mark.slow
def test_one_process_killed_at_a_random_step_resumes_exactly_past_a_damaged_checkpoint(tiny_dataset, tmp_path):
    """SIGKILL at a random step after 2 checkpoints; the newest is then truncated: the resume
    reports it, takes the previous one and still ends bit for bit where the uninterrupted run
    ends. The recogniser's dropout (0.5, the default) is on: its masks are keyed by
    (seed, step, layer, row), so the resumed run draws the uninterrupted run's."""
    kill_at = random.SystemRandom().randint(7, 11)
    common = [*TRAIN, f"--data.path={tiny_dataset}", *SMALL]
    reference, run = tmp_path / "reference", tmp_path / "run"
    ok(launch([sys.executable, *common, f"--run-dir={reference}"], tmp_path))

    killed = launch([sys.executable, *common, f"--run-dir={run}"], tmp_path, clean_env(ATJT_TEST_CRASH_AT_STEP=str(kill_at), ATJT_TEST_CRASH_HOW="kill"))
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
    assert not (run / "metrics.json").exists()
    newest, previous = committed(run / "checkpoints")[:2]
    assert checkpoint_step(newest) == 3 * (kill_at // 3), kill_at
    os.truncate(newest / "__0_0.distcp", 1000)

    resumed = ok(launch([sys.executable, *common, f"--run-dir={run}", "--resume"], tmp_path))
    log = resumed.stderr
    assert f"{newest} is damaged" in log and "truncated" in log and "falling back to the previous checkpoint" in log, (kill_at, log[-3000:])
    assert f"resumed from {previous}: step {checkpoint_step(previous)}/12" in log, (kill_at, log[-3000:])
    _assert_same_run(reference, run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000009", "step-00000012"]


@pytest.fixture(scope="module")
def two_process_runs(tiny_dataset, tmp_path_factory):
    """An uninterrupted 2-process run, and one whose rank 1 SIGKILLs itself at a random step
    under torchrun --max-restarts=1 (at a checkpoint step it dies while writing the checkpoint,
    after its files and before the commit). Dropout off, as in the runs it is compared with
    (dropout across process counts: tests/test_train.py)."""
    root = tmp_path_factory.mktemp("two")
    kill_at = random.SystemRandom().randint(4, 11)
    how = "checkpoint" if kill_at % 3 == 0 else "kill"
    common = [*TRAIN, f"--data.path={tiny_dataset}", *SMALL, "--atjt.recognizer.dropout=0"]
    reference, restarted = root / "reference", root / "restarted"
    ok(launch([*TORCHRUN, *common, f"--run-dir={reference}"], root))
    env = clean_env(ATJT_TEST_CRASH_AT_STEP=str(kill_at), ATJT_TEST_CRASH_RANK="1", ATJT_TEST_CRASH_HOW=how)
    proc = launch([*TORCHRUN[:3], "--max-restarts=1", *TORCHRUN[3:], *common, f"--run-dir={restarted}"], root, env)
    return reference, restarted, proc, kill_at, how, common


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_restart_resumes_by_itself_and_ends_exactly_like_an_uninterrupted_run(two_process_runs):
    reference, restarted, proc, kill_at, how, _ = two_process_runs
    ok(proc)
    resumed_from = 3 * ((kill_at - 1) // 3) if how == "checkpoint" else 3 * (kill_at // 3)
    checkpoint = restarted / "checkpoints" / f"step-{resumed_from:08d}"
    assert f"resumed from {checkpoint}: step {resumed_from}/12" in proc.stderr, (kill_at, how, proc.stderr[-3000:])
    _assert_same_run(reference, restarted)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_two_process_checkpoint_resumes_on_one_process(two_process_runs, tmp_path):
    """Save with 2 processes, resume with 1: DCP reshards the tables and their Adagrad state.

    The data path is world-size invariant, so the runs differ only by floating-point summation
    order in the reductions of steps 10-12 (two partial sums vs one). Observed: test metrics
    equal to ~1e-8 relative, every tensor (weights, Adagrad sums) within 3e-6 relative L2
    distance. Allowed: rel 1e-5 on metrics, 1e-4 relative L2 per tensor; a resharding bug (a row
    or a shard misplaced) moves a table by orders of magnitude more (DIN's softmax attention has
    no score bias, whose gradient would be rounding noise alone: layers.py)."""
    reference, restarted, proc, _, _, common = two_process_runs
    ok(proc)
    run = tmp_path / "run"
    shutil.copytree(restarted, run)
    shutil.rmtree(run / "checkpoints" / "step-00000012")
    (run / "metrics.json").unlink()
    resumed = ok(launch([sys.executable, *common, f"--run-dir={run}", "--resume"], tmp_path))
    assert "step 9/12" in resumed.stderr and "saved by 2 process(es), now 1 (tables resharded" in resumed.stderr
    m_ref, m_run = _metrics(reference), _metrics(run)
    for key in ("auc", "hr@5", "ndcg@5"):
        assert m_run[key] == pytest.approx(m_ref[key], rel=1e-5, abs=1e-6)
    _assert_close_tensors(reference / "checkpoints" / "step-00000012", run / "checkpoints" / "step-00000012", 1e-4)
    _assert_close_tensors(reference / "model", run / "model", 1e-4)
