"""The Trainer: builds a run from a Config, trains it step by step, evaluates it.

    trainer = Trainer(cfg)          # process group, data, model (sharded), optimisers
    trainer.train()                 # the schedule of schedule.Schedule, logging on rank 0
    metrics = trainer.evaluate()    # exact test metrics over the stored candidates
    trainer.close()

``run_training(cfg)`` does all of that (and turns a dead peer into one clear error); every
command (train, compare, reproduce, audit) runs its trainings through it.

This module sets a run up (process group, data, model, optimisers, checkpoints and resume,
fault watching) and closes it; the loop is trainer_loop.TrainingLoop, the evaluation
trainer_eval.Evaluation, both parts of :class:`Trainer`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import Checkpoints, rewind_metrics
from .config import Config, ConfigError, dump_yaml
from .data.dataset import TrainingData
from .data.layout import dataset_fingerprint
from .distributed import DistContext, init_distributed, load_full_state, shard_model, shutdown
from .faults import FaultHooks, LossMonitor, NonFiniteLossError, elastic_restart_count, leave_broken_group, peer_failure
from .host_memory import reuse_freed_host_memory
from .joint import JointModel
from .models import ModelSpec
from .objective import Losses, build_objective, objective_name
from .optim import build_optimizers
from .runlog import MetricsWriter, choose_run_dir, setup_logging, use_tensorboard, write_json
from .schedule import Schedule, StepPlan
from .trainer_eval import Evaluation
from .trainer_loop import TrainingLoop

log = logging.getLogger("atjt_dist")


def method_name(cfg: Config) -> str:
    """A short name of the training method, for run names and tables."""
    name = objective_name(cfg)
    if name == "bce":
        return "base"
    if name == "atjt" and cfg.atjt.variant != "joint":
        return f"atjt-{cfg.atjt.variant}"
    return name


def resolve_data_path(cfg: Config, ctx: DistContext) -> Path:
    """cfg.data.path, or the embedded synthetic dataset (generated once, then cached)."""
    if cfg.data.path:
        return Path(cfg.data.path)
    from .data.synthetic import ensure_dataset

    return ensure_dataset(cfg.data.synthetic)


class Trainer(TrainingLoop, Evaluation):
    """A run: setup in __init__, then train() (TrainingLoop), evaluate() (Evaluation), close()."""

    def __init__(self, cfg: Config, ctx: Optional[DistContext] = None) -> None:
        self.cfg = cfg
        # A caller that runs several trainers (compare) passes its context and keeps the group.
        self.ctx = ctx if ctx is not None else init_distributed(cfg.dist)
        if cfg.dist.reuse_host_memory:  # before the data and the model allocate anything large
            reuse_freed_host_memory()
        self._owns_ctx = ctx is None
        self.method = method_name(cfg)
        self.run_dir = choose_run_dir(cfg.run_dir, cfg.model.name, self.method)
        setup_logging(self.run_dir, self.ctx.is_main)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(cfg, self.run_dir / "config.yaml")
        self.metrics_log = MetricsWriter(self.run_dir, enabled=self.ctx.is_main, tensorboard=use_tensorboard(cfg.log.tensorboard))
        if cfg.train.batch_size % self.ctx.world or cfg.atjt.recognizer_batch_size % self.ctx.world:
            raise ConfigError(
                f"config keys 'train.batch_size' ({cfg.train.batch_size}) and 'atjt.recognizer_batch_size' "
                f"({cfg.atjt.recognizer_batch_size}) are global batches and must be multiples of the "
                f"{self.ctx.world} processes; change them or the number of processes"
            )

        data_path = resolve_data_path(cfg, self.ctx)
        self.data = TrainingData.from_config(data_path, cfg, rank=self.ctx.rank, world=self.ctx.world)
        self.schedule = Schedule(self.data, cfg)
        self.objective = build_objective(cfg)
        meta = self.data.meta
        self.spec = ModelSpec(meta["num_users"], meta["num_items"], meta["num_categories"], cfg.data.history_length)
        noise = self.data.arrays.noise_users
        self.noise_users = torch.from_numpy(noise).to(self.ctx.device) if noise is not None else None

        # Same seed on every rank -> the same unsharded initial weights everywhere.
        torch.manual_seed(cfg.seed)
        model = JointModel(self.spec, cfg)
        full_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.recommender.apply_pretrained(full_state, cfg, self.data)  # e.g. S3Rec's pre-training
        # Sharding and the optimisers' setup draw from the global generator (TorchRec's table
        # initialisation, first-use setup), and not the same number of times in the first trainer
        # of a process as in later ones (compare, reproduce, audit run several). The weights come
        # from full_state anyway, so the generator is kept out of it: training (the dropout masks)
        # starts from the same state in every trainer of the same config and seed.
        with torch.random.fork_rng(devices=[self.ctx.device] if self.ctx.device.type == "cuda" else []):
            self.dense_optimizer_factory = build_optimizers(model, cfg)  # fused sparse optimisers are attached here
            self.model, self.plan = shard_model(model, self.ctx, cfg.dist)
            load_full_state(self.model, full_state)
            # The dense backend (optim.DenseBackend: DDP + torch Adagrad, or a DeepSpeed engine):
            # forward, backward, step, zero_grad, state_dict.
            self.dense_optimizer = self.dense_optimizer_factory(self.model, self.ctx)
        self.step = 0
        if self.ctx.is_main:
            log.info("run directory %s", self.run_dir)
            log.info(
                "data %s: %d users (%d train, %d test), %d items, %d categories; %d processes on %s",
                data_path,
                meta["num_users"],
                len(self.data.train_users),
                len(self.data.test_users),
                meta["num_items"],
                meta["num_categories"],
                self.ctx.world,
                self.ctx.device,
            )
            log.info("sharding plan:\n%s", self.plan)
            log.info(
                "%s: %d phases x %d epochs, %d steps; %d samples dropped as incomplete last batches; recommender lr %g, weight decay %g",
                self.method,
                len(self.schedule.phases),
                cfg.train.epochs,
                self.total_steps(),
                self.schedule.dropped_samples,
                cfg.train.lr,
                cfg.recommender_weight_decay(),
            )
        self._init_checkpoints()

    # -- outputs ------------------------------------------------------------------------------

    def save_weights(self) -> Path:
        """The trained weights as a torch.distributed.checkpoint directory (sharded tables)."""
        import torch.distributed.checkpoint as dcp

        path = self.run_dir / "model"
        dcp.save(self.model.state_dict(), checkpoint_id=str(path))
        return path

    def finish(self, metrics: dict) -> None:
        """Write metrics.json and the weights."""
        self.save_weights()
        if self.ctx.is_main:
            write_json(self.run_dir / "metrics.json", {**metrics, "method": self.method, "model": self.cfg.model.name, "steps": self.step})

    def close(self) -> None:
        """Release the model and the process group (in that order: see distributed.shutdown)."""
        self.metrics_log.close()
        self.model = None
        self.dense_optimizer = None
        if self._owns_ctx:
            if getattr(self, "_peer_failed", False):
                leave_broken_group()  # no closing barrier: a peer is gone
            else:
                shutdown(self.ctx)

    # -- checkpoints and faults (atjt_dist/checkpoint.py, atjt_dist/faults.py) ----------------

    def _init_checkpoints(self) -> None:
        """Set up checkpoints and fault watching, and resume when asked to (--resume) or when
        torchrun restarted the workers: from the run directory's newest undamaged checkpoint."""

        self.hooks = FaultHooks.from_env()
        self.loss_monitor = LossMonitor(self.ctx.device)
        self._peer_failed = False
        self._saved_step: Optional[int] = None
        self.checkpoints = Checkpoints(self.run_dir, self.cfg, self.ctx.device, dataset_fingerprint(self.data.arrays), self.hooks)
        restarts = elastic_restart_count()
        if not (self.cfg.resume or restarts):
            existing = self.checkpoints.committed()
            if existing:
                raise ConfigError(
                    f"run directory {self.run_dir} already holds checkpoints (newest: {existing[0].name}); "
                    "pass --resume to continue that run, or choose another --run-dir"
                )
            return
        if restarts and not self.cfg.run_dir and self.ctx.is_main:
            log.warning(
                "torchrun restarted the workers (restart %d) without --run-dir: this attempt writes a new run "
                "directory and starts from scratch; give --run-dir to resume restarted runs",
                restarts,
            )
        found = self.checkpoints.find_resumable()
        if found is None:
            if self.ctx.is_main:
                log.info("resume: no usable checkpoint in %s; starting from scratch", self.checkpoints.root)
            return
        path, record = found
        dense = self.dense_optimizer  # the dense backend: checkpoint.dense_optimizer_state reads it
        self.checkpoints.check_compatible(path, record, dense)
        self.checkpoints.load(path, record, self.model, dense, self.cfg.seed)
        self.step = self._saved_step = int(record["step"])
        if self.ctx.is_main:
            rewind_metrics(self.metrics_log.path, record.get("metrics_jsonl_bytes"))
            log.info(
                "resumed from %s: step %d/%d (phase %s, epoch %s), saved by %d process(es), now %d%s",
                path,
                self.step,
                self.total_steps(),
                record.get("phase"),
                record.get("epoch"),
                record["world_size"],
                self.ctx.world,
                "" if record["world_size"] == self.ctx.world else " (tables resharded)",
            )

    def _checkpoint_due(self, total: int) -> bool:
        """A checkpoint every checkpoint.every steps; the one at the end is saved after the loop."""
        every = self.cfg.checkpoint.every
        return every > 0 and self.step % every == 0 and self.step != total

    def save_checkpoint(self, plan: StepPlan) -> Path:
        """Checkpoint the state after ``self.step`` steps (``plan``: the last step), atomically;
        raises NonFiniteLossError instead if a loss was not finite since the last check."""
        self._check_finite()
        metrics_path = self.metrics_log.path
        info = {
            "total_steps": self.total_steps(),
            "phase": plan.phase,
            "stage": plan.stage,
            "epoch": plan.epoch,
            "metrics_jsonl_bytes": metrics_path.stat().st_size if metrics_path.is_file() else None,
        }
        path = self.checkpoints.save(self.step, self.model, self.dense_optimizer, info)
        self._saved_step = self.step
        return path

    def _watch_losses(self, losses: Losses) -> None:
        """Note on the device whether this step's losses were finite (no host sync)."""
        self.hooks.poison(self.step, losses.stats)
        self.loss_monitor.observe(self.step - 1, losses.stats)

    def _check_finite(self) -> None:
        """Raise NonFiniteLossError naming the first step whose losses were not finite (a
        collective: called at log lines and checkpoints, on every rank)."""
        found = self.loss_monitor.first_bad()
        if found is None:
            return
        step, bad = found
        plan = next(p for p in self.schedule.steps() if p.step == step)
        good = self.checkpoints.committed()
        raise NonFiniteLossError(
            f"non-finite {' and '.join(bad)} at step {step + 1}/{self.total_steps()} (phase {plan.phase}, "
            f"{plan.stage}, epoch {plan.epoch}): {', '.join(f'{k}={v}' for k, v in bad.items())}; lower the "
            f"learning rates or atjt.aux_weight. Nothing was saved after it; the last good checkpoint is "
            f"{good[0] if good else 'none'}"
        )

    @contextlib.contextmanager
    def fault_guard(self):
        """Turn a failed collective (a peer died or stopped responding) into a one-line
        PeerFailureError, and make close() skip the closing barrier."""
        try:
            yield
        except Exception as exc:
            failure = peer_failure(exc, self.step, self.cfg.dist.timeout_s)
            if failure is None:
                raise
            self._peer_failed = True
            log.error("%s", failure)
            raise failure from exc


def run_training(cfg: Config, ctx: Optional[DistContext] = None, inspect=None) -> tuple[Trainer, dict]:
    """One whole run, as every command runs it: set up, train, evaluate, finish, close.

    Returns the (closed) trainer and its test metrics, with ``seconds``: the run's wall time
    from setup to finish. ``inspect(trainer, metrics)``, when given, is called after the
    evaluation while the model is still loaded (the audit reads the recogniser's scores there);
    keys it adds to ``metrics`` are written to metrics.json. A failed collective (a peer died or
    hung) becomes one clear PeerFailureError instead of a hang, as in ``python -m atjt_dist.train``.
    """
    started = time.time()
    trainer = Trainer(cfg, ctx=ctx)
    try:
        with trainer.fault_guard():
            trainer.train()
            metrics = trainer.evaluate()
            if inspect is not None:
                inspect(trainer, metrics)
            metrics["seconds"] = time.time() - started
            trainer.finish(metrics)
    finally:
        trainer.close()
    return trainer, metrics


__all__ = ["NonFiniteLossError", "Trainer", "method_name", "resolve_data_path", "run_training"]
