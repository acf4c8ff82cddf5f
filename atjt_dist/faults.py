"""Faults a run detects and reports: a non-finite loss, a dead or silent peer; and the test-only
hooks that provoke crashes.

Non-finite losses. :class:`LossMonitor` watches each step's loss_rec, loss_aux, loss_extra (and
their weighted sum, loss) on the device: it keeps the first step at which one was NaN or
infinite and the values at that step, with a few tensor ops and no host sync. The trainer reads
it when it writes a log line and before every checkpoint (so a checkpoint never holds weights
that a bad step has touched) and raises :class:`NonFiniteLossError`, which names the first bad
step and the offending quantities; the command line turns it into one line and exit status 2.

Peers. A process that dies makes the others' next collective fail at once (gloo: connection
reset) and one that stops responding makes it fail after ``dist.timeout_s`` (the process
group's timeout, also gloo's). :func:`peer_failure` turns such an error into a one-line
:class:`PeerFailureError` (exit status 1), and the trainer then leaves the broken group without
its closing barrier, so the process ends instead of waiting on a peer that is gone.

Test hooks (environment variables, read once; inert unless set, and only in the first attempt
of a torchrun job, i.e. TORCHELASTIC_RESTART_COUNT unset or 0, so that a restarted job passes):

    ATJT_TEST_CRASH_AT_STEP=N      crash once N training steps are done (after that step's
                                   log line and checkpoint, if any)
    ATJT_TEST_CRASH_RANK=R         only rank R crashes (default: every rank)
    ATJT_TEST_CRASH_HOW=exit       os._exit(1) (default); 'kill': SIGKILL itself; 'checkpoint':
                                   SIGKILL itself while writing the checkpoint of step N, after
                                   its files are written and before it is committed; 'hang':
                                   stop responding (sleep) instead of dying
    ATJT_TEST_NONFINITE_AT_STEP=N  make the loss statistic ATJT_TEST_NONFINITE_KEY (default
                                   loss_aux) of step N NaN, as the monitor sees it
"""

from __future__ import annotations

import datetime
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .errors import RunError

#: What the monitor watches, in the order a report names them.
QUANTITIES = ("loss_rec", "loss_aux", "loss_extra", "loss")


class NonFiniteLossError(RunError):
    """A loss became NaN or infinite; the message names the first such step and the quantity."""


class PeerFailureError(RunError):
    """A collective failed: another process died or stopped responding."""

    exit_status = 1


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this job's workers (0 outside torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


# ---------------------------------------------------------------------------------------------
# Non-finite losses
# ---------------------------------------------------------------------------------------------


class LossMonitor:
    """The first step whose losses were not all finite, kept on the device.

    ``observe`` runs every step without a host sync; ``first_bad`` (a collective: every rank
    calls it) reads the flag, combines the ranks (a rank's loss shares can go bad alone) and
    returns (0-based step, {quantity: 'nan' | 'inf' | '-inf'}) or None.
    """

    _CODES = {1: "inf", 2: "-inf", 3: "nan"}  # max over ranks: nan wins

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._step = torch.full((), -1, dtype=torch.long, device=device)
        self._values = torch.zeros(len(QUANTITIES), dtype=torch.float64, device=device)
        self._zero = torch.zeros((), dtype=torch.float64, device=device)

    def observe(self, step: int, stats: dict[str, torch.Tensor]) -> None:
        values = torch.stack([stats[k].detach().reshape(()).double() if k in stats else self._zero for k in QUANTITIES])
        newly = (~torch.isfinite(values)).any() & (self._step < 0)
        self._step = self._step.masked_fill(newly, step)
        self._values = torch.where(newly, values, self._values)

    def first_bad(self) -> Optional[tuple[int, dict[str, str]]]:
        never = torch.iinfo(torch.long).max
        step = torch.where(self._step < 0, torch.full_like(self._step, never), self._step)
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1:
            dist.all_reduce(step, op=dist.ReduceOp.MIN)
        first = int(step.item())
        if first == never:
            return None
        v = self._values
        codes = torch.where(torch.isnan(v), 3, torch.where(v == float("inf"), 1, torch.where(v == float("-inf"), 2, 0)))
        codes = torch.where(self._step == first, codes, torch.zeros_like(codes))
        if world > 1:
            dist.all_reduce(codes, op=dist.ReduceOp.MAX)
        bad = {name: self._CODES[int(c)] for name, c in zip(QUANTITIES, codes.tolist()) if c}
        # 'loss' is their weighted sum: name it only when no component explains it (overflow)
        if len(bad) > 1:
            bad.pop("loss", None)
        return first, bad


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


def _is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in ("gloo", "nccl", "connection reset", "connection closed", "timed out"))


def peer_failure(exc: BaseException, step: int, timeout_s: float) -> Optional[PeerFailureError]:
    """``exc`` as a PeerFailureError if a collective raised it in a multi-process run, else None."""
    if isinstance(exc, RunError) or not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    if not _is_collective_failure(exc):
        return None
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PeerFailureError(
        f"rank {dist.get_rank()}: a collective failed after step {step} (another process died or did not "
        f"respond within dist.timeout_s={timeout_s:g} s; see its log): {detail[:300]}"
    )


def restart_safe_store(timeout: datetime.timedelta) -> tuple[dist.Store, int, int]:
    """The launcher's store (env://: MASTER_ADDR, RANK...) seen through a prefix of this attempt.

    torchrun keeps one store for the whole job, and a restarted worker group would otherwise
    meet the previous attempt's rendezvous keys: a worker that arrives before its peers reads
    a dead peer's gloo address and gives up ("connectFullMesh failed ... Connection refused").
    Returns (store, rank, world size) for init_process_group.
    """
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    return dist.PrefixStore(f"atjt/attempt-{elastic_restart_count()}", store), rank, world


def leave_broken_group() -> None:
    """Destroy a process group whose peer is gone, without the closing barrier of
    distributed.shutdown (which would fail again, or wait dist.timeout_s for a silent peer)."""
    gc.collect()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the group is broken; the process is ending anyway
            pass


# ---------------------------------------------------------------------------------------------
# Test-only hooks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultHooks:
    """Fault injection for tests (see the module docstring); every field None = inert."""

    crash_at_step: Optional[int] = None
    crash_rank: Optional[int] = None
    crash_how: str = "exit"
    nonfinite_at_step: Optional[int] = None
    nonfinite_key: str = "loss_aux"

    @staticmethod
    def from_env() -> "FaultHooks":
        if elastic_restart_count() > 0:
            return FaultHooks()
        env = os.environ

        def number(name: str) -> Optional[int]:
            return int(env[name]) if env.get(name) else None

        return FaultHooks(
            crash_at_step=number("ATJT_TEST_CRASH_AT_STEP"),
            crash_rank=number("ATJT_TEST_CRASH_RANK"),
            crash_how=env.get("ATJT_TEST_CRASH_HOW", "exit"),
            nonfinite_at_step=number("ATJT_TEST_NONFINITE_AT_STEP"),
            nonfinite_key=env.get("ATJT_TEST_NONFINITE_KEY", "loss_aux"),
        )

    def _mine(self, step: int, rank: int) -> bool:
        return self.crash_at_step == step and self.crash_rank in (None, rank)

    def after_step(self, step: int, rank: int) -> None:
        """Called once ``step`` steps are done (after their log line and checkpoint)."""
        if self._mine(step, rank) and self.crash_how != "checkpoint":
            crash(self.crash_how, f"rank {rank} after step {step}")

    def in_checkpoint(self, step: int, rank: int) -> None:
        """Called while the checkpoint of ``step`` is written, before it is committed."""
        if self._mine(step, rank) and self.crash_how == "checkpoint":
            crash("kill", f"rank {rank} writing the checkpoint of step {step}")

    def poison(self, step: int, stats: dict[str, torch.Tensor]) -> None:
        """Make one loss statistic of step ``step`` (1-based) NaN."""
        if self.nonfinite_at_step == step and self.nonfinite_key in stats:
            stats[self.nonfinite_key] = stats[self.nonfinite_key] * float("nan")


def crash(how: str, where: str) -> None:
    """Die (or hang) the way a test asked for, after a marker line with the time on stderr."""
    print(f"ATJT_TEST_CRASH {how} {where} at {time.time():.3f}", file=sys.stderr, flush=True)
    if how == "hang":
        while True:
            time.sleep(60)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)
