"""Where one training step's time goes: torch.profiler over steady-state steps, per region.

    python benchmarks/step_profile.py [--nproc 2] [--steps 6] [--warmup 3] [--output FILE.md] -- TRAIN FLAGS...

Runs the trainer (``atjt_dist.trainer.Trainer``, built from the training flags after ``--``) for
``--warmup`` steps, then profiles ``--steps`` more with ``torch.profiler``; with ``--nproc`` > 1
under ``torch.distributed.run`` (one thread per rank, as in large_scale_bench.py). Each step is
cut into regions, marked with ``record_function`` around the trainer's own calls and TorchRec's
sharded-module methods (patched in this process only):

- batch build: the sampler (numba) and the numpy -> torch conversion of the step's batches;
- KJT build: ``SequenceBatch.kjt`` (the KeyedJaggedTensor of the sparse features);
- sparse input distribution: TorchRec's ``input_dist`` (bucketing and the ids' all-to-all);
- sparse lookups + output distribution: TorchRec's ``compute_and_output_dist`` and the
  awaitables' waits (the looked-up rows' all-to-all);
- loss, backward (dense and embedding backward with the fused sparse optimiser, and DDP's
  gradient all-reduce), dense optimiser step;
- dense forward: the model's forward minus the sparse regions above.

Rank 0 writes the table (milliseconds per step, share of the step) and the top operators by
self CPU time inside the backward and the forward, so the largest costs that are not the model's
arithmetic are visible.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine_info import machine_line, versions_line

REPO = Path(__file__).resolve().parents[1]

REGIONS = (
    "batch build",
    "KJT build",
    "sparse input distribution",
    "sparse lookups + output distribution",
    "forward (whole)",
    "loss",
    "backward (whole)",
    "dense optimiser step",
    "zero_grad",
)


def _mark(name: str, fn):
    """``fn`` wrapped in a profiler region called ``name``."""
    import torch

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)

    return wrapped


def _instrument(trainer) -> None:
    """Mark the regions of a step on this trainer and on TorchRec's sharded collection."""
    from torchrec.distributed.embedding import ShardedEmbeddingCollection

    from atjt_dist.models.batch import SequenceBatch

    SequenceBatch.kjt = _mark("KJT build", SequenceBatch.kjt)
    ShardedEmbeddingCollection.input_dist = _mark("sparse input distribution", ShardedEmbeddingCollection.input_dist)
    ShardedEmbeddingCollection.compute_and_output_dist = _mark("sparse lookups + output distribution", ShardedEmbeddingCollection.compute_and_output_dist)
    trainer._batches = _mark("batch build", trainer._batches)
    backend = trainer.dense_optimizer
    backend.forward = _mark("forward (whole)", backend.forward)
    backend.backward = _mark("backward (whole)", backend.backward)
    backend.step = _mark("dense optimiser step", backend.step)
    backend.zero_grad = _mark("zero_grad", backend.zero_grad)
    trainer.objective.losses = _mark("loss", trainer.objective.losses)


def _region_ms(events, steps: int) -> dict[str, float]:
    """Milliseconds per step spent in each marked region (its wall time on the calling thread)."""
    totals = dict.fromkeys(REGIONS, 0.0)
    for e in events:
        if e.name in totals:
            totals[e.name] += e.cpu_time_total / 1000.0
    return {k: v / steps for k, v in totals.items()}


def _top_ops(events, region: str, steps: int, limit: int = 12) -> list[tuple[str, float]]:
    """The operators with the most self CPU time under ``region`` (ms per step)."""
    spans = [(e.time_range.start, e.time_range.end, e.thread) for e in events if e.name == region]
    per_op: dict[str, float] = {}
    for e in events:
        if e.name in REGIONS or e.name.startswith("ProfilerStep"):
            continue
        inside = any(start <= e.time_range.start and e.time_range.end <= end for start, end, _ in spans)
        if inside:
            per_op[e.name] = per_op.get(e.name, 0.0) + e.self_cpu_time_total / 1000.0
    return sorted(((k, v / steps) for k, v in per_op.items()), key=lambda kv: -kv[1])[:limit]


def worker(out: Path, warmup: int, steps: int, train_args: list[str]) -> int:
    import torch

    from atjt_dist.config import build_config
    from atjt_dist.trainer import Trainer

    trainer = Trainer(build_config(train_args))
    try:
        trainer.model.train()
        plans = iter(trainer.schedule.steps())
        for _ in range(warmup):
            trainer.train_step(next(plans))
        _instrument(trainer)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                trainer.train_step(next(plans))
        wall, cpu = (time.perf_counter() - wall0) / steps * 1000, (time.process_time() - cpu0) / steps * 1000
        events = prof.events()
        regions = _region_ms(events, steps)
        report = {
            "rank": trainer.ctx.rank,
            "world": trainer.ctx.world,
            "step_ms_wall_profiled": wall,
            "step_ms_cpu_profiled": cpu,
            "regions_ms": regions,
            "top_backward": _top_ops(events, "backward (whole)", steps),
            "top_forward": _top_ops(events, "forward (whole)", steps),
            "rows_per_step": 2 * trainer.cfg.train.batch_size,
            "threads": torch.get_num_threads(),
        }
        (out / f"rank{trainer.ctx.rank}.json").write_text(json.dumps(report, indent=1))
    finally:
        trainer.close()
    return 0


def _table(report: dict) -> list[str]:
    regions = report["regions_ms"]
    step = report["step_ms_wall_profiled"]
    sparse = regions["sparse input distribution"] + regions["sparse lookups + output distribution"] + regions["KJT build"]
    rows = [
        ("batch build (sampler, numpy -> torch)", regions["batch build"]),
        ("KJT build (SequenceBatch.kjt)", regions["KJT build"]),
        ("sparse input distribution (TorchRec input_dist)", regions["sparse input distribution"]),
        ("sparse lookups + output distribution", regions["sparse lookups + output distribution"]),
        ("dense forward (forward minus the three above)", regions["forward (whole)"] - sparse),
        ("loss", regions["loss"]),
        ("backward: dense + embedding backward, fused sparse optimiser, gradient all-reduce", regions["backward (whole)"]),
        ("dense optimiser step", regions["dense optimiser step"]),
        ("zero_grad", regions["zero_grad"]),
    ]
    accounted = sum(v for _, v in rows)
    rows.append(("rest (Python between the calls, learning-rate setting, dropout keys)", step - accounted))
    lines = ["| region | ms per step (wall) | share of the step |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {ms:.1f} | {ms / step:.0%} |" for name, ms in rows]
    lines.append(f"| **whole step (profiled)** | **{step:.1f}** | 100% |")
    return lines


def _ops(title: str, ops: list) -> list[str]:
    lines = [f"Top operators by self CPU time, {title} (ms per step):", ""]
    lines += [f"- `{name}`: {ms:.1f}" for name, ms in ops]
    return [*lines, ""]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--worker":
        out, warmup, steps = Path(argv[1]), int(argv[2]), int(argv[3])
        return worker(out, warmup, steps, argv[5:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/step-profile"))
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write (default: print)")
    args, train_args = parser.parse_known_args(argv)
    train_args = [a for a in train_args if a != "--"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve()
    worker_cmd = [str(script), "--worker", str(args.workdir), str(args.warmup), str(args.steps), "--", *train_args]
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", *worker_cmd]
    else:
        cmd = [sys.executable, *worker_cmd]
    threads = str(max(1, (os.cpu_count() or 1) // args.nproc))
    env = dict(os.environ, OMP_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads)
    load = os.getloadavg()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"profiled run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [json.loads((args.workdir / f"rank{r}.json").read_text()) for r in range(args.nproc)]
    r0 = ranks[0]
    others = ", ".join(f"{r['step_ms_wall_profiled']:.1f}" for r in ranks[1:]) or "-"
    lines = [
        "Command: `python benchmarks/step_profile.py " + " ".join(argv) + "`  ",
        f"Machine: {machine_line()}; load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end  ",
        f"Versions: {versions_line('torch', 'torchrec', 'numba')}  ",
        f"Setup: {args.nproc} process(es), {threads} thread(s) each; {r0['rows_per_step']} recommender rows per global step; "
        f"{args.warmup} warm-up steps, then {args.steps} profiled; rank 0's figures. Profiled step: "
        f"{r0['step_ms_wall_profiled']:.1f} ms wall, {r0['step_ms_cpu_profiled']:.1f} ms CPU "
        f"(other ranks, wall: {others}).",
        "",
        *_table(r0),
        "",
        *_ops("inside the backward", r0["top_backward"]),
        *_ops("inside the forward", r0["top_forward"]),
    ]
    text = "\n".join(lines)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:]))
