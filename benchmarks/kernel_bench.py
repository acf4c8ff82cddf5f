"""Fused Triton weighted BCE vs the torch reference: forward + backward time and memory bandwidth.

    python benchmarks/kernel_bench.py --output benchmarks/kernel.md

Needs a CUDA device. Without one it prints why on stderr, writes nothing and exits with code 2
(so that a script chaining benchmarks sees it did not run).

For N = 2^10 .. 2^28 rows (a training step has 10^3-10^4 rows; the large N are where a fused
kernel can reach the bandwidth: below about 2^25 rows a GPU call's fixed costs hide it) and fp32 and bf16 logits (labels and weights fp32, as the training
code passes them), it times one forward and backward (``torch.autograd.grad`` of L to logits and
weights, so no gradient accumulation is timed) of:

- ``triton``:  atjt_kernels.weighted_bce(..., backend="triton"), the fused kernels;
- ``eager``:   atjt_kernels.weighted_bce_reference, the torch reference, eager;
- ``compile``: torch.compile(weighted_bce_reference, dynamic=True) (one compilation per dtype).

Timing: triton.testing.do_bench (median; it flushes L2 between runs, so small N are not served
from cache). Bandwidth: the bytes a fused forward + backward must move, N x (2 x (x + y + w) read
+ (dx + dw) written), divided by the time, the same byte count for every implementation (so an
implementation that moves more bytes shows a lower effective bandwidth), and as a share of the
device's peak: a table of H100/H200/A100 peaks, or --peak-gbs. Each size also checks the kernel
against the eager reference (max relative difference of L, dx, dw).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

# Peak DRAM bandwidth in GB/s (vendor datasheets), matched in order against the device name.
PEAK_GBS = (
    ("H200", 4800.0),
    ("GH200", 4000.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5 80GB HBM3 ("NVIDIA H100 80GB HBM3")
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100-SXM4-40GB", 1555.0),
    ("A100-PCIE-40GB", 1555.0),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGET_SHARE, TARGET_SPEEDUP = 0.80, 3.0


def peak_bandwidth(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-gbs"
    for key, gbs in PEAK_GBS:
        if key.lower() in name.lower():
            return gbs, f"table entry '{key}'"
    return None, "unknown device: pass --peak-gbs"


def fused_bytes(n: int, x_dtype: torch.dtype) -> int:
    sx, sy, sw = torch.finfo(x_dtype).bits // 8, 4, 4
    return n * (2 * (sx + sy + sw) + sx + sw)


def make_inputs(n: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(n, device="cuda", generator=g) * 3).to(dtype).requires_grad_()
    y = (torch.rand(n, device="cuda", generator=g) > 0.5).float()
    w = (torch.rand(n, device="cuda", generator=g) + 0.05).requires_grad_()
    return x, y, w


def step_fn(loss_fn, x, y, w):
    def run():
        return torch.autograd.grad(loss_fn(x, y, w), (x, w))

    return run


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=None, help="Markdown report to write")
    ap.add_argument("--min-log2", type=int, default=10)
    ap.add_argument("--max-log2", type=int, default=28)
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--peak-gbs", type=float, default=None, help="peak DRAM bandwidth in GB/s (overrides the table)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop starting new sizes after this many seconds")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("kernel_bench: no CUDA device here; this benchmark measures the Triton kernel on a GPU. Nothing was written.", file=sys.stderr)
        return 2

    import triton

    import atjt_kernels
    from atjt_kernels import weighted_bce_reference

    start = time.perf_counter()
    dev = torch.cuda.get_device_properties(0)
    peak, peak_src = peak_bandwidth(dev.name, args.peak_gbs)

    def triton_fn(x, y, w):
        return atjt_kernels.weighted_bce(x, y, w, backend="triton")

    impls = {"triton": triton_fn, "eager": weighted_bce_reference}
    compile_note = "skipped (--no-compile)"
    if not args.no_compile:
        impls["compile"] = torch.compile(weighted_bce_reference, dynamic=True)
        compile_note = "torch.compile(weighted_bce_reference, dynamic=True)"

    rows, skipped, failures = [], [], []
    sizes = list(range(args.min_log2, args.max_log2 + 1))
    for tag in args.dtypes.split(","):
        dtype = DTYPES[tag]
        for p in sizes:
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{tag} 2^{p}")
                continue
            n = 1 << p
            x, y, w = make_inputs(n, dtype)
            row = dict(dtype=tag, log2=p, n=n)
            # correctness against the eager reference on the same inputs
            got = [triton_fn(x, y, w)] + list(step_fn(triton_fn, x, y, w)())
            want = [weighted_bce_reference(x, y, w)] + list(step_fn(weighted_bce_reference, x, y, w)())
            row["check"] = max(max_rel(a, b) for a, b in zip(got, want))
            for name, fn in list(impls.items()):
                try:
                    row[name] = bench_ms(step_fn(fn, x, y, w))
                except Exception as e:  # e.g. torch.compile failing on this stack: report, keep going
                    failures.append(f"{name} ({tag}, 2^{p}): {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    if name == "compile":
                        impls.pop(name)
                        compile_note += " -- failed, column dropped"
                    row[name] = None
            rows.append(row)
            del x, y, w, got, want
            torch.cuda.empty_cache()
            print(_row_text(row, peak), flush=True)

    cmd = "python benchmarks/kernel_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = _report(rows, dev, peak, peak_src, compile_note, cmd.strip(), skipped, failures, time.perf_counter() - start, triton.__version__)
    print(report)
    if args.output:
        Path(args.output).write_text(report)
    return 0


def crossover_rows(rows) -> int | None:
    """The smallest N from which the kernel beats torch eager at that N and every larger N
    measured (None when it does not at the largest)."""
    best = None
    for r in sorted(rows, key=lambda r: r["n"], reverse=True):
        if r.get("triton") is None or r.get("eager") is None or r["triton"] >= r["eager"]:
            break
        best = r["n"]
    return best


def _min_rows() -> int:
    import atjt_kernels

    return atjt_kernels.TRITON_MIN_ROWS


def _gbs(row, name):
    t = row.get(name)
    return None if t is None else fused_bytes(row["n"], DTYPES[row["dtype"]]) / (t * 1e-3) / 1e9


def _fmt(v, spec, suffix=""):
    return "n/a" if v is None else format(v, spec) + suffix


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _row_text(row, peak):
    g = _gbs(row, "triton")
    share = None if (g is None or peak is None) else g / peak
    return (
        f"{row['dtype']} 2^{row['log2']}: triton {_fmt(row.get('triton'), '.4f')} ms ({_fmt(g, ',.0f')} GB/s, "
        f"{_fmt(share and 100 * share, '.0f', '%')} of peak), eager {_fmt(row.get('eager'), '.4f')} ms, "
        f"compile {_fmt(row.get('compile'), '.4f')} ms, check {row['check']:.1e}"
    )


def _report(rows, dev, peak, peak_src, compile_note, cmd, skipped, failures, elapsed, triton_version) -> str:
    lines = [
        "# Fused weighted BCE (Triton) vs the torch reference: forward + backward",
        "",
        f"Command: `{cmd}`  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M')} in {elapsed:.0f} s  ",
        f"Device: {dev.name}, {dev.multi_processor_count} SMs, {dev.total_memory / 2**30:.0f} GiB; peak DRAM bandwidth "
        f"{_fmt(peak, ',.0f')} GB/s ({peak_src})  ",
        f"Versions: Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}  ",
        f"compile column: {compile_note}",
        "",
        "Time: median of triton.testing.do_bench (L2 flushed between runs) for one forward + backward "
        "(`torch.autograd.grad` to logits and weights). Labels and weights fp32. GB/s: the bytes a fused "
        "forward + backward must move, N x (2 (x + y + w) + dx + dw), over the time, for every column. "
        "check: max relative difference of L, dx, dw between the kernel and the eager reference.",
        "",
    ]
    for tag in dict.fromkeys(r["dtype"] for r in rows):
        lines += [
            f"## {tag} logits",
            "",
            "| N | triton ms | eager ms | compile ms | triton GB/s | share of peak | eager / triton | compile / triton | check |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in (r for r in rows if r["dtype"] == tag):
            g = _gbs(r, "triton")
            share = None if (g is None or peak is None) else 100 * g / peak
            t = r.get("triton")
            ratio = {k: None if (t is None or r.get(k) is None) else r[k] / t for k in ("eager", "compile")}
            lines.append(
                f"| 2^{r['log2']} | {_fmt(t, '.4f')} | {_fmt(r.get('eager'), '.4f')} | {_fmt(r.get('compile'), '.4f')} | "
                f"{_fmt(g, ',.0f')} | {_fmt(share, '.0f', '%')} | {_fmt(ratio['eager'], '.1f', 'x')} | "
                f"{_fmt(ratio['compile'], '.1f', 'x')} | {r['check']:.1e} |"
            )
        lines.append("")
    lines += ["## Against the targets (largest N measured)", ""]
    for tag in dict.fromkeys(r["dtype"] for r in rows):
        big = [r for r in rows if r["dtype"] == tag and r.get("triton") is not None][-1:]
        if not big:
            continue
        r = big[0]
        g = _gbs(r, "triton")
        share = None if peak is None else g / peak
        speed = None if r.get("eager") is None else r["eager"] / r["triton"]
        lines.append(
            f"- {tag}, N = 2^{r['log2']}: {_fmt(share and 100 * share, '.0f', '%')} of peak bandwidth "
            f"(target >= {TARGET_SHARE:.0%}: {_verdict(share is not None and share >= TARGET_SHARE)}); "
            f"{_fmt(speed, '.1f', 'x')} torch eager (target >= {TARGET_SPEEDUP:.0f}x: "
            f"{_verdict(speed is not None and speed >= TARGET_SPEEDUP)})"
        )
    lines += ["", "## Where the kernel starts to pay (objective.loss_triton_min_rows)", ""]
    for tag in dict.fromkeys(r["dtype"] for r in rows):
        n = crossover_rows(r for r in rows if r["dtype"] == tag)
        lines.append(
            f"- {tag}: "
            + (
                "the kernel is not faster than torch eager at any measured N"
                if n is None
                else f"faster than torch eager from N = 2^{n.bit_length() - 1} = {n:,} rows on (at every larger N measured)"
            )
        )
    lines.append(f"- the threshold in use: atjt_kernels.TRITON_MIN_ROWS = {_min_rows():,} rows")
    if skipped:
        lines += ["", f"Not measured (time budget): {', '.join(skipped)}"]
    if failures:
        lines += ["", "Failures:", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
