"""Every training run reports the popularity ranker beside its metrics: metrics.json's
``popularity`` entry, the ``popularity`` row of the printed table, and a warning when the model
does not beat it. Short in-process runs of ``python -m atjt_dist.train`` on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from runs import SHORT_RUN

from atjt_dist import train

# One short epoch of the baseline (no recogniser: the cheapest run that still learns the tiny
# data, as the reproduce test relies on).
SHORT = [*SHORT_RUN, "--atjt.enabled=false", "--train.epochs=1", "--no-log.tensorboard"]

WARNING = "is not above the popularity ranker's"


def _independent_popularity_auc(data: Path, fold: int = 0) -> float:
    """The popularity ranker's test AUC from the dataset arrays alone (numpy, no atjt_dist
    metric code): counts over the training users' (fold != ``fold``) whole sequences, then per
    test user the share of its negatives counted below its positive, ties 1/2, averaged."""
    arrays = Path(data) / "arrays"
    items = np.load(arrays / "seq_items.npy")
    offsets = np.load(arrays / "seq_offsets.npy")
    folds = np.load(arrays / "fold.npy")
    candidates = np.load(arrays / "candidates.npy")
    train_of_interaction = np.repeat(folds != fold, np.diff(offsets))
    counts = np.bincount(items[train_of_interaction], minlength=int(candidates.max()) + 1)
    scores = counts[candidates[folds == fold]]
    pos, neg = scores[:, :1], scores[:, 1:]
    per_user = ((neg < pos).sum(1) + 0.5 * (neg == pos).sum(1)) / neg.shape[1]
    return float(per_user.mean())


def _train(data: Path, run: Path, *extra: str) -> tuple[dict, str]:
    """Run the train entry point in this process; returns metrics.json and train.log."""
    assert train.main([f"--data.path={data}", f"--run-dir={run}", *SHORT, *extra]) == 0
    return json.loads((run / "metrics.json").read_text()), (run / "train.log").read_text()


def test_a_run_reports_the_popularity_ranker_beside_its_metrics(tiny_dataset, tmp_path, capsys):
    from atjt_dist.metrics import popularity_metrics

    metrics, log = _train(tiny_dataset, tmp_path / "run")
    out = capsys.readouterr().out
    pop = metrics["popularity"]
    assert set(pop) >= {"auc", "hr@5", "ndcg@5", "users", "paper_compat"}
    assert set(pop["paper_compat"]) == set(metrics["paper_compat"]) == {"auc", "hr@5", "ndcg@5"}
    assert pop["users"] == metrics["users"] == 120  # the same test users as the model
    # Exactly the popularity ranker's definition, computed here without the library's code.
    assert pop["auc"] == pytest.approx(_independent_popularity_auc(tiny_dataset), abs=1e-8)
    # And bit for bit what reproduce's popularity row reports (one definition, one place);
    # metrics.json stores the undefined paper HR (NaN) as null.
    expected = popularity_metrics(tiny_dataset, "kfold", 0, 5)
    assert pop["paper_compat"]["hr@5"] is None and math.isnan(expected["paper_compat"]["hr@5"])
    for key in ("auc", "hr@5", "ndcg@5"):
        assert pop[key] == expected[key]
    assert pop["paper_compat"]["ndcg@5"] == expected["paper_compat"]["ndcg@5"]
    # The test record of metrics.jsonl carries it too (report reads it for unfinished runs).
    test = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert test[-1]["popularity"]["auc"] == pop["auc"]

    # The printed table: the popularity row right under the model's, its paper HR shown as –.
    lines = out.splitlines()
    model_row = next(i for i, line in enumerate(lines) if line.startswith("| din base |"))
    pop_row = lines[model_row + 1]
    assert pop_row.startswith(f"| popularity | {pop['auc']:.4f} | {pop['hr@5']:.4f} | {pop['ndcg@5']:.4f} | – |")
    # The tiny data is learnable: one epoch beats popularity, so no warning.
    assert metrics["auc"] > pop["auc"]
    assert WARNING not in log


def _popular_last_item_dataset(path: Path, users: int = 600, items: int = 120, clusters: int = 6, seed: int = 0) -> Path:
    """Like conftest's tiny dataset, but every user's last item is item 1, which appears nowhere
    else: item 1 is by far the most popular item among the training users and every test
    positive, so the popularity ranker is perfect (AUC 1) and no untrained model can match it."""
    from atjt_dist.data.layout import DatasetContent, write_dataset

    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 25, users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    item_cluster = (np.arange(items) - 1) % clusters  # item 1 (index 0) joins no cluster's pool
    seq = np.empty(offsets[-1], dtype=np.int32)
    for u in range(users):
        pool = np.flatnonzero(item_cluster == rng.integers(clusters)) + 1
        pool = pool[pool != 1]
        start = rng.integers(len(pool))
        steps = rng.integers(0, 3, lengths[u] - 1)
        seq[offsets[u] : offsets[u + 1] - 1] = pool[(start + np.cumsum(steps)) % len(pool)]
        seq[offsets[u + 1] - 1] = 1
    category = np.concatenate([[0], item_cluster + 1]).astype(np.int32)
    return write_dataset(
        path,
        DatasetContent(
            seq_items=seq,
            seq_offsets=offsets,
            seq_times=np.arange(offsets[-1], dtype=np.int64),
            raw_users=pa.array([f"u{u}" for u in range(users)]),
            raw_items=pa.array([f"i{i}" for i in range(1, items + 1)]),
            item_category=category,
            category_names=pa.array([f"c{c}" for c in range(1, clusters + 1)]),
            meta={"format": "test"},
        ),
        num_candidates=32,
    )


def test_a_model_below_popularity_gets_a_warning(tmp_path, capsys):
    data = _popular_last_item_dataset(tmp_path / "popular")
    # An untrained model (learning rate 0, one step): deterministic, and below a perfect ranker.
    metrics, log = _train(data, tmp_path / "run", "--train.lr=0", "--train.weight_decay=0", "--train.max_steps=1")
    err = capsys.readouterr().err
    pop = metrics["popularity"]
    assert pop["auc"] == 1.0 == pytest.approx(_independent_popularity_auc(data))
    assert metrics["auc"] < pop["auc"]
    warnings = [line for line in log.splitlines() if WARNING in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0]
    assert f"{metrics['auc']:.4f}" in warnings[0] and f"{pop['auc']:.4f}" in warnings[0] and "train.lr" in warnings[0]
    assert WARNING in err  # and on the console


def test_the_warning_and_the_table_take_metrics_without_popularity():
    """Old metrics.json files (no popularity entry) print as before and never warn."""
    from atjt_dist.runlog import metrics_table, popularity_warning

    old = {"auc": 0.7, "hr@5": 0.3, "ndcg@5": 0.2, "users": 10, "paper_compat": {"auc": 0.7, "hr@5": 0.1, "ndcg@5": 0.05}}
    assert "popularity" not in metrics_table({"din base": old}, 5)
    assert popularity_warning(old) is None
    below = {**old, "popularity": {**old, "auc": 0.7}}  # equal is not above
    assert "0.7000" in popularity_warning(below)
    assert popularity_warning({**old, "popularity": {**old, "auc": 0.69}}) is None
