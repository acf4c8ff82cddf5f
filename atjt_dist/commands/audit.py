"""Planted-noise audit of a real dataset: plant known noise in training users' histories, train
each method on the noisy copy, and measure both the recommendations and how well each method's
per-user scores find the noisy users.

    python -m atjt_dist.audit --data DIR [--noise-kind random|popular|foreign|insert] [--user-share 0.3]
        [--item-share 0.3] [--noise-seed 0] [--include-last] [--methods base,tce,rce,atjt]
        [--seeds 42,43] [--config FILE] [--section.key=value ...]

``--noise-seed`` (older name: ``--seed``) seeds the noise; the training seeds are ``--seeds``
(default: the config's seed).

1. The noisy copy. Of the *training* users of the split (data.split must be kfold: users outside
   data.fold), ``round(user_share * E)`` eligible ones get ``max(1, round(item_share * (n - 1)))``
   history items replaced (``atjt_dist.data.noise.plant_into_dataset``, the synthetic generator's
   kinds: random items, popular items, or a burst of another user's items), or with ``insert``
   that many random items inserted (the sequence grows; an inserted interaction takes its
   neighbour's time); the last item is kept, and nothing is inserted after it, unless
   ``--include-last``. Test users are untouched, and so are the folds and the
   stored test candidates (copied from the source: write_dataset would redraw them from the
   noisy popularity), so test metrics are measured on exactly the source's test data. The copy
   is written with layout.write_dataset and its ground truth (noise.parquet) to RUN_DIR/data.
2. The runs. Every method x seed trains on the copy with the same config (compare's methods:
   the data, batches and order are the same, only the objective differs), in
   RUN_DIR/<method>-seed<seed>/ (metrics.json, model/, and the audit's user_scores.parquet).
3. The noise audit. Every training user gets a score, higher = more likely clean, and the AUC of
   that score against the ground truth (clean users as the positive class) says how well the
   method separates the planted-noise users from the rest (0.5 = not at all):

   - atjt: the cross-fitted recogniser weight P(clean) of the user's last training window
     (``Trainer.score_training_users``; the recogniser never trained on the user).
   - tce: minus the user's mean training loss under the final model: the mean over the user's
     training samples (every target position in sliding mode, the last in the paper's mode) of
     the positive's BCE, softplus(-x). T-CE drops the positives of largest loss, so a user is
     suspicious when its loss is high.
   - rce: the user's mean R-CE weight sigmoid(x)^beta over the same positives under the final
     model (objective.rce_beta), the weight R-CE gives them.
   - base: the same loss-based score as tce (what a "drop high-loss users" heuristic uses).

   Every run also reports the loss-based AUC of its own recommender ("loss AUC"), so the
   recogniser can be compared with the loss heuristic on the same model.

RUN_DIR/audit.md and audit.json hold the table: per method the test AUC, HR@K, NDCG@K (standard
and paper_compat), the noise AUC of the method's own score and the loss AUC, as mean ± std over
seeds. Resumable: a run with audit.json is skipped, and an existing RUN_DIR/data with the same
noise settings is reused.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cli import run_cli
from ..command_options import option, pop_command_options
from ..config import Config, ConfigError, build_config
from ..data.layout import DatasetError, read_meta
from .compare import METHODS, _mean_std

# torch, the trainer and the noise planter (numba) are imported where they are used: --help and
# option errors answer without loading them.

log = logging.getLogger("atjt_dist")

#: what each method's own per-user score is (see the module docstring)
OWN_SCORE = {"atjt": "recogniser weight", "tce": "-mean loss", "rce": "mean R-CE weight", "base": "-mean loss"}
#: atjt_dist.data.noise.NOISE_KINDS, spelled out to check --noise-kind without importing the planter
NOISE_KINDS = ("random", "popular", "foreign", "insert")


@dataclass
class AuditOptions:
    """The audit's own options, taken out of argv before the rest is read as the config."""

    data: Optional[Path] = option(None, "the prepared dataset to copy with noise", metavar="DIR", required=True)
    noise_kind: str = option("random", "what replaces (or, insert: joins) a noisy user's items", metavar="KIND", choices=NOISE_KINDS)
    user_share: float = option(0.3, "share of the eligible training users that get noise", metavar="X")
    item_share: float = option(0.3, "share of a noisy user's history items replaced (or inserted)", metavar="X")
    noise_seed: int = option(0, "the noise's seed; its older name --seed works too", aliases=("--seed",))
    include_last: bool = option(False, "noise may replace the last item too (insert: may follow it)")
    methods: list[str] = option(["base", "tce", "rce", "atjt"], "the methods trained on the noisy copy", metavar="NAME,...", choices=tuple(METHODS))
    seeds: list[int] = option([], "the training seeds (default: the config's seed)", metavar="N,...")


# ---------------------------------------------------------------------------------------------
# The noisy copy
# ---------------------------------------------------------------------------------------------


def ensure_noisy_copy(source: Path, output: Path, settings: dict, is_main: bool) -> dict:
    """The noisy copy at ``output``: reused when it exists with the same settings, else written
    (by rank 0; the others wait at a barrier)."""
    import torch.distributed as dist

    from ..data.noise import plant_into_dataset

    keys = ("kind", "user_share", "item_share", "seed", "fold", "include_last")
    if is_main:
        existing = same_source = None
        if (output / "meta.json").is_file():
            meta = read_meta(output)
            existing = meta.get("noise", {})
            same_source = meta.get("source") == str(source.resolve())
        if existing is not None and same_source and all(existing.get(k) == settings[k] for k in keys):
            log.info("reusing the noisy copy %s", output)
        elif existing is not None:
            raise ConfigError(f"{output} holds a noisy copy of another dataset or with other settings ({existing}); choose another --run-dir")
        else:
            summary = plant_into_dataset(source, output, **settings)
            log.info(
                "planted %s noise in %d of %d training users (%d items) of %s: %s",
                summary["kind"],
                summary["noisy_users"],
                summary["eligible_users"],
                summary["planted_items"],
                source,
                output,
            )
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    return read_meta(output)["noise"]


# ---------------------------------------------------------------------------------------------
# Per-user scores
# ---------------------------------------------------------------------------------------------


def positive_scores(trainer, rows_per_batch: int = 8192) -> dict[str, np.ndarray]:
    """Per training user, under the trainer's recommender: the mean positive BCE ("loss") and
    the mean R-CE weight sigmoid(x)^beta ("rce_weight") over the user's training samples (in
    the run's data.mode), and the sample count ("count"); arrays over all users (NaN for users
    without samples). A collective: every rank calls it and gets the same arrays.
    """
    import torch

    with torch.no_grad():
        return _positive_scores(trainer, rows_per_batch)


def _positive_scores(trainer, rows_per_batch: int) -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F

    from ..collectives import global_sum
    from ..data.dataset import rank_slice
    from ..models.batch import SequenceBatch

    data, cfg, ctx = trainer.data, trainer.cfg, trainer.ctx
    recommender = trainer.model.module.recommender
    space = data.sample_space(data.train_users)
    world = ctx.world
    size = max(world, rows_per_batch // world * world)
    n_users = int(data.meta["num_users"])
    sums = torch.zeros(3, n_users, dtype=torch.float64, device=ctx.device)  # loss, weight, count
    beta = cfg.objective.rce_beta
    trainer.model.eval()
    try:
        for start in range(0, space.size, size):  # the same number of batches on every rank
            sl = rank_slice(size, ctx.rank, world)
            idx = np.arange(start + sl.start, start + sl.stop, dtype=np.int64)
            valid = idx < space.size
            rows = data._windows(np.where(valid, idx, 0), space, idx, 1.0)
            batch = SequenceBatch.from_arrays(rows).to(ctx.device)
            x = recommender(batch).double()
            keep = torch.from_numpy(valid).to(ctx.device).double()
            users = batch.user
            sums[0].index_add_(0, users, F.softplus(-x) * keep)
            sums[1].index_add_(0, users, torch.sigmoid(x).pow(beta) * keep)
            sums[2].index_add_(0, users, keep)
    finally:
        trainer.model.train()
    sums = global_sum(sums).cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"loss": sums[0] / sums[2], "rce_weight": sums[1] / sums[2], "count": sums[2]}


def recogniser_weights(trainer) -> np.ndarray:
    """The cross-fitted recogniser weight of every training user (NaN elsewhere), on every rank."""
    import torch
    import torch.distributed as dist

    from ..collectives import global_sum

    users, weights = trainer.score_training_users()
    out = torch.full((int(trainer.data.meta["num_users"]),), float("nan"), dtype=torch.float64, device=trainer.ctx.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        n = torch.zeros_like(out)
        s = torch.zeros_like(out)
        s.index_add_(0, users, weights.double())
        n.index_add_(0, users, torch.ones_like(weights, dtype=torch.float64))
        s, n = global_sum(s), global_sum(n)
        out = torch.where(n > 0, s / n.clamp_min(1), out)
    else:
        out[users] = weights.double()
    return out.cpu().numpy()


def noise_audit(trainer, method: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The noise AUCs of a trained run and the per-user scores behind them (a collective)."""
    import torch

    from ..metrics import binary_auc

    noisy = trainer.data.arrays.noise_users
    if noisy is None:
        raise DatasetError(f"{trainer.data.arrays.path} has no planted-noise ground truth (noise.parquet)")
    users = np.asarray(trainer.data.train_users, dtype=np.int64)
    clean = ~np.asarray(noisy, dtype=bool)[users]
    pos = positive_scores(trainer)
    columns = {"user": users, "noisy": ~clean, "loss": pos["loss"][users], "rce_weight": pos["rce_weight"][users]}
    if method == "atjt":
        columns["recogniser_weight"] = recogniser_weights(trainer)[users]
        own = columns["recogniser_weight"]
    elif method == "rce":
        own = columns["rce_weight"]
    else:
        own = -columns["loss"]
    loss_score = -columns["loss"]

    def auc(score: np.ndarray) -> float:
        ok = np.isfinite(score)
        return binary_auc(torch.from_numpy(score[ok]), torch.from_numpy(clean[ok])) if ok.any() else float("nan")

    def mean(score: np.ndarray, mask: np.ndarray) -> float:
        values = score[mask & np.isfinite(score)]
        return float(values.mean()) if len(values) else float("nan")

    result = {
        "score": OWN_SCORE.get(method, "-mean loss"),
        "noise_auc": auc(own),
        "loss_auc": auc(loss_score),
        "score_clean_mean": mean(own, clean),
        "score_noisy_mean": mean(own, ~clean),
        "train_users": int(len(users)),
        "noisy_users": int((~clean).sum()),
    }
    columns["score"] = own
    return result, columns


def _write_user_scores(path: Path, columns: dict[str, np.ndarray]) -> None:
    table = pa.table({k: pa.array(np.asarray(v).astype(np.int32) if k == "user" else np.asarray(v)) for k, v in columns.items()})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table.sort_by([("score", "ascending"), ("user", "ascending")]), tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Runs and the table
# ---------------------------------------------------------------------------------------------


def run_method(cfg: Config, ctx, run_dir: Path, method: str) -> dict:
    """Train one method on the noisy copy, evaluate it, audit its scores; returns the record
    that audit.json holds (test metrics and the noise audit)."""
    from ..runlog import write_json
    from ..trainer import run_training

    cfg.run_dir = str(run_dir)
    found = {}

    def audit_scores(trainer, metrics):
        # While the trained recogniser (and model) are still loaded.
        found["audit"], found["columns"] = noise_audit(trainer, method)

    _, metrics = run_training(cfg, ctx=ctx, inspect=audit_scores)
    if ctx.is_main:
        _write_user_scores(run_dir / "user_scores.parquet", found["columns"])
    record = {**metrics, "method": method, "seed": cfg.seed, "audit": found["audit"]}
    if ctx.is_main:
        write_json(run_dir / "audit.json", record)
    return record


def summarise(results: dict[str, dict[int, dict]], k: int) -> tuple[str, dict]:
    """Markdown table (mean ± std over seeds) and its data."""
    keys = ["auc", f"hr@{k}", f"ndcg@{k}"]
    cols = keys + [f"paper {key}" for key in keys[1:]] + ["noise AUC", "loss AUC"]
    lines = [
        "| method | seeds | own score | " + " | ".join(cols) + " |",
        "| --- | ---: | --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    data: dict = {}
    for method, by_seed in results.items():
        if not by_seed:
            continue
        runs = list(by_seed.values())
        row = {key: _mean_std([r.get(key) for r in runs]) for key in keys}
        row.update({f"paper {key}": _mean_std([r["paper_compat"][key] for r in runs]) for key in keys[1:]})
        row["noise AUC"] = _mean_std([r["audit"]["noise_auc"] for r in runs])
        row["loss AUC"] = _mean_std([r["audit"]["loss_auc"] for r in runs])
        data[method] = {"seeds": sorted(by_seed), "score": OWN_SCORE.get(method), **{c: {"mean": v[0], "std": v[1]} for c, v in row.items()}}
        cells = []
        for c in cols:
            mean, std = row[c]
            cells.append("–" if math.isnan(mean) else (f"{mean:.4f} ± {std:.4f}" if len(by_seed) > 1 else f"{mean:.4f}"))
        lines.append(f"| {method} | {len(by_seed)} | {OWN_SCORE.get(method, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", data


def _run_or_reuse(root: Path, base_cfg: Config, ctx, method: str, seed: int) -> dict:
    """The audit.json record of one method x seed: read when the run finished before, else
    trained now (in a fresh run directory)."""
    import torch.distributed as dist

    from ..runlog import setup_logging

    run_dir = root / f"{method}-seed{seed}"
    if (run_dir / "audit.json").is_file():
        if ctx.is_main:
            log.info("skip %s: finished (audit.json)", run_dir)
        return json.loads((run_dir / "audit.json").read_text())
    if ctx.is_main and run_dir.exists():
        shutil.rmtree(run_dir)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    cfg = copy.deepcopy(base_cfg)
    METHODS[method](cfg)
    cfg.seed = seed
    cfg.data.path = str(root / "data")
    record = run_method(cfg, ctx, run_dir, method)
    setup_logging(root, ctx.is_main)
    if ctx.is_main:
        log.info(
            "%s: test auc %.4f, noise AUC %.4f (%s), loss AUC %.4f",
            run_dir,
            record["auc"],
            record["audit"]["noise_auc"],
            record["audit"]["score"],
            record["audit"]["loss_auc"],
        )
    return record


def _write_report(root: Path, source: Path, base_cfg: Config, noise: dict, results: dict[str, dict[int, dict]], command: str) -> None:
    """RUN_DIR/audit.md (a header on the noise, then the table) and audit.json; prints the table."""
    from ..runlog import write_json

    table, data = summarise(results, base_cfg.eval.k)
    src_meta = read_meta(source)
    header = (
        f"# Planted-noise audit: {source} ({src_meta['num_users']} users, {src_meta['num_items']} items), "
        f"model {base_cfg.model.name}\n\n"
        f"Noise: {noise['kind']} items in {noise['noisy_users']} of {noise['eligible_users']} training users "
        f"(user share {noise['user_share']}, item share {noise['item_share']}, seed {noise['seed']}, "
        f"{noise['planted_items']} items); test users (fold {noise['fold']}) untouched. "
        f"Test metrics on the untouched test users; noise AUC = AUC of the method's own per-user score "
        f"(higher = clean) against the ground truth; loss AUC = the same with minus the user's mean "
        f"training loss under the method's final model.\n\n    {command}\n\n"
    )
    (root / "audit.md").write_text(header + table)
    write_json(
        root / "audit.json",
        {"command": command, "noise": noise, "summary": data, "runs": {m: {str(s): r for s, r in v.items()} for m, v in results.items()}},
    )
    print(table)
    print(f"written: {root / 'audit.md'}")


def _main(argv: list[str]) -> int:
    from ..distributed import init_distributed, shutdown
    from ..runlog import choose_run_dir, setup_logging

    argv = list(argv)
    command = "python -m atjt_dist.audit " + " ".join(argv)
    opts = pop_command_options(argv, AuditOptions)
    base_cfg: Config = build_config(argv)
    seeds = opts.seeds or [base_cfg.seed]
    if base_cfg.data.split != "kfold":
        raise ConfigError("the audit needs data.split=kfold: with leave-one-out every user is a test user, so noise would reach the test data")
    read_meta(opts.data)  # a clear error for a directory that is not a dataset

    ctx = init_distributed(base_cfg.dist)
    root = choose_run_dir(base_cfg.run_dir, base_cfg.model.name, "audit")
    setup_logging(root, ctx.is_main)
    settings = dict(
        kind=opts.noise_kind,
        user_share=opts.user_share,
        item_share=opts.item_share,
        seed=opts.noise_seed,
        fold=base_cfg.data.fold,
        include_last=opts.include_last,
    )
    results: dict[str, dict[int, dict]] = {m: {} for m in opts.methods}
    try:
        noise = ensure_noisy_copy(opts.data, root / "data", settings, ctx.is_main)
        for seed in seeds:
            for method in opts.methods:
                results[method][seed] = _run_or_reuse(root, base_cfg, ctx, method, seed)
        if ctx.is_main:
            _write_report(root, opts.data, base_cfg, noise, results, command)
    finally:
        shutdown(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_cli(_main, argv, "python -m atjt_dist.audit", __doc__, AuditOptions)


if __name__ == "__main__":
    sys.exit(main())
