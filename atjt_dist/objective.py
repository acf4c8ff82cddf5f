"""The training objectives: the baseline BCE, ATJT, and the denoising baselines T-CE and R-CE.

``objective.name`` picks one (``auto`` = ``atjt`` if ``atjt.enabled`` else ``bce``). Every
recommender loss goes through the one fused kernel, ``atjt_kernels.weighted_bce`` (self-normalised
weighted BCE on logits), with per-row weights and masks:

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
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

import atjt_kernels

from .collectives import global_sum, world_size
from .config import Config
from .models.batch import SequenceBatch

OBJECTIVES = ("bce", "atjt", "tce", "rce", "oracle", "oracle_item")
#: the oracle objectives and the level of ground truth each uses (data.dataset builds the weights)
ORACLE_LEVELS = {"oracle": "user", "oracle_item": "item"}


def objective_name(cfg: Config) -> str:
    """The objective a config trains with (resolves 'auto' through atjt.enabled)."""
    name = cfg.objective.name
    if name == "auto":
        return "atjt" if cfg.atjt.enabled else "bce"
    return name


@dataclass
class Losses:
    """One step's loss to back-propagate and its statistics (this rank's shares of global sums)."""

    backward: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def _reduce(t: torch.Tensor) -> torch.Tensor:
    return global_sum(t)


def recommender_rows(out: dict, rec: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, labels, sequence index of each row) of the recommender's loss rows.

    Pointwise: rows are the positives then their negatives; row r belongs to sequence r mod B.
    Next-item: every valid position contributes its positive and its negative logit.
    """
    if "rec_logits" in out:
        logits = out["rec_logits"]
        half = len(rec) // 2
        return logits, rec.label, torch.arange(len(rec), device=logits.device) % half
    pos, neg = out["seq_logits"]
    mask = rec.mask
    seq = torch.arange(len(rec), device=pos.device)[:, None].expand_as(mask)[mask]
    logits = torch.cat([pos[mask], neg[mask]])
    labels = torch.cat([torch.ones_like(pos[mask]), torch.zeros_like(neg[mask])]).float()
    return logits, labels, torch.cat([seq, seq])


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


def compute_losses(
    out: dict,
    rec: Optional[SequenceBatch],
    aux: Optional[SequenceBatch],
    cfg: Config,
    stage: str,
    step: int,
) -> Losses:
    """The step's loss for ``objective_name(cfg)`` and its log statistics."""
    name = objective_name(cfg)
    a = cfg.atjt
    world = world_size()
    device = rec.label.device if rec is not None else aux.label.device
    share = torch.zeros((), device=device)  # what this rank back-propagates (before x world)
    log_share = torch.zeros((), device=device)  # this rank's share of the global loss value
    stats: dict[str, torch.Tensor] = {}

    if "rec_logits" in out or "seq_logits" in out:
        logits, labels, rows_of = recommender_rows(out, rec)
        mask = None
        if "weight_logits" in out:  # ATJT
            w_seq = torch.sigmoid(out["weight_logits"].float())
            if a.detach or stage == "recommender":
                w_seq = w_seq.detach()
            weights = w_seq[rows_of]  # a sequence's rows share its weight
            stats["weight_sum"] = w_seq.detach().sum()
            stats["weight_n"] = torch.tensor(float(w_seq.numel()), device=device)
        elif name in ORACLE_LEVELS:  # ground-truth weights built with the batch
            weights = rec.weight[rows_of] if "seq_logits" in out else rec.weight
        elif name == "rce":
            with torch.no_grad():
                p = torch.sigmoid(logits.float())
                weights = torch.where(labels > 0.5, p, 1.0 - p).pow(cfg.objective.rce_beta)
        else:
            weights = torch.ones_like(logits, dtype=torch.float32)
        if name == "tce":
            rate = tce_drop_rate(cfg, step)
            mask = tce_keep_mask(logits, labels, rate)
            stats["dropped"] = (~mask).sum().float()
        rec_loss = atjt_kernels.weighted_bce(
            logits,
            labels,
            weights,
            mask=mask,
            reduce=_reduce,
            backend=cfg.objective.loss_backend,
            min_rows=cfg.objective.loss_triton_min_rows,
        )
        if name == "rce":
            # the authors' mean over rows: self-normalised loss x W / N (global, detached)
            sums = global_sum(torch.stack([weights.sum().double(), torch.tensor(float(weights.numel()), dtype=torch.float64, device=device)]))
            rec_loss = rec_loss * (sums[0] / sums[1]).float()
        # rec_loss is the global loss; its gradient reaches only this rank's rows.
        share = share + rec_loss
        stats["loss_rec"] = rec_loss.detach() / world
        log_share = log_share + stats["loss_rec"]
        if name == "atjt" and a.variant == "no_aux" and "weight_logits" in out:
            count = global_sum(torch.tensor(float(w_seq.numel()), dtype=torch.float64, device=device)).float()
            w2_share = (w_seq * w_seq).sum() / count
            share = share - a.no_aux_penalty * w2_share
            log_share = log_share - a.no_aux_penalty * w2_share.detach()

    if "extra_loss" in out:  # the base model's own regulariser (e.g. FEARec's contrastive term)
        extra_sum, extra_rows = out["extra_loss"]
        count = global_sum(torch.as_tensor(extra_rows, dtype=torch.float64, device=device)).float()
        extra_share = extra_sum / count
        share = share + extra_share
        stats["loss_extra"] = extra_share.detach()
        log_share = log_share + stats["loss_extra"]

    if "aux_logits" in out and a.variant != "no_aux":
        aux_logits = out["aux_logits"].float()
        if "aux_item_logits" in out:
            # The item-level detector: per-history-item BCE on "this item is clean", averaged
            # over the valid items of the global batch (ranks hold different item counts).
            # Masked sums, not boolean indexing: no host sync inside the step.
            valid = aux.mask.float()
            per_item = F.binary_cross_entropy_with_logits(out["aux_item_logits"].float(), (~aux.replaced).float(), reduction="none")
            local = (per_item * valid).sum()
            aux_share = local / global_sum(valid.sum()).clamp_min(1.0)
        else:
            local = F.binary_cross_entropy_with_logits(aux_logits, aux.label, reduction="sum")
            aux_share = local / (aux_logits.numel() * world)  # equal rows per rank (rank_slice)
        share = share + a.aux_weight * aux_share
        stats["loss_aux"] = aux_share.detach()
        log_share = log_share + a.aux_weight * stats["loss_aux"]
        with torch.no_grad():
            p = torch.sigmoid(aux_logits)
            clean = aux.label > 0.5
            # masked sums, not boolean indexing: no host sync (benchmarks/gpu_check.json found these)
            stats["w_clean_sum"] = (p * clean).sum()
            stats["w_clean_n"] = clean.sum().float()
            stats["w_noisy_sum"] = (p * ~clean).sum()
            stats["w_noisy_n"] = (~clean).sum().float()

    if "idle_touch" in out:  # zero-valued: keeps every DDP-managed parameter in the graph
        share = share + out["idle_touch"]
    stats["loss"] = log_share
    return Losses(backward=share * world, stats=stats)
