"""Observability: TensorBoard event files, the weight-histogram records, weights.parquet, and the
report (python -m atjt_dist.report) on real runs of the tiny synthetic dataset with planted noise."""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from runs import SHORT_RUN

from atjt_dist import runlog
from atjt_dist.objective import StepOutput
from atjt_dist.runlog import Histogram, MetricsWriter, WeightHistograms

SMALL = SHORT_RUN
TRAIN_SCALARS = ("loss", "loss_rec", "loss_aux", "weight_mean", "w_clean", "w_noisy", "recognizer_auc", "samples_per_s", "lr", "lr_recognizer", "phase")


def _records(run: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == kind]


def _train(args: list[str]) -> None:
    from atjt_dist.config import build_config
    from atjt_dist.trainer import Trainer

    trainer = Trainer(build_config(args))
    try:
        trainer.train()
        trainer.finish(trainer.evaluate())
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def noisy_dataset(tmp_path_factory) -> Path:
    """600 users with planted noise (noise.parquet), 200 items in 6 clusters."""
    from atjt_dist.config import SyntheticConfig
    from atjt_dist.data import synthetic

    cfg = SyntheticConfig(users=600, items=200, clusters=6, mean_length=15, min_length=6, seed=1)
    return synthetic.write(cfg, tmp_path_factory.mktemp("noisy") / "ds")


@pytest.fixture(scope="module")
def runs(noisy_dataset, tmp_path_factory):
    """A compare directory (base and ATJT, seed 1, TensorBoard on) and a second ATJT run (seed
    2, TensorBoard off): three short trainings in this process (12 steps each)."""
    from atjt_dist.commands import compare

    root = tmp_path_factory.mktemp("runs")
    common = [f"--data.path={noisy_dataset}", *SMALL]
    assert compare.main(["--methods=base,atjt", "--seed=1", f"--run-dir={root / 'cmp'}", *common]) == 0
    _train([*common, "--seed=2", f"--run-dir={root / 'atjt2'}", "--no-log.tensorboard"])
    cmp = root / "cmp"
    return SimpleNamespace(compare=cmp, atjt=cmp / "atjt-seed1", base=cmp / "base-seed1", atjt2=root / "atjt2", data=noisy_dataset)


# ---------------------------------------------------------------------------------------------
# What a run records
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_records(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(runs.atjt.glob("events.out.tfevents.*")) and list(runs.base.glob("events.out.tfevents.*"))
    assert not list(runs.atjt2.glob("events.out.tfevents.*"))  # --no-log.tensorboard
    ea = EventAccumulator(str(runs.atjt), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    expected = {f"train/{key}" for key in TRAIN_SCALARS}
    expected |= {"test/auc", "test/hr@5", "test/ndcg@5", "test/paper_compat/ndcg@5", "test/noise_weight_auc", "phase_end/phase"}
    assert expected <= set(tags["scalars"]), expected - set(tags["scalars"])
    train = _records(runs.atjt, "train")
    for key in TRAIN_SCALARS:
        events = ea.Scalars(f"train/{key}")
        assert [e.step for e in events] == [r["step"] for r in train], key
        assert [e.value for e in events] == pytest.approx([r[key] for r in train], rel=1e-6), key
    (test,) = _records(runs.atjt, "test")
    assert ea.Scalars("test/auc")[0].value == pytest.approx(test["auc"], rel=1e-6)
    assert ea.Scalars("test/auc")[0].step == test["step"]

    histograms = {f"weight_hist/{f}/{s}" for f in ("corrupted", "planted") for s in ("clean", "noisy")}
    histograms |= {"user_weights/clean", "user_weights/noisy"}
    assert histograms <= set(tags["histograms"]), histograms - set(tags["histograms"])
    weight_hist = _records(runs.atjt, "weight_hist")
    events = ea.Histograms("weight_hist/corrupted/noisy")
    assert [e.step for e in events] == [r["step"] for r in weight_hist]
    for event, record in zip(events, weight_hist):
        h = record["corrupted"]["noisy"]
        assert event.histogram_value.num == sum(h["counts"])
        assert list(event.histogram_value.bucket) == [0.0, *h["counts"]]  # an empty bucket below 0
        assert list(event.histogram_value.bucket_limit) == pytest.approx(h["edges"])
        assert event.histogram_value.sum == pytest.approx(h["sum"])

    base = EventAccumulator(str(runs.base), size_guidance={"scalars": 0, "histograms": 0})
    base.Reload()
    assert {"train/loss", "train/lr", "test/auc"} <= set(base.Tags()["scalars"])
    assert "train/loss_aux" not in base.Tags()["scalars"] and not base.Tags()["histograms"]


@pytest.mark.slow
def test_jsonl_records_phase_ends_and_weight_histograms(runs):
    steps = json.loads((runs.atjt / "metrics.json").read_text())["steps"]
    per_epoch = steps // 2 // 2  # 2 equal parts (phases) x 2 epochs
    ends = _records(runs.atjt, "phase_end")
    assert [(r["phase"], r["step"], r["epoch"]) for r in ends] == [(0, steps // 2, 1), (1, steps, 1)]
    assert [(r["phase"], r["step"]) for r in _records(runs.base, "phase_end")] == [(0, steps // 2), (1, steps)]

    hists = _records(runs.atjt, "weight_hist")
    assert [(r["phase"], r["step"]) for r in hists] == [(0, steps // 2), (1, steps)]
    for r in hists:
        corrupted, planted = r["corrupted"], r["planted"]
        # the phase's last epoch: per_epoch steps x 32 recogniser rows, x 64 sequences (positives)
        assert sum(corrupted["clean"]["counts"]) + sum(corrupted["noisy"]["counts"]) == per_epoch * 32
        assert sum(corrupted["noisy"]["counts"]) > 0 and sum(corrupted["clean"]["counts"]) > 0
        assert sum(planted["clean"]["counts"]) + sum(planted["noisy"]["counts"]) == per_epoch * 64
        assert sum(planted["noisy"]["counts"]) > 0  # planted-noise users are in the training parts
        for h in (*corrupted.values(), *planted.values()):
            assert len(h["edges"]) == 21 and len(h["counts"]) == 20 and h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
            assert 0.0 <= h["sum"] / max(sum(h["counts"]), 1) <= 1.0
    assert not _records(runs.base, "weight_hist")  # no recogniser, no weights

    train = _records(runs.atjt, "train")
    lrs = [0.023, 0.025]  # PAPER_SCHEDULE's
    # the recommender's lr decays (train.lr_decay), the recognisers' stays
    assert all(0 < r["lr"] <= 8.15e-4 and r["lr_recognizer"] == lrs[min(r["phase"], len(lrs) - 1)] for r in train)
    assert [r["lr"] for r in train] == sorted((r["lr"] for r in train), reverse=True)
    assert {r["stage"] for r in train} == {"joint"} and {r["phase"] for r in train} == {0, 1}


@pytest.mark.slow
def test_weights_parquet_holds_the_scored_training_users(runs):
    from sklearn.metrics import roc_auc_score

    table = pq.read_table(runs.atjt / "weights.parquet").to_pydict()
    users, weights, noisy = np.array(table["user"]), np.array(table["weight"]), np.array(table["noisy"])
    meta = json.loads((runs.data / "meta.json").read_text())
    folds = pq.read_table(runs.data / "users.parquet", columns=["fold"]).column("fold").to_numpy()
    assert users.tolist() == np.flatnonzero(folds != 0).tolist()  # every training user once (fold 0 is tested)
    truth = np.zeros(meta["num_users"], dtype=bool)
    truth[pq.read_table(runs.data / "noise.parquet", columns=["user"]).column("user").to_numpy()] = True
    assert noisy.tolist() == truth[users].tolist() and noisy.any()
    assert ((weights > 0) & (weights < 1)).all()
    # the same weights as the noise AUC of metrics.json, and as the user_weights histograms
    metrics = json.loads((runs.atjt / "metrics.json").read_text())
    assert metrics["noise_weight_auc"] == pytest.approx(roc_auc_score(~noisy, weights), abs=1e-9)
    (record,) = _records(runs.atjt, "user_weights")
    assert record["users"] == len(users)
    assert record["clean"]["counts"] == Histogram.of(weights[~noisy], 20).counts
    assert record["noisy"]["counts"] == Histogram.of(weights[noisy], 20).counts
    assert not (runs.base / "weights.parquet").exists()


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
def test_report_on_one_run_plots_its_records(runs, tmp_path):
    from atjt_dist.commands.report import build_report

    report = build_report([runs.atjt], tmp_path / "out")
    assert set(report.plots) == {"metrics", "training_curves", "weight_hist_corrupted", "weight_hist_planted", "user_weights"}
    (run,) = report.runs
    assert (run.model, run.method, run.seed, run.name) == ("din", "atjt", 1, "atjt seed1")

    # the curves are the train records, the phase ends the phase_end records
    train = _records(runs.atjt, "train")
    curves = report.data["training_curves"][run.name]
    for key in ("loss", "loss_rec", "loss_aux", "recognizer_auc", "w_clean", "w_noisy", "samples_per_s"):
        assert curves[key] == ([r["step"] for r in train], [r[key] for r in train]), key
    assert report.data["training_curves"]["phase_ends"][run.name] == [r["step"] for r in _records(runs.atjt, "phase_end")]
    # the histograms are the weight_hist and user_weights records
    for family in ("corrupted", "planted"):
        drawn = report.data[f"weight_hist_{family}"][run.name]
        for record in _records(runs.atjt, "weight_hist"):
            panel = drawn[f"phase {record['phase']}"]
            assert panel["clean"] == record[family]["clean"] and panel["noisy"] == record[family]["noisy"]
    (users,) = _records(runs.atjt, "user_weights")
    assert report.data["user_weights"][run.name] == {"clean": users["clean"], "noisy": users["noisy"]}
    metrics = json.loads((runs.atjt / "metrics.json").read_text())
    assert report.data["metrics"]["atjt"]["AUC"]["values"] == [metrics["auc"]]

    # one figure per plot, sized by its panels (100 dpi): 2 x 3 curves; 1 run x 2 phases
    assert _png_size(report.plots["training_curves"]) == (1600, 850)
    assert _png_size(report.plots["weight_hist_corrupted"]) == (900, 320)
    assert _png_size(report.plots["user_weights"]) == (480, 330)
    md = report.markdown.read_text()
    for name, path in report.plots.items():
        assert f"]({path.name})" in md, name
    assert f"| atjt | 1 | {metrics['auc']:.4f} |" in md
    assert "| atjt seed1 | phase 0 |" in md and "planted-noise users" in md


@pytest.mark.slow
def test_report_command_on_a_compare_directory_and_a_run(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "atjt_dist.report", str(runs.compare), str(runs.atjt2)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = runs.compare / "report"  # default: the first RUN_DIR/report
    md = (out / "report.md").read_text()
    for png in ("metrics", "training_curves", "weight_hist_corrupted", "weight_hist_planted", "user_weights"):
        assert (out / f"{png}.png").is_file() and f"]({png}.png)" in md
    # two ATJT runs (rows) x 2 phases; the user weights of the two ATJT runs (the baseline has none)
    assert _png_size(out / "weight_hist_corrupted.png") == (900, 640)
    assert _png_size(out / "user_weights.png") == (960, 330)
    aucs = [json.loads((d / "metrics.json").read_text())["auc"] for d in (runs.atjt, runs.atjt2)]
    mean, std = statistics.fmean(aucs), statistics.stdev(aucs)
    assert f"| atjt | 2 | {mean:.4f} ± {std:.4f} |" in md
    base_auc = json.loads((runs.base / "metrics.json").read_text())["auc"]
    assert f"| base | 1 | {base_auc:.4f} |" in md

    # the bar chart's data (what plot_metrics returns): the runs' metrics grouped by method
    from atjt_dist.commands.report import load_runs, metrics_by_group

    loaded = load_runs([runs.compare, runs.atjt2])
    assert sorted(r.name for r in loaded) == ["atjt seed1", "atjt seed2", "base seed1"]
    bars = metrics_by_group(loaded)
    assert bars["atjt"]["AUC"]["values"] == aucs and bars["atjt"]["AUC"]["mean"] == pytest.approx(mean)
    assert bars["atjt"]["AUC"]["std"] == pytest.approx(std) and bars["base"]["AUC"]["values"] == [base_auc]
    assert "noise AUC" in bars["atjt"] and "noise AUC" not in bars["base"]


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    from atjt_dist.commands.report import main

    assert main([str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2


def test_report_options_are_run_dirs_and_output(tmp_path, capsys):
    from atjt_dist.command_options import pop_command_options
    from atjt_dist.commands.report import PROG, ReportOptions, main

    argv = ["a", "--output", "out", "b"]  # the run directories may stand on either side of an option
    opts = pop_command_options(argv, ReportOptions)
    assert argv == [] and opts.run_dirs == [Path("a"), Path("b")] and opts.output == Path("out")
    for argv, message in ((["--output", str(tmp_path)], "RUN_DIR is required"), ([str(tmp_path), "--outptu=x"], "unknown option --outptu")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: {message}"), err
    assert list(tmp_path.iterdir()) == []
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG} [options] RUN_DIR [RUN_DIR ...]\n") and "--output DIR" in out and "--config" not in out


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------


def test_weight_histograms_count_the_last_epoch_by_label():
    bins = 10
    noise_users = torch.tensor([False, True, False, True])
    h = WeightHistograms(bins, epochs=2, device=torch.device("cpu"), noise_users=noise_users)
    g = torch.Generator().manual_seed(0)
    seen_aux, seen_w = [], []
    for epoch in (0, 1, 1):
        aux_logits, w_logits = torch.randn(16, generator=g), torch.randn(6, generator=g)
        labels = (torch.arange(16) % 2).float()  # 1 = clean
        users = torch.tensor([0, 1, 2, 3, 1, 0, 9, 9, 9, 9, 9, 9])  # positives first, then negatives
        out = StepOutput(aux_logits=aux_logits, weight_logits=w_logits)
        h.observe(epoch, out, SimpleNamespace(user=users), SimpleNamespace(label=labels))
        if epoch == 1:  # only the last epoch counts
            seen_aux.append((torch.sigmoid(aux_logits), labels))
            seen_w.append((torch.sigmoid(w_logits), noise_users[users[:6]]))
    s = h.summary()
    p = torch.cat([a for a, _ in seen_aux]).double().numpy()
    clean = torch.cat([lab for _, lab in seen_aux]).numpy() > 0.5
    w = torch.cat([a for a, _ in seen_w]).double().numpy()
    noisy = torch.cat([n for _, n in seen_w]).numpy()
    ref = lambda v: np.histogram(v, bins=bins, range=(0, 1))[0].tolist()
    assert s["corrupted"]["clean"].counts == ref(p[clean]) and s["corrupted"]["noisy"].counts == ref(p[~clean])
    assert s["planted"]["clean"].counts == ref(w[~noisy]) and s["planted"]["noisy"].counts == ref(w[noisy])
    assert s["corrupted"]["clean"].sum == pytest.approx(p[clean].sum())
    assert s["planted"]["noisy"].sum_squares == pytest.approx((w[noisy] ** 2).sum())
    assert s["corrupted"]["clean"].edges == [round(0.1 * i, 12) for i in range(11)]
    h.reset()
    assert h.summary() == {}
    # without ground truth only the corrupted family
    h2 = WeightHistograms(bins, epochs=1, device=torch.device("cpu"))
    h2.observe(
        0,
        StepOutput(aux_logits=torch.zeros(4), weight_logits=torch.zeros(2)),
        SimpleNamespace(user=torch.zeros(4, dtype=torch.long)),
        SimpleNamespace(label=torch.ones(4)),
    )
    assert set(h2.summary()) == {"corrupted"} and h2.summary()["corrupted"]["clean"].counts[5] == 4


def test_tensorboard_is_on_by_default_only_where_it_is_installed(monkeypatch):
    for installed in (True, False):
        monkeypatch.setattr(runlog, "tensorboard_available", lambda installed=installed: installed)
        assert runlog.use_tensorboard(None) is installed
        assert runlog.use_tensorboard(True) is True and runlog.use_tensorboard(False) is False


def test_metrics_writer_without_tensorboard_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(runlog, "_warned_no_tensorboard", False)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("atjt_dist")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            writer = MetricsWriter(tmp_path / name, enabled=True, tensorboard=True)
            assert not writer.tensorboard
            writer.write("train", step=1, loss=0.5)
            writer.close()
            assert json.loads((tmp_path / name / "metrics.jsonl").read_text())["loss"] == 0.5
            assert not list((tmp_path / name).glob("events.*"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    warnings = [m for m in messages if "TensorBoard is not installed" in m]
    assert len(warnings) == 1 and "atjt-dist[viz]" in warnings[0]


def test_metrics_writer_tensorboard_tags_and_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=True)
    for step in (1, 2, 3, 4):
        writer.write("train", step=step, phase=0, stage="joint", epoch=0, loss=float(step), paper={"x": 1.0}, note="text")
    writer.write("user_weights", step=4, all=Histogram.of(np.array([0.1, 0.2, 0.25, 0.9]), 4))
    writer.close()
    # a resumed run continues at step 3: TensorBoard drops what the first attempt logged from there
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=True)
    writer.resume_at(3)
    for step in (3, 4, 5):
        writer.write("train", step=step, phase=0, stage="joint", epoch=0, loss=10.0 * step)
    writer.close()
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    assert {"train/loss", "train/phase", "train/paper/x"} <= set(ea.Tags()["scalars"])
    assert not {"train/step", "train/epoch", "train/note", "train/stage"} & set(ea.Tags()["scalars"])
    assert [(e.step, e.value) for e in ea.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[4]["all"]["counts"] == [2.0, 1.0, 0.0, 1.0] and records[4]["all"]["n"] == 4.0
    assert math.isclose(records[4]["all"]["sum"], 1.45)


def test_step_lines_carry_elapsed_time_and_eta():
    """Off a terminal there is no bar: each step line says how long the run has taken and how
    long it still needs, from the steps done since the loop (re)started."""
    assert runlog.duration_text(7.4) == "7s" and runlog.duration_text(725) == "12m05s" and runlog.duration_text(11220) == "3h07m"
    # resumed at step 100, at step 150 of 300 after 50 s: 1 s per step, 150 steps to go
    assert runlog.eta_text(1000.0, 100, 150, 300, 1050.0) == "elapsed 50s, eta 2m30s"
    assert runlog.eta_text(1000.0, 100, 100, 300, 1000.0) == "elapsed 0s, eta ?"
    assert runlog.eta_text(0.0, 0, 300, 300, 90.0) == "elapsed 1m30s, eta 0s"


def test_window_means_count_only_the_steps_that_computed_each_loss():
    """A log window with recogniser-only (warm-up) steps averages L_R over the steps that had
    one, not over every step of the window (which read 0.11 for 0.44 before)."""
    import torch

    from atjt_dist.objective import Losses
    from atjt_dist.trainer_loop import WindowStats

    window = WindowStats(torch.device("cpu"))
    for _ in range(3):
        window.add(Losses(backward=torch.tensor(0.0), stats={"loss": torch.tensor(1.0), "loss_rec": torch.tensor(0.4)}), StepOutput(), None, 10)
    window.add(Losses(backward=torch.tensor(0.0), stats={"loss": torch.tensor(2.0), "loss_aux": torch.tensor(0.7)}), StepOutput(), None, 0)
    record = window.summary()
    assert record["loss_rec"] == pytest.approx(0.4) and record["loss_aux"] == pytest.approx(0.7)
    assert record["loss"] == pytest.approx(1.25)
