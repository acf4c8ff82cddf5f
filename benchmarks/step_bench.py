"""Training-step throughput: the baseline vs ATJT, same data, same process.

    python benchmarks/step_bench.py [--model din] [--steps 40] [--batch 256] [--output benchmarks/step.md]

Times ``Trainer.train_step`` (batch building, forward, loss, backward with the fused embedding
optimiser, dense optimiser step) on one process, for the baseline (w = 1, no recogniser) and
ATJT (recogniser on the positives and on its corrupted batch, one backward), alternating blocks
of steps so both see the same machine state. Samples = recommender rows (positives and their
negatives). Writes a Markdown report with the machine, versions, figures and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import torch  # noqa: E402

from atjt_dist.config import build_config  # noqa: E402
from atjt_dist.distributed import DistConfig, init_distributed, shutdown  # noqa: E402
from atjt_dist.trainer import Trainer  # noqa: E402


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def _versions() -> str:
    import numba
    import torchrec

    return f"Python {platform.python_version()}, torch {torch.__version__}, torchrec {torchrec.__version__}, numba {numba.__version__}"


def time_steps(trainer: Trainer, plans, repeats: int) -> list[float]:
    """Seconds per step for each of ``repeats`` passes over ``plans``."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for plan in plans:
            trainer.train_step(plan)
        out.append((time.perf_counter() - start) / len(plans))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="din")
    ap.add_argument("--data", default=None, help="dataset directory (default: the embedded synthetic one)")
    ap.add_argument("--batch", type=int, default=256, help="positives per batch (rows = 2x)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5, help="alternating timed blocks per method")
    ap.add_argument("--output", default=None, help="Markdown report to write")
    args = ap.parse_args(argv)

    common = [f"--model.name={args.model}", f"--train.batch_size={args.batch}", "--data.history_length=19", "--no-train.progress_bar"]
    if args.data:
        common.append(f"--data.path={args.data}")
    ctx = init_distributed(DistConfig())
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, flag in (("base", "false"), ("atjt", "true")):
            cfg = build_config(common + [f"--atjt.enabled={flag}", f"--run-dir={tmp}/{method}"])
            trainers[method] = Trainer(cfg, ctx=ctx)
        plans = {m: list(t.schedule.steps())[: args.steps] for m, t in trainers.items()}
        for m, t in trainers.items():  # warm-up: numba and torch first calls
            time_steps(t, plans[m][:3], 1)
        times = {m: [] for m in trainers}
        for _ in range(args.blocks):
            for m, t in trainers.items():
                times[m].extend(time_steps(t, plans[m], 1))
        rows = 2 * args.batch
        result = {m: rows / statistics.median(ts) for m, ts in times.items()}
        ratio = result["base"] / result["atjt"]
        for t in trainers.values():
            t.close()
        trainers.clear()
    shutdown(ctx)

    cmd = "python benchmarks/step_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        f"# Training step: baseline vs ATJT ({args.model})",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {_machine()}, torch threads {torch.get_num_threads()}  ",
        f"Versions: {_versions()}  ",
        f"Setup: one process, batch {args.batch} positives + {args.batch} negatives, L = 19, "
        f"recogniser batch 256 rows, median of {args.blocks} blocks of {args.steps} steps.",
        "",
        "| method | samples/s | ms/step |",
        "| --- | ---: | ---: |",
    ]
    for m, sps in result.items():
        report.append(f"| {m} | {sps:,.0f} | {1000 * rows / sps:.1f} |")
    report += ["", f"ATJT step cost / baseline step cost: **{ratio:.2f}x** (target: at most 1.5x)", ""]
    text = "\n".join(report)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
