"""Train a base model with or without ATJT:  python -m atjt_dist.train [--config FILE] [--k=v ...]

With no arguments: the embedded default (synthetic data with planted noise, DIN, ATJT on).
Under torchrun every process runs this same entry point; rank 0 prints and writes.

The printed table has the model's row and, under it, the popularity ranker's on the same test
candidates (on data with planted noise, a line on what the ATJT weights found follows it); a
model whose AUC is not above the ranker's gets one warning line (stderr and train.log), since
its other numbers then say little.
"""

from __future__ import annotations

import logging
import sys

from .cli import run_cli
from .config import build_config


def _main(argv: list[str]) -> int:
    # imported here, not at the top: --help (run_cli) answers without loading torch
    from .runlog import metrics_table, popularity_warning
    from .trainer import run_training

    cfg = build_config(argv)
    # Resumes from RUN_DIR/checkpoints with --resume or under a torchrun restart; a dead peer
    # gives one line and a non-zero exit, not a hang.
    trainer, metrics = run_training(cfg)
    if trainer.ctx.is_main:
        print(metrics_table({f"{cfg.model.name} {trainer.method}": metrics}, cfg.eval.k))
        if "noise_weight_auc" in metrics:  # data with planted noise: what the weights found
            print(
                f"sequence weights of the training users: planted-noise AUC {metrics['noise_weight_auc']:.4f}; "
                f"mean P(clean) {metrics['mean_weight_clean_users']:.4f} for clean users, "
                f"{metrics['mean_weight_noisy_users']:.4f} for planted-noise users (rows weighted P(clean)^{cfg.atjt.weight_exponent:g})"
            )
        warning = popularity_warning(metrics)
        if warning:
            logging.getLogger("atjt_dist").warning("%s", warning)
        print(f"run directory: {trainer.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point (atjt-train)."""
    return run_cli(_main, argv, "python -m atjt_dist.train", __doc__)


if __name__ == "__main__":
    sys.exit(main())
