"""A/B of the large-scale step: the same torchrun job under two sets of training flags, alternating.

    python benchmarks/large_scale_ab.py --data /tmp/big --variant before=--dist.reuse_host_memory=false
        --variant after= [--rounds 3] [--steps 300] [--batch 4096] [--nproc 2] [--output FILE.md]

Each round runs every variant once (large_scale_bench.py's ``run_method``: torchrun, one thread
per rank, ``data.mode=sliding``, the baseline method, ``--steps`` steps, the first log window as
the warm-up), the order reversed every other round so neither variant always runs first on a
machine whose load changes. The report gives each run's steady rows/s (wall) and CPU s/step, the
medians per variant, the ratio of each variant to the first one, and whether every log window's
loss is identical across the variants (a speed change must not change the numbers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from large_scale_bench import run_method
from machine_info import machine_line, versions_line


def _variant(text: str) -> tuple[str, tuple[str, ...]]:
    name, _, flags = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=FLAGS (FLAGS may be empty)")
    return name, tuple(flags.split()) if flags else ()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory")
    ap.add_argument("--variant", type=_variant, action="append", required=True, help="NAME=FLAGS (space-separated training flags); the first is the reference")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="train.max_steps of every run")
    ap.add_argument("--batch", type=int, default=4096, help="positives per global batch (rows = 2x)")
    ap.add_argument("--log-every", type=int, default=50, help="steps per log window (the first is the warm-up)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="din")
    ap.add_argument("--out", default=None, help="folder for runs (default: a temporary one)")
    ap.add_argument("--output", default=None, help="Markdown report to write")
    args = ap.parse_args(argv)
    args.atjt_steps = None
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="large-scale-ab-"))
    runs: dict[str, list[dict]] = {name: [] for name, _ in args.variant}
    for r in range(args.rounds):
        order = args.variant if r % 2 == 0 else list(reversed(args.variant))
        for name, flags in order:
            result = run_method("base", args, out / f"{name}-round{r}", flags)
            runs[name].append(result)
            print(f"[ab] round {r} {name}: {result['rows_per_s']:,.0f} rows/s, {result['cpu_step_s']:.3f} CPU s/step", flush=True)
    text = report(runs, args, argv)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


def report(runs: dict[str, list[dict]], args, argv: list[str]) -> str:
    names = list(runs)
    ref = names[0]
    med = {n: (statistics.median(r["rows_per_s"] for r in runs[n]), statistics.median(r["cpu_step_s"] for r in runs[n])) for n in names}
    losses = {n: [r["losses"] for r in runs[n]] for n in names}
    identical = all(x == losses[ref][0] for n in names for x in losses[n])
    threads = max(1, (os.cpu_count() or 1) // args.nproc)
    lines = [
        f"Command: `python benchmarks/large_scale_ab.py {' '.join(argv)}`  ",
        f"Machine: {machine_line()}; load average per run below.  ",
        f"Versions: {versions_line('torch', 'torchrec', 'numba')}.  ",
        f"Config: model {args.model}, baseline (no ATJT), data.mode=sliding, train.batch_size={args.batch} "
        f"({2 * args.batch} recommender rows per global step), {args.nproc} processes x {threads} thread, {args.steps} steps per run, "
        f"steady state after the first {args.log_every}-step window; {args.rounds} rounds, the order alternating.",
        "",
        "| variant | training flags | steady rows/s (wall) per run | CPU s/step per rank, per run | median rows/s | median CPU s/step | rows/s vs "
        + ref
        + " | CPU vs "
        + ref
        + " |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    flags = dict(args.variant)
    for n in names:
        rows = ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs[n])
        cpu = ", ".join(f"{r['cpu_step_s']:.3f}" for r in runs[n])
        lines.append(
            f"| {n} | `{' '.join(flags[n]) or '(none)'}` | {rows} | {cpu} | {med[n][0]:,.0f} | {med[n][1]:.3f} | "
            f"{med[n][0] / med[ref][0]:.2f}x | {med[ref][1] / med[n][1]:.2f}x |"
        )
    loads = "; ".join(f"{n} round {i}: {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}" for n in names for i, r in enumerate(runs[n]))
    lines += [
        "",
        f"Losses: every log window's loss is {'identical in every run of every variant' if identical else 'NOT identical across the runs'} "
        f"({len(losses[ref][0])} windows; first {losses[ref][0][0]:.6f}, last {losses[ref][0][-1]:.6f}).  ",
        f"Load average (1 min) before -> after each run: {loads}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
