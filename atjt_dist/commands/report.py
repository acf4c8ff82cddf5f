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

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..errors import ReportError
from ..reporting.markdown import report_markdown
from ..reporting.plots import plot_metrics, plot_training_curves, plot_user_weights, plot_weight_histograms
from ..reporting.runs import Run, load_runs, metrics_by_group

__all__ = ["Report", "ReportError", "ReportOptions", "Run", "build_report", "load_runs", "main", "metrics_by_group"]

PROG = "python -m atjt_dist.report"


@dataclass
class ReportOptions:
    """report's options: its whole command line (it reads run files, no config)."""

    reads_config: ClassVar[bool] = False

    run_dirs: list[Path] = option([], "run or compare directories", metavar="RUN_DIR", positional=True, required=True)
    output: Optional[Path] = option(None, "output folder (default: the first RUN_DIR/report)", metavar="DIR")


@dataclass
class Report:
    """What ``build_report`` wrote, and the data behind each plot."""

    output: Path
    markdown: Path
    runs: list[Run]
    plots: dict[str, Path]  # name -> PNG path
    data: dict[str, dict]  # name -> what the plot function returned


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
        elif path.is_file():  # a plot with nothing to show is left out
            path.unlink()

    draw("metrics", plot_metrics)
    if any(r.records_of("train") for r in runs):
        draw("training_curves", plot_training_curves)
    draw("weight_hist_corrupted", plot_weight_histograms, "corrupted")
    draw("weight_hist_planted", plot_weight_histograms, "planted")
    draw("user_weights", plot_user_weights)
    markdown = output / "report.md"
    markdown.write_text(report_markdown(runs, plots, data, output))
    return Report(output=output, markdown=markdown, runs=runs, plots=plots, data=data)


def _main(argv: list[str]) -> int:
    opts = pop_command_options(argv, ReportOptions)
    report = build_report(opts.run_dirs, opts.output)
    print(f"report: {report.markdown} ({len(report.runs)} runs, {len(report.plots)} plots)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point."""
    return run_cli(_main, argv, PROG, __doc__, ReportOptions, errors=(ReportError,))


if __name__ == "__main__":
    sys.exit(main())
