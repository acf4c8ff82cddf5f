"""The training objectives: the baseline BCE, ATJT, the denoising baselines T-CE and R-CE, and the oracles.

The joint module's forward (joint.JointModel) returns a :class:`StepOutput`; an
:class:`Objective` turns it into the step's :class:`Losses`. ``objective.name`` picks the
objective (``auto`` = ``atjt`` if ``atjt.enabled`` else ``bce``), and :func:`build_objective` is
the one place that maps a config to its class. Every recommender loss goes through the one fused
kernel, ``atjt_kernels.weighted_bce`` (self-normalised weighted BCE on logits), with per-row
weights and masks:

- ``bce``   w = 1 on every row: the plain mean BCE.
- ``atjt``  w_i = sigmoid(g(S_i, t_i)) on the clean positive of sequence i, shared by all its rows
            (not detached unless atjt.detach), plus lambda * L_D on the corrupted recogniser rows
            (METHOD.md section 5); ablations 'no_aux' and 'two_stage'.
- ``tce``   truncated loss (Wang et al., WSDM 2021): each step drops the eps(t) * rows positives
            with the largest loss, eps(t) = eps_max * min(t / T, 1) ** exponent; the mean BCE
            of the kept rows. As in the authors' code the dropped count is a share of all the
            batch's rows, chosen among the positives.
- ``oracle``  the planted-noise oracle (METHOD.md section 10; only on data with ground truth):
            w = 0 on every row of a planted-noise user, else 1, self-normalised as ATJT's loss
            is; ``oracle_item`` removes the planted items from the histories and gives w = 0 to
            a row whose target is planted. It shows how much room a testbed leaves for denoising.
- ``rce``   reweighted loss (same paper): positives weighted sigmoid(x)^beta, negatives
            (1 - sigmoid(x))^beta, detached; the mean over all rows of the weighted BCE (the
            authors' normalisation), i.e. the kernel's self-normalised loss times W / N.

Every objective adds the base model's own regulariser (``StepOutput.extra_loss``) when the model
has one.

Exactness across ranks. Every loss is a global-batch quantity: the kernel reduces its sums over
ranks (``reduce``), T-CE ranks the positives of the whole global batch, counts are global.
Each rank back-propagates its rows' share of the global loss, scaled by the world size because
DDP and TorchRec average gradients over ranks.

Statistics for the log (``Losses.stats``) are this rank's shares of global sums; the trainer
adds them over the log window and reduces them once per log line, so a step has no extra
collective and no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

import atjt_kernels

from .collectives import global_sum, world_size
from .config import Config
from .models.batch import SequenceBatch

#: the oracle objectives and the level of ground truth each uses (data.dataset builds the weights)
ORACLE_LEVELS = {"oracle": "user", "oracle_item": "item"}


def objective_name(cfg: Config) -> str:
    """The objective a config trains with (resolves 'auto' through atjt.enabled)."""
    name = cfg.objective.name
    if name == "auto":
        return "atjt" if cfg.atjt.enabled else "bce"
    return name


class StepOutput(NamedTuple):
    """What the joint module's forward hands the objective for one step (joint.JointModel).

    Every field is optional: a step fills those its stage computes and leaves the others None.
    A NamedTuple rather than a dataclass because the dense backends' wrappers look for a
    forward's output tensors only in tuples, lists and dicts: DeepSpeed hooks each of them to
    start its backward bookkeeping, and DDP's pytree flattening walks them.
    """

    rec_logits: Optional[torch.Tensor] = None
    """[R]: the recommender's logits on its pointwise rows (the positives, then their negatives)."""
    seq_logits: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    """Next-item training, instead of ``rec_logits``: the (positive, negative) logits [B, L] at every history position."""
    extra_loss: Optional[tuple[torch.Tensor, Union[torch.Tensor, int]]] = None
    """The base model's own regulariser (e.g. FEARec's contrastive term): (this rank's sum, this rank's rows)."""
    weight_logits: Optional[torch.Tensor] = None
    """[B]: recogniser g_phase on each recommender sequence's clean positive; its sigmoid is ATJT's weight w_i."""
    aux_logits: Optional[torch.Tensor] = None
    """[A]: g_phase's sequence logits on the corrupted recogniser rows (L_D; label 1 = clean)."""
    aux_item_logits: Optional[torch.Tensor] = None
    """[A, L]: an item-level recogniser's logits of 'this history item is clean' on the corrupted rows (its L_D is per item)."""
    idle_touch: Optional[torch.Tensor] = None
    """A zero-valued term over the parameters the step leaves idle: keeps every DDP-managed parameter in the graph."""

    @property
    def has_recommender(self) -> bool:
        """Whether the step scored recommender rows (pointwise or next-item)."""
        return self.rec_logits is not None or self.seq_logits is not None


@dataclass
class Losses:
    """One step's loss to back-propagate and its statistics (this rank's shares of global sums)."""

    backward: torch.Tensor
    """The loss this rank back-propagates: its share of the global loss times the world size."""
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    """Log statistics by name (``loss``, ``loss_rec``, ``loss_aux``, ``weight_sum``, ...), detached."""


class StepTotal:
    """A step's loss while its terms are added (in a fixed order: float sums are not associative).

    ``share`` is what this rank back-propagates before the world-size factor, ``logged`` this
    rank's share of the global loss value, ``stats`` the log statistics.
    """

    def __init__(self, device: torch.device, world: int) -> None:
        self.device = device
        self.world = world
        self.share = torch.zeros((), device=device)
        self.logged = torch.zeros((), device=device)
        self.stats: dict[str, torch.Tensor] = {}

    def add(self, value: torch.Tensor, logged: torch.Tensor, stat: Optional[str] = None, coefficient: Optional[float] = None) -> None:
        """Add ``coefficient * value`` to the share and ``coefficient * logged`` to the logged
        loss (no coefficient: 1); ``stat`` names ``logged`` in the statistics."""
        if stat is not None:
            self.stats[stat] = logged
        if coefficient is None:
            self.share = self.share + value
            self.logged = self.logged + logged
        else:
            self.share = self.share + coefficient * value
            self.logged = self.logged + coefficient * logged

    def add_recommender(self, rec_loss: torch.Tensor) -> None:
        """Add L_R: ``rec_loss`` is the global loss, whose gradient reaches only this rank's rows."""
        self.add(rec_loss, rec_loss.detach() / self.world, stat="loss_rec")

    def touch(self, zero: torch.Tensor) -> None:
        """Add a zero-valued term to the backward only (``StepOutput.idle_touch``)."""
        self.share = self.share + zero

    def losses(self) -> Losses:
        """The step's Losses: the share times the world size (DDP and TorchRec average gradients
        over ranks), and the statistics with the logged loss as ``loss``."""
        self.stats["loss"] = self.logged
        return Losses(backward=self.share * self.world, stats=self.stats)


class RecommenderRows(NamedTuple):
    """The recommender's loss rows: logits, labels, and the sequence (batch row) each belongs to."""

    logits: torch.Tensor
    labels: torch.Tensor
    sequence: torch.Tensor


def recommender_rows(out: StepOutput, rec: SequenceBatch) -> RecommenderRows:
    """(logits, labels, sequence index of each row) of the recommender's loss rows.

    Pointwise: rows are the positives then their negatives; row r belongs to sequence r mod B.
    Next-item: every valid position contributes its positive and its negative logit.
    """
    if out.rec_logits is not None:
        logits = out.rec_logits
        half = len(rec) // 2
        return RecommenderRows(logits, rec.label, torch.arange(len(rec), device=logits.device) % half)
    pos, neg = out.seq_logits
    mask = rec.mask
    seq = torch.arange(len(rec), device=pos.device)[:, None].expand_as(mask)[mask]
    logits = torch.cat([pos[mask], neg[mask]])
    labels = torch.cat([torch.ones_like(pos[mask]), torch.zeros_like(neg[mask])]).float()
    return RecommenderRows(logits, labels, torch.cat([seq, seq]))


def tce_drop_rate(cfg: Config, step: int) -> float:
    """eps(t): rises from 0 to objective.tce_max_drop over objective.tce_ramp_steps steps."""
    o = cfg.objective
    progress = min(step / o.tce_ramp_steps, 1.0) if o.tce_ramp_steps > 0 else 1.0
    return o.tce_max_drop * progress**o.tce_exponent


def tce_keep_mask(logits: torch.Tensor, labels: torch.Tensor, drop_rate: float) -> torch.Tensor:
    """Rows T-CE keeps: all but the round(drop_rate * global rows) positives of largest loss.

    The ranking is over the global batch (losses all-gathered), ties broken by rank then row, so
    every process drops exactly the rows one process would drop.
    """
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        loss = torch.where(labels > 0.5, loss, torch.full_like(loss, -1.0))  # negatives never drop
        world = world_size()
        if world > 1:
            sizes = [torch.zeros(1, dtype=torch.long, device=loss.device) for _ in range(world)]
            dist.all_gather(sizes, torch.tensor([loss.numel()], device=loss.device))
            longest = int(max(s.item() for s in sizes))
            padded = torch.full((longest,), -2.0, device=loss.device)
            padded[: loss.numel()] = loss
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded)
            everything = torch.cat(gathered)
            offset = dist.get_rank() * longest
        else:
            everything, offset = loss, 0
        total_rows = int((everything > -2.0).sum().item())
        n_drop = int(round(drop_rate * total_rows))
        keep = torch.ones_like(loss, dtype=torch.bool)
        if n_drop == 0:
            return keep
        # stable sort: equal losses keep (rank, row) order, the same on every process
        order = torch.sort(everything, descending=True, stable=True).indices[:n_drop]
        dropped = order[(order >= offset) & (order < offset + loss.numel())] - offset
        dropped = dropped[loss[dropped] >= 0]  # only positives (a tiny drop rate never reaches negatives)
        keep[dropped] = False
        return keep


def _unit_weights(rows: RecommenderRows) -> torch.Tensor:
    return torch.ones_like(rows.logits, dtype=torch.float32)


class Objective:
    """A training objective: one step's :class:`Losses` from the joint module's outputs.

    The step's loss adds, in this order: the recommender's loss L_R (``add_recommender_loss``,
    which each objective defines), the base model's own regulariser when it has one, the
    objective's recogniser loss (``add_recognizer_loss``: ATJT's L_D), and the zero-valued touch
    of the idle parameters. ``losses`` is the same for every objective.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def losses(self, out: StepOutput, rec: Optional[SequenceBatch], aux: Optional[SequenceBatch], stage: str, step: int) -> Losses:
        """The step's loss to back-propagate and its log statistics (``stage``: the plan's,
        schedule.StepPlan; ``step``: the global step)."""
        device = rec.label.device if rec is not None else aux.label.device
        total = StepTotal(device, world_size())
        if out.has_recommender:
            self.add_recommender_loss(total, out, rec, stage, step)
        if out.extra_loss is not None:
            extra_sum, extra_rows = out.extra_loss
            count = global_sum(torch.as_tensor(extra_rows, dtype=torch.float64, device=device)).float()
            extra_share = extra_sum / count
            total.add(extra_share, extra_share.detach(), stat="loss_extra")
        self.add_recognizer_loss(total, out, aux)
        if out.idle_touch is not None:
            total.touch(out.idle_touch)
        return total.losses()

    def add_recommender_loss(self, total: StepTotal, out: StepOutput, rec: SequenceBatch, stage: str, step: int) -> None:
        """Add L_R (and its statistics) to ``total``."""
        raise NotImplementedError

    def add_recognizer_loss(self, total: StepTotal, out: StepOutput, aux: Optional[SequenceBatch]) -> None:
        """Add the recogniser's loss to ``total``: none but ATJT's."""

    def weighted_bce(self, rows: RecommenderRows, weights: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The global self-normalised weighted BCE of the recommender rows (the fused kernel)."""
        o = self.cfg.objective
        return atjt_kernels.weighted_bce(
            rows.logits, rows.labels, weights, mask=mask, reduce=global_sum, backend=o.loss_backend, min_rows=o.loss_triton_min_rows
        )


class BCEObjective(Objective):
    """The base model's loss: the plain mean BCE (w = 1 on every row)."""

    def add_recommender_loss(self, total: StepTotal, out: StepOutput, rec: SequenceBatch, stage: str, step: int) -> None:
        rows = recommender_rows(out, rec)
        total.add_recommender(self.weighted_bce(rows, _unit_weights(rows)))


class ATJTObjective(BCEObjective):
    """ATJT (METHOD.md section 5): L_R with w_i = sigmoid(g(S_i, t_i)) (to the power
    atjt.weight_exponent, 1 in the paper) shared by a sequence's rows, plus lambda * L_D on the
    corrupted recogniser rows. Ablations: 'no_aux' (no L_D; a -no_aux_penalty * mean(w^2) term
    instead), 'two_stage' (weights detached while g is frozen). A step without weights (none
    computed) falls back to the plain mean."""

    def add_recommender_loss(self, total: StepTotal, out: StepOutput, rec: SequenceBatch, stage: str, step: int) -> None:
        if out.weight_logits is None:
            super().add_recommender_loss(total, out, rec, stage, step)
            return
        a = self.cfg.atjt
        rows = recommender_rows(out, rec)
        w_seq = torch.sigmoid(out.weight_logits.float())
        if a.weight_exponent != 1.0:
            w_seq = w_seq.pow(a.weight_exponent)
        if a.detach or stage == "recommender":  # schedule.RECOMMENDER_ONLY: two-stage, g is frozen
            w_seq = w_seq.detach()
        total.stats["weight_sum"] = w_seq.detach().sum()
        total.stats["weight_n"] = torch.tensor(float(w_seq.numel()), device=total.device)
        total.add_recommender(self.weighted_bce(rows, w_seq[rows.sequence]))  # a sequence's rows share its weight
        if a.variant == "no_aux":
            count = global_sum(torch.tensor(float(w_seq.numel()), dtype=torch.float64, device=total.device)).float()
            w2_share = (w_seq * w_seq).sum() / count
            total.add(w2_share, w2_share.detach(), coefficient=-a.no_aux_penalty)

    def add_recognizer_loss(self, total: StepTotal, out: StepOutput, aux: Optional[SequenceBatch]) -> None:
        a = self.cfg.atjt
        if out.aux_logits is None or a.variant == "no_aux":
            return
        aux_logits = out.aux_logits.float()
        if out.aux_item_logits is not None:
            # The item-level detector: per-history-item BCE on "this item is clean", averaged
            # over the valid items of the global batch (ranks hold different item counts).
            # Masked sums, not boolean indexing: no host sync inside the step.
            valid = aux.mask.float()
            per_item = F.binary_cross_entropy_with_logits(out.aux_item_logits.float(), (~aux.replaced).float(), reduction="none")
            aux_share = (per_item * valid).sum() / global_sum(valid.sum()).clamp_min(1.0)
        else:
            local = F.binary_cross_entropy_with_logits(aux_logits, aux.label, reduction="sum")
            aux_share = local / (aux_logits.numel() * total.world)  # equal rows per rank (rank_slice)
        total.add(aux_share, aux_share.detach(), stat="loss_aux", coefficient=a.aux_weight)
        with torch.no_grad():
            p = torch.sigmoid(aux_logits)
            clean = aux.label > 0.5
            # masked sums, not boolean indexing: no host sync (benchmarks/gpu_check.json found these)
            total.stats["w_clean_sum"] = (p * clean).sum()
            total.stats["w_clean_n"] = clean.sum().float()
            total.stats["w_noisy_sum"] = (p * ~clean).sum()
            total.stats["w_noisy_n"] = (~clean).sum().float()


class TCEObjective(Objective):
    """T-CE: the mean BCE of the rows kept after dropping the eps(t) share of largest-loss positives."""

    def add_recommender_loss(self, total: StepTotal, out: StepOutput, rec: SequenceBatch, stage: str, step: int) -> None:
        rows = recommender_rows(out, rec)
        keep = tce_keep_mask(rows.logits, rows.labels, tce_drop_rate(self.cfg, step))
        total.stats["dropped"] = (~keep).sum().float()
        total.add_recommender(self.weighted_bce(rows, _unit_weights(rows), mask=keep))


class RCEObjective(Objective):
    """R-CE: rows weighted by their detached probability of being right to the power beta, the
    mean over all rows (the authors' normalisation: the self-normalised loss times W / N)."""

    def add_recommender_loss(self, total: StepTotal, out: StepOutput, rec: SequenceBatch, stage: str, step: int) -> None:
        rows = recommender_rows(out, rec)
        with torch.no_grad():
            p = torch.sigmoid(rows.logits.float())
            weights = torch.where(rows.labels > 0.5, p, 1.0 - p).pow(self.cfg.objective.rce_beta)
        rec_loss = self.weighted_bce(rows, weights)
        # global and detached: the sum of the weights and the number of rows
        sums = global_sum(torch.stack([weights.sum().double(), torch.tensor(float(weights.numel()), dtype=torch.float64, device=total.device)]))
        total.add_recommender(rec_loss * (sums[0] / sums[1]).float())


class OracleObjective(Objective):
    """The planted-noise oracles ('oracle', 'oracle_item'): the ground-truth weights the batch
    carries (``SequenceBatch.weight``, one per pointwise row or per next-item sequence)."""

    def add_recommender_loss(self, total: StepTotal, out: StepOutput, rec: SequenceBatch, stage: str, step: int) -> None:
        rows = recommender_rows(out, rec)
        weights = rec.weight[rows.sequence] if out.seq_logits is not None else rec.weight
        total.add_recommender(self.weighted_bce(rows, weights))


#: objective.name (resolved by objective_name) -> its loss class: the one place a config picks it
OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    "bce": BCEObjective,
    "atjt": ATJTObjective,
    "tce": TCEObjective,
    "rce": RCEObjective,
    "oracle": OracleObjective,
    "oracle_item": OracleObjective,
}
OBJECTIVES = tuple(OBJECTIVE_CLASSES)


def build_objective(cfg: Config) -> Objective:
    """The objective ``cfg`` trains with."""
    return OBJECTIVE_CLASSES[objective_name(cfg)](cfg)


def compute_losses(
    out: StepOutput,
    rec: Optional[SequenceBatch],
    aux: Optional[SequenceBatch],
    cfg: Config,
    stage: str,
    step: int,
) -> Losses:
    """The step's loss for ``objective_name(cfg)`` and its log statistics (a loop builds its
    objective once instead: ``build_objective(cfg).losses``)."""
    return build_objective(cfg).losses(out, rec, aux, stage, step)
