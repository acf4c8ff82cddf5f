"""The run directory and what a run writes into it.

    RUN_DIR/
      config.yaml      the resolved config (--config RUN_DIR/config.yaml repeats the run)
      metrics.jsonl    one JSON record per log interval, phase end and evaluation (plottable)
      metrics.json     the final test metrics: auc, hr@K, ndcg@K, paper_compat {...}, and
                       popularity {...}: the same of the popularity ranker (the bar to clear)
      weights.parquet  (runs with a recogniser) every training user's cross-fitted weight
                       P(clean), and its planted-noise ground truth where the dataset has one
      events.out.tfevents.*  TensorBoard's copy of the records (log.tensorboard)
      model/           the trained weights (torch.distributed.checkpoint, sharded tables)
      train.log        rank 0's log lines

Only rank 0 writes files; every rank agrees on the directory (rank 0 chooses, broadcasts).

metrics.jsonl is the source of truth; ``python -m atjt_dist.report RUN_DIR`` plots it. Its
records (``kind``):

- ``train``       per log interval: step, phase, stage, epoch, loss, loss_rec, loss_aux,
                  loss_extra, weight_mean, w_clean, w_noisy, recognizer_auc, samples_per_s,
                  lr, lr_recognizer (window means; absent keys do not apply to the method;
                  weight_mean is the mean weight P(clean)^atjt.weight_exponent the rows get)
- ``phase_end``   the step at which a phase (or a two-stage stage) ended
- ``weight_hist`` at a phase's end, histograms over [0, 1] of P(clean) in the phase's last
                  epoch (WeightHistograms): ``corrupted`` = the recogniser on its corrupted
                  batches, rows split into clean and corrupted; ``planted`` = P(clean) of the
                  recommender's sequences (their weight is its atjt.weight_exponent-th
                  power), split by the user's planted-noise ground truth (datasets with
                  noise.parquet)
- ``user_weights`` after training: the number of training users and histograms of their
                  cross-fitted weights, split by planted-noise ground truth (``all`` without
                  one); the weights themselves are in weights.parquet
- ``test``        the test metrics

A histogram is ``{"edges": [b + 1 floats], "counts": [b], "n", "sum", "sum_squares"}``.

TensorBoard (``log.tensorboard``, needs the ``viz`` extra) gets the same records from the same
``MetricsWriter.write`` call: every numeric field but step and epoch as the scalar
``<kind>/<field>`` (nested dicts as ``<kind>/<field>/<key>``), every histogram as a histogram,
at the record's step. So ``train/loss``, ``train/w_clean``, ``train/lr``, ``train/phase``,
``test/auc``, ``weight_hist/corrupted/noisy``, ``user_weights/clean``...
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from .collectives import broadcast_object

log = logging.getLogger("atjt_dist")


def choose_run_dir(requested: Optional[str], model: str, method: str) -> Path:
    """The run directory: ``requested`` or runs/<UTC time>-<model>-<method>; same on all ranks.

    Only a generated name is broadcast from rank 0 (a collective: every rank must call); a
    requested one is used as given, so a single rank may call it (S3Rec pre-training runs on
    rank 0 alone inside a multi-process reproduce)."""
    if requested:
        return Path(requested)
    path = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{model}-{method}")
    return Path(broadcast_object(path))


def setup_logging(run_dir: Optional[Path], is_main: bool, all_ranks: bool = False) -> None:
    """Log lines on rank 0 (stderr and RUN_DIR/train.log); other ranks only warnings."""
    level = logging.INFO if (is_main or all_ranks) else logging.WARNING
    # Our own logger, not the root one: libraries' INFO chatter stays out of the run log.
    root = logging.getLogger("atjt_dist")
    root.propagate = False
    for h in list(root.handlers):
        if getattr(h, "_atjt", False):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        h._atjt = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)


@dataclass
class Histogram:
    """Counts of values in fixed bins (``edges``: bins + 1 increasing floats), with the exact
    sum and sum of squares of the values (TensorBoard's histogram needs them)."""

    edges: list[float]
    counts: list[float]
    sum: float = 0.0
    sum_squares: float = 0.0

    @property
    def n(self) -> float:
        return float(sum(self.counts))

    def to_json(self) -> dict:
        return {"edges": self.edges, "counts": self.counts, "n": self.n, "sum": self.sum, "sum_squares": self.sum_squares}

    @classmethod
    def of(cls, values: np.ndarray, bins: int, lo: float = 0.0, hi: float = 1.0) -> "Histogram":
        """The histogram of ``values`` over ``bins`` equal bins of [lo, hi] (outliers clamp)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        edges = np.round(np.linspace(lo, hi, bins + 1), 12)  # 0.15, not 0.15000000000000002
        idx = np.clip(((v - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        counts = np.bincount(idx, minlength=bins).astype(np.float64)
        return cls(edges.tolist(), counts.tolist(), float(v.sum()), float(v @ v))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, Histogram):
        return _clean(value.to_json())
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def tensorboard_available() -> bool:
    """Whether the tensorboard package (the ``viz`` extra) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def use_tensorboard(setting: Optional[bool]) -> bool:
    """log.tensorboard resolved: null = whether TensorBoard is installed, else the setting."""
    return tensorboard_available() if setting is None else setting


_warned_no_tensorboard = False


def _tensorboard_writer(run_dir: Path, purge_step: Optional[int] = None):
    """A SummaryWriter on ``run_dir``, or None (warned once per process) without tensorboard."""
    global _warned_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch imports tensorboard lazily, here
        if not _warned_no_tensorboard:
            log.warning(
                "log.tensorboard is on but TensorBoard is not installed (%s): writing metrics.jsonl only; "
                "install it with `pip install 'atjt-dist[viz]'` or pass --log.tensorboard=false",
                exc,
            )
            _warned_no_tensorboard = True
        return None
    return SummaryWriter(log_dir=str(run_dir), flush_secs=30, purge_step=purge_step)


class MetricsWriter:
    """Appends JSON records to metrics.jsonl (rank 0 only; a no-op elsewhere), and with
    ``tensorboard`` the same records to TensorBoard event files in the run directory (see the
    module docstring for the tags)."""

    #: fields that place a record rather than measure something: never TensorBoard scalars
    _NOT_SCALARS = ("step", "epoch")

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None
        self._tb = _tensorboard_writer(run_dir) if (enabled and tensorboard) else None

    @property
    def tensorboard(self) -> bool:
        """Whether this writer also writes TensorBoard event files."""
        return self._tb is not None

    def resume_at(self, step: int) -> None:
        """A resumed run goes on from ``step``: TensorBoard hides what earlier attempts logged
        at steps >= ``step`` (as checkpoint.rewind_metrics cuts metrics.jsonl back)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = _tensorboard_writer(self.run_dir, purge_step=step)

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **_clean(fields)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._write_tensorboard(kind, fields, record["time"])

    def _write_tensorboard(self, kind: str, fields: dict, walltime: float) -> None:
        step = fields.get("step")
        step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None

        def emit(tag: str, value: Any) -> None:
            if isinstance(value, Histogram):
                self._histogram(tag, value, step, walltime)
            elif isinstance(value, dict):
                for key, sub in value.items():
                    emit(f"{tag}/{key}", sub)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._tb.add_scalar(tag, value, global_step=step, walltime=walltime)

        for key, value in fields.items():
            if key not in self._NOT_SCALARS:
                emit(f"{kind}/{key}", value)
        self._tb.flush()

    def _histogram(self, tag: str, h: Histogram, step: Optional[int], walltime: float) -> None:
        counts = np.asarray(h.counts, dtype=np.float64)
        if counts.sum() <= 0:
            return  # TensorBoard cannot show an empty histogram
        nonzero = np.flatnonzero(counts)
        # TensorBoard's buckets are given by their right limits: an empty first bucket ending at
        # edges[0] makes the first real bucket start there.
        self._tb.add_histogram_raw(
            tag,
            min=float(h.edges[nonzero[0]]),
            max=float(h.edges[nonzero[-1] + 1]),
            num=float(counts.sum()),
            sum=float(h.sum),
            sum_squares=float(h.sum_squares),
            bucket_limits=[float(e) for e in h.edges],
            bucket_counts=[0.0, *counts.tolist()],
            global_step=step,
            walltime=walltime,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


# --------------------------------------------------------------------------------------------
# Weight histograms
# --------------------------------------------------------------------------------------------


class WeightHistograms:
    """Histograms of the recogniser's P(clean) within one phase, accumulated on the device.

    Two families, each split in two (the record's keys):

    - ``corrupted``: the recogniser on its corrupted batches (``aux_logits``), rows split by
      their label into ``clean`` (label 1, left intact) and ``noisy`` (label 0, corrupted);
    - ``planted``: the weights w_i of the recommender's sequences (``weight_logits``), split by
      the planted-noise ground truth of the sequence's user (only with ``noise_users``).

    ``observe`` is called every step and counts the steps of each phase's last epoch (the
    trained state of the phase's recogniser) with one index_add on the device: no host sync, no
    collective. A run cut short by train.max_steps before a phase's last epoch has no
    histograms for that phase; a run resumed within a last epoch counts its steps since the
    resume. ``summary`` reduces over ranks (a collective: every rank calls it) and reads the
    counts; ``reset`` starts the next phase.
    """

    FAMILIES = (("corrupted", "clean"), ("corrupted", "noisy"), ("planted", "clean"), ("planted", "noisy"))

    def __init__(self, bins: int, epochs: int, device: torch.device, noise_users: Optional[torch.Tensor] = None) -> None:
        self.bins = bins
        self.last_epoch = epochs - 1
        self.device = device
        self.noise_users = noise_users
        # per family: bins counts, then the sum and the sum of squares of the values
        self.acc = torch.zeros(len(self.FAMILIES), bins + 2, dtype=torch.float64, device=device)

    def reset(self) -> None:
        self.acc.zero_()

    def observe(self, epoch: int, out, rec, aux) -> None:
        """Add one step's outputs (the joint module's objective.StepOutput and its batches) if
        ``epoch`` is the phase's last; one index_add on the device, no host sync."""
        if epoch != self.last_epoch:
            return
        probs, rows = [], []
        if out.aux_logits is not None and aux is not None:
            probs.append(torch.sigmoid(out.aux_logits.detach().float()))
            rows.append((aux.label < 0.5).long())  # label 1 = clean -> row 0, corrupted -> row 1
        if out.weight_logits is not None and rec is not None and self.noise_users is not None:
            w = torch.sigmoid(out.weight_logits.detach().float())
            probs.append(w)
            users = rec.user[: w.numel()]  # the sequences' positives come first (or are all rows)
            rows.append(2 + self.noise_users[users].long())  # clean user -> row 2, noisy -> row 3
        if not probs:
            return
        p = torch.cat(probs).double()
        base = torch.cat(rows) * (self.bins + 2)
        col = (p * self.bins).long().clamp_(0, self.bins - 1)
        index = torch.cat([base + col, base + self.bins, base + self.bins + 1])
        self.acc.view(-1).index_add_(0, index, torch.cat([torch.ones_like(p), p, p * p]))

    def summary(self) -> dict:
        """``{"corrupted": {"clean": Histogram, "noisy": Histogram}, "planted": {...}}`` with
        the families that saw any value on any rank (a collective)."""
        from .collectives import global_sum

        acc = global_sum(self.acc).cpu().numpy()
        edges = np.round(np.linspace(0.0, 1.0, self.bins + 1), 12).tolist()
        out: dict = {}
        for f in range(0, len(self.FAMILIES), 2):
            if acc[f : f + 2, : self.bins].sum() == 0:
                continue
            family = self.FAMILIES[f][0]
            out[family] = {self.FAMILIES[g][1]: Histogram(edges, acc[g, : self.bins].tolist(), float(acc[g, -2]), float(acc[g, -1])) for g in (f, f + 1)}
        return out


def record_user_weights(
    writer: MetricsWriter,
    run_dir: Path,
    step: int,
    users: torch.Tensor,
    weights: torch.Tensor,
    noise_users: Optional[np.ndarray],
    bins: int,
) -> None:
    """Write the training users' cross-fitted weights: RUN_DIR/weights.parquet (user, weight,
    and ``noisy`` with planted-noise ground truth) and a ``user_weights`` histogram record.

    ``users`` and ``weights`` are this rank's share (Trainer.score_training_users); a
    collective: every rank calls it, rank 0 (``writer.enabled``) writes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    mine = (users.detach().cpu().numpy().astype(np.int64), weights.detach().float().cpu().numpy())
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts: Optional[list] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(mine, parts, dst=0)  # once per run; fine for millions of users
    else:
        parts = [mine]
    if not writer.enabled or parts is None:
        return
    u = np.concatenate([p[0] for p in parts])
    w = np.concatenate([p[1] for p in parts])
    order = np.argsort(u, kind="stable")
    u, w = u[order], w[order]
    columns = {"user": pa.array(u.astype(np.int32)), "weight": pa.array(w.astype(np.float32))}
    if noise_users is not None:
        noisy = np.asarray(noise_users, dtype=bool)[u]
        columns["noisy"] = pa.array(noisy)
        hists = {"clean": Histogram.of(w[~noisy], bins), "noisy": Histogram.of(w[noisy], bins)}
    else:
        hists = {"all": Histogram.of(w, bins)}
    path = run_dir / "weights.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, path)
    writer.write("user_weights", step=step, users=len(u), **hists)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a reader never sees a half-written file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    os.replace(tmp, path)


def duration_text(seconds: float) -> str:
    """'45s', '12m05s' or '3h07m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_text(start_time: float, start_step: int, step: int, total: int, now: float) -> str:
    """'elapsed X, eta Y' of a loop that was at ``start_step`` at ``start_time`` and is at ``step``
    of ``total`` at ``now`` (the step lines' progress where no terminal shows a bar)."""
    elapsed = now - start_time
    done = step - start_step
    eta = elapsed / done * (total - step) if done > 0 else float("nan")
    return f"elapsed {duration_text(elapsed)}, eta {duration_text(eta) if eta == eta else '?'}"


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on rank 0 when stderr is a terminal; otherwise None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def _table_cell(value: Any) -> str:
    """A metric for the table: 4 decimals, or – when undefined (NaN, or null in metrics.json)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metrics_table(rows: dict[str, dict], k: int) -> str:
    """A Markdown table of test metrics, one row per run (standard and paper_compat).

    A run whose metrics carry ``popularity`` (Trainer.evaluate: the popularity ranker on the
    same test candidates) gets a ``popularity`` row right under its own, so the bar a model must
    clear is read beside it. Undefined values (the ranker's paper HR) show as –.
    """
    head = f"| run | AUC | HR@{k} | NDCG@{k} | HR@{k} (paper) | NDCG@{k} (paper) |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def row(name: str, m: dict) -> str:
        pc = m.get("paper_compat", {})
        cells = [m.get("auc"), m.get(f"hr@{k}"), m.get(f"ndcg@{k}"), pc.get(f"hr@{k}"), pc.get(f"ndcg@{k}")]
        return f"| {name} | " + " | ".join(_table_cell(c) for c in cells) + " |"

    for name, m in rows.items():
        lines.append(row(name, m))
        if isinstance(m.get("popularity"), dict):
            lines.append(row("popularity", m["popularity"]))
    return "\n".join(lines) + "\n"


def popularity_warning(metrics: dict) -> Optional[str]:
    """A one-line warning when the model's test AUC is not above the popularity ranker's (the
    model learnt no more than item counts: usually too few steps or too low a learning rate),
    else None. None also when the metrics have no popularity entry or its AUC is undefined."""
    pop = metrics.get("popularity")
    pop_auc = pop.get("auc") if isinstance(pop, dict) else None
    if pop_auc is None or math.isnan(pop_auc):
        return None
    auc = metrics.get("auc")
    if auc is not None and auc > pop_auc:  # a NaN model AUC is not above it either
        return None
    return (
        f"the model's test AUC {_table_cell(auc)} is not above the popularity ranker's {pop_auc:.4f} "
        "(items ranked by their training interaction counts): train longer (more train.epochs, "
        "no train.max_steps cap) or with a higher train.lr before reading its metrics"
    )
