"""Training runs as the report sees them: a run directory's config.yaml, metrics.jsonl and
metrics.json, compare directories expanded into their runs, and the statistics derived from them
(phase ends, histogram means, binned AUCs, test metrics per (model, method) group)."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ..errors import ReportError


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
