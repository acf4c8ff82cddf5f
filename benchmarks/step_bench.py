"""Training-step throughput: the baseline vs ATJT, per base model, same data, same process.

    [OMP_NUM_THREADS=1] python benchmarks/step_bench.py [--models din,dcn,wide_deep,fearec,sasrec,s3rec]
        [--batch 512] [--aux-batch 256] [--steps 4] [--blocks 3] [--warmup 2] [--output benchmarks/step.md]
        [--recognizer-kinds din,din_pos,transformer]

(torch and numba use OMP_NUM_THREADS threads; default: every core. The report gives the torch
thread count as it was after the steps.)

Times ``Trainer.train_step`` (batch building, forward, loss, backward with the fused embedding
optimiser, dense optimiser step) on one process, for the baseline (ATJT off: w = 1, no
recogniser) and ATJT (recogniser g on the step's clean positives and on its corrupted batch, in
one forward; one backward for L_R + lambda * L_D). For each model both trainers are built, warmed
up (numba and torch first calls), then timed in alternating blocks of steps (base, atjt, base,
atjt, ...) so that both see the same machine state; the models run one after another.

Per block: wall seconds (``time.perf_counter``) and CPU seconds of this process, all threads
(``time.process_time``). Per model: the 1-minute load average before and after its blocks.
Samples = recommender rows (positives and their negatives), 2 x batch per step; samples/s from
the median wall time per step. The ATJT / baseline ratio is given both by wall time (what a user
waits for, but inflated or deflated by other jobs on a shared machine) and by CPU time (the work
done, much less sensitive to contention). Writes a Markdown report with the machine, versions,
figures and ratios.

``--recognizer-kinds`` (default ``din``, the config's default kind) times the ATJT step once per
noise-recogniser kind (``atjt.recognizer.kind``), each in its own Trainer, in the same alternating
blocks (base, atjt[din], atjt[din_pos], atjt[transformer], base, ...). The first table's ATJT
column is the ``din`` kind's (the first listed kind's when din is not listed); with more than one
kind a second table gives, per kind, its step, its extra CPU time over the baseline and that
extra's ratio to din's extra, against the target that the item-level ``transformer``
recogniser's extra cost stay within KINDS_TARGET x din's.
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
# numba's parallel samplers start one OpenMP thread per core unless told otherwise, and that
# raises torch's thread count with them: keep both at OMP_NUM_THREADS.
os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import torch  # noqa: E402
from machine_info import machine_line, versions_line  # noqa: E402

from atjt_dist.config import build_config  # noqa: E402
from atjt_dist.distributed import DistConfig, init_distributed, shutdown  # noqa: E402
from atjt_dist.trainer import Trainer, resolve_data_path  # noqa: E402

MODELS = ("din", "dcn", "wide_deep", "fearec", "sasrec", "s3rec")
TARGET = 1.5
KINDS = ("din", "din_pos", "transformer")  # atjt.recognizer.kind
KINDS_TARGET = 2.0  # the transformer recogniser's extra cost over the baseline, at most this x din's
KIND = {  # what a base model's step is, for the report's reading of the ratios
    "din": "itself a target-attention network of the recogniser's kind and size, on more rows",
    "dcn": "a cross network and an MLP over a few embeddings",
    "wide_deep": "a linear part and an MLP over a few embeddings",
    "sasrec": "a self-attention encoder over the history",
    "fearec": "a self-attention encoder with frequency-domain layers and a contrastive term",
    "s3rec": "a self-attention encoder over the history",
}


def time_block(trainer: Trainer, plans) -> tuple[float, float]:
    """(wall, CPU) seconds per step over one pass of ``plans``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for plan in plans:
        trainer.train_step(plan)
    return (time.perf_counter() - wall) / len(plans), (time.process_time() - cpu) / len(plans)


def method_name(kind: str) -> str:
    """The results key of the ATJT step with recogniser ``kind``."""
    return f"atjt[{kind}]"


def main_kind(kinds: list[str]) -> str:
    """The kind whose ATJT step the first table reports: din when timed, else the first listed."""
    return "din" if "din" in kinds else kinds[0]


def build_trainers(model: str, args, ctx, tmp: str) -> dict:
    """The baseline's Trainer and one ATJT Trainer per recogniser kind, in timing order."""
    common = [
        f"--model.name={model}",
        f"--train.batch_size={args.batch}",
        f"--atjt.recognizer_batch_size={args.aux_batch}",
        "--data.history_length=19",
        "--no-train.progress_bar",
        "--no-log.tensorboard",
        # the timed steps are joint ones (a warm-up step trains the recogniser alone)
        "--atjt.recognizer_warmup_steps=0",
    ]
    if args.data:
        common.append(f"--data.path={args.data}")
    variants = [("base", ["--atjt.enabled=false"], "base")]
    variants += [(method_name(k), ["--atjt.enabled=true", f"--atjt.recognizer.kind={k}"], f"atjt-{k}") for k in args.kinds]
    trainers = {}
    for method, flags, run_dir in variants:
        cfg = build_config(common + flags + [f"--run-dir={tmp}/{model}-{run_dir}"])
        trainers[method] = Trainer(cfg, ctx=ctx)
    return trainers


def time_trainers(trainers: dict, args) -> tuple[dict, dict]:
    """Warm every trainer up, then time them in alternating blocks: (wall, CPU) lists of
    seconds per step, one entry per block, per method."""
    n = args.warmup + args.steps * args.blocks
    plans = {m: [p for _, p in zip(range(n), t.schedule.steps())] for m, t in trainers.items()}
    for m, t in trainers.items():  # warm-up: numba and torch first calls, allocator
        for plan in plans[m][: args.warmup]:
            t.train_step(plan)
    wall = {m: [] for m in trainers}
    cpu = {m: [] for m in trainers}
    for b in range(args.blocks):  # fresh steps in every block (no cache reuse), alternating methods
        for m, t in trainers.items():
            start = args.warmup + b * args.steps
            w, c = time_block(t, plans[m][start : start + args.steps])
            wall[m].append(w)
            cpu[m].append(c)
    return wall, cpu


def bench_model(model: str, args, ctx, tmp: str) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    trainers = build_trainers(model, args, ctx, tmp)
    setup_s = time.perf_counter() - t0
    base = trainers["base"]
    meta = base.data.meta
    dataset = (
        f"`{resolve_data_path(base.cfg, ctx)}` ({meta['num_users']:,} users, {meta['num_items']:,} items, {meta.get('num_interactions', 0):,} interactions)"
    )
    wall, cpu = time_trainers(trainers, args)
    load_after = os.getloadavg()[0]
    for t in trainers.values():
        t.close()
    rows = 2 * args.batch
    res = {"model": model, "dataset": dataset, "setup_s": setup_s, "load_before": load_before, "load_after": load_after}
    for m in trainers:
        res[m] = {
            "wall_step": statistics.median(wall[m]),
            "cpu_step": statistics.median(cpu[m]),
            "wall_blocks": wall[m],
            "cpu_blocks": cpu[m],
            "samples_per_s": rows / statistics.median(wall[m]),
        }
    res["atjt"] = res[method_name(main_kind(args.kinds))]
    res["ratio_wall"] = res["atjt"]["wall_step"] / res["base"]["wall_step"]
    res["ratio_cpu"] = res["atjt"]["cpu_step"] / res["base"]["cpu_step"]
    print(
        f"[step_bench] {model}: base {1000 * res['base']['wall_step']:.0f} ms ({1000 * res['base']['cpu_step']:.0f} ms CPU), "
        f"atjt {1000 * res['atjt']['wall_step']:.0f} ms ({1000 * res['atjt']['cpu_step']:.0f} ms CPU); ratio wall "
        f"{res['ratio_wall']:.2f}x, CPU {res['ratio_cpu']:.2f}x; load {load_before:.1f} -> {load_after:.1f}",
        flush=True,
    )
    if len(args.kinds) > 1:
        print(
            f"[step_bench] {model} by recogniser kind: "
            + ", ".join(f"{k} {1000 * res[method_name(k)]['wall_step']:.0f} ms ({1000 * res[method_name(k)]['cpu_step']:.0f} ms CPU)" for k in args.kinds),
            flush=True,
        )
    return res


def kind_extras(r: dict, kind: str) -> tuple[float, float]:
    """The ATJT[kind] step's extra (wall, CPU) seconds per step over the baseline's (medians)."""
    a, b = r[method_name(kind)], r["base"]
    return a["wall_step"] - b["wall_step"], a["cpu_step"] - b["cpu_step"]


def extra_ratio(r: dict, kind: str, which: int) -> float | None:
    """kind's extra over din's extra (which: 0 wall, 1 CPU); None where din is not timed or its
    extra is not positive (noise larger than the extra: no meaningful ratio)."""
    if method_name("din") not in r:
        return None
    din = kind_extras(r, "din")[which]
    return kind_extras(r, kind)[which] / din if din > 0 else None


def block_extra_ratios(r: dict, kind: str) -> list[float]:
    """Per block: kind's extra CPU over din's extra CPU in that block (the spread of the ratio)."""
    base, din, own = r["base"]["cpu_blocks"], r[method_name("din")]["cpu_blocks"], r[method_name(kind)]["cpu_blocks"]
    return [(o - b) / (d - b) for b, d, o in zip(base, din, own) if d - b > 0]


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def kinds_table(results: list[dict], kinds: list[str]) -> list[str]:
    """The second table: per model and recogniser kind, its ATJT step against the baseline and
    its extra cost against din's; then a reading and the per-block figures."""
    lines = [
        f"## ATJT step by noise-recogniser kind (atjt.recognizer.kind): {', '.join(kinds)}",
        "",
        (
            "| model | recogniser kind | base ms/step (wall / CPU) | ATJT ms/step (wall / CPU) | extra CPU ms/step over base | "
            "ATJT / base, wall | ATJT / base, CPU | extra / din's extra (wall / CPU) | "
            f"meets <= {KINDS_TARGET:g}x, transformer (wall / CPU) |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        b = r["base"]
        for k in kinds:
            a = r[method_name(k)]
            ratios = [extra_ratio(r, k, i) for i in (0, 1)]
            meets = "-"
            if k == "transformer":
                meets = " / ".join("n/a" if x is None else ("yes" if x <= KINDS_TARGET else "no") for x in ratios)
            lines.append(
                f"| {r['model']} | {k} | {1000 * b['wall_step']:.0f} / {1000 * b['cpu_step']:.0f} | "
                f"{1000 * a['wall_step']:.0f} / {1000 * a['cpu_step']:.0f} | {1000 * kind_extras(r, k)[1]:.0f} | "
                f"{a['wall_step'] / b['wall_step']:.2f}x | {a['cpu_step'] / b['cpu_step']:.2f}x | "
                f"{' / '.join(fmt_ratio(x) for x in ratios)} | {meets} |"
            )
    lines += ["", kinds_reading(results, kinds), "", "CPU ms/step per block (base | " + " | ".join(kinds) + "):", ""]
    for r in results:
        cols = [r["base"]] + [r[method_name(k)] for k in kinds]
        lines.append(f"- {r['model']}: " + " | ".join(", ".join(f"{1000 * x:.0f}" for x in c["cpu_blocks"]) for c in cols))
    return lines


def kinds_reading(results: list[dict], kinds: list[str]) -> str:
    """One paragraph reading the kinds table against KINDS_TARGET."""
    if "din" not in kinds or "transformer" not in kinds:
        return "The transformer-vs-din target needs both din and transformer in --recognizer-kinds."
    parts = []
    for r in results:
        ratio = extra_ratio(r, "transformer", 1)
        blocks = block_extra_ratios(r, "transformer")
        spread = f", per block {min(blocks):.2f}-{max(blocks):.2f}x" if blocks else ""
        verdict = "n/a" if ratio is None else ("meets" if ratio <= KINDS_TARGET else "misses")
        parts.append(
            f"base model {r['model']}: the din recogniser adds {1000 * kind_extras(r, 'din')[1]:.0f} ms CPU per step, the transformer "
            f"{1000 * kind_extras(r, 'transformer')[1]:.0f} ms, {fmt_ratio(ratio)} din's extra{spread}: {verdict} the target"
        )
    return (
        f"Reading it. Target: the transformer recogniser's extra CPU cost over the baseline step at most "
        f"{KINDS_TARGET:g}x the din recogniser's (medians over blocks; each block's own ratio shows the noise). " + "; ".join(parts) + "."
    )


def report_header(args, cmd: str, loads: tuple, totals: tuple[float, float], results: list[dict]) -> list[str]:
    """Title, command, machine, versions, load, dataset and setup lines."""
    rows = 2 * args.batch
    load_start, load_end = loads
    kinds = "" if args.kinds == ["din"] else f" (the first table's ATJT: recogniser kind {main_kind(args.kinds)})"
    return [
        "# Training step: baseline vs ATJT, every base model",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_line()}, torch threads {torch.get_num_threads()} (after the steps); other jobs' share of it shows in the load average below  ",
        f"Versions: {versions_line('torch', 'torchrec', 'numba')}  ",
        (
            f"Load average (1/5/15 min): {' / '.join(f'{x:.1f}' for x in load_start)} at the start, "
            f"{' / '.join(f'{x:.1f}' for x in load_end)} at the end; the whole run {totals[0]:.0f} s wall, {totals[1]:.0f} s CPU.  "
        ),
        (f"Dataset: {', '.join(sorted({r['dataset'] for r in results}))}.  "),
        (
            f"Setup: one process, batch {args.batch} positives + {args.batch} negatives "
            f"= {rows} recommender rows per step, L = 19; ATJT adds the recogniser on the {args.batch} positives and on "
            f"{args.aux_batch} corrupted rows (atjt.recognizer_batch_size){kinds}. Per model and method: {args.warmup} "
            f"warm-up steps, then {args.blocks} alternating blocks of {args.steps} steps (new batches in every block); "
            "the figures are medians over the blocks. CPU = this process's CPU time, all threads: with more than one "
            "torch thread on a loaded machine it also counts OpenMP threads spinning while they wait for a descheduled "
            "peer, so one thread gives the cleaner CPU figures here."
        ),
        "",
    ]


def main_table(results: list[dict], args) -> list[str]:
    """The baseline-vs-ATJT table, its reading and the per-block wall times."""
    report = [
        (
            "| model | base samples/s | ATJT samples/s | base ms/step (wall / CPU) | ATJT ms/step (wall / CPU) | "
            f"ATJT extra CPU ms/step | ATJT / base, wall | ATJT / base, CPU | meets <= {TARGET}x (wall / CPU) | load before -> after |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        b, a = r["base"], r["atjt"]
        meets = " / ".join("yes" if x <= TARGET else "no" for x in (r["ratio_wall"], r["ratio_cpu"]))
        report.append(
            f"| {r['model']} | {b['samples_per_s']:,.0f} | {a['samples_per_s']:,.0f} | "
            f"{1000 * b['wall_step']:.0f} / {1000 * b['cpu_step']:.0f} | {1000 * a['wall_step']:.0f} / {1000 * a['cpu_step']:.0f} | "
            f"{1000 * (a['cpu_step'] - b['cpu_step']):.0f} | "
            f"{r['ratio_wall']:.2f}x | {r['ratio_cpu']:.2f}x | {meets} | {r['load_before']:.1f} -> {r['load_after']:.1f} |"
        )
    report += ["", ratios_reading(results, args), "", "Wall ms/step per block (base | ATJT), to show the spread under the machine's load:", ""]
    for r in results:
        base_blocks = ", ".join(f"{1000 * x:.0f}" for x in r["base"]["wall_blocks"])
        atjt_blocks = ", ".join(f"{1000 * x:.0f}" for x in r["atjt"]["wall_blocks"])
        report.append(f"- {r['model']}: {base_blocks} | {atjt_blocks}")
    return report


def ratios_reading(results: list[dict], args) -> str:
    """The paragraph reading the first table's ratios against TARGET."""
    extra = [1000 * (r["atjt"]["cpu_step"] - r["base"]["cpu_step"]) for r in results]
    meet = [f"{r['model']} ({r['ratio_cpu']:.2f}x)" for r in results if r["ratio_cpu"] <= TARGET]
    miss = [f"{r['model']} ({r['ratio_cpu']:.2f}x)" for r in results if r["ratio_cpu"] > TARGET]
    near = [r["model"] for r in results if abs(r["ratio_cpu"] - TARGET) <= 0.1 or abs(r["ratio_wall"] - TARGET) <= 0.1]
    return (
        "Reading the ratios. ATJT adds to every model's step the same kind of work: the recogniser g (a "
        "DIN-like target-attention network with its own dim-8 tables, PReLU and dropout) forward and backward "
        f"on {args.batch} + {args.aux_batch} = {args.batch + args.aux_batch} rows, its embedding lookups and "
        "fused updates, building the corrupted recogniser batch, and the extra loss terms. That work does not "
        "depend on the base model, so the ratio is about 1 + extra / base and reaches the target only where the "
        "base model's own step costs at least twice the extra. Measured extra CPU per step: "
        f"{min(extra):.0f}-{max(extra):.0f} ms (part of the spread is measurement noise: few steps, "
        "and other jobs where the load average exceeds the cores; see the per-block figures below). By CPU time the target is met for: "
        f"{', '.join(meet) or 'none'}; it is not for: {', '.join(miss) or 'none'}."
        + (f" Within 0.1 of the target (either ratio), so not a firm verdict: {', '.join(near)}." if near else "")
        + " By base CPU ms/step, cheapest first: "
        + ", ".join(
            f"{r['model']} {1000 * r['base']['cpu_step']:.0f} ms -> {r['ratio_cpu']:.2f}x" for r in sorted(results, key=lambda r: r["base"]["cpu_step"])
        )
        + "."
        + (
            " The ones that miss have a cheap step of their own: "
            + "; ".join(f"{r['model']}, {KIND.get(r['model'], 'see its base cost above')}" for r in results if r["ratio_cpu"] > TARGET)
            + "."
            if miss
            else ""
        )
    )


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated base models")
    ap.add_argument("--model", default=None, help="one model (overrides --models)")
    ap.add_argument("--data", default=None, help="dataset directory (default: the embedded synthetic one of the current config)")
    ap.add_argument("--batch", type=int, default=512, help="positives per batch (rows = 2x)")
    ap.add_argument("--aux-batch", type=int, default=256, help="atjt.recognizer_batch_size: corrupted recogniser rows per step")
    ap.add_argument("--steps", type=int, default=4, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=3, help="alternating timed blocks per method")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    ap.add_argument("--output", default=None, help="Markdown report to write")
    ap.add_argument(
        "--recognizer-kinds",
        default="din",
        help=f"comma-separated atjt.recognizer.kind values to time the ATJT step with, each its own Trainer ({', '.join(KINDS)})",
    )
    args = ap.parse_args(argv)
    args.kinds = list(dict.fromkeys(k for k in args.recognizer_kinds.split(",") if k))
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        ap.error(f"--recognizer-kinds: expected some of {', '.join(KINDS)}, got {args.recognizer_kinds!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    models = [args.model] if args.model else [m for m in args.models.split(",") if m]

    started, cpu_started = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()
    ctx = init_distributed(DistConfig())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            results.append(bench_model(model, args, ctx, tmp))
    shutdown(ctx)
    totals = (time.perf_counter() - started, time.process_time() - cpu_started)
    load_end = os.getloadavg()

    cmd = "python benchmarks/step_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if "OMP_NUM_THREADS" in os.environ and os.environ["OMP_NUM_THREADS"] != str(os.cpu_count() or 1):
        cmd = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + cmd
    report = report_header(args, cmd, (load_start, load_end), totals, results) + main_table(results, args)
    if len(args.kinds) > 1:
        report += [""] + kinds_table(results, args.kinds)
    report.append("")
    text = "\n".join(report)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
