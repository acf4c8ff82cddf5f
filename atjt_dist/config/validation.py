"""Cross-field checks of a whole config, run once every key is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .run_sections import Config


def validate(cfg: Config) -> None:
    """Cross-field checks that a type cannot express."""
    positive = {
        "data.history_length": cfg.data.history_length,
        "train.batch_size": cfg.train.batch_size,
        "train.epochs": cfg.train.epochs,
        "train.log_every": cfg.train.log_every,
        "atjt.num_parts": cfg.atjt.num_parts,
        "atjt.replace_count": cfg.atjt.replace_count,
        "atjt.recognizer_batch_size": cfg.atjt.recognizer_batch_size,
        "atjt.recognizer_batches_per_step": cfg.atjt.recognizer_batches_per_step,
        "model.embedding_dim": cfg.model.embedding_dim,
        "eval.k": cfg.eval.k,
        "eval.batch_users": cfg.eval.batch_users,
        "log.weight_hist_bins": cfg.log.weight_hist_bins,
        "objective.loss_triton_min_rows": cfg.objective.loss_triton_min_rows,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if cfg.objective.name == "atjt" and not cfg.atjt.enabled:
        raise ConfigError("objective.name=atjt contradicts atjt.enabled=false; set one of them")
    if not 0.0 <= cfg.objective.tce_max_drop < 1.0:
        raise ConfigError(f"config key 'objective.tce_max_drop' must be in [0, 1), got {cfg.objective.tce_max_drop}")
    if cfg.objective.tce_ramp_steps < 0 or cfg.objective.rce_beta < 0 or cfg.objective.tce_exponent <= 0:
        raise ConfigError("config keys 'objective.tce_ramp_steps' and 'objective.rce_beta' must be >= 0, 'objective.tce_exponent' > 0")
    if cfg.atjt.enabled and cfg.objective.name in ("auto", "atjt") and cfg.atjt.num_parts < 2:
        raise ConfigError("config key 'atjt.num_parts' must be >= 2 with ATJT on (cross-fitting needs another part)")
    if not cfg.atjt.weight_exponent > 0.0:
        raise ConfigError(f"config key 'atjt.weight_exponent' must be > 0, got {cfg.atjt.weight_exponent}")
    if not 0.0 < cfg.atjt.noise_fraction < 1.0:
        raise ConfigError(f"config key 'atjt.noise_fraction' must be in (0, 1), got {cfg.atjt.noise_fraction}")
    if not cfg.atjt.recognizer_lrs:
        raise ConfigError("config key 'atjt.recognizer_lrs' needs at least one learning rate")
    if cfg.train.lr < 0 or any(lr < 0 for lr in cfg.atjt.recognizer_lrs):  # 0 = frozen (a probe)
        raise ConfigError(f"config keys 'train.lr' and 'atjt.recognizer_lrs' must be >= 0, got {cfg.train.lr} and {cfg.atjt.recognizer_lrs}")
    for key, value in (("train.weight_decay", cfg.recommender_weight_decay()), ("atjt.recognizer_weight_decay", cfg.atjt.recognizer_weight_decay)):
        if value < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value}")
    if not 0.0 <= cfg.train.lr_decay_start < 1.0:
        raise ConfigError(f"config key 'train.lr_decay_start' must be in [0, 1), got {cfg.train.lr_decay_start}")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ConfigError(f"config key 'train.max_steps' must be >= 1 or null, got {cfg.train.max_steps}")
    if cfg.checkpoint.every < 0:
        raise ConfigError(f"config key 'checkpoint.every' must be >= 0 (0 = only at the end), got {cfg.checkpoint.every}")
    if cfg.atjt.recognizer_warmup_steps < 0:
        raise ConfigError(f"config key 'atjt.recognizer_warmup_steps' must be >= 0, got {cfg.atjt.recognizer_warmup_steps}")
    if cfg.eval.population_stats_batches < 0:
        raise ConfigError(f"config key 'eval.population_stats_batches' must be >= 0 (0 = running averages), got {cfg.eval.population_stats_batches}")
    if cfg.checkpoint.keep < 1:
        raise ConfigError(f"config key 'checkpoint.keep' must be >= 1, got {cfg.checkpoint.keep}")
    if cfg.resume and not cfg.run_dir:
        raise ConfigError("--resume continues the run in --run-dir: give the run directory to resume")
    for key, value in {"model.dropout": cfg.model.dropout, "atjt.recognizer.dropout": cfg.atjt.recognizer.dropout}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {value}")
    cfg.data.synthetic.check()
    cfg.atjt.recognizer.check()
    for section in (cfg.model.dcn, cfg.model.wide_deep, cfg.model.sasrec, cfg.model.fearec, cfg.model.s3rec):
        section.check()
    cfg.dist.check()
