"""The observability commands: score (per-user noise scores), audit (planted noise in a real
dataset) and reproduce (the dataset x model x method grid), end to end on the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import write_tiny_dataset
from runs import SHORT_RUN

from atjt_dist.config import build_config, dump_yaml

SMALL = [*SHORT_RUN, "--train.epochs=1"]


@pytest.fixture(scope="module")
def atjt_run(tiny_dataset, tmp_path_factory):
    """A finished one-epoch ATJT run on the tiny dataset, and the weights the trainer gave its
    training users right after training (Trainer.score_training_users)."""
    from atjt_dist.trainer import Trainer

    run = tmp_path_factory.mktemp("score") / "run"
    cfg = build_config([f"--data.path={tiny_dataset}", f"--run-dir={run}", *SMALL])
    trainer = Trainer(cfg)
    try:
        trainer.train()
        users, weights = trainer.score_training_users()
        trainer.finish(trainer.evaluate())
    finally:
        trainer.close()
    reference = dict(zip(users.tolist(), weights.tolist()))
    return run, reference


@pytest.mark.slow
def test_score_writes_the_recognisers_weights_with_raw_ids(atjt_run, tiny_dataset, tmp_path):
    from atjt_dist.commands import score

    run, reference = atjt_run
    out = tmp_path / "scores.parquet"
    assert score.main(["--run", str(run), "--data", str(tiny_dataset), "--output", str(out)]) == 0
    table = pq.read_table(out).to_pydict()
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed

    # every training user once, with the weight the trained recogniser gave it
    assert sorted(table["user"]) == sorted(reference)
    got = dict(zip(table["user"], table["weight"]))
    for user, weight in reference.items():
        assert got[user] == pytest.approx(weight, abs=1e-6)
    # most suspicious first
    assert table["weight"] == sorted(table["weight"])
    assert min(table["weight"]) < max(table["weight"])

    # raw ids: the tiny dataset's users are "u<id>", items "i<id>"; the window ends at the last item
    from atjt_dist.data.layout import open_arrays

    a = open_arrays(tiny_dataset)
    for row in range(0, len(table["user"]), 97):
        u = table["user"][row]
        assert table["raw_user"][row] == f"u{u}"
        seq = np.asarray(a.seq_items[a.seq_offsets[u] : a.seq_offsets[u + 1]])
        assert table["target"][row] == f"i{seq[-1]}"
        assert table["history"][row] == [f"i{i}" for i in seq[-20:-1]]
        assert table["length"][row] == len(seq)
        assert table["part"][row] in (0, 1)


@pytest.mark.slow
def test_score_refuses_baselines_missing_runs_and_other_datasets(atjt_run, tiny_dataset, tmp_path, capsys):
    from atjt_dist.commands import score

    out = tmp_path / "s.parquet"
    base = tmp_path / "base"
    base.mkdir()
    dump_yaml(build_config([f"--data.path={tiny_dataset}", "--no-atjt.enabled"]), base / "config.yaml")
    assert score.main(["--run", str(base), "--data", str(tiny_dataset), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "method 'base'" in err and "no noise recognisers" in err and len(err.splitlines()) == 1

    assert score.main(["--run", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err

    other = write_tiny_dataset(tmp_path / "other", items=130)
    run, _ = atjt_run
    assert score.main(["--run", str(run), "--data", str(other), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not match run" in err and "131" in err and "121" in err
    assert not out.exists()


@pytest.mark.slow
def test_audit_plants_noise_in_training_users_only_and_reports_aucs(tiny_dataset, tmp_path):
    from atjt_dist.commands import audit
    from atjt_dist.data.layout import open_arrays

    root = tmp_path / "audit"
    argv = [
        "--data",
        str(tiny_dataset),
        "--noise-kind",
        "random",
        "--user-share",
        "0.4",
        "--item-share",
        "0.4",
        "--seed",
        "3",
        "--methods",
        "base,atjt",
        "--seeds",
        "42",
        f"--run-dir={root}",
        *SMALL,
    ]
    assert audit.main(argv) == 0

    src, noisy = open_arrays(tiny_dataset), open_arrays(root / "data")
    truth = pq.read_table(root / "data" / "noise.parquet").to_pydict()
    test = np.asarray(src.fold) == 0
    assert np.array_equal(np.asarray(noisy.fold), np.asarray(src.fold))
    assert np.array_equal(np.asarray(noisy.candidates), np.asarray(src.candidates))
    assert not test[np.asarray(truth["user"])].any()  # noise only in training users
    for u in np.flatnonzero(test):  # test users untouched
        lo, hi = src.seq_offsets[u], src.seq_offsets[u + 1]
        assert np.array_equal(noisy.seq_items[lo:hi], src.seq_items[lo:hi])
    noisy_users = np.unique(truth["user"])
    assert len(noisy_users) == round(0.4 * (~test).sum())

    report = json.loads((root / "audit.json").read_text())
    assert set(report["runs"]) == {"base", "atjt"}
    for method in ("base", "atjt"):
        record = report["runs"][method]["42"]
        assert 0.0 <= record["audit"]["noise_auc"] <= 1.0 and 0.0 <= record["audit"]["loss_auc"] <= 1.0
        assert record["users"] == int(test.sum())
        scores = pq.read_table(root / f"{method}-seed42" / "user_scores.parquet").to_pydict()
        assert sum(scores["noisy"]) == len(noisy_users)
    atjt = report["runs"]["atjt"]["42"]
    assert atjt["audit"]["score"] == "recogniser weight"
    # the cross-fitted recogniser weights are the ones the trainer's own evaluation audits
    assert atjt["audit"]["noise_auc"] == pytest.approx(atjt["noise_weight_auc"], abs=1e-9)
    table = (root / "audit.md").read_text()
    assert "noise AUC" in table and "loss AUC" in table and "| atjt |" in table and "| base |" in table


@pytest.mark.slow
def test_audit_with_inserted_noise_grows_training_users_only(tiny_dataset, tmp_path):
    """--noise-kind insert: the noisy copy's training users get extra items (their times copied
    from a neighbour), the test users and candidates stay the source's; one short base run."""
    from atjt_dist.commands import audit
    from atjt_dist.data.layout import open_arrays

    root = tmp_path / "audit"
    argv = [
        "--data",
        str(tiny_dataset),
        "--noise-kind",
        "insert",
        "--user-share",
        "0.4",
        "--item-share",
        "0.3",
        "--seed",
        "3",
        "--methods",
        "base",
        "--seeds",
        "42",
        f"--run-dir={root}",
        *SMALL,
    ]
    assert audit.main(argv) == 0

    src, noisy = open_arrays(tiny_dataset), open_arrays(root / "data")
    truth = pq.read_table(root / "data" / "noise.parquet").to_pydict()
    users, position = np.asarray(truth["user"]), np.asarray(truth["position"])
    test = np.asarray(src.fold) == 0
    assert np.array_equal(np.asarray(noisy.fold), np.asarray(src.fold))
    assert np.array_equal(np.asarray(noisy.candidates), np.asarray(src.candidates))
    assert not test[users].any() and len(np.unique(users)) == round(0.4 * (~test).sum())
    assert not np.any(truth["original_item"])  # nothing replaced
    grown = np.bincount(users, minlength=src.num_users)
    assert np.array_equal(noisy.lengths, src.lengths + grown)
    flat = np.asarray(noisy.seq_offsets)[users] + position
    assert np.array_equal(np.flatnonzero(noisy.planted), flat)
    assert np.array_equal(np.delete(np.asarray(noisy.seq_items), flat), np.asarray(src.seq_items))
    assert np.all(position < noisy.lengths[users] - 1)  # the last item stays the user's own
    src_times = pq.read_table(tiny_dataset / "interactions.parquet").column("time").to_numpy()
    times = pq.read_table(root / "data" / "interactions.parquet").column("time").to_numpy()
    assert np.array_equal(np.delete(times, flat), src_times)
    before = np.maximum(flat - 1, np.asarray(noisy.seq_offsets)[users])  # the tiny dataset's times increase
    assert np.all(times[flat] == np.where(position > 0, times[before], times[flat + 1]))

    report = json.loads((root / "audit.json").read_text())
    assert report["noise"]["kind"] == "insert"
    record = report["runs"]["base"]["42"]
    assert record["users"] == int(test.sum()) and 0.0 <= record["audit"]["noise_auc"] <= 1.0


def _grid(tmp_path: Path, dataset: Path) -> Path:
    grid = tmp_path / "grid"
    grid.mkdir()
    for model in ("din", "dcn"):
        (grid / f"tiny-{model}.yaml").write_text(
            f"data:\n  path: {dataset.name}\n  mode: paper\nmodel:\n  name: {model}\n"
            + ("  dcn:\n    cross_layers: 2\n    deep_hidden: [32]\n" if model == "dcn" else "")
        )
    return grid


@pytest.mark.slow
def test_reproduce_runs_the_grid_then_skips_finished_cells(tiny_dataset, tmp_path, capsys):
    from atjt_dist.commands import reproduce

    grid = _grid(tmp_path, tiny_dataset)
    root = tmp_path / "grid-runs"
    argv = [
        "--datasets",
        "tiny",
        "--models",
        "din,dcn",
        "--methods",
        "base,atjt",
        "--seeds",
        "1",
        "--data-root",
        str(tiny_dataset.parent),
        "--grid-dir",
        str(grid),
        "--run-dir",
        str(root),
        *SMALL,
    ]
    assert reproduce.main(argv) == 0
    cells = sorted(root.glob("tiny/*/*-seed1/metrics.json"))
    assert len(cells) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in cells}
    first = json.loads((root / "results.json").read_text())
    capsys.readouterr()

    assert reproduce.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in cells} == mtimes  # nothing retrained
    markdown = (root / "results.md").read_text()
    assert markdown.count("| tiny |") == 6  # popularity, din, dcn in the standard and the paper_compat table
    assert "| tiny | popularity |" in markdown and "base AUC" in markdown and "atjt NDCG@5" in markdown
    second = json.loads((root / "results.json").read_text())
    assert second["summary"] == first["summary"]
    din = second["summary"]["tiny"]["din"]
    assert set(din) == {"base", "atjt"} and din["atjt"]["seeds"] == [1]
    for variant in ("standard", "paper_compat"):
        assert set(din["base"][variant]) == {"auc", "hr@5", "ndcg@5"}
    pop = second["popularity"]["tiny"]
    assert pop["users"] == first["runs"][0]["metrics"]["users"]
    assert 0.0 < pop["auc"] < 1.0
    assert din["base"]["standard"]["auc"]["mean"] > pop["auc"]  # the tiny data is learnable


def test_popularity_ranker_counts_training_users_only(tiny_dataset):
    from atjt_dist.commands.reproduce import popularity_metrics, training_popularity
    from atjt_dist.data.layout import open_arrays
    from atjt_dist.metrics import candidate_metrics

    a = open_arrays(tiny_dataset)
    train = np.asarray(a.fold) != 0
    counts = np.zeros(a.num_items + 1, dtype=np.int64)
    for u in np.flatnonzero(train):
        np.add.at(counts, np.asarray(a.seq_items[a.seq_offsets[u] : a.seq_offsets[u + 1]]), 1)
    assert np.array_equal(training_popularity(tiny_dataset), counts)
    m = popularity_metrics(tiny_dataset)
    test = np.flatnonzero(~train)
    expected = candidate_metrics(torch.from_numpy(counts[np.asarray(a.candidates)[test]].astype(np.float64)), 5)
    assert m["auc"] == pytest.approx(expected["auc"]) and m["hr@5"] == pytest.approx(expected["hr@5"])
    assert np.isnan(m["paper_compat"]["hr@5"]) and m["users"] == len(test)


def test_reproduce_refuses_unknown_cells_before_running(tiny_dataset, tmp_path, capsys):
    from atjt_dist.commands import reproduce

    grid = _grid(tmp_path, tiny_dataset)
    argv = ["--datasets", "tiny", "--models", "din,sasrec", "--grid-dir", str(grid), "--data-root", str(tiny_dataset.parent), "--run-dir", str(tmp_path / "r")]
    assert reproduce.main(argv) == 2
    assert "tiny-sasrec.yaml" in capsys.readouterr().err
    assert (
        reproduce.main(["--datasets", "tiny", "--models", "din", "--grid-dir", str(grid), "--data-root", str(tmp_path), "--run-dir", str(tmp_path / "r")]) == 2
    )
    assert "--data-root" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
