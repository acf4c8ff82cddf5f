"""The training loop of a run (trainer.Trainer): steps, the schedule, and the log lines.

One training step (``train_step``): build this rank's rows of the step's batches, one forward of
the joint module, the objective's loss (objective.Objective), one backward (the embedding
tables' optimiser runs fused inside it), one dense optimiser step. Statistics stay on the device
and are read every ``train.log_every`` steps, so the step itself never waits for the host.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch

from .collectives import global_sum
from .config import Config
from .metrics import gather_binary_auc
from .models.batch import SequenceBatch
from .models.layers import dropout_step
from .objective import Losses, Objective, StepOutput
from .optim import DenseBackend, learning_rate, lr_decay_factor, set_recommender_lr
from .prefetch import prefetch_plans, step_batches
from .runlog import MetricsWriter, WeightHistograms, eta_text, progress_bar
from .schedule import RECOGNIZER_ONLY, Schedule, StepPlan


class StepBatches(NamedTuple):
    """One step's batches (each None where the step has none): the recommender's rows, the
    recogniser's corrupted rows, and the rows the recogniser scores for the weights when they
    are not the recommender's positives (atjt.weight_scope='user')."""

    rec: Optional[SequenceBatch]
    aux: Optional[SequenceBatch]
    weight_rows: Optional[SequenceBatch]


if TYPE_CHECKING:
    from .distributed import DistContext
    from .faults import FaultHooks

log = logging.getLogger("atjt_dist")


class WindowStats:
    """The step statistics since the last log line.

    Each step's ``Losses.stats`` are this rank's shares of global sums; they are added up on the
    device and reduced across ranks once per log line, so steps never wait for the host.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.steps = 0
        self.rows = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # steps that reported each statistic
        self.aux_scores: list[torch.Tensor] = []
        self.aux_labels: list[torch.Tensor] = []
        self.started = time.perf_counter()

    def add(self, losses: Losses, out: StepOutput, aux: Optional[SequenceBatch], global_rows: int) -> None:
        """Count one step: its statistics, its global recommender rows, its recogniser scores."""
        self.steps += 1
        self.rows += global_rows
        for key, value in losses.stats.items():
            value = value.detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1
        if out.aux_logits is not None and aux is not None:
            self.aux_scores.append(out.aux_logits.detach().float())
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


class TrainingLoop:
    """The steps of a run, from its current step to the end: a part of trainer.Trainer.

    It reads the run that Trainer sets up (the attributes below) and calls the Trainer's
    checkpoint and fault-watching methods (``_checkpoint_due``, ``save_checkpoint``,
    ``_watch_losses``, ``_check_finite``).
    """

    cfg: Config
    ctx: DistContext
    schedule: Schedule
    objective: Objective
    model: torch.nn.Module
    dense_optimizer: DenseBackend
    metrics_log: MetricsWriter
    noise_users: Optional[torch.Tensor]
    hooks: FaultHooks
    step: int
    _saved_step: Optional[int]

    def total_steps(self) -> int:
        """The run's steps: the schedule's, capped by train.max_steps."""
        total = self.schedule.total_steps()
        return min(total, self.cfg.train.max_steps) if self.cfg.train.max_steps else total

    def recommender_lr(self, plan: StepPlan) -> float:
        """The recommender's learning rate at ``plan`` (train.lr under train.lr_decay, over the
        steps that train it up to train.max_steps): a function of the step alone, so a resumed
        run continues the uninterrupted run's schedule."""
        total = self.schedule.recommender_steps(self.total_steps())
        return self.cfg.train.lr * lr_decay_factor(self.cfg, self.schedule.recommender_step(plan), total)

    def _batches(self, plan: StepPlan, device: Optional[torch.device] = None) -> StepBatches:
        """The step's batches on ``device``: the recommender's rows, the recogniser's corrupted
        rows, and what the recogniser scores for the weights when not the positives themselves
        (Schedule.weight_batch); each None where the step has none."""
        dev = self.ctx.device if device is None else device

        def tensors(arrays) -> Optional[SequenceBatch]:
            return None if arrays is None else SequenceBatch.from_arrays(arrays).to(dev)

        rec_arrays = None if plan.stage == RECOGNIZER_ONLY else self.schedule.recommender_batch(plan)
        weight_arrays = None if rec_arrays is None else self.schedule.weight_batch(plan, rec_arrays)
        return StepBatches(tensors(rec_arrays), tensors(self.schedule.recognizer_batch(plan)), tensors(weight_arrays))

    def train_step(self, plan: StepPlan, batches: Optional[StepBatches] = None) -> tuple[Losses, StepOutput, Optional[SequenceBatch], Optional[SequenceBatch]]:
        """One optimisation step of the plan's batches (built here unless prefetched onto the
        device, dist.pipeline); returns losses and outputs (on device)."""
        rec, aux, weight_rows = batches if batches is not None else self._batches(plan)
        if rec is not None:  # a step that trains the recommender: its lr for this step
            set_recommender_lr(self.model, self.dense_optimizer, self.recommender_lr(plan))
        # Dropout masks are keyed by (seed, step, layer, call, global row, element): the same
        # on any number of processes, and on resume (models/layers.py, Dropout).
        with dropout_step(self.cfg.seed, plan.step):
            out = self.dense_optimizer.forward(rec, aux, plan.phase, plan.stage, weight_rows)  # the DMP model (via DeepSpeed's engine)
        losses = self.objective.losses(out, rec, aux, plan.stage, plan.step)
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
        stats = WindowStats(self.ctx.device)
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

    def _log_window(self, plan: StepPlan, stats: WindowStats, bar) -> None:
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
