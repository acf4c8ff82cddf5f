"""report.md: the runs, the test metrics (mean ± std over seeds), the weight statistics per
phase and the plots, one function per section."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from .plots import FAMILY_LABELS
from .runs import Run, binned_auc, histogram_mean, metric_keys

#: (plot name, section title, what the weights are): the per-phase histogram sections
HISTOGRAM_SECTIONS = (
    (
        "weight_hist_corrupted",
        "Weights per phase: clean vs corrupted recogniser rows",
        "The phase's recogniser on its own corrupted batches during the phase's last epoch.",
    ),
    (
        "weight_hist_planted",
        "Weights per phase: clean vs planted-noise users",
        "The weights w_i that multiplied the recommender's loss during the phase's last epoch, by the planted-noise ground truth of the sequence's user.",
    ),
)


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _relative(path: Optional[Path], start: Path) -> str:
    if path is None:
        return "(from compare.json)"
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def runs_table(runs: list[Run], output: Path) -> list[str]:
    """The title and one row per run (model, method, seed, steps, directory)."""
    md = [f"# Training report: {len(runs)} run{'s' if len(runs) != 1 else ''}", ""]
    md += ["| run | model | method | seed | steps | directory |", "| --- | --- | --- | ---: | ---: | --- |"]
    for run in runs:
        train = run.records_of("train")
        steps = run.metrics.get("steps", train[-1]["step"] if train else "")
        md.append(f"| {run.name} | {run.model} | {run.method} | {run.seed if run.seed is not None else ''} | {steps} | {_relative(run.path, output)} |")
    return md + [""]


def metrics_table(runs: list[Run], data: dict) -> str:
    """One row per group: its seeds and each metric's mean ± std (from metrics_by_group)."""
    labels = [label for label, _ in metric_keys(runs)]
    lines = ["| method | seeds | " + " | ".join(labels) + " |", "| --- | ---: | " + " | ".join("---:" for _ in labels) + " |"]
    for group, cells in data.items():
        seeds = max(len(c["values"]) for c in cells.values())
        row = []
        for label in labels:
            c = cells.get(label)
            row.append("–" if c is None else _fmt(c["mean"]) + (f" ± {c['std']:.4f}" if len(c["values"]) > 1 else ""))
        lines.append(f"| {group} | {seeds} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def metrics_section(runs: list[Run], data: dict) -> list[str]:
    """The test metrics table and plot."""
    k = runs[0].k
    return [
        "## Test metrics",
        "",
        (
            f"Mean ± standard deviation over seeds. HR@{k} and NDCG@{k} as standard; '(paper)' the "
            "authors' variants; noise AUC: how well the final cross-fitted weights rank clean training "
            "users above planted-noise ones."
        ),
        "",
        metrics_table(runs, data),
        "![test metrics](metrics.png)",
        "",
    ]


def curves_section() -> list[str]:
    """The training curves plot and what its panels measure."""
    return [
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


def histogram_table(data: dict, labels: tuple[str, str]) -> str:
    """One row per run and phase: the two families' mean weights and their binned AUC."""
    lines = [f"| run | phase | step | mean, {labels[0]} | mean, {labels[1]} | AUC (binned) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, phases in data.items():
        for key, pair in phases.items():
            lines.append(
                f"| {name} | {key} | {pair.get('step', '')} | {_fmt(histogram_mean(pair['clean']))} | "
                f"{_fmt(histogram_mean(pair['noisy']))} | {_fmt(binned_auc(pair['clean'], pair['noisy']))} |"
            )
    return "\n".join(lines) + "\n"


def histogram_section(name: str, data: dict) -> list[str]:
    """A per-phase weight histogram section (``name`` from HISTOGRAM_SECTIONS)."""
    title, text = next((title, text) for section, title, text in HISTOGRAM_SECTIONS if section == name)
    labels = FAMILY_LABELS[name.removeprefix("weight_hist_")]
    return [
        f"## {title}",
        "",
        text + " AUC (binned): P(clean > noisy) from the histograms.",
        "",
        histogram_table(data, labels),
        f"![{title}]({name}.png)",
        "",
    ]


def user_weights_section(data: dict) -> list[str]:
    """The training users' final cross-fitted weights: one row per run."""
    rows = [
        "| run | users | mean, all users | mean, clean users | mean, planted-noise users | AUC (binned) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run_name, hists in data.items():
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
    return [
        "## Training users' weights after training",
        "",
        "Every training user's weight P(clean) from the recogniser that did not train on it (weights.parquet in the run directory).",
        "",
        "\n".join(rows) + "\n",
        "![user weights](user_weights.png)",
        "",
    ]


def report_markdown(runs: list[Run], plots: dict[str, Path], data: dict[str, dict], output: Path) -> str:
    """report.md's text: the sections whose plots were drawn, in reading order."""
    md = runs_table(runs, output)
    if data.get("metrics"):
        md += metrics_section(runs, data["metrics"])
    if "training_curves" in plots:
        md += curves_section()
    for name, _, _ in HISTOGRAM_SECTIONS:
        if name in plots:
            md += histogram_section(name, data[name])
    if "user_weights" in plots:
        md += user_weights_section(data["user_weights"])
    return "\n".join(md)
