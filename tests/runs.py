"""What the tests that launch runs share: the short run's arguments, a clean environment, and
the one way to start a command, one process or several under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PAPER_SCHEDULE

#: A short run on the tiny dataset (conftest.tiny_dataset): the paper's schedule, small batches,
#: 2 epochs per phase, a log record every 2 steps, no progress bar. Tests append what they need;
#: a later --key=value wins over an earlier one.
SHORT_RUN = [
    *PAPER_SCHEDULE,
    "--train.batch_size=64",
    "--atjt.recognizer_batch_size=32",
    "--train.epochs=2",
    "--train.log_every=2",
    "--eval.batch_users=64",
    "--no-train.progress_bar",
]
#: torchrun with two processes on this host; the module or script follows
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN = ["-m", "atjt_dist.train"]

# a launcher's variables in the test process's own environment would change what a child is
_LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "ATJT_DEBUG")


def torchrun(nproc: int) -> list[str]:
    """torchrun of atjt_dist.train with ``nproc`` processes on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *TRAIN]


def clean_env(**extra: str) -> dict:
    """This process's environment without launcher variables, one thread per process, plus ``extra``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    for key in _LAUNCHER_KEYS:
        if key not in extra:
            env.pop(key, None)
    return env


def launch(args: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command (output captured); the caller checks its status."""
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``proc``, asserted to have succeeded (its output's tail in the failure message)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def run_ok(args: list, cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """Run a command that must succeed."""
    return ok(launch(args, cwd, clean_env(**env), timeout))
