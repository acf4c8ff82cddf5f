"""Keyed dropout's cost on CPU: the masks of models/layers.py's Dropout (one splitmix64 hash per
eight units, keyed by seed, step, layer, call, global row and element) against the byte masks it
replaced (one torch random_ int64 word per eight units, from the process's generator).

    OMP_NUM_THREADS=1 python benchmarks/dropout_bench.py [--rows 768] [--length 19] [--hidden 32]
        [--calls 40] [--steps 8] [--blocks 7] [--data DIR] [--output FILE]

Two measurements, each in alternating blocks in one process so that every variant sees the same
machine state; the figures are medians over the blocks, CPU = this process's CPU time:

- the layer: forward and backward of Dropout(0.5) on [rows, length, hidden], the input of the
  din recogniser's dropout in the ATJT step of benchmarks/step.md (512 positives + 256
  corrupted rows, L = 19, attention hidden 32), keyed masks vs the old byte masks;
- the step: ``Trainer.train_step`` of ATJT with the DIN base model and the din recogniser
  (dropout 0.5), 512 + 512 recommender rows and 256 recogniser rows, with the keyed masks, with
  the old byte masks (``layers.keep_mask`` swapped for them in the same Trainer) and, in a
  second Trainer, with ``atjt.recognizer.dropout=0`` (what the dropout costs at all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import torch  # noqa: E402
from machine_info import machine_line, versions_line  # noqa: E402

from atjt_dist.config import build_config  # noqa: E402
from atjt_dist.distributed import DistConfig, init_distributed, shutdown  # noqa: E402
from atjt_dist.models import layers  # noqa: E402
from atjt_dist.trainer import Trainer, resolve_data_path  # noqa: E402

KEYED_MASK = layers.keep_mask


def byte_mask(shape, device, threshold, layer, rows=None, slots=None):  # noqa: ARG001 - keep_mask's signature
    """The replaced implementation: one random int64 word per eight units from torch's generator."""
    n = 1
    for s in shape:
        n *= s
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device).random_()
    return words.view(torch.uint8)[:n].view(shape) >= threshold


def timed(fn, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``fn`` over ``n`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def bench_layer(args) -> dict:
    layer = layers.Dropout(0.5).train()
    x = torch.randn(args.rows, args.length, args.hidden, requires_grad=True)
    rows = torch.arange(args.rows)

    def call():
        with layers.dropout_step(0, 0), layers.dropout_rows(rows):
            layer(x).sum().backward()

    out = {"old": [], "keyed": []}
    for _ in range(args.blocks):
        for name, mask in (("old", byte_mask), ("keyed", KEYED_MASK)):
            layers.keep_mask = mask
            timed(call, 3)
            out[name].append(timed(call, args.calls))
    layers.keep_mask = KEYED_MASK
    return out


def bench_step(args, ctx, tmp: str) -> tuple[dict, str]:
    common = [
        "--model.name=din",
        "--train.batch_size=512",
        "--atjt.recognizer_batch_size=256",
        "--data.history_length=19",
        "--no-train.progress_bar",
        "--no-log.tensorboard",
        "--atjt.recognizer_warmup_steps=0",
        "--atjt.enabled=true",
    ]
    if args.data:
        common.append(f"--data.path={args.data}")
    with_dropout = Trainer(build_config(common + [f"--run-dir={tmp}/on"]), ctx=ctx)
    without = Trainer(build_config(common + ["--atjt.recognizer.dropout=0", f"--run-dir={tmp}/off"]), ctx=ctx)
    meta = with_dropout.data.meta
    dataset = f"`{resolve_data_path(with_dropout.cfg, ctx)}` ({meta['num_users']:,} users, {meta['num_items']:,} items)"
    variants = (("old", with_dropout, byte_mask), ("keyed", with_dropout, KEYED_MASK), ("off", without, KEYED_MASK))
    n = 2 + 2 * args.steps * args.blocks
    plans = {id(t): iter([p for _, p in zip(range(n), t.schedule.steps())]) for t in (with_dropout, without)}
    for t in (with_dropout, without):  # warm-up: numba and torch first calls
        for _ in range(2):
            t.train_step(next(plans[id(t)]))
    out = {name: [] for name, _, _ in variants}
    for _ in range(args.blocks):
        for name, trainer, mask in variants:
            layers.keep_mask = mask
            block = [next(plans[id(trainer)]) for _ in range(args.steps)]
            wall, cpu = time.perf_counter(), time.process_time()
            for plan in block:
                trainer.train_step(plan)
            out[name].append(((time.perf_counter() - wall) / args.steps, (time.process_time() - cpu) / args.steps))
    layers.keep_mask = KEYED_MASK
    for t in (with_dropout, without):
        t.close()
    return out, dataset


def medians(blocks: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(b[0] for b in blocks), statistics.median(b[1] for b in blocks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--length", type=int, default=19)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--calls", type=int, default=40, help="layer calls per timed block")
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed block")
    ap.add_argument("--blocks", type=int, default=7, help="alternating timed blocks per variant")
    ap.add_argument("--data", default=None, help="dataset directory (default: the embedded synthetic one)")
    ap.add_argument("--output", default=None, help="Markdown report to write")
    args = ap.parse_args(argv)

    load_start = os.getloadavg()
    layer = bench_layer(args)
    ctx = init_distributed(DistConfig())
    with tempfile.TemporaryDirectory() as tmp:
        step, dataset = bench_step(args, ctx, tmp)
    shutdown(ctx)
    load_end = os.getloadavg()

    cmd = "python benchmarks/dropout_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if "OMP_NUM_THREADS" in os.environ:
        cmd = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + cmd
    (lo_w, lo_c), (lk_w, lk_c) = medians(layer["old"]), medians(layer["keyed"])
    (so_w, so_c), (sk_w, sk_c), (sf_w, sf_c) = medians(step["old"]), medians(step["keyed"]), medians(step["off"])
    ms = lambda s: f"{1000 * s:.2f}"  # noqa: E731
    lines = [
        "# Keyed dropout vs the byte masks it replaced",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_line()}, torch threads {torch.get_num_threads()}  ",
        f"Versions: {versions_line('torch', 'torchrec', 'numba')}  ",
        f"Load average (1 min): {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end.  ",
        f"Dataset (step): {dataset}.",
        "",
        "| measurement | old byte mask ms (wall / CPU) | keyed ms (wall / CPU) | keyed / old (wall / CPU) | dropout off ms (wall / CPU) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| layer: Dropout(0.5) forward + backward, [{args.rows}, {args.length}, {args.hidden}] | {ms(lo_w)} / {ms(lo_c)} | "
        f"{ms(lk_w)} / {ms(lk_c)} | {lk_w / lo_w:.2f}x / {lk_c / lo_c:.2f}x | - |",
        f"| step: ATJT train_step, DIN + din recogniser | {ms(so_w)} / {ms(so_c)} | {ms(sk_w)} / {ms(sk_c)} | "
        f"{sk_w / so_w:.3f}x / {sk_c / so_c:.3f}x | {ms(sf_w)} / {ms(sf_c)} |",
        "",
        "CPU ms per block (old | keyed): layer "
        + ", ".join(ms(c) for _, c in layer["old"])
        + " | "
        + ", ".join(ms(c) for _, c in layer["keyed"])
        + "; step "
        + ", ".join(f"{1000 * c:.0f}" for _, c in step["old"])
        + " | "
        + ", ".join(f"{1000 * c:.0f}" for _, c in step["keyed"])
        + " (off: "
        + ", ".join(f"{1000 * c:.0f}" for _, c in step["off"])
        + ")",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
