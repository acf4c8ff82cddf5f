"""The run directory and what a run writes into it.

    RUN_DIR/
      config.yaml      the resolved config (--config RUN_DIR/config.yaml repeats the run)
      metrics.jsonl    one JSON record per log interval, phase end and evaluation (plottable)
      metrics.json     the final test metrics: auc, hr@K, ndcg@K, paper_compat {...}
      model/           the trained weights (torch.distributed.checkpoint, sharded tables)
      train.log        rank 0's log lines

Only rank 0 writes files; every rank agrees on the directory (rank 0 chooses, broadcasts).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

log = logging.getLogger("atjt_dist")


def choose_run_dir(requested: Optional[str], model: str, method: str) -> Path:
    """The run directory: ``requested`` or runs/<UTC time>-<model>-<method>; same on all ranks."""
    if requested:
        path = requested
    else:
        path = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{model}-{method}")
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [path]
        dist.broadcast_object_list(box, src=0)
        path = box[0]
    return Path(path)


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


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class MetricsWriter:
    """Appends JSON records to metrics.jsonl (rank 0 only; a no-op elsewhere)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **_clean(fields)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a reader never sees a half-written file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    os.replace(tmp, path)


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on rank 0 when stderr is a terminal; otherwise None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def metrics_table(rows: dict[str, dict], k: int) -> str:
    """A Markdown table of test metrics, one row per run (standard and paper_compat)."""
    head = f"| run | AUC | HR@{k} | NDCG@{k} | HR@{k} (paper) | NDCG@{k} (paper) |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in rows.items():
        pc = m.get("paper_compat", {})
        lines.append(
            f"| {name} | {m['auc']:.4f} | {m[f'hr@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | "
            f"{pc.get(f'hr@{k}', float('nan')):.4f} | {pc.get(f'ndcg@{k}', float('nan')):.4f} |"
        )
    return "\n".join(lines) + "\n"
