"""The Trainer: builds a run from a Config, trains it step by step, evaluates it.

    trainer = Trainer(cfg)          # process group, data, model (sharded), optimisers
    trainer.train()                 # the schedule of schedule.Schedule, logging on rank 0
    metrics = trainer.evaluate()    # exact test metrics over the stored candidates
    trainer.close()

``run_training(cfg)`` does all of that (and turns a dead peer into one clear error); every
command (train, compare, reproduce, audit) runs its trainings through it.

One training step (``train_step``): build this rank's rows of the step's batches, one forward of
the joint module, the joint objective, one backward (the embedding tables' optimiser runs fused
inside it), one dense optimiser step. Statistics stay on the device and are read every
``train.log_every`` steps, so the step itself never waits for the host.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import Checkpoints, rewind_metrics
from .collectives import global_sum
from .config import Config, ConfigError, dump_yaml
from .data.dataset import TrainingData
from .distributed import DistContext, init_distributed, load_full_state, shard_model, shutdown
from .faults import FaultHooks, LossMonitor, NonFiniteLossError, elastic_restart_count, leave_broken_group, peer_failure
from .joint import JointModel
from .metrics import CandidateMetrics, gather_binary_auc, popularity_result, popularity_scores, training_popularity
from .models import ModelSpec, SequentialRecommender
from .models.batch import SequenceBatch
from .models.layers import dice_layers, dropout_rows, dropout_step, population_statistics
from .objective import Losses, compute_losses, objective_name
from .optim import build_optimizers, learning_rate, lr_decay_factor, set_recommender_lr
from .prefetch import prefetch_plans, step_batches
from .runlog import MetricsWriter, WeightHistograms, choose_run_dir, eta_text, progress_bar, record_user_weights, setup_logging, use_tensorboard, write_json
from .schedule import RECOGNIZER_ONLY, Schedule, StepPlan

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


class _WindowStats:
    """The step statistics since the last log line.

    Each step's ``Losses.stats`` are this rank's shares of global sums; they are added up on the
    device and reduced across ranks once per log line, so steps never wait for the host.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.rows = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # steps that reported each statistic
        self.aux_scores: list[torch.Tensor] = []
        self.aux_labels: list[torch.Tensor] = []
        self.started = time.perf_counter()

    def add(self, losses: Losses, out: dict, aux: Optional[SequenceBatch], global_rows: int) -> None:
        self.steps += 1
        self.rows += global_rows
        for key, value in losses.stats.items():
            value = value.detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1
        if "aux_logits" in out and aux is not None:
            self.aux_scores.append(out["aux_logits"].detach().float())
            self.aux_labels.append(aux.label)

    def summary(self) -> dict:
        """Window means of the losses and weights (a collective: every rank calls it)."""
        keys = sorted(self.sums)
        totals = dict(zip(keys, global_sum(torch.stack([self.sums[k] for k in keys])).tolist())) if keys else {}
        elapsed = time.perf_counter() - self.started
        record = {"samples_per_s": self.rows / elapsed if elapsed > 0 else float("nan")}
        for key in ("loss", "loss_rec", "loss_aux", "loss_extra", "dropped"):
            if key in totals:  # the mean over the steps that computed it (a warm-up step has no L_R)
                record[key] = totals[key] / self.counts[key]
        for name, (num, den) in {
            "weight_mean": ("weight_sum", "weight_n"),
            "w_clean": ("w_clean_sum", "w_clean_n"),
            "w_noisy": ("w_noisy_sum", "w_noisy_n"),
        }.items():
            if den in totals and totals[den] > 0:
                record[name] = totals[num] / totals[den]
        if self.aux_scores:
            record["recognizer_auc"] = gather_binary_auc(torch.cat(self.aux_scores), torch.cat(self.aux_labels))
        return record


class Trainer:
    """A run: setup in __init__, then train(), evaluate(), close()."""

    def __init__(self, cfg: Config, ctx: Optional[DistContext] = None) -> None:
        self.cfg = cfg
        # A caller that runs several trainers (compare) passes its context and keeps the group.
        self.ctx = ctx if ctx is not None else init_distributed(cfg.dist)
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
        d = cfg.data
        self.data = TrainingData(
            data_path,
            split=d.split,
            fold=d.fold,
            history_length=d.history_length,
            mode=d.mode,
            negative_sampler=d.negative_sampler,
            popularity_exponent=d.popularity_exponent,
            seed=cfg.seed,
            rank=self.ctx.rank,
            world=self.ctx.world,
        )
        self.schedule = Schedule(self.data, cfg)
        meta = self.data.meta
        self.spec = ModelSpec(meta["num_users"], meta["num_items"], meta["num_categories"], d.history_length)
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
                "%s: %d phases x %d epochs, %d steps; %d samples dropped as incomplete last batches",
                self.method,
                len(self.schedule.phases),
                cfg.train.epochs,
                self.total_steps(),
                self.schedule.dropped_samples,
            )
        self._init_checkpoints()

    # -- steps --------------------------------------------------------------------------------

    def total_steps(self) -> int:
        total = self.schedule.total_steps()
        return min(total, self.cfg.train.max_steps) if self.cfg.train.max_steps else total

    def recommender_lr(self, plan: StepPlan) -> float:
        """The recommender's learning rate at ``plan`` (train.lr under train.lr_decay, over the
        steps that train it up to train.max_steps): a function of the step alone, so a resumed
        run continues the uninterrupted run's schedule."""
        total = self.schedule.recommender_steps(self.total_steps())
        return self.cfg.train.lr * lr_decay_factor(self.cfg, self.schedule.recommender_step(plan), total)

    def _batches(self, plan: StepPlan, device: Optional[torch.device] = None) -> tuple[Optional[SequenceBatch], Optional[SequenceBatch]]:
        dev = self.ctx.device if device is None else device
        rec = None if plan.stage == RECOGNIZER_ONLY else SequenceBatch.from_arrays(self.schedule.recommender_batch(plan)).to(dev)
        aux_arrays = self.schedule.recognizer_batch(plan)
        aux = SequenceBatch.from_arrays(aux_arrays).to(dev) if aux_arrays is not None else None
        return rec, aux

    def train_step(self, plan: StepPlan, batches: Optional[tuple] = None) -> tuple[Losses, dict, Optional[SequenceBatch], Optional[SequenceBatch]]:
        """One optimisation step of the plan's batches (built here unless prefetched onto the
        device, dist.pipeline); returns losses and outputs (on device)."""
        rec, aux = batches if batches is not None else self._batches(plan)
        if rec is not None:  # a step that trains the recommender: its lr for this step
            set_recommender_lr(self.model, self.dense_optimizer, self.recommender_lr(plan))
        # Dropout masks are keyed by (seed, step, layer, call, global row, element): the same
        # on any number of processes, and on resume (models/layers.py, Dropout).
        with dropout_step(self.cfg.seed, plan.step):
            out = self.dense_optimizer.forward(rec, aux, plan.phase, plan.stage)  # the DMP model (via DeepSpeed's engine)
        losses = compute_losses(out, rec, aux, self.cfg, plan.stage, plan.step)
        # Embedding tables update inside the backward (fused optimiser); the idle dense
        # parameters (untouched by this step) get neither weight decay nor an Adagrad update.
        self.dense_optimizer.backward(losses.backward, self.model.module.idle_dense_parameters(plan.phase, plan.stage))
        self.dense_optimizer.step()
        self.dense_optimizer.zero_grad(set_to_none=True)
        return losses, out, rec, aux

    def train(self) -> None:
        """Run the schedule from the current step to the end (or train.max_steps)."""
        cfg = self.cfg
        total = self.total_steps()
        stats = _WindowStats(self.ctx.device)
        hist = WeightHistograms(cfg.log.weight_hist_bins, cfg.train.epochs, self.ctx.device, self.noise_users)
        last: Optional[StepPlan] = None
        bar = progress_bar(total, self.step, cfg.train.progress_bar and self.ctx.is_main)
        self._clock = (time.monotonic(), self.step)  # for the step lines' ETA
        self.model.train()
        plans = prefetch_plans(self.schedule.steps(), self.step, total)
        cpu = torch.device("cpu")
        for plan, batches in step_batches(plans, lambda p: self._batches(p, cpu), self.ctx.device, cfg.dist.pipeline):
            if last is not None and (plan.phase, plan.stage) != (last.phase, last.stage):
                if stats.steps:  # a log window never straddles two phases or stages
                    self._log_window(last, stats, bar)
                    stats.reset()
                self._end_phase(last, hist)
            losses, out, rec, aux = self.train_step(plan, batches)
            hist.observe(plan.epoch, out, rec, aux)
            last = plan
            self.step = plan.step + 1
            self._watch_losses(losses)
            global_rows = (len(rec) if rec is not None else 0) * self.ctx.world
            stats.add(losses, out, aux, global_rows)
            if bar is not None:
                bar.update(1)
            checkpoint_due = self._checkpoint_due(total)
            if self.step % cfg.train.log_every == 0 or self.step == total or checkpoint_due:
                self._log_window(plan, stats, bar)
                stats.reset()
            if checkpoint_due:
                self.save_checkpoint(plan)
            self.hooks.after_step(self.step, self.ctx.rank)
        if last is not None:
            self._end_phase(last, hist)
            if self.step == total and self._saved_step != total:
                self.save_checkpoint(last)  # the end of training (after the phase's records)
        if bar is not None:
            bar.close()

    def _end_phase(self, plan: StepPlan, hist: WeightHistograms) -> None:
        """Records at the end of a phase (or stage): 'phase_end', and 'weight_hist' with the
        histograms of its latest epoch's weights (a collective: every rank calls it)."""
        where = dict(step=self.step, phase=plan.phase, stage=plan.stage, epoch=plan.epoch)
        self.metrics_log.write("phase_end", **where)
        histograms = hist.summary()
        if histograms:
            self.metrics_log.write("weight_hist", **where, **histograms)
        hist.reset()

    def _learning_rates(self, plan: StepPlan) -> dict:
        """The recommender's learning rate at ``plan`` and the phase's recogniser's (for the log)."""
        lrs = {"lr": self.recommender_lr(plan)}
        if self.schedule.uses_recognizer:
            lrs["lr_recognizer"] = learning_rate(self.cfg, f"recognizers.{plan.phase}.")
        return lrs

    def _log_window(self, plan: StepPlan, stats: _WindowStats, bar) -> None:
        self._check_finite()
        record = stats.summary()
        self.metrics_log.write("train", step=self.step, phase=plan.phase, stage=plan.stage, epoch=plan.epoch, **record, **self._learning_rates(plan))
        if self.ctx.is_main:
            parts = [f"step {self.step}/{self.total_steps()}", f"phase {plan.phase}", f"loss {record['loss']:.4f}"]
            for key, label in (("loss_rec", "L_R"), ("loss_aux", "L_D"), ("w_clean", "w_clean"), ("w_noisy", "w_noisy"), ("recognizer_auc", "rg_auc")):
                if key in record:
                    parts.append(f"{label} {record[key]:.4f}")
            parts.append(f"{record['samples_per_s']:.0f} samples/s")
            parts.append(eta_text(*self._clock, self.step, self.total_steps(), time.monotonic()))
            line = " | ".join(parts)
            if bar is not None:
                bar.write(line)
            else:
                log.info(line)

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test metrics over the stored candidates (exact across ranks).

        With ATJT on a dataset with planted noise, also ``noise_weight_auc``: how well the
        trained recognisers' weights rank clean training users above noisy ones.

        Always also ``popularity``: the same metrics (same keys, paper_compat HR NaN) of the
        popularity ranker (metrics.training_popularity: item counts in the training data) on
        the same test users and candidates, so every run shows the bar its model must clear.
        """
        cfg = self.cfg
        acc = CandidateMetrics(k=cfg.eval.k)
        # The popularity ranker rides along the model's batches (same users, same rank slices),
        # so its metrics are exact across ranks by the same reduction; counting is one bincount.
        pop_acc = CandidateMetrics(k=cfg.eval.k)
        popularity = training_popularity(self.data.arrays, cfg.data.split, cfg.data.fold)
        recommender = self.model.module.recommender
        self.recompute_population_statistics()
        self.model.eval()
        try:
            # A sequential model encodes each history once and scores all its candidates from it.
            once = isinstance(recommender, SequentialRecommender)
            for start, size in self.data.user_batches(self.data.test_users, cfg.eval.batch_users):
                rows, valid = self.data.test_batch(start, size, expand=not once)
                batch = SequenceBatch.from_arrays(rows).to(self.ctx.device)
                scores = recommender.score_candidates(batch) if once else recommender(batch).view(len(valid), -1)
                acc.update(scores, torch.from_numpy(valid).to(self.ctx.device))
                candidates = rows.candidates if once else rows.target.reshape(len(valid), -1)  # [users, C] item ids
                pop_acc.update(popularity_scores(popularity, candidates, self.ctx.device), torch.from_numpy(valid).to(self.ctx.device))
        finally:
            self.model.train()
        metrics = acc.compute()
        metrics["popularity"] = popularity_result(pop_acc.compute())  # a collective, like acc's
        if self.schedule.uses_recognizer and (self.noise_users is not None or cfg.log.user_weights):
            users, weights = self.score_training_users()
            if self.noise_users is not None:
                noisy = self.noise_users[users]
                metrics["noise_weight_auc"] = gather_binary_auc(weights, (~noisy).float())
                # mean weight of the clean and of the planted-noise training users (exact sums)
                sums = global_sum(torch.stack([weights[~noisy].sum(), (~noisy).sum(), weights[noisy].sum(), noisy.sum()]).double())
                metrics["mean_weight_clean_users"] = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
                metrics["mean_weight_noisy_users"] = float(sums[2] / sums[3]) if sums[3] > 0 else float("nan")
                item_auc = self.planted_item_auc()
                if item_auc is not None:
                    metrics["noise_item_auc"] = item_auc
            if cfg.log.user_weights:  # weights.parquet and a 'user_weights' record
                record_user_weights(self.metrics_log, self.run_dir, self.step, users, weights, self.data.arrays.noise_users, cfg.log.weight_hist_bins)
        self.metrics_log.write("test", step=self.step, **metrics)
        return metrics

    @torch.no_grad()
    def recompute_population_statistics(self) -> int:
        """Set the recommender's batch-normalisation statistics (Dice) to their exact values
        over the last ``eval.population_stats_batches`` training batches (a collective when
        several processes train: every rank reads the same steps); returns the batches used.

        The batches are rebuilt from the schedule (a pure function of the config, the seed and
        the step), so an uninterrupted and a resumed run evaluate with the same statistics, and
        the forwards run in a forked generator so that no later random draw changes. Each
        forward draws the dropout masks of its training step (the same keys as in training).
        """
        wanted = self.cfg.eval.population_stats_batches
        recommender = self.model.module.recommender
        if wanted == 0 or not dice_layers(recommender):
            return 0
        plans = collections.deque((p for p in self.schedule.steps() if p.step < self.step and p.stage != RECOGNIZER_ONLY), maxlen=wanted)
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), population_statistics(recommender):
            for plan in plans:
                batch = SequenceBatch.from_arrays(self.schedule.recommender_batch(plan)).to(self.ctx.device)
                with dropout_step(self.cfg.seed, plan.step), dropout_rows(batch.row_ids):
                    recommender(batch)
        return len(plans)

    @torch.no_grad()
    def score_training_users(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training user's sequence weight, P(clean), from the recogniser that did not
        train on it (the one of the user's own part), on its clean last training window.

        Returns this rank's (users, weights); together the ranks cover every training user once.
        """
        users_out, weights_out = [], []
        for recognizer, batch, keep in self._training_windows():
            users_out.append(batch.user[keep])
            weights_out.append(torch.sigmoid(recognizer(batch).float())[keep])
        if not users_out:
            empty = torch.empty(0, device=self.ctx.device)
            return empty.long(), empty
        return torch.cat(users_out), torch.cat(weights_out)

    def planted_item_auc(self) -> Optional[float]:
        """AUC of the item-level recogniser's P(noisy) against the planted items over every
        history item of the training users' last windows (None without item-level scores)."""
        scored = self.score_training_items()
        if scored is None or self.data.arrays.planted is None:
            return None
        users, lengths, noise = scored
        u = users.cpu().numpy()
        _, planted = self.data.planted_in_windows(u, self.data.last_train_pos[u], lengths.cpu().numpy())
        mask = torch.arange(noise.shape[1], device=noise.device)[None, :] < lengths[:, None]
        return gather_binary_auc(noise[mask], torch.from_numpy(planted).to(noise.device)[mask].float())

    @torch.no_grad()
    def score_training_items(self) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The item-level recogniser's P(noisy) of every history item of every training user's
        clean last window (the windows of ``score_training_users``), from the recogniser of the
        user's own part. Returns this rank's (users [n], lengths [n], item_noise [n, L]: oldest
        item first, 0 at padding), or None when the recognisers are not item-level."""
        module = self.model.module
        if not len(module.recognizers) or not module.recognizers[0].item_level:
            return None
        users_out, lengths_out, noise_out = [], [], []
        for recognizer, batch, keep in self._training_windows():
            items = recognizer.forward_items(batch)[1]
            users_out.append(batch.user[keep])
            lengths_out.append(batch.lengths[keep])
            noise_out.append((torch.sigmoid(-items.float()) * batch.mask)[keep])
        return torch.cat(users_out), torch.cat(lengths_out), torch.cat(noise_out)

    def _training_windows(self):
        """(recogniser, batch, mask of real rows) over every training user's clean last training
        window, batch by batch, with the recogniser of the user's own part (in eval mode)."""
        module = self.model.module
        module.eval()
        try:
            for part, recognizer in zip(self.schedule.parts, module.recognizers):
                positions = self.data.last_train_pos[part]
                for start, size in self.data.user_batches(part, self.cfg.eval.batch_users):
                    rows, valid = self.data.user_windows(part, positions, start, size)
                    yield recognizer, SequenceBatch.from_arrays(rows).to(self.ctx.device), torch.from_numpy(valid).to(self.ctx.device)
        finally:
            module.train()

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
        from .models.s3rec import dataset_fingerprint

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
