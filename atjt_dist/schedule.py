"""ATJT's schedule: the partition of the training users, the phases, and the batches of each step.

METHOD.md section 3. The training users are split into N parts. In phase j the recommender
trains on part j (B^R) for E epochs while recogniser g_j, initialised afresh, trains on the
other N-1 parts (B^D); recommender batch i of the phase is paired with recogniser batches
i(N-1) .. (i+1)(N-1)-1 of B^D (B^D is reshuffled each time it is exhausted). The weights of a
recommender sequence therefore always come from a recogniser that never trained on its user.
The baseline, T-CE, R-CE and the oracles run the very same phases, batches and order with
their own weights. The 'two_stage' ablation splits each phase into a recogniser-only stage and
a recommender-only stage. The module the steps feed: atjt_dist.joint; the losses: objective.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from .config import Config, ConfigError
from .data.dataset import BatchArrays, SampleSpace, TrainingData
from .data.sampling import partition_users
from .objective import ORACLE_LEVELS, objective_name

JOINT, RECOGNIZER_ONLY, RECOMMENDER_ONLY = "joint", "recognizer", "recommender"


@dataclass(frozen=True)
class StepPlan:
    """What one training step consumes."""

    step: int  # global step index, 0-based
    phase: int
    stage: str  # JOINT, RECOGNIZER_ONLY or RECOMMENDER_ONLY
    epoch: int  # epoch within the phase (and stage)
    batch: int  # recommender batch index within the epoch
    phase_batch: int  # recommender batch index within the phase: epoch * batches + batch
    recognizer_batches: tuple[int, ...]  # indices into the phase's B^D stream (may be empty)
    warmup: bool = False  # a recogniser-only warm-up step opening a joint phase


@dataclass
class Phase:
    """The data of one phase: the recommender's part and the recogniser's parts."""

    index: int
    rec_users: np.ndarray
    aux_users: np.ndarray
    rec_space: SampleSpace
    aux_space: Optional[SampleSpace]
    rec_batches: int  # full recommender batches per epoch
    aux_batches: int  # full recogniser batches per pass over B^D


class Schedule:
    """The run's sequence of steps and the batches each step reads."""

    def __init__(self, data: TrainingData, cfg: Config) -> None:
        self.data = data
        self.cfg = cfg
        a = cfg.atjt
        self.uses_recognizer = objective_name(cfg) == "atjt"
        #: the planted-noise oracle's level ('user' or 'item'), None for every other objective
        self.oracle = ORACLE_LEVELS.get(objective_name(cfg))
        if self.oracle and data.arrays.noise_users is None:
            raise ConfigError(
                f"objective.name={objective_name(cfg)} needs planted-noise ground truth (noise.parquet), which "
                f"{data.arrays.path} does not have; use the synthetic dataset or an audit's noisy copy"
            )
        self.variant = a.variant if self.uses_recognizer else None
        #: the weights score each user's latest window rather than the row's (see weight_batch)
        self.weights_per_user = self.uses_recognizer and a.weight_scope == "user" and data.mode == "sliding"
        self.num_parts = a.num_parts
        self.epochs = cfg.train.epochs
        self.batch = cfg.train.batch_size
        self.aux_batch = a.recognizer_batch_size
        self.next_item = cfg.model.objective == "next_item"
        self.parts = partition_users(data.train_users, a.num_parts, cfg.seed)
        self.phases: list[Phase] = []
        for j, part in enumerate(self.parts):
            others = np.concatenate([p for k, p in enumerate(self.parts) if k != j]) if a.num_parts > 1 else part[:0]
            rec_space = data.sample_space(part)
            aux_space = data.sample_space(others) if (self.uses_recognizer and len(others)) else None
            rec_batches = data.num_batches(rec_space, self.batch)
            aux_batches = data.num_batches(aux_space, self.aux_batch) if aux_space is not None else 0
            if rec_batches == 0:
                raise ConfigError(
                    f"phase {j}: part of {len(part)} users has {rec_space.size} samples, fewer than one batch of "
                    f"train.batch_size={self.batch}; lower the batch size or atjt.num_parts"
                )
            if self.uses_recognizer and aux_batches == 0:
                raise ConfigError(
                    f"phase {j}: the recogniser's {aux_space.size} samples are fewer than one batch of atjt.recognizer_batch_size={self.aux_batch}; lower it"
                )
            self.phases.append(Phase(j, part, others, rec_space, aux_space, rec_batches, aux_batches))
        self.dropped_samples = sum(p.rec_space.size - p.rec_batches * self.batch for p in self.phases)

    # -- the sequence of steps -------------------------------------------------------------

    def stages(self) -> list[str]:
        if not self.uses_recognizer:
            return [RECOMMENDER_ONLY]
        if self.variant == "two_stage":
            return [RECOGNIZER_ONLY, RECOMMENDER_ONLY]
        return [JOINT]

    def _warmup_steps(self, stage: str) -> int:
        """Recogniser-only steps that open a joint phase (atjt.recognizer_warmup_steps)."""
        return self.cfg.atjt.recognizer_warmup_steps if stage == JOINT and self.variant != "no_aux" else 0

    def steps(self) -> Iterator[StepPlan]:
        """Every step of the run, in order (a pure function of the config and the data).

        A step that trains a recogniser reads the next K * (N-1) batches of the phase's B^D
        stream (K = atjt.recognizer_batches_per_step); a joint phase may open with recogniser-
        only warm-up steps (atjt.recognizer_warmup_steps), which read the stream's first batches.
        """
        per = (self.num_parts - 1) * self.cfg.atjt.recognizer_batches_per_step
        step = 0
        for ph in self.phases:
            for stage in self.stages():
                cursor = 0  # the next batch of the phase's B^D stream
                for w in range(self._warmup_steps(stage)):
                    yield StepPlan(step, ph.index, RECOGNIZER_ONLY, 0, w, w, tuple(range(cursor, cursor + per)), warmup=True)
                    cursor += per
                    step += 1
                trains_recognizer = stage in (JOINT, RECOGNIZER_ONLY) and self.variant != "no_aux"
                for epoch in range(self.epochs):
                    for b in range(ph.rec_batches):
                        rg = tuple(range(cursor, cursor + per)) if trains_recognizer else ()
                        cursor += len(rg)
                        yield StepPlan(step, ph.index, stage, epoch, b, epoch * ph.rec_batches + b, rg)
                        step += 1

    def recommender_steps(self, limit: Optional[int] = None) -> int:
        """How many of the run's first ``limit`` steps (all by default) train the recommender:
        every step but the recogniser-only ones (warm-up, two-stage's first stage)."""
        count = step = 0
        for ph in self.phases:
            for stage in self.stages():
                step += self._warmup_steps(stage)
                n = ph.rec_batches * self.epochs
                if stage != RECOGNIZER_ONLY:
                    count += n if limit is None else max(0, min(n, limit - step))
                step += n
        return count

    def recommender_step(self, plan: StepPlan) -> int:
        """The index of ``plan`` among the steps that train the recommender (for a step that
        does not, the index of the next one that does)."""
        # Recogniser-only steps (a warm-up, two-stage's first stage) precede their phase's
        # recommender steps.
        done = 0 if plan.stage == RECOGNIZER_ONLY else plan.phase_batch
        return sum(ph.rec_batches * self.epochs for ph in self.phases[: plan.phase]) + done

    def total_steps(self) -> int:
        per_phase = [sum(ph.rec_batches * self.epochs + self._warmup_steps(stage) for stage in self.stages()) for ph in self.phases]
        return sum(per_phase)

    # -- batches ---------------------------------------------------------------------------

    def recommender_batch(self, plan: StepPlan) -> BatchArrays:
        """The step's recommender rows: positives then their negatives (pointwise), or one row
        per sequence with per-position negatives (next-item)."""
        ph = self.phases[plan.phase]
        order = self._order(ph.rec_space, "rec", plan.phase, plan.epoch)
        build = self.data.recommender_sequences if self.next_item else self.data.recommender_batch
        return build(ph.rec_space, order, plan.batch, self.batch, counters=(plan.phase, plan.epoch, plan.batch), oracle=self.oracle)

    def weight_batch(self, plan: StepPlan, rec: BatchArrays) -> Optional[BatchArrays]:
        """What the recogniser scores for the weights of the step's recommender rows ``rec``
        (this rank's, from recommender_batch): with atjt.weight_scope='user' in sliding mode, each
        positive's user's latest training window under the positive's row id (one weight per
        user, shared by its rows); None where the positives themselves are scored ('row', paper
        mode, a step without weights)."""
        if not self.weights_per_user or plan.stage == RECOGNIZER_ONLY:
            return None
        n = len(rec) if self.next_item else len(rec) // 2  # the positives: every next-item row, the first half otherwise
        return self.data.latest_windows(rec.user[:n], rec.row_ids[:n])

    def recognizer_batch(self, plan: StepPlan) -> Optional[BatchArrays]:
        """The step's N-1 corrupted recogniser batches, rows concatenated (None if none).

        Row ids are made unique over the step (they key the dropout masks, and the recogniser
        reads these rows and the recommender's positives in one pass): the recogniser's rows
        are numbered after the 2 x train.batch_size ids of the recommender's rows, batch after
        batch (the i-th of the step: ids from 2 x batch_size + i x recognizer_batch_size).
        """
        if not plan.recognizer_batches:
            return None
        ph = self.phases[plan.phase]
        a = self.cfg.atjt
        parts = []
        for i, k in enumerate(plan.recognizer_batches):
            cycle, index = divmod(k, ph.aux_batches)
            order = self._order(ph.aux_space, "aux", plan.phase, cycle)
            part = self.data.recognizer_batch(
                ph.aux_space,
                order,
                index,
                self.aux_batch,
                counters=(plan.phase, k),
                noise_fraction=a.noise_fraction,
                replace_count=a.replace_count,
                per_row_position=a.per_row_position,
                replacement=a.replacement,
            )
            part.row_ids = part.row_ids + 2 * self.batch + i * self.aux_batch
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return BatchArrays.concat(parts)

    def _order(self, space: SampleSpace, kind: str, phase: int, epoch: int) -> np.ndarray:
        # One shuffle per (kind, phase, epoch); kept until the next one is needed.
        key = (kind, phase, epoch)
        cache = self.__dict__.setdefault("_orders", {})
        if key not in cache:
            for old in [k for k in cache if k[0] == kind]:
                del cache[old]
            stream = (phase, epoch) if kind == "rec" else (1_000_003, phase, epoch)
            cache[key] = self.data.epoch_order(space, *stream)
        return cache[key]
