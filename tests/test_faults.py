"""Faults: non-finite losses (named at their first step, the last good checkpoint kept), and
peers that die or stop responding (the others end within a bounded time, never hang)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import torch
from runs import SHORT_RUN, TORCHRUN, clean_env

from atjt_dist.checkpoint import committed
from atjt_dist.cli import run_cli
from atjt_dist.faults import FaultHooks, LossMonitor, NonFiniteLossError, PeerFailureError, _is_collective_failure

# ---------------------------------------------------------------------------------------------
# Fast: the monitor, the hooks, the command line
# ---------------------------------------------------------------------------------------------


def _stats(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}


def test_the_monitor_names_the_first_bad_step_and_quantity(monkeypatch):
    monitor = LossMonitor(torch.device("cpu"))
    steps = [
        _stats(loss=1.0, loss_rec=0.7, loss_aux=0.5),
        _stats(loss=1.0, loss_rec=0.7, loss_aux=0.5, loss_extra=0.1),
        _stats(loss=float("nan"), loss_rec=0.7, loss_aux=float("nan")),  # step 2: the first bad one
        _stats(loss=float("inf"), loss_rec=float("inf"), loss_aux=0.5),
    ]

    def no_sync(*args, **kwargs):
        raise AssertionError("observe() read a tensor on the host")

    with monkeypatch.context() as m:  # observe never syncs: no item(), no bool() of a tensor
        m.setattr(torch.Tensor, "item", no_sync)
        m.setattr(torch.Tensor, "__bool__", no_sync)
        m.setattr(torch.Tensor, "tolist", no_sync)
        for step, stats in enumerate(steps[:2]):
            monitor.observe(step, stats)
    assert monitor.first_bad() is None
    for step, stats in enumerate(steps[2:], start=2):
        monitor.observe(step, stats)
    assert monitor.first_bad() == (2, {"loss_aux": "nan"})  # the sum 'loss' is not named when a part explains it


def test_an_overflowing_sum_alone_is_named_as_the_loss():
    monitor = LossMonitor(torch.device("cpu"))
    monitor.observe(0, _stats(loss=float("-inf"), loss_rec=0.7))
    assert monitor.first_bad() == (0, {"loss": "-inf"})


def test_only_collective_failures_count_as_a_dead_peer():
    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation to complete")
    assert _is_collective_failure(gloo) and _is_collective_failure(timeout)
    assert not _is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not _is_collective_failure(ValueError("gloo"))


def test_test_hooks_are_inert_unless_set_and_after_a_torchrun_restart(monkeypatch):
    monkeypatch.setenv("ATJT_TEST_CRASH_AT_STEP", "3")
    assert FaultHooks.from_env().crash_at_step == 3
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert FaultHooks.from_env() == FaultHooks()  # a restarted job passes the step it crashed at
    monkeypatch.delenv("ATJT_TEST_CRASH_AT_STEP")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    stats = _stats(loss=1.0, loss_aux=0.5)
    FaultHooks.from_env().poison(1, stats)
    assert torch.isfinite(stats["loss_aux"])


@pytest.mark.parametrize("error, status", [(NonFiniteLossError("non-finite loss_aux at step 5/12"), 2), (PeerFailureError("rank 0: a collective failed"), 1)])
def test_run_errors_end_the_command_with_one_line(capsys, monkeypatch, error, status):
    monkeypatch.delenv("ATJT_DEBUG", raising=False)

    def main(argv):
        raise error

    assert run_cli(main, [], "prog", "summary") == status
    err = capsys.readouterr().err
    assert err == f"prog: error: {error}\n"


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------

SMALL = [*SHORT_RUN, "--train.log_every=4", "--checkpoint.every=3", "--no-log.tensorboard"]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_at_its_first_step_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path):
    """loss_aux turns NaN at step 5; the check runs at the step-6 checkpoint (log lines every 4
    steps would only see it at step 8): the error names step 5 and loss_aux, nothing is saved
    after it, and the command ends with one line and status 2."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "atjt_dist.train", f"--data.path={tiny_dataset}", f"--run-dir={run}", *SMALL],
        cwd=tmp_path,
        env=clean_env(ATJT_TEST_NONFINITE_AT_STEP="5", ATJT_TEST_NONFINITE_KEY="loss_aux"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m atjt_dist.train: error: non-finite loss_aux at step 5/12 (phase 0, joint, epoch 1): loss_aux=nan"), last
    assert last.endswith(f"the last good checkpoint is {run / 'checkpoints' / 'step-00000003'}"), last
    assert "Traceback" not in proc.stderr
    assert [p.name for p in committed(run / "checkpoints")] == ["step-00000003"]
    assert not list((run / "checkpoints").glob("*.tmp")) and not (run / "metrics.json").exists()


def _crash_time(stderr: str) -> float:
    found = re.search(r"ATJT_TEST_CRASH \S+ .* at (\d+\.\d+)", stderr)
    assert found, stderr[-3000:]
    return float(found.group(1))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("how", ["exit", "hang"])
def test_a_dead_or_silent_peer_ends_the_run_within_a_bounded_time(tiny_dataset, tmp_path, how):
    """Rank 1 os._exit(1)s ('exit') or stops responding ('hang') after step 2. A dead peer
    fails rank 0's next collective at once (gloo: connection reset); a silent one after
    dist.timeout_s, which must therefore reach gloo. Either way torchrun reports the failure
    and nothing waits longer than the timeout plus shutdown."""
    timeout_s = 20
    args = [*TORCHRUN, "-m", "atjt_dist.train", f"--data.path={tiny_dataset}", f"--run-dir={tmp_path / 'run'}", *SMALL, f"--dist.timeout_s={timeout_s}"]
    env = clean_env(ATJT_TEST_CRASH_AT_STEP="2", ATJT_TEST_CRASH_RANK="1", ATJT_TEST_CRASH_HOW=how)
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    ended = time.time()
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "ChildFailedError" in proc.stderr, proc.stderr[-3000:]  # torchrun's failure report
    waited = ended - _crash_time(proc.stderr)
    assert waited < timeout_s + 40, (waited, proc.stderr[-3000:])
    if how == "hang":  # rank 0 ended by itself, with the one-line error
        assert f"rank 0: a collective failed after step 2 (another process died or did not respond within dist.timeout_s={timeout_s} s" in proc.stderr, (
            proc.stderr[-3000:]
        )
        assert waited > timeout_s * 0.5, waited
