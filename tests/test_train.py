"""End-to-end runs of the entry points: one process, two processes (torchrun), compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runs import SHORT_RUN, clean_env, run_ok, torchrun

# The mechanics tests run without the recogniser's dropout; RECOGNIZER_DROPOUT_ON turns it back
# on (test_two_processes_match_one_process_with_dropout).
SMALL = [*SHORT_RUN, "--atjt.recognizer.dropout=0"]
RECOGNIZER_DROPOUT_ON = SHORT_RUN


def _train_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line]


@pytest.mark.slow
def test_one_process_run_writes_its_run_directory(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    proc = run_ok([sys.executable, "-m", "atjt_dist.train", f"--data.path={tiny_dataset}", f"--run-dir={run}", *SMALL], tmp_path)
    assert "| din atjt |" in proc.stdout  # the metrics table
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("auc", "hr@5", "ndcg@5"):
        assert 0.0 <= metrics[key] <= 1.0
        assert 0.0 <= metrics["paper_compat"][key] <= 1.0
    assert metrics["users"] == 120  # the tiny dataset's fold 0
    assert metrics["auc"] > 0.6  # the tiny data is learnable: well above chance
    records = _train_records(run)
    assert records and all({"loss", "loss_rec", "loss_aux", "w_clean", "w_noisy", "recognizer_auc"} <= set(r) for r in records)
    assert (run / "config.yaml").is_file() and (run / "model" / ".metadata").is_file()
    assert "--train.epochs" not in (run / "config.yaml").read_text() and "epochs: 2" in (run / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process(tiny_dataset, tmp_path):
    """The same global batches on 1 and 2 processes give the same losses and metrics.

    Every loss and statistic is reduced over the global batch (sums and counts) and every
    random draw is keyed by the global row, so the runs differ only by floating-point
    summation order: we allow 1e-5 relative (observed differences are ~1e-8).
    """
    _one_and_two_processes_agree(tmp_path, [f"--data.path={tiny_dataset}", *SMALL], paper_compat=True)


def _one_and_two_processes_agree(tmp_path: Path, common: list[str], paper_compat: bool = False) -> tuple[Path, Path]:
    """Train ``common`` on 1 process and under torchrun on 2; assert the step records and the
    test metrics agree up to summation order; return the two run directories."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok([sys.executable, "-m", "atjt_dist.train", f"--run-dir={one}", *common], tmp_path)
    run_ok(
        [*torchrun(2), f"--run-dir={two}", *common],
        tmp_path,
    )
    r1, r2 = _train_records(one), _train_records(two)
    assert len(r1) == len(r2) > 2
    for a, b in zip(r1, r2):
        assert a["step"] == b["step"]
        for key in ("loss", "loss_rec", "loss_aux", "w_clean", "w_noisy", "recognizer_auc"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    for key in ("auc", "hr@5", "ndcg@5"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6)
        if paper_compat:
            assert m2["paper_compat"][key] == pytest.approx(m1["paper_compat"][key], rel=1e-5, abs=1e-6)
    return one, two


def _weights(model_dir: Path) -> dict:
    """Every tensor of a saved model (a torch.distributed.checkpoint directory), unsharded."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.pt"
        dcp_to_torch_save(model_dir, target)
        tree = torch.load(target, weights_only=False)
    return {k: v for k, v in tree.items() if torch.is_tensor(v)}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process_with_dropout(tiny_dataset, tmp_path):
    """ATJT with the recogniser's dropout on (0.5, the default): 1 and 2 processes train the same
    model. Each mask is keyed by (seed, step, layer, call, global row, element), so the runs
    differ only by summation order: losses within 1e-5 relative (observed ~1e-7), the same test
    metrics, every final weight within 1e-4 relative L2 (observed <= 3e-6; DIN's softmax
    attention has no score bias, whose gradient would be rounding noise alone: layers.py).
    """
    one, two = _one_and_two_processes_agree(tmp_path, [f"--data.path={tiny_dataset}", *RECOGNIZER_DROPOUT_ON])
    w1, w2 = _weights(one / "model"), _weights(two / "model")
    assert set(w1) == set(w2) and any(".attention.mlp." in k and k.startswith("recognizers.") for k in w1)
    for key, x in w1.items():
        x, y = x.double(), w2[key].double()
        assert (x - y).norm() <= 1e-4 * x.norm(), (key, ((x - y).norm() / x.norm()).item())


@pytest.mark.slow
def test_compare_runs_both_methods_on_the_same_data(tiny_dataset, tmp_path):
    out = tmp_path / "cmp"
    proc = run_ok([sys.executable, "-m", "atjt_dist.compare", f"--data.path={tiny_dataset}", f"--run-dir={out}", *SMALL, "--train.epochs=1"], tmp_path)
    table = (out / "compare.md").read_text()
    assert "| base |" in table and "| atjt |" in table
    assert "| base |" in proc.stdout
    data = json.loads((out / "compare.json").read_text())
    assert set(data["runs"]) == {"base", "atjt"}
    base, atjt = data["runs"]["base"]["42"], data["runs"]["atjt"]["42"]
    assert base["method"] == "base" and atjt["method"] == "atjt"
    assert base["users"] == atjt["users"] == 120


@pytest.mark.slow
def test_a_run_inside_compare_equals_the_same_run_alone(tiny_dataset, tmp_path):
    # compare trains base, then ATJT, in one process; the ATJT run must not depend on what ran
    # before it (TorchRec's first-use setup draws from the global generator; the dropout masks,
    # keyed by step and row, draw from none).
    # Recogniser dropout stays on (the default), so its masks are part of what must agree.
    args = [f"--data.path={tiny_dataset}", *RECOGNIZER_DROPOUT_ON, "--train.epochs=1"]
    run_ok([sys.executable, "-m", "atjt_dist.compare", f"--run-dir={tmp_path / 'cmp'}", *args], tmp_path)
    run_ok([sys.executable, "-m", "atjt_dist.train", f"--run-dir={tmp_path / 'alone'}", *args], tmp_path)
    inside, alone = _train_records(tmp_path / "cmp" / "atjt-seed42"), _train_records(tmp_path / "alone")
    keys = ("loss", "loss_rec", "loss_aux", "w_clean", "w_noisy", "recognizer_auc")
    assert [r["step"] for r in inside] == [r["step"] for r in alone] and inside
    assert [[r[k] for k in keys] for r in inside] == [[r[k] for k in keys] for r in alone]
    m_inside, m_alone = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "cmp" / "atjt-seed42", tmp_path / "alone"))
    assert all(m_inside[k] == m_alone[k] for k in ("auc", "hr@5", "ndcg@5"))


def test_a_batch_larger_than_a_phase_is_a_config_error(tiny_dataset, tmp_path):
    """A schedule the data cannot fill is a user error naming the key, not a traceback."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "atjt_dist.train", f"--data.path={tiny_dataset}", f"--run-dir={run}", "--train.batch_size=100000"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.batch_size=100000" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "metrics.json").exists()
