"""dist.reuse_host_memory: freed large blocks are reused instead of faulting in fresh pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A step-like pattern: eight blocks of 4-16 MiB allocated, touched and freed together, ten times
# to settle, then twenty more; prints the minor page faults of those twenty.
PROBE = """
import resource, sys, torch
from atjt_dist.host_memory import reuse_freed_host_memory
if sys.argv[1] == "on":
    assert reuse_freed_host_memory()
def step():
    live = [torch.empty(n << 20).fill_(1.0) for n in (4, 3, 4, 1, 2, 4, 4, 4)]
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's; elsewhere the function changes nothing")
def test_freed_blocks_are_reused_instead_of_faulting_in_again():
    # 26,000 pages per step: with the settings the freed blocks are reused (no fault in the twenty
    # steps measured); without them glibc maps, unmaps or trims some of them every step (8,000
    # faults here; DIN's large-scale step: 62,000 per step, none with the settings).
    off, on = _faults("off"), _faults("on")
    assert on < 200
    assert on <= off


def test_the_trainer_applies_it_unless_switched_off(tiny_dataset, tmp_path, monkeypatch):
    from atjt_dist import trainer as trainer_module
    from atjt_dist.config import build_config

    calls = []
    monkeypatch.setattr(trainer_module, "reuse_freed_host_memory", lambda: calls.append(1) or True)
    for flag, expected in (("true", 1), ("false", 0)):
        calls.clear()
        cfg = build_config([f"--data.path={tiny_dataset}", f"--dist.reuse_host_memory={flag}", "--no-log.tensorboard", f"--run-dir={tmp_path / flag}"])
        trainer_module.Trainer(cfg).close()
        assert len(calls) == expected
