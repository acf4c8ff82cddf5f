"""The report's figures, drawn with matplotlib's Agg backend (the ``viz`` extra). Every plot
function returns the series it drew, so what a picture shows can be checked against the run files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ReportError
from .runs import Run, histogram_mean, metric_keys, metrics_by_group, phase_ends

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
