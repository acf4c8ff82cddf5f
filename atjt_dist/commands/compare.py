"""Compare training methods on the same data and seeds:

    python -m atjt_dist.compare [--methods base,tce,rce,atjt,oracle,oracle_item] [--seeds 42,43,44] [--config FILE] [--k=v ...]

Every (method, seed) run uses the same config, data and seed-derived batches; only the method
differs (the baseline sees exactly the data ATJT's recommender sees, in the same order). Writes
RUN_DIR/<method>-seed<seed>/ for each run, and RUN_DIR/compare.md and compare.json with the
per-run metrics and, over seeds, their means and standard deviations. Also reports, where the
dataset has planted noise, how well each method's weights separate noisy from clean users,
and each method's paired differences from the baseline (same seed) with their spread.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from dataclasses import dataclass

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..config import Config, build_config


def _objective(name: str):
    def apply(cfg: Config) -> None:
        cfg.objective.name = name
        cfg.atjt.enabled = name == "atjt"

    return apply


#: method name -> how it changes the config
METHODS = {
    name: _objective(objective)
    for name, objective in (("base", "bce"), ("tce", "tce"), ("rce", "rce"), ("atjt", "atjt"), ("oracle", "oracle"), ("oracle_item", "oracle_item"))
}
REPORTED = ("auc", "hr@{k}", "ndcg@{k}")


@dataclass
class CompareOptions:
    """compare's own options (the rest of the command line is the config)."""

    methods: list[str] = option(["base", "atjt"], "the methods to train, each on the same data and seeds", metavar="NAME,...", choices=tuple(METHODS))
    seeds: list[int] = option([], "the training seeds (default: the config's seed)", metavar="N,...")


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def summarise(results: dict[str, dict[int, dict]], k: int) -> tuple[str, dict]:
    """Markdown table (mean ± std over seeds, standard and paper_compat) and its data."""
    keys = [key.format(k=k) for key in REPORTED]
    cols = keys + [f"paper {key}" for key in keys[1:]] + ["noise AUC"]
    lines = ["| method | seeds | " + " | ".join(cols) + " |", "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    data: dict = {}
    for method, by_seed in results.items():
        row: dict = {}
        for key in keys:
            row[key] = _mean_std([m[key] for m in by_seed.values()])
        for key in keys[1:]:
            row[f"paper {key}"] = _mean_std([m["paper_compat"][key] for m in by_seed.values()])
        row["noise AUC"] = _mean_std([m.get("noise_weight_auc") for m in by_seed.values()])
        data[method] = {"seeds": sorted(by_seed), **{c: {"mean": v[0], "std": v[1]} for c, v in row.items()}}
        cells = []
        for c in cols:
            mean, std = row[c]
            cells.append("–" if math.isnan(mean) else (f"{mean:.4f} ± {std:.4f}" if len(by_seed) > 1 else f"{mean:.4f}"))
        lines.append(f"| {method} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", data


def paired_differences(results: dict[str, dict[int, dict]], k: int, reference: str = "base") -> tuple[str, dict]:
    """Each method minus ``reference`` on the same seed (same data, batches and initialisation),
    as mean ± standard deviation over the seeds both ran, with the mean in units of that
    standard deviation (METHOD.md section 10: a gain counts when it exceeds 2 of them)."""
    if reference not in results:
        return "", {}
    keys = [key.format(k=k) for key in REPORTED]
    lines = [f"| method - {reference} | seeds | " + " | ".join(f"Δ {key}" for key in keys) + " |", "| --- | ---: | " + " | ".join("---:" for _ in keys) + " |"]
    data: dict = {}
    for method, by_seed in results.items():
        seeds = sorted(set(by_seed) & set(results[reference]))
        if method == reference or not seeds:
            continue
        row, cells = {}, []
        for key in keys:
            diffs = [by_seed[s][key] - results[reference][s][key] for s in seeds]
            mean, std = _mean_std(diffs)
            row[key] = {"mean": mean, "std": std, "diffs": diffs}
            ratio = f" ({mean / std:+.1f} sd)" if std > 0 else ""
            cells.append(f"{mean:+.4f} ± {std:.4f}{ratio}")
        data[method] = {"seeds": seeds, **row}
        lines.append(f"| {method} | {len(seeds)} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n" if data else ""), data


def _main(argv: list[str]) -> int:
    # Imported here: --help and option errors answer without loading torch.
    from ..distributed import init_distributed, shutdown
    from ..runlog import choose_run_dir, write_json
    from ..trainer import run_training

    argv = list(argv)
    opts = pop_command_options(argv, CompareOptions)
    methods = opts.methods
    base_cfg: Config = build_config(argv)
    seeds = opts.seeds or [base_cfg.seed]
    ctx = init_distributed(base_cfg.dist)
    root = choose_run_dir(base_cfg.run_dir, base_cfg.model.name, "compare")
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    try:
        for seed in seeds:
            for method in methods:
                cfg = copy.deepcopy(base_cfg)
                METHODS[method](cfg)
                cfg.seed = seed
                cfg.run_dir = str(root / f"{method}-seed{seed}")
                _, metrics = run_training(cfg, ctx=ctx)
                metrics.update(method=method, seed=seed)
                results[method][seed] = metrics
        if ctx.is_main:
            table, data = summarise(results, base_cfg.eval.k)
            paired, paired_data = paired_differences(results, base_cfg.eval.k)
            if paired:
                table += "\nPaired by seed:\n\n" + paired
            header = f"# {base_cfg.model.name}: {', '.join(methods)} over seeds {', '.join(map(str, seeds))}\n\n"
            (root / "compare.md").write_text(header + table)
            runs = {m: {str(s): r for s, r in v.items()} for m, v in results.items()}
            write_json(root / "compare.json", {"summary": data, "paired": paired_data, "runs": runs})
            print(table)
            print(f"written: {root / 'compare.md'}")
    finally:
        shutdown(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_cli(_main, argv, "python -m atjt_dist.compare", __doc__, CompareOptions)


if __name__ == "__main__":
    sys.exit(main())
