"""Plots and a Markdown summary of training runs:

    python -m atjt_dist.report RUN_DIR [RUN_DIR ...] [--output DIR]

A RUN_DIR is a training run directory (metrics.jsonl, config.yaml, metrics.json; see
atjt_dist.runlog) or a compare directory (compare.json and one run directory per method and
seed, from atjt_dist.compare), which stands for all its runs. Writes into DIR (default: the
first RUN_DIR/report):

    report.md                  the summary: the runs, the test metrics (mean ± std over seeds),
                               the weight statistics per phase, and the plots below
    training_curves.png        loss, L_R, L_D, recogniser AUC, w_clean vs w_noisy, samples/s
                               over steps; phase ends dashed
    weight_hist_corrupted.png  per run and phase: the recogniser's P(clean) on its clean vs
                               corrupted rows (the phase's last epoch)
    weight_hist_planted.png    per run and phase: the weights of the sequences of clean vs
                               planted-noise users (datasets with noise ground truth)
    user_weights.png           per run: the training users' final cross-fitted weights, clean
                               vs planted-noise users (or all users without ground truth)
    metrics.png                test metrics per method (and model): bar = mean over seeds,
                               whisker = standard deviation, dots = the seeds

A plot whose data no run recorded is left out (e.g. the weight plots of baseline-only runs).
Runs are grouped by (model, method) from metrics.json or config.yaml; a group's runs are its
seeds. Every plot function returns the series it drew, so what a picture shows can be checked
against metrics.jsonl. matplotlib (the ``viz`` extra) draws with the Agg backend; this module
reads the run files only (no torch), so it runs anywhere the runs are.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml


class ReportError(ValueError):
    """An input is not a run or compare directory, or a report dependency is missing."""


# ---------------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run as the report sees it."""

    path: Optional[Path]
    model: str
    method: str
    seed: Optional[int]
    k: int = 5
    records: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    name: str = ""  # unique label in plots and tables (set by load_runs)

    def records_of(self, kind: str) -> list[dict]:
        """Records of one kind in step order; a step written twice (a resumed run) keeps the last."""
        by_key: dict = {}
        for r in self.records:
            if r.get("kind") == kind:
                key = (r.get("step"), r.get("phase"), r.get("stage"))
                by_key.pop(key, None)
                by_key[key] = r
        return sorted(by_key.values(), key=lambda r: (r.get("step") is None, r.get("step") or 0))


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl (a torn last line, from a run still writing, is skipped)."""
    records = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise ReportError(f"{path}, line {n}: not a JSON record") from None
    return records


def _method_from_config(cfg: dict) -> str:
    """atjt_dist.trainer.method_name, from a config.yaml mapping (without importing torch)."""
    objective = (cfg.get("objective") or {}).get("name", "auto")
    atjt = cfg.get("atjt") or {}
    if objective == "auto":
        objective = "atjt" if atjt.get("enabled", True) else "bce"
    if objective == "bce":
        return "base"
    if objective == "atjt" and atjt.get("variant", "joint") != "joint":
        return f"atjt-{atjt['variant']}"
    return objective


def _is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "metrics.json").is_file()


def load_run(path: Path) -> Run:
    """A run directory: its config, records and final metrics (whichever exist)."""
    cfg = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    cfg = cfg or {}
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
    records = read_records(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    if not metrics:  # a run without metrics.json (stopped before the end): its test record
        tests = [r for r in records if r.get("kind") == "test"]
        metrics = {k: v for k, v in tests[-1].items() if k not in ("kind", "time")} if tests else {}
    model = metrics.get("model") or (cfg.get("model") or {}).get("name") or "?"
    method = metrics.get("method") or _method_from_config(cfg)
    seed = metrics.get("seed", cfg.get("seed"))
    k = int((cfg.get("eval") or {}).get("k", 5))
    return Run(path=path, model=model, method=method, seed=seed, k=k, records=records, metrics=metrics)


def load_runs(paths: list[Path]) -> list[Run]:
    """The runs of the given run and compare directories, with unique names."""
    runs: list[Run] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ReportError(f"{path} is not a directory; pass run directories or compare directories")
        if (path / "compare.json").is_file():
            compare = json.loads((path / "compare.json").read_text())
            seen = set()
            for sub in sorted(p for p in path.iterdir() if p.is_dir() and _is_run_dir(p)):
                run = load_run(sub)
                runs.append(run)
                seen.add((run.method, run.seed))
            # runs listed in compare.json whose directory is gone still count in the metrics
            for method, by_seed in compare.get("runs", {}).items():
                for seed, metrics in by_seed.items():
                    if (method, int(seed)) not in seen:
                        model = metrics.get("model", "?")
                        runs.append(Run(path=None, model=model, method=method, seed=int(seed), metrics=metrics))
        elif _is_run_dir(path):
            runs.append(load_run(path))
        else:
            raise ReportError(f"{path} is neither a run directory (metrics.jsonl or metrics.json) nor a compare directory (compare.json)")
    if not runs:
        raise ReportError(f"no runs found in {', '.join(map(str, paths))}")
    one_model = len({r.model for r in runs}) == 1
    counts: dict[str, int] = {}
    for run in runs:
        base = f"{run.method}" if one_model else f"{run.model} {run.method}"
        base += f" seed{run.seed}" if run.seed is not None else ""
        counts[base] = counts.get(base, 0) + 1
        run.name = base if counts[base] == 1 else f"{base} #{counts[base]}"
    return runs


def group_name(run: Run, runs: list[Run]) -> str:
    """The run's group: its method, with the model when the runs have several."""
    return run.method if len({r.model for r in runs}) == 1 else f"{run.model} {run.method}"


# ---------------------------------------------------------------------------------------------
# Derived quantities
# ---------------------------------------------------------------------------------------------


def phase_ends(run: Run) -> list[int]:
    """Steps at which a phase (or stage) ended: 'phase_end' records, else where the train
    records' phase changes (between two log lines: the later one's step is an upper bound)."""
    ends = [int(r["step"]) for r in run.records_of("phase_end")]
    if ends:
        return ends
    train = run.records_of("train")
    return [int(b["step"]) for a, b in itertools.pairwise(train) if (a.get("phase"), a.get("stage")) != (b.get("phase"), b.get("stage"))]


def histogram_mean(h: dict) -> float:
    """The exact mean of the values behind a histogram record."""
    n = float(sum(h["counts"]))
    return h["sum"] / n if n > 0 and h.get("sum") is not None else float("nan")


def binned_auc(positive: dict, negative: dict) -> float:
    """P(a positive value > a negative one) from two histograms on the same bins (values in the
    same bin count one half): the separation AUC, up to the bin width."""
    p = np.asarray(positive["counts"], dtype=np.float64)
    q = np.asarray(negative["counts"], dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(q)[:-1]])
    return float((p * (below + 0.5 * q)).sum() / (p.sum() * q.sum()))


def mean_std(values: list) -> tuple[float, float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def metric_keys(runs: list[Run]) -> list[tuple[str, str]]:
    """(label, key path) of the test metrics the runs have, in table order."""
    k = runs[0].k
    keys = [
        ("AUC", "auc"),
        (f"HR@{k}", f"hr@{k}"),
        (f"NDCG@{k}", f"ndcg@{k}"),
        (f"HR@{k} (paper)", f"paper_compat/hr@{k}"),
        (f"NDCG@{k} (paper)", f"paper_compat/ndcg@{k}"),
        ("noise AUC", "noise_weight_auc"),
    ]
    return [(label, key) for label, key in keys if any(_metric(r, key) is not None for r in runs)]


def _metric(run: Run, key: str):
    value = run.metrics
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def metrics_by_group(runs: list[Run]) -> dict[str, dict[str, dict]]:
    """group -> metric label -> {"mean", "std", "values" (one per seed), "seeds"}."""
    out: dict[str, dict[str, dict]] = {}
    for label, key in metric_keys(runs):
        for run in runs:
            value = _metric(run, key)
            if value is None:
                continue
            cell = out.setdefault(group_name(run, runs), {}).setdefault(label, {"values": [], "seeds": []})
            cell["values"].append(float(value))
            cell["seeds"].append(run.seed)
    for cells in out.values():
        for cell in cells.values():
            cell["mean"], cell["std"] = mean_std(cell["values"])
    return out


# ---------------------------------------------------------------------------------------------
# Plots (each returns the data it drew)
# ---------------------------------------------------------------------------------------------

#: panel title -> the train record keys drawn in it (w_clean solid, w_noisy dashed)
CURVES = {
    "loss (L_R + lambda L_D)": ("loss",),
    "L_R (recommender)": ("loss_rec",),
    "L_D (recogniser)": ("loss_aux",),
    "recogniser AUC (corrupted batches)": ("recognizer_auc",),
    "w_clean vs w_noisy (corrupted batches)": ("w_clean", "w_noisy"),
    "samples/s": ("samples_per_s",),
}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("the report needs matplotlib: pip install 'atjt-dist[viz]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_training_curves(runs: list[Run], path: Path) -> dict:
    """Training curves of every run (one colour each) in one figure; returns
    ``{run name: {key: (steps, values)}, ...}`` plus ``"phase_ends": {run name: steps}``."""
    plt = _pyplot()
    drawn: dict = {"phase_ends": {}}
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), squeeze=False)
    colours = _colours(len(runs))
    all_ends = {tuple(phase_ends(r)) for r in runs if r.records}
    for run, colour in zip(runs, colours):
        train = run.records_of("train")
        if not train:
            continue
        series = drawn.setdefault(run.name, {})
        for ax, keys in zip(axes.flat, CURVES.values()):
            for key, style in zip(keys, ("-", "--")):
                points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
                if not points:
                    continue
                steps, values = [list(t) for t in zip(*points)]
                series[key] = (steps, values)
                label = run.name if len(keys) == 1 else f"{run.name} {key}"
                ax.plot(steps, values, style, color=colour, label=label, marker="." if len(steps) < 40 else None)
        drawn["phase_ends"][run.name] = phase_ends(run)
    # phase ends: grey once when the runs share the schedule, else in each run's colour
    for ax in axes.flat:
        if len(all_ends) == 1:
            for step in next(iter(all_ends)):
                ax.axvline(step, color="0.5", linestyle=":", linewidth=1)
        else:
            for run, colour in zip(runs, colours):
                for step in drawn["phase_ends"].get(run.name, []):
                    ax.axvline(step, color=colour, linestyle=":", linewidth=1, alpha=0.6)
    for ax, title in zip(axes.flat, CURVES):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines and any(not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded by these runs", ha="center", va="center", transform=ax.transAxes, color="0.4")
    fig.suptitle("Training curves (dotted: phase ends)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _density(counts: list, edges: list) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    return c / (c.sum() * widths) if c.sum() > 0 else c


def _draw_pair(ax, pair: dict, names: tuple[str, str], labels: tuple[str, str]) -> None:
    colours = {names[0]: "tab:green", names[1]: "tab:red"}
    for name, label in zip(names, labels):
        h = pair.get(name)
        if h is None or sum(h["counts"]) == 0:
            continue
        ax.stairs(_density(h["counts"], h["edges"]), h["edges"], color=colours[name], label=f"{label} (n={sum(h['counts']):.0f}, mean {histogram_mean(h):.3f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(clean)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def weight_histograms(run: Run, family: str) -> dict[str, dict]:
    """``{"phase P" (or "phase P, stage S"): {"clean": hist, "noisy": hist, "step": s}}`` of a
    run's 'weight_hist' records for one family ('corrupted' or 'planted')."""
    records = [r for r in run.records_of("weight_hist") if family in r]
    stages = {r.get("stage") for r in records}
    out = {}
    for r in records:
        key = f"phase {r['phase']}" if len(stages) <= 1 else f"phase {r['phase']}, {r.get('stage')}"
        out[key] = {**r[family], "step": r["step"], "epoch": r.get("epoch")}
    return out


FAMILY_LABELS = {
    "corrupted": ("clean rows", "corrupted rows"),
    "planted": ("clean users", "planted-noise users"),
}


def plot_weight_histograms(runs: list[Run], family: str, path: Path) -> dict:
    """One panel per run (row) and phase (column); returns ``{run name: weight_histograms}``,
    or {} (and no file) when no run recorded the family."""
    data = {run.name: h for run in runs if (h := weight_histograms(run, family))}
    if not data:
        return {}
    plt = _pyplot()
    cols = max(len(h) for h in data.values())
    fig, axes = plt.subplots(len(data), cols, figsize=(4.5 * cols, 3.2 * len(data)), squeeze=False)
    for row, (name, phases) in enumerate(data.items()):
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(phases):
                ax.axis("off")
                continue
            key, pair = list(phases.items())[col]
            _draw_pair(ax, pair, ("clean", "noisy"), FAMILY_LABELS[family])
            ax.set_title(f"{name}: {key}", fontsize=9)
            ax.set_ylabel("density")
    what = {"corrupted": "the recogniser's P(clean) on its clean vs corrupted rows", "planted": "the weights of clean vs planted-noise users' sequences"}[
        family
    ]
    fig.suptitle(f"Per phase (last epoch): {what}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


def user_weight_histograms(run: Run) -> Optional[dict]:
    """The run's last 'user_weights' record's histograms ("clean"/"noisy", or "all")."""
    records = run.records_of("user_weights")
    if not records:
        return None
    r = records[-1]
    return {key: r[key] for key in ("clean", "noisy", "all") if key in r}


def plot_user_weights(runs: list[Run], path: Path) -> dict:
    """One panel per run: the final cross-fitted weights of the training users; returns
    ``{run name: {"clean": hist, "noisy": hist} or {"all": hist}}`` ({} and no file if none)."""
    data = {run.name: h for run in runs if (h := user_weight_histograms(run))}
    if not data:
        return {}
    plt = _pyplot()
    cols = min(len(data), 3)
    rows = math.ceil(len(data) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(data) :]:
        ax.axis("off")
    for ax, (name, hists) in zip(axes.flat, data.items()):
        if "all" in hists:
            h = hists["all"]
            ax.stairs(
                _density(h["counts"], h["edges"]), h["edges"], color="tab:blue", label=f"all users (n={sum(h['counts']):.0f}, mean {histogram_mean(h):.3f})"
            )
            ax.set_xlim(0, 1)
            ax.set_xlabel("P(clean)")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        else:
            _draw_pair(ax, hists, ("clean", "noisy"), FAMILY_LABELS["planted"])
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("density")
    fig.suptitle("Training users' cross-fitted weights after training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


def plot_metrics(runs: list[Run], path: Path) -> dict:
    """Test metrics side by side: per metric, one bar per group (mean over its seeds), whiskers
    the standard deviation, dots the seeds. Returns metrics_by_group ({} and no file if none)."""
    data = metrics_by_group(runs)
    if not data:
        return {}
    plt = _pyplot()
    labels = [label for label, _ in metric_keys(runs)]
    groups = list(data)
    colours = _colours(len(groups))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(labels) * max(1, len(groups)) * 0.6 + 3), 4.5))
    x = np.arange(len(labels))
    for g, (group, colour) in enumerate(zip(groups, colours)):
        offset = (g - (len(groups) - 1) / 2) * width
        means = [data[group].get(label, {}).get("mean", np.nan) for label in labels]
        stds = [data[group].get(label, {}).get("std", np.nan) for label in labels]
        seeds = max((len(c["values"]) for c in data[group].values()), default=0)
        ax.bar(x + offset, means, width, yerr=stds, color=colour, alpha=0.8, capsize=3, label=f"{group} ({seeds} seed{'s' if seeds != 1 else ''})")
        for i, label in enumerate(labels):
            values = data[group].get(label, {}).get("values", [])
            ax.plot([x[i] + offset] * len(values), values, "o", color="black", markersize=3)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("value")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Test metrics: mean over seeds ± std (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What ``build_report`` wrote, and the data behind each plot."""

    output: Path
    markdown: Path
    runs: list[Run]
    plots: dict[str, Path]  # name -> PNG path
    data: dict[str, dict]  # name -> what the plot function returned


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _metrics_table(runs: list[Run], data: dict) -> str:
    labels = [label for label, _ in metric_keys(runs)]
    lines = ["| method | seeds | " + " | ".join(labels) + " |", "| --- | ---: | " + " | ".join("---:" for _ in labels) + " |"]
    for group, cells in data.items():
        seeds = max(len(c["values"]) for c in cells.values())
        row = []
        for label in labels:
            c = cells.get(label)
            if c is None:
                row.append("–")
            else:
                row.append(_fmt(c["mean"]) + (f" ± {c['std']:.4f}" if len(c["values"]) > 1 else ""))
        lines.append(f"| {group} | {seeds} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _histogram_table(data: dict, labels: tuple[str, str]) -> str:
    lines = [f"| run | phase | step | mean, {labels[0]} | mean, {labels[1]} | AUC (binned) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, phases in data.items():
        for key, pair in phases.items():
            lines.append(
                f"| {name} | {key} | {pair.get('step', '')} | {_fmt(histogram_mean(pair['clean']))} | "
                f"{_fmt(histogram_mean(pair['noisy']))} | {_fmt(binned_auc(pair['clean'], pair['noisy']))} |"
            )
    return "\n".join(lines) + "\n"


def _relative(path: Optional[Path], start: Path) -> str:
    if path is None:
        return "(from compare.json)"
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def build_report(paths: list[Path], output: Optional[Path] = None) -> Report:
    """Read the runs, draw the plots and write report.md into ``output`` (default: the first
    path's report/ folder)."""
    paths = [Path(p) for p in paths]
    runs = load_runs(paths)
    output = Path(output) if output is not None else paths[0] / "report"
    output.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    data: dict[str, dict] = {}

    def draw(name: str, fn, *args) -> None:
        path = output / f"{name}.png"
        result = fn(runs, *args, path) if args else fn(runs, path)
        data[name] = result
        if path.is_file() and result:
            plots[name] = path
        elif path.is_file():
            path.unlink()

    draw("metrics", plot_metrics)
    if any(r.records_of("train") for r in runs):
        draw("training_curves", plot_training_curves)
    draw("weight_hist_corrupted", plot_weight_histograms, "corrupted")
    draw("weight_hist_planted", plot_weight_histograms, "planted")
    draw("user_weights", plot_user_weights)

    md = [f"# Training report: {len(runs)} run{'s' if len(runs) != 1 else ''}", ""]
    md += ["| run | model | method | seed | steps | directory |", "| --- | --- | --- | ---: | ---: | --- |"]
    for run in runs:
        train = run.records_of("train")
        steps = run.metrics.get("steps", train[-1]["step"] if train else "")
        md.append(f"| {run.name} | {run.model} | {run.method} | {run.seed if run.seed is not None else ''} | {steps} | {_relative(run.path, output)} |")
    md.append("")
    if data.get("metrics"):
        k = runs[0].k
        md += [
            "## Test metrics",
            "",
            (
                f"Mean ± standard deviation over seeds. HR@{k} and NDCG@{k} as standard; '(paper)' the "
                "authors' variants; noise AUC: how well the final cross-fitted weights rank clean training "
                "users above planted-noise ones."
            ),
            "",
            _metrics_table(runs, data["metrics"]),
            "![test metrics](metrics.png)",
            "",
        ]
    if "training_curves" in plots:
        md += [
            "## Training curves",
            "",
            (
                "Window means per log interval; L_D, the recogniser AUC and w_clean / w_noisy (its mean "
                "P(clean) on clean and on corrupted rows) are measured on the corrupted recogniser "
                "batches. Dotted lines: phase ends."
            ),
            "",
            "![training curves](training_curves.png)",
            "",
        ]
    sections = (
        (
            "weight_hist_corrupted",
            "Weights per phase: clean vs corrupted recogniser rows",
            "The phase's recogniser on its own corrupted batches during the phase's last epoch.",
            FAMILY_LABELS["corrupted"],
        ),
        (
            "weight_hist_planted",
            "Weights per phase: clean vs planted-noise users",
            ("The weights w_i that multiplied the recommender's loss during the phase's last epoch, by the planted-noise ground truth of the sequence's user."),
            FAMILY_LABELS["planted"],
        ),
    )
    for name, title, text, labels in sections:
        if name in plots:
            md += [
                f"## {title}",
                "",
                text + " AUC (binned): P(clean > noisy) from the histograms.",
                "",
                _histogram_table(data[name], labels),
                f"![{title}]({name}.png)",
                "",
            ]
    if "user_weights" in plots:
        md += [
            "## Training users' weights after training",
            "",
            ("Every training user's weight P(clean) from the recogniser that did not train on it (weights.parquet in the run directory)."),
            "",
        ]
        rows = [
            "| run | users | mean, all users | mean, clean users | mean, planted-noise users | AUC (binned) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run_name, hists in data["user_weights"].items():
            parts = [hists[k] for k in ("all", "clean", "noisy") if k in hists]
            n = sum(sum(h["counts"]) for h in parts)
            mean = sum(h["sum"] for h in parts) / n if n else float("nan")
            if "all" in hists:
                rows.append(f"| {run_name} | {n:.0f} | {_fmt(mean)} | – | – | – |")
            else:
                rows.append(
                    f"| {run_name} | {n:.0f} | {_fmt(mean)} | {_fmt(histogram_mean(hists['clean']))} | "
                    f"{_fmt(histogram_mean(hists['noisy']))} | {_fmt(binned_auc(hists['clean'], hists['noisy']))} |"
                )
        md += ["\n".join(rows) + "\n", "![user weights](user_weights.png)", ""]
    markdown = output / "report.md"
    markdown.write_text("\n".join(md))
    return Report(output=output, markdown=markdown, runs=runs, plots=plots, data=data)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m atjt_dist.report",
        description=__doc__.strip().splitlines()[0],
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run or compare directories")
    parser.add_argument("--output", type=Path, default=None, help="output folder (default: the first RUN_DIR/report)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.run_dirs, args.output)
    except (ReportError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report.markdown} ({len(report.runs)} runs, {len(report.plots)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
