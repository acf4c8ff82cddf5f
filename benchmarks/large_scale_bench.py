"""Large-scale mode on an ML-20M-sized synthetic dataset: time and peak memory per rank.

    python benchmarks/large_scale_bench.py --data /tmp/big [--generate] [--nproc 2]
        [--steps 2000] [--atjt-steps N] [--batch 256] [--log-every 250] [--methods base,atjt]
        [--output benchmarks/large_scale.md]

``--generate`` first writes the dataset (``python -m atjt_dist.data.synthetic --users 138493
--items 26744 --mean-length 145 --min-length 20``: ~20M interactions, ML-20M's users and items).
Then, per method (ATJT off = ``base``, on = ``atjt``), one ``torchrun --nproc_per_node=N`` run
of the trainer in large-scale mode (``data.mode=sliding``: every position of every training
sequence is a target) for ``--steps`` steps (``train.max_steps``; 0 = the whole epoch;
``--atjt-steps`` for the ATJT run, default ``--steps``). Each rank reports its setup time (data,
model, sharding), training time, both in wall and CPU seconds (``time.process_time``: all of the
process's threads), the 1-minute load average when its training starts and ends, and its peak
resident memory (``getrusage``: the high-water mark of the process). The steady-state rate comes
from the run's log records (global recommender rows between the first and the last record over
the time between them: the first window, the warm-up, is left out). When the run is shorter than
the epoch, the epoch's time is extrapolated from that rate and labelled so; the measured part is
reported on its own. The steady state is from the end of the first log window (``--log-every``
steps, the warm-up) to the last step, per rank, in wall and in CPU seconds per step (recorded after
every step through the trainer's after-step hook). ATJT / baseline compares the two runs' steady
seconds per step, by wall and by CPU time; the runs are back to back, so machine load affects both,
though not necessarily alike on a shared machine: the CPU ratio is the robust one.
Evaluation is not timed (it is not part of an epoch). The training time includes the checkpoint
the trainer always writes at the end (well under a second for these tables).

Each rank gets cores / nproc threads: OMP_NUM_THREADS and NUMBA_NUM_THREADS both. Setting only
OMP_NUM_THREADS is not enough: numba's parallel samplers then start one OpenMP thread per core and
torch's thread count rises with them (2 threads per rank on 2 cores here), and the oversubscribed
ranks ran about 5x slower on this machine. The per-rank report gives torch's thread count as it
was after training.

The dataset's generation (``--generate``) is recorded beside it in ``<data>.generate.json``, so a
later run without ``--generate`` reports it too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine_line, versions_line

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Worker: one rank of a torchrun job
# ---------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Current resident memory (MB) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _steady(marks: list[tuple[int, float, float]], warm_steps: int) -> dict:
    """Wall and CPU seconds per step after the first ``warm_steps`` steps (the warm-up)."""
    if len(marks) < 2:
        return {"from_step": 0, "to_step": 0, "wall_step_s": float("nan"), "cpu_step_s": float("nan")}
    start = next((m for m in marks if m[0] >= warm_steps), marks[0])
    if start is marks[-1]:
        start = marks[0]
    end = marks[-1]
    n = end[0] - start[0]
    return {"from_step": start[0] + 1, "to_step": end[0], "wall_step_s": (end[1] - start[1]) / n, "cpu_step_s": (end[2] - start[2]) / n}


class _MarkingHooks:
    """The trainer's fault hooks (a frozen dataclass) with ``after_step`` also recording
    (step, wall, CPU) once each step is done."""

    def __init__(self, inner, marks: list) -> None:
        self._inner, self._marks = inner, marks

    def after_step(self, step: int, rank: int) -> None:
        self._marks.append((step, time.perf_counter(), time.process_time()))
        self._inner.after_step(step, rank)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def worker(out_dir: Path, train_args: list[str], warm_steps: int) -> int:
    import torch

    from atjt_dist.config import build_config
    from atjt_dist.trainer import Trainer

    started, cpu_started = time.perf_counter(), time.process_time()
    trainer = Trainer(build_config(train_args))
    setup_s, setup_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    rss_after_setup = _rss_mb()
    # (step, wall, CPU) once each step is done (after its log line and checkpoint, if any)
    marks: list[tuple[int, float, float]] = []
    trainer.hooks = _MarkingHooks(trainer.hooks, marks)
    try:
        load_start = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        marks.insert(0, (0, t0, c0))
        report = {
            "rank": trainer.ctx.rank,
            "world": trainer.ctx.world,
            "setup_s": setup_s,
            "setup_cpu_s": setup_cpu_s,
            "train_s": train_s,
            "train_cpu_s": train_cpu_s,
            "load_train_start": load_start,
            "load_train_end": os.getloadavg()[0],
            "steady": _steady(marks, warm_steps),
            "torch_threads": torch.get_num_threads(),  # at the end: what the steps ran with
            "steps": trainer.step,
            "epoch_steps": trainer.schedule.total_steps(),
            "rows_per_step": 2 * trainer.cfg.train.batch_size,
            "train_samples": int(sum(p.rec_space.size for p in trainer.schedule.phases)),
            "rss_after_setup_mb": rss_after_setup,
            # ru_maxrss is in KiB on Linux: the process's high-water mark
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "run_dir": str(trainer.run_dir),
        }
        (out_dir / f"rank{trainer.ctx.rank}.json").write_text(json.dumps(report, indent=1))
    finally:
        trainer.close()
    return 0


# ---------------------------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------------------------


def _windows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]


def run_method(method: str, args, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """One torchrun job of ``method`` (base or atjt) with the benchmark's config, plus the training
    flags ``extra`` (large_scale_ab.py's variants); returns its figures."""
    out.mkdir(parents=True, exist_ok=True)
    train_args = [
        f"--data.path={args.data}",
        "--data.mode=sliding",
        f"--train.batch_size={args.batch}",
        f"--atjt.recognizer_batch_size={args.batch}",
        "--train.epochs=1",
        f"--train.log_every={args.log_every}",
        "--no-train.progress_bar",
        "--checkpoint.every=0",
        f"--atjt.enabled={'true' if method == 'atjt' else 'false'}",
        f"--run-dir={out / 'run'}",
        f"--model.name={args.model}",
        *extra,
    ]
    steps = args.atjt_steps if (method == "atjt" and args.atjt_steps is not None) else args.steps
    if steps:
        train_args.append(f"--train.max_steps={steps}")
    script = Path(__file__).resolve().relative_to(REPO)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        str(script),
        "--worker",
        str(out),
        str(args.log_every),
        "--",
        *train_args,
    ]
    # The cores split between the ranks. numba's thread count too: the samplers' parallel kernels
    # would otherwise start one OpenMP thread per core and raise torch's thread count with them.
    threads = str(max(1, (os.cpu_count() or 1) // args.nproc))
    env = dict(os.environ, OMP_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"[large_scale] {method}: {' '.join(cmd[3:])}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    load_after = os.getloadavg()
    (out / "stdout.txt").write_text(proc.stdout)
    (out / "stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{method} run failed ({proc.returncode}); see {out}/stderr.txt:\n{proc.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.nproc)]
    windows = _windows(Path(ranks[0]["run_dir"]))
    r0 = ranks[0]
    # Steady state: from the end of the first log window (the warm-up) to the last step, per rank
    # (wall and CPU); a step ends on every rank together (collectives), so the wall figures agree.
    st = [k["steady"] for k in ranks]
    step_s = max(x["wall_step_s"] for x in st)
    cpu_step_s = max(x["cpu_step_s"] for x in st)
    steady_steps = st[0]["to_step"] - st[0]["from_step"] + 1
    steady_note = f"steps {st[0]['from_step']}-{st[0]['to_step']}"
    rows_per_s = r0["rows_per_step"] / step_s
    return {
        "method": method,
        "cmd": " ".join(["python"] + cmd[1:]),
        "wall_s": wall,
        "cpu_s": cpu,
        "load_before": load_before,
        "load_after": load_after,
        "ranks": ranks,
        "rows_per_s": rows_per_s,
        "step_s": step_s,
        "cpu_step_s": cpu_step_s,
        "epoch_cpu_bound_s": r0["epoch_steps"] * cpu_step_s,
        "steps": r0["steps"],
        "steady_steps": steady_steps,
        "steady_note": steady_note,
        "epoch_steps": r0["epoch_steps"],
        "train_samples": r0["train_samples"],
        "epoch_s": r0["train_s"] if r0["steps"] >= r0["epoch_steps"] else r0["epoch_steps"] * step_s,
        "measured_all": r0["steps"] >= r0["epoch_steps"],
        "first_loss": windows[0]["loss"],
        "last_loss": windows[-1]["loss"],
        "losses": [w["loss"] for w in windows],  # every log window's, for A/B comparisons
    }


def _rows_fmt(values, fmt) -> str:
    return " / ".join(format(v, fmt) for v in values)


def report(results: list[dict], args, gen: dict | None, argv: list[str]) -> str:
    meta = json.loads((Path(args.data) / "meta.json").read_text()) if (Path(args.data) / "meta.json").is_file() else {}
    threads = max(1, (os.cpu_count() or 1) // args.nproc)
    lines = [
        "# Large-scale mode: an epoch of an ML-20M-sized dataset",
        "",
        f"Command: `python benchmarks/large_scale_bench.py {' '.join(argv)}`  ",
        f"Machine: {machine_line()}; other jobs' share of it shows in the load averages below.  ",
        f"Versions: {versions_line('torch', 'torchrec', 'numba')}.  ",
        (
            f"Dataset: `{args.data}`"
            + (f": {meta['num_users']:,} users, {meta['num_items']:,} items, {meta['num_interactions']:,} interactions" if meta else "")
            + (
                f"; generated in {gen['seconds']:.0f} s wall ({gen.get('cpu_s', float('nan')):.0f} s CPU"
                + (f", peak RSS {gen['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in gen else "")
                + f") by `{gen['cmd']}`"
                if gen
                else ""
            )
            + "."
        ),
        "",
        (
            f"Config: model {args.model}, data.mode=sliding (every position of every training sequence is a target), "
            f"history 19, train.batch_size={args.batch} positives = {2 * args.batch} recommender rows per global step "
            f"(ATJT: + {args.batch} corrupted recogniser rows, atjt.recognizer_batch_size={args.batch}), train.epochs=1 "
            f"(an epoch = every training sample once, over the ATJT schedule's 2 phases), {args.nproc} processes "
            f"(torchrun, gloo, OMP_NUM_THREADS=NUMBA_NUM_THREADS={threads}; torch threads per rank at the end of training: "
            + "; ".join(f"{r['method']} " + " / ".join(str(k.get("torch_threads", "?")) for k in r["ranks"]) for r in results)
            + "), checkpoint only at the end, no evaluation."
        ),
        "",
        "## Per method",
        "",
        (
            "| method | steps measured / epoch steps | steady rows/s (wall) | steady s/step, wall | steady s/step, CPU per rank | "
            "epoch time, wall on this machine | epoch time at one free core per rank (CPU s/step x steps) | ATJT / base, wall | ATJT / base, CPU |"
        ),
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    base = next((r for r in results if r["method"] == "base"), None)
    for r in results:
        if r["measured_all"]:
            epoch = f"{r['ranks'][0]['train_s'] / 3600:.2f} h measured"
        else:
            epoch = f"**{r['epoch_s'] / 3600:.1f} h extrapolated** from {r['steady_note']}"
        cpu_epoch = f"{r['epoch_cpu_bound_s'] / 3600:.1f} h" + ("" if r["measured_all"] else " extrapolated")
        other = base is not None and r is not base
        ratio = f"{r['step_s'] / base['step_s']:.2f}x" if other else "-"
        ratio_cpu = f"**{r['cpu_step_s'] / base['cpu_step_s']:.2f}x**" if other else "-"
        lines.append(
            f"| {r['method']} | {r['steps']} / {r['epoch_steps']} | {r['rows_per_s']:,.0f} | {r['step_s']:.2f} | {r['cpu_step_s']:.2f} | "
            f"{epoch} | {cpu_epoch} | {ratio} | {ratio_cpu} |"
        )
    lines += [
        "",
        "## Per rank (rank 0 / rank 1 ...)",
        "",
        "| method | setup s wall | setup s CPU | train s wall (measured steps) | train s CPU | CPU / wall in training | RSS after setup MB | peak RSS MB | load avg at train start -> end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        k = r["ranks"]
        lines.append(
            f"| {r['method']} | {_rows_fmt([x['setup_s'] for x in k], '.1f')} | {_rows_fmt([x['setup_cpu_s'] for x in k], '.1f')} | "
            f"{_rows_fmt([x['train_s'] for x in k], '.0f')} | {_rows_fmt([x['train_cpu_s'] for x in k], '.0f')} | "
            f"{_rows_fmt([x['train_cpu_s'] / x['train_s'] for x in k], '.2f')} | {_rows_fmt([x['rss_after_setup_mb'] for x in k], '.0f')} | "
            f"{_rows_fmt([x['peak_rss_mb'] for x in k], '.0f')} | {_rows_fmt([x['load_train_start'] for x in k], '.1f')} -> {_rows_fmt([x['load_train_end'] for x in k], '.1f')} |"
        )
    lines += [
        "",
        (
            "The CPU figures are the work done (CPU seconds of the rank's process, all threads); the wall figures "
            "also contain any time other jobs on the machine took from the ranks (a load average above the "
            "number of ranks, CPU / wall below the threads per rank), so the CPU ratio is the better measure of what "
            "ATJT costs. 'At one free core per rank' is what the epoch would take if each rank had its core to itself: "
            "the measured CPU seconds per step times the epoch's steps (an estimate, not a measurement)."
        ),
        "",
        "Notes:",
        "",
    ]
    for r in results:
        lines.append(
            f"- {r['method']}: {r['train_samples']:,} training samples in the epoch; {r['steps']} steps measured of "
            f"{r['epoch_steps']} ({100 * r['steps'] / r['epoch_steps']:.1f}% of the epoch); loss {r['first_loss']:.4f} (first "
            f"window) -> {r['last_loss']:.4f} (last); the whole torchrun job (start-up, imports, setup, training, "
            f"shutdown) took {r['wall_s']:.0f} s wall and {r['cpu_s']:.0f} s CPU over both ranks; load average "
            f"{r['load_before'][0]:.1f} before -> {r['load_after'][0]:.1f} after."
        )
    partial = [r["method"] for r in results if not r["measured_all"]]
    lines += [
        (
            "- Peak RSS is the process's high-water mark over setup and training (the end-of-training checkpoint included)."
            + (
                f" For {', '.join(partial)} (part of the epoch measured) it is a lower bound for the epoch's peak: large-scale "
                "mode builds batches on the fly (nothing per sample is materialised), so no growth in proportion to the "
                "epoch is expected."
                if partial
                else ""
            )
        ),
        (
            f"- CPU / wall below {threads:.0f} (the threads per rank) in training means the rank waited: for CPU time taken by "
            "other jobs on the machine, and for its peer in the collectives."
        ),
        "",
        "Commands (each writes its run directory and per-rank JSON under the output folder):",
        "",
    ]
    for r in results:
        lines.append(f"    {r['cmd']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        sep = argv.index("--")
        return worker(Path(argv[1]), argv[sep + 1 :], int(argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory")
    ap.add_argument("--generate", action="store_true", help="write the ML-20M-sized synthetic dataset to --data first")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000, help="train.max_steps per method (0 = the whole epoch)")
    ap.add_argument("--atjt-steps", type=int, default=None, help="train.max_steps of the ATJT run (default: --steps)")
    ap.add_argument("--batch", type=int, default=256, help="positives per global batch (rows = 2x)")
    ap.add_argument("--log-every", type=int, default=250, help="steps per log window (the first window is the warm-up)")
    ap.add_argument("--model", default="din")
    ap.add_argument("--methods", default="base,atjt")
    ap.add_argument("--out", default=None, help="folder for runs (default: a temporary one)")
    ap.add_argument("--output", default=None, help="Markdown report to write")
    args = ap.parse_args(argv)
    record = Path(str(Path(args.data)) + ".generate.json")
    gen = None
    if args.generate:
        cmd = [
            sys.executable,
            "-m",
            "atjt_dist.data.synthetic",
            "--output",
            args.data,
            "--overwrite",
            "--users",
            "138493",
            "--items",
            "26744",
            "--mean-length",
            "145",
            "--min-length",
            "20",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        gen = {
            "seconds": time.perf_counter() - t0,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": after.ru_maxrss / 1024,  # the largest child so far: the generator
            "cmd": " ".join(["python"] + cmd[1:]),
        }
        record.write_text(json.dumps(gen, indent=1))
    elif record.is_file():
        gen = json.loads(record.read_text())
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="large-scale-"))
    results = [run_method(m, args, out / m) for m in args.methods.split(",")]
    text = report(results, args, gen, argv)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
