"""Reproduce the paper's grid: every dataset x base model x method, over seeds, in one table.

    python -m atjt_dist.reproduce --datasets ml-100k,beauty [--models din,dcn,wide_deep,fearec,sasrec,s3rec]
        [--methods base,atjt] [--seeds 42,43,44] [--data-root DIR] [--run-dir DIR]
        [--grid-dir configs/grid] [--section.key=value ...]

Cell (dataset, model) runs with configs/grid/<dataset>-<model>.yaml (the dataset's settings, then
the model's), the given overrides on top (e.g. ``--train.epochs=2``), data.path resolved relative
to ``--data-root`` (default: the current directory; the grid configs say ``data/<dataset>``) and
one run per method (compare's methods: base, tce, rce, atjt) and seed, in
RUN_DIR/<dataset>/<model>/<method>-seed<seed>/. S3Rec cells first pre-train S3Rec once per
(dataset, seed) in RUN_DIR/<dataset>/s3rec/pretrain-seed<seed>/ (``atjt_dist.pretrain``; its
epochs are model.s3rec.pretrain_epochs) and fine-tune every method from that checkpoint.

Resumable: a run whose directory holds metrics.json is finished and skipped (a log line says so),
as is a pre-training whose pretrain.pt exists; an unfinished run directory is resumed from its
checkpoints when the trainer supports it (``resume`` and RUN_DIR/checkpoints), else started over.
So the command can be run again after an interruption, or with more seeds or models, and only
what is missing runs.

Outputs, rewritten at the end from every finished run of the requested grid:

- RUN_DIR/results.md: the paper's layout, rows dataset x model, and for each method AUC, HR@K
  and NDCG@K as mean ± standard deviation over seeds (sample std; n in the seeds column), once
  with the standard metrics and once with the paper_compat variants. Each dataset also gets a
  ``popularity`` row: the test candidates ranked by the items' interaction counts among the
  training users (no model; :func:`atjt_dist.metrics.popularity_metrics`, the same numbers
  every run's metrics.json carries under ``popularity``). Its paper_compat HR is undefined (a count is not a probability,
  and the paper's HR needs P > 0.5) and shown as –.
- RUN_DIR/results.json: the same numbers, every run's metrics and directory, and the command.

Under torchrun every process runs every cell (the trainer's data parallelism); rank 0 pre-trains
S3Rec while the others wait for its checkpoint, and writes the tables.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..config import Config, ConfigError, build_config
from ..data.layout import DatasetError, read_meta
from .compare import METHODS

log = logging.getLogger("atjt_dist")

MODELS = ("din", "dcn", "wide_deep", "fearec", "sasrec", "s3rec")
DEFAULT_GRID = Path(__file__).resolve().parents[2] / "configs" / "grid"  # the repository's configs/grid
POPULARITY = "popularity"
#: the popularity ranker lives with the metrics (Trainer.evaluate scores it too); re-exported here
_FROM_METRICS = ("popularity_metrics", "training_popularity")


def __getattr__(name: str):
    """The re-exported popularity ranker, imported on first use: the metrics load torch, which
    --help and option errors do without."""
    if name in _FROM_METRICS:
        from .. import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ReproduceOptions:
    """reproduce's own options (the rest of the command line is config overrides for every cell)."""

    #: config flags the grid sets per cell
    refused: ClassVar[dict[str, str]] = dict.fromkeys(("--seed", "--config"), "is chosen per cell by the grid: use --seeds, and --grid-dir for other configs")

    datasets: list[str] = option(["ml-100k", "beauty"], "the datasets: the DATASET of configs/grid/DATASET-MODEL.yaml", metavar="NAME,...")
    models: list[str] = option(list(MODELS), "the base models", metavar="NAME,...")
    methods: list[str] = option(["base", "atjt"], "the methods of every cell", metavar="NAME,...", choices=tuple(METHODS))
    seeds: list[int] = option([42], "the seeds of every cell", metavar="N,...")
    data_root: Path = option(Path("."), "the directory the grid configs' data.path are relative to", metavar="DIR")
    run_dir: Path = option(Path("runs/reproduce"), "where the grid's runs and tables go", metavar="DIR")
    grid_dir: Optional[Path] = option(None, "the grid configs (default: the repository's configs/grid)", metavar="DIR")


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def cell_config(grid_dir: Path, dataset: str, model: str, overrides: list[str], data_root: Path) -> Config:
    """The config of (dataset, model): its grid file, the overrides, data.path under data_root."""
    path = grid_dir / f"{dataset}-{model}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in grid_dir.glob("*.yaml"))
        raise ConfigError(f"no grid config {path} for dataset {dataset!r} and model {model!r}; have: {', '.join(have)}")
    cfg = build_config(list(overrides), config_file=path)
    if not cfg.data.path:
        raise ConfigError(f"{path} sets no data.path: the grid needs a prepared dataset per cell")
    data = Path(cfg.data.path).expanduser()
    cfg.data.path = str(data if data.is_absolute() else data_root / data)
    try:
        read_meta(cfg.data.path)
    except DatasetError as exc:
        raise DatasetError(f"{dataset}: {exc} (data.path {cfg.data.path} from {path} under --data-root {data_root})") from None
    return cfg


def run_is_finished(run_dir: Path) -> bool:
    """A run is finished when its metrics.json exists (Trainer.finish writes it last, atomically)."""
    return (run_dir / "metrics.json").is_file()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _prepare_run_dir(cfg: Config, run_dir: Path, is_main: bool) -> None:
    """Resume an unfinished run from its checkpoints when the trainer can, else start it over."""
    checkpoints = run_dir / "checkpoints"
    if hasattr(cfg, "resume") and checkpoints.is_dir() and any(checkpoints.iterdir()):
        cfg.resume = True
        if is_main:
            log.info("resuming the unfinished run %s from its checkpoints", run_dir)
    elif run_dir.exists():
        if is_main:
            log.info("starting the unfinished run %s over", run_dir)
            shutil.rmtree(run_dir)
    _barrier()


def ensure_pretrained(cfg: Config, pre_dir: Path, is_main: bool) -> Path:
    """S3Rec's pre-training checkpoint for this dataset and seed (run once, then reused)."""
    from ..runlog import setup_logging, write_json
    from .pretrain import pretrain

    path = pre_dir / "pretrain.pt"
    if path.is_file():
        if is_main:
            log.info("skip pre-training %s: finished (pretrain.pt)", pre_dir)
        return path
    if is_main:
        if pre_dir.exists():
            shutil.rmtree(pre_dir)
        pre = copy.deepcopy(cfg)
        pre.run_dir = str(pre_dir)
        started = time.time()
        pretrain(pre)
        write_json(pre_dir / "timing.json", {"seconds": time.time() - started})
        setup_logging(None, True)  # pretrain pointed the log at its own directory
    else:
        # The other ranks wait for rank 0's file (pre-training can outlast a collective's timeout).
        while not path.is_file():
            time.sleep(5)
    return path


def run_cell(cfg: Config, ctx, run_dir: Path) -> dict:
    """Train, evaluate and finish one run; returns its metrics (with the wall time in seconds)."""
    from ..trainer import run_training

    cfg.run_dir = str(run_dir)
    return run_training(cfg, ctx=ctx)[1]


def _load_metrics(run_dir: Path) -> Optional[dict]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def _stat(values: list) -> dict:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def summarise(runs: dict, k: int) -> dict:
    """{dataset: {model: {method: {variant: {metric: {mean, std, n}}, seeds: [...]}}}} from
    runs[dataset][model][method][seed] = metrics."""
    keys = ("auc", f"hr@{k}", f"ndcg@{k}")
    out: dict = {}
    for dataset, by_model in runs.items():
        for model, by_method in by_model.items():
            for method, by_seed in by_method.items():
                if not by_seed:
                    continue
                entry = {
                    "seeds": sorted(by_seed),
                    "standard": {key: _stat([m.get(key) for m in by_seed.values()]) for key in keys},
                    "paper_compat": {key: _stat([m.get("paper_compat", {}).get(key) for m in by_seed.values()]) for key in keys},
                    "seconds": _stat([m.get("seconds") for m in by_seed.values()]),
                }
                out.setdefault(dataset, {}).setdefault(model, {})[method] = entry
    return out


def _cell(stat: Optional[dict]) -> str:
    if not stat or stat["n"] == 0:
        return "–"
    if stat["n"] == 1:
        return f"{stat['mean']:.4f}"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _popularity_stat(metrics: dict, variant: str, key: str) -> dict:
    value = metrics[key] if variant == "standard" else metrics["paper_compat"][key]
    return _stat([value])


def markdown_tables(summary: dict, popularity: dict, methods: list[str], k: int) -> str:
    """The results as two Markdown tables (standard, paper_compat) in the paper's layout."""
    keys = ("auc", f"hr@{k}", f"ndcg@{k}")
    labels = ("AUC", f"HR@{k}", f"NDCG@{k}")
    text = []
    for variant, title in (("standard", "Standard metrics"), ("paper_compat", "paper_compat metrics (the authors' HR and NDCG)")):
        head = ["dataset", "model", "seeds"] + [f"{m} {label}" for m in methods for label in labels]
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "| --- | --- | ---: | " + " | ".join("---:" for _ in head[3:]) + " |"]
        for dataset, by_model in summary.items():
            if dataset in popularity:
                cells = [_cell(_popularity_stat(popularity[dataset], variant, key)) for key in keys]
                cells += ["–"] * (len(head) - 3 - len(cells))
                lines.append(f"| {dataset} | {POPULARITY} | – | " + " | ".join(cells) + " |")
            for model, by_method in by_model.items():
                seeds = sorted({s for e in by_method.values() for s in e["seeds"]})
                counts = {len(e["seeds"]) for e in by_method.values()}
                seeds_text = str(len(seeds)) if len(counts) == 1 else "/".join(str(len(by_method.get(m, {}).get("seeds", []))) for m in methods)
                cells = [_cell(by_method.get(m, {}).get(variant, {}).get(key)) for m in methods for key in keys]
                lines.append(f"| {dataset} | {model} | {seeds_text} | " + " | ".join(cells) + " |")
        text.append("\n".join(lines) + "\n")
    return "\n".join(text)


def comparison_lines(summary: dict, methods: list[str], k: int, against: str = "base") -> str:
    """One line per method other than ``against``: in how many cells its mean beats it."""
    lines = []
    for method in methods:
        if method == against:
            continue
        for key in ("auc", f"hr@{k}", f"ndcg@{k}"):
            wins = total = 0
            for by_model in summary.values():
                for by_method in by_model.values():
                    if method in by_method and against in by_method:
                        a = by_method[method]["standard"][key]["mean"]
                        b = by_method[against]["standard"][key]["mean"]
                        if math.isfinite(a) and math.isfinite(b):
                            total += 1
                            wins += a > b
            if total:
                lines.append(f"- {method} above {against} on {key}: {wins} of {total} dataset x model cells (means)")
    return "\n".join(lines) + ("\n" if lines else "")


def below_popularity(summary: dict, popularity: dict, k: int) -> list[str]:
    """Runs whose mean AUC or HR@K does not beat the popularity ranker (to investigate)."""
    found = []
    for dataset, by_model in summary.items():
        if dataset not in popularity:
            continue
        for model, by_method in by_model.items():
            for method, entry in by_method.items():
                for key in ("auc", f"hr@{k}"):
                    if entry["standard"][key]["mean"] <= popularity[dataset][key]:
                        found.append(f"{dataset} {model} {method}: {key} {entry['standard'][key]['mean']:.4f} <= popularity {popularity[dataset][key]:.4f}")
    return found


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    from ..distributed import init_distributed, shutdown
    from ..runlog import setup_logging

    argv = list(argv)
    command = "python -m atjt_dist.reproduce " + " ".join(argv)
    opts = pop_command_options(argv, ReproduceOptions)
    datasets, models, methods, seeds, data_root, root = opts.datasets, opts.models, opts.methods, opts.seeds, opts.data_root, opts.run_dir
    grid_dir = opts.grid_dir or DEFAULT_GRID

    # Every cell's config and dataset is checked before anything runs.
    configs = {(d, m): cell_config(grid_dir, d, m, argv, data_root) for d in datasets for m in models}
    first = next(iter(configs.values()))
    k = first.eval.k
    ctx = init_distributed(first.dist)
    setup_logging(None, ctx.is_main)
    runs: dict = {d: {m: {meth: {} for meth in methods} for m in models} for d in datasets}
    total = len(configs) * len(methods) * len(seeds)
    done = 0
    try:
        for (dataset, model), base_cfg in configs.items():
            for seed in seeds:
                pretrained = None
                for method in methods:
                    done += 1
                    run_dir = root / dataset / model / f"{method}-seed{seed}"
                    if run_is_finished(run_dir):
                        if ctx.is_main:
                            log.info("[%d/%d] skip %s: finished (metrics.json)", done, total, run_dir)
                        runs[dataset][model][method][seed] = _load_metrics(run_dir)
                        continue
                    cfg = copy.deepcopy(base_cfg)
                    METHODS[method](cfg)
                    cfg.seed = seed
                    if model == "s3rec" and not cfg.model.s3rec.pretrained:
                        if pretrained is None:
                            pretrained = ensure_pretrained(cfg, root / dataset / "s3rec" / f"pretrain-seed{seed}", ctx.is_main)
                        cfg.model.s3rec.pretrained = str(pretrained)
                    if ctx.is_main:
                        log.info("[%d/%d] run %s (%s x %s, %s, seed %d)", done, total, run_dir, dataset, model, method, seed)
                    _prepare_run_dir(cfg, run_dir, ctx.is_main)
                    metrics = run_cell(cfg, ctx, run_dir)
                    setup_logging(None, ctx.is_main)  # the trainer pointed the log at its run directory
                    runs[dataset][model][method][seed] = metrics
                    if ctx.is_main:
                        log.info(
                            "[%d/%d] %s: auc %.4f hr@%d %.4f ndcg@%d %.4f (%.0f s)",
                            done,
                            total,
                            run_dir,
                            metrics["auc"],
                            k,
                            metrics[f"hr@{k}"],
                            k,
                            metrics[f"ndcg@{k}"],
                            metrics["seconds"],
                        )
        if ctx.is_main:
            write_results(root, runs, configs, methods, seeds, k, command)
    finally:
        shutdown(ctx)
    return 0


def write_results(root: Path, runs: dict, configs: dict, methods: list[str], seeds: list[int], k: int, command: str) -> tuple[str, dict]:
    """Write RUN_DIR/results.md and results.json from the finished runs; returns both."""
    from ..metrics import popularity_metrics
    from ..runlog import write_json

    popularity = {}
    for (dataset, _model), cfg in configs.items():
        if dataset not in popularity:
            popularity[dataset] = popularity_metrics(cfg.data.path, cfg.data.split, cfg.data.fold, k)
    summary = summarise(runs, k)
    tables = markdown_tables(summary, popularity, methods, k)
    text = [
        f"# Reproduction grid: {', '.join(runs)} x {', '.join(next(iter(runs.values())))}",
        "",
        f"Methods {', '.join(methods)}; seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds.",
        "",
        f"    {command}",
        "",
        tables,
        comparison_lines(summary, methods, k),
    ]
    weak = below_popularity(summary, popularity, k)
    if weak:
        text += ["", "Runs that do not beat the popularity ranker (investigate before reporting):", ""] + [f"- {w}" for w in weak]
    markdown = "\n".join(text).rstrip() + "\n"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "results.md.tmp"
    tmp.write_text(markdown)
    os.replace(tmp, root / "results.md")
    data = {
        "command": command,
        "methods": methods,
        "seeds": seeds,
        "summary": summary,
        "popularity": popularity,
        "runs": [
            {"dataset": d, "model": m, "method": meth, "seed": s, "run_dir": str(root / d / m / f"{meth}-seed{s}"), "metrics": metrics}
            for d, by_model in runs.items()
            for m, by_method in by_model.items()
            for meth, by_seed in by_method.items()
            for s, metrics in sorted(by_seed.items())
        ],
    }
    write_json(root / "results.json", data)
    print(markdown)
    print(f"written: {root / 'results.md'} and {root / 'results.json'}")
    return markdown, data


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_cli(_main, argv, "python -m atjt_dist.reproduce", __doc__, ReproduceOptions)


if __name__ == "__main__":
    sys.exit(main())
