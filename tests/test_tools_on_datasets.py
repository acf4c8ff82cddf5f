"""reproduce, score, audit and report end to end on the datasets users start with: the default
synthetic data (the generator's defaults, planted noise) and the real ml-100k.

The runs are short (train.max_steps) so the commands' whole path runs, including evaluation of
every test user and scoring of every training user; what they learn is measured in
docs/results.md, not here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import shared_file

# the grid configs choose the mode; a 24-step run trains the recommender (no recogniser warm-up)
SHORT = ["--atjt.recognizer_warmup_steps=0", "--train.max_steps=24", "--train.log_every=8", "--no-train.progress_bar", "--checkpoint.every=0"]


def _prepare_ml100k(root: Path) -> Path:
    from atjt_dist.data import prepare

    out = root / "data" / "ml-100k"  # where configs/datasets/ml-100k.yaml expects it under a data root
    data, item = shared_file("ml-100k", "u.data"), shared_file("ml-100k", "u.item")
    assert prepare.main(["--format", "movielens", "--input", str(data), str(item), "--output", str(out)]) == 0
    return out


def _write_default_synthetic(root: Path) -> Path:
    from atjt_dist.config import SyntheticConfig
    from atjt_dist.data import synthetic

    return synthetic.write(SyntheticConfig(), root / "data" / "synthetic")


@pytest.fixture(scope="module", params=["synthetic", "ml-100k"])
def dataset(request, tmp_path_factory) -> tuple[str, Path]:
    """(name, path) of a prepared dataset directory, DATA_ROOT/data/<name>."""
    root = tmp_path_factory.mktemp("data")
    name = request.param
    path = _write_default_synthetic(root) if name == "synthetic" else _prepare_ml100k(root)
    return name, path


@pytest.fixture(scope="module")
def grid_runs(dataset, tmp_path_factory) -> tuple[str, Path, Path]:
    """reproduce over din x {base, atjt} on the dataset; returns (name, data path, run root)."""
    from atjt_dist.commands import reproduce

    name, path = dataset
    tmp = tmp_path_factory.mktemp("grid")
    grid = tmp / "grid"
    grid.mkdir()
    if name == "ml-100k":  # the repository's own cell config
        text = (Path(reproduce.DEFAULT_GRID) / "ml-100k-din.yaml").read_text()
        text = text.replace("../datasets/", str(Path(reproduce.DEFAULT_GRID).parent / "datasets") + "/")
        text = text.replace("../models/", str(Path(reproduce.DEFAULT_GRID).parent / "models") + "/")
    else:
        text = f"data:\n  path: data/{path.name}\nmodel:\n  name: din\n"
    (grid / f"{name}-din.yaml").write_text(text)
    root = tmp / "runs"
    argv = [
        "--datasets",
        name,
        "--models",
        "din",
        "--methods",
        "base,atjt",
        "--seeds",
        "42",
        "--data-root",
        str(path.parent.parent),
        "--grid-dir",
        str(grid),
        "--run-dir",
        str(root),
        *SHORT,
    ]
    assert reproduce.main(argv) == 0
    return name, path, root


@pytest.mark.slow
def test_reproduce_writes_the_table_with_the_popularity_row(grid_runs):
    name, _, root = grid_runs
    results = json.loads((root / "results.json").read_text())
    din = results["summary"][name]["din"]
    assert set(din) == {"base", "atjt"}
    for method in ("base", "atjt"):
        run = root / name / "din" / f"{method}-seed42"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == 24
        assert din[method]["standard"]["auc"]["mean"] == pytest.approx(metrics["auc"])
    markdown = (root / "results.md").read_text()
    assert f"| {name} | popularity |" in markdown and f"| {name} | din |" in markdown
    if name == "synthetic":  # planted noise: the ATJT run audits its weights against the truth
        atjt = json.loads((root / name / "din" / "atjt-seed42" / "metrics.json").read_text())
        assert 0.0 <= atjt["noise_weight_auc"] <= 1.0


@pytest.mark.slow
def test_score_lists_every_training_user_with_raw_ids(grid_runs, tmp_path):
    from atjt_dist.commands import score
    from atjt_dist.data.layout import open_arrays

    name, path, root = grid_runs
    out = tmp_path / "scores.parquet"
    assert score.main(["--run", str(root / name / "din" / "atjt-seed42"), "--data", str(path), "--output", str(out)]) == 0
    table = pq.read_table(out).to_pydict()
    a = open_arrays(path)
    train_users = np.flatnonzero(np.asarray(a.fold) != 0)
    assert sorted(table["user"]) == train_users.tolist()
    assert table["weight"] == sorted(table["weight"]) and all(0.0 <= w <= 1.0 for w in table["weight"])
    raw_users = pq.read_table(path / "users.parquet", columns=["user", "raw_user"]).to_pydict()
    raw_of = dict(zip(raw_users["user"], raw_users["raw_user"]))
    assert all(str(raw_of[u]) == str(r) for u, r in zip(table["user"][:50], table["raw_user"][:50]))
    assert ("noisy" in table) == (name == "synthetic")


@pytest.mark.slow
def test_report_plots_the_grids_runs(grid_runs, tmp_path):
    from atjt_dist.commands import report

    name, _, root = grid_runs
    runs = [root / name / "din" / f"{m}-seed42" for m in ("base", "atjt")]
    out = tmp_path / "report"
    assert report.main([*map(str, runs), "--output", str(out)]) == 0
    summary = (out / "report.md").read_text()
    for png in ("training_curves.png", "metrics.png", "user_weights.png"):
        assert (out / png).stat().st_size > 1000, png
        assert png in summary
    atjt = json.loads((runs[1] / "metrics.json").read_text())
    assert f"{atjt['auc']:.4f}" in summary  # the summary holds the runs' own numbers


@pytest.mark.slow
def test_audit_on_ml100k(tmp_path_factory):
    from atjt_dist.commands import audit

    root = tmp_path_factory.mktemp("audit")
    path = _prepare_ml100k(root)
    argv = ["--data", str(path), "--user-share", "0.3", "--methods", "base,atjt", "--seeds", "42", f"--run-dir={root / 'runs'}", *SHORT]
    assert audit.main(argv) == 0
    report = json.loads((root / "runs" / "audit.json").read_text())
    assert report["noise"]["noisy_users"] == round(0.3 * report["noise"]["eligible_users"])
    for method in ("base", "atjt"):
        record = report["runs"][method]["42"]
        assert record["users"] == 189  # ml-100k's fold 0: untouched test users
        assert 0.0 <= record["audit"]["noise_auc"] <= 1.0
    assert "| atjt |" in (root / "runs" / "audit.md").read_text()
