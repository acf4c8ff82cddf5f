"""Pre-train S3Rec's encoder with its four self-supervised objectives:
python -m atjt_dist.pretrain --model.name=s3rec [--config FILE] [--section.key=value ...]

Writes RUN_DIR/pretrain.pt (the unsharded S3Rec's state_dict, full tensors, plus the run's
metadata), RUN_DIR/metrics.jsonl (one "pretrain" record per epoch), config.yaml and train.log
(a line every train.log_every steps; a progress bar on a terminal with train.progress_bar).
Fine-tune from it with ``python -m atjt_dist.train --model.name=s3rec
--model.s3rec.pretrained=RUN_DIR/pretrain.pt ...`` (same dataset, split, fold, history length and
layer sizes; the trainer checks them and names any mismatch).

Data. As the authors (CIKM2020-S3Rec, datasets.PretrainDataset): every prefix of the last P
training items of each training user (P = data.history_length, S3Rec's position table) is one
pre-training sequence, and negative segments come from the concatenation of the training
sequences. Only the split's training items are read: in 'kfold' the test users are left out
entirely, in 'loo' every user's last (test) item is, so nothing of the evaluation leaks in.

Objectives, on the bidirectional encoder (the paper's weights and mask probability in config):

- MIP (masked item prediction): items are replaced by [mask] with probability mask_prob, the
  last item always; at a masked position t, f(i) = sigmoid(F_t^T W_MIP e_i) and the loss is
  -log sigmoid(f(item) - f(negative)), the negative drawn uniformly from the items not in the
  sequence (the authors' pairwise form, including their sigmoid on f).
- MAP (masked attribute prediction): at masked positions, BCE of sigmoid(F_t^T W_MAP e_a) against
  the masked item's attributes, for every attribute a (multi-label; one category per item here).
- AAP (associated attribute prediction): the same at the unmasked positions with W_AAP.
- SP (segment prediction): a segment of length uniform in [1, n/2] at a uniform start is masked
  in the sequence; the context (hidden state of the last position) should score the real
  segment (encoded with everything else masked) above an equally long segment cut from another
  place of the concatenated training sequences: -log sigmoid(f(pos) - f(neg)),
  f(s) = sigmoid(ctx^T W_SP s). Sequences shorter than 2 have no segment and no SP term (the
  authors fed them a constant log 2).

Each loss sums over its positions (and attributes) like the authors' code, divided by the number
of sequences in the batch, so the published weights keep their relative scale and the magnitude
does not depend on the batch size. Optimiser: Adam (0.9, 0.999) as the authors.

Determinism: the model's initial weights and dropout come from torch.manual_seed(seed); the
order, masks, negatives and segments from a torch.Generator seeded from the same seed. The same
config gives the same checkpoint (on CPU). All sampling is vectorised over the batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cli import run_cli
from ..config import Config, ConfigError, build_config, dump_yaml
from ..data.dataset import TrainingData
from ..models import ModelSpec
from ..models.s3rec import (
    CHECKPOINT_KIND,
    CHECKPOINT_VERSION,
    INIT_STD,
    S3Rec,
    checkpoint_meta,
)
from ..runlog import MetricsWriter, choose_run_dir, progress_bar, setup_logging
from ..trainer import NonFiniteLossError, resolve_data_path

log = logging.getLogger("atjt_dist")

LOSSES = ("aap", "mip", "map", "sp")
NEGATIVE_ROUNDS = 10  # redraws of MIP negatives that hit the sequence's own items


@dataclass
class PretrainBatch:
    """One pre-training batch, all [B, P] left-aligned (0 = padding) unless noted."""

    items: torch.Tensor  # the original sequence
    categories: torch.Tensor  # the items' categories (0 = none)
    lengths: torch.Tensor  # [B]
    masked: torch.Tensor  # bool: MIP/MAP positions (replaced by [mask])
    masked_items: torch.Tensor  # the sequence with [mask] at ``masked``
    negatives: torch.Tensor  # MIP negatives (used at ``masked``)
    segment_context: torch.Tensor  # the sequence with the segment masked
    segment_pos: torch.Tensor  # the segment, everything else [mask]
    segment_neg: torch.Tensor  # a segment from elsewhere, everything else [mask]
    has_segment: torch.Tensor  # bool [B]: rows of length >= 2 (SP applies)

    def to(self, device: torch.device) -> PretrainBatch:
        return PretrainBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class PretrainSamples:
    """The pre-training sequences of a split: every prefix of each training user's last P items."""

    def __init__(self, data: TrainingData, history_length: int) -> None:
        a = data.arrays
        users = data.train_users
        offsets = np.asarray(a.seq_offsets, dtype=np.int64)
        n_train = data.last_train_pos[users] + 1  # training items of each training user
        window = np.minimum(n_train, history_length)
        window_start = offsets[users] + n_train - window
        first = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(window, out=first[1:])
        total = int(first[-1])
        # sample k: the prefix of length 1 + (k - first[u]) of user u's window
        self.starts = torch.from_numpy(np.repeat(window_start, window))
        self.lengths = torch.from_numpy(1 + np.arange(total, dtype=np.int64) - np.repeat(first[:-1], window))
        # the concatenated training sequences (negative segments)
        cum = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(n_train, out=cum[1:])
        flat = np.repeat(offsets[users] - cum[:-1], n_train) + np.arange(int(cum[-1]), dtype=np.int64)
        self.items = torch.from_numpy(np.asarray(a.seq_items, dtype=np.int64))
        self.long = self.items[torch.from_numpy(flat)]
        self.item_category = torch.from_numpy(np.asarray(a.item_category, dtype=np.int64))
        self.num_items = a.num_items
        self.P = history_length

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, rows: torch.Tensor, g: torch.Generator, mask_id: int, mask_prob: float) -> PretrainBatch:
        """Sequences ``rows`` with masks, negatives and segments drawn from ``g``."""
        B, P = len(rows), self.P
        lengths = self.lengths[rows]
        t = torch.arange(P)[None, :]
        valid = t < lengths[:, None]
        idx = (self.starts[rows][:, None] + t).clamp(max=len(self.items) - 1)
        items = torch.where(valid, self.items[idx], 0)
        last = t == (lengths - 1)[:, None]

        # MIP / MAP: mask with probability mask_prob, the last item always
        masked = ((torch.rand(B, P, generator=g) < mask_prob) & valid) | last
        negatives = torch.randint(1, self.num_items + 1, (B, P), generator=g)
        for _ in range(NEGATIVE_ROUNDS):  # redraw negatives that are items of their own sequence
            clash = (negatives[:, :, None] == items[:, None, :]).any(-1)
            if not clash.any():
                break
            negatives = torch.where(clash, torch.randint(1, self.num_items + 1, (B, P), generator=g), negatives)

        # SP: a segment of length in [1, n // 2] starting in [0, n - length]
        u = torch.rand(B, 3, generator=g, dtype=torch.float64)
        seg_len = 1 + (u[:, 0] * (lengths // 2)).long()
        start = (u[:, 1] * (lengths - seg_len + 1)).long()
        neg_start = (u[:, 2] * (len(self.long) - seg_len + 1)).long()
        in_seg = valid & (t >= start[:, None]) & (t < (start + seg_len)[:, None])
        other = self.long[(neg_start[:, None] + t - start[:, None]).clamp(0, len(self.long) - 1)]

        def masked_where(cond, values):
            return torch.where(valid, torch.where(cond, mask_id, values), 0)

        return PretrainBatch(
            items=items,
            categories=torch.where(valid, self.item_category[items], 0),
            lengths=lengths,
            masked=masked,
            masked_items=masked_where(masked, items),
            negatives=negatives,
            segment_context=masked_where(in_seg, items),
            segment_pos=masked_where(~in_seg, items),
            segment_neg=masked_where(~in_seg, other),
            has_segment=lengths >= 2,
        )


class S3RecPretraining(nn.Module):
    """S3Rec with the four pre-training heads; ``forward(batch)`` returns the four losses."""

    def __init__(self, model: S3Rec) -> None:
        super().__init__()
        self.model = model
        H = model.dim
        self.aap = nn.Linear(H, H)
        self.mip = nn.Linear(H, H)
        self.map = nn.Linear(H, H)
        self.sp = nn.Linear(H, H)
        for head in (self.aap, self.mip, self.map, self.sp):
            nn.init.normal_(head.weight, 0.0, INIT_STD)
            nn.init.zeros_(head.bias)

    def forward(self, b: PretrainBatch) -> dict[str, torch.Tensor]:
        """{'aap', 'mip', 'map', 'sp'}: each summed over its positions, divided by the rows."""
        m = self.model
        B = len(b.lengths)
        table = m.item_table
        seqs = torch.cat([b.masked_items, b.segment_context, b.segment_pos, b.segment_neg])
        lengths = b.lengths.repeat(4)
        emb = F.embedding(seqs, table) * (seqs != 0)[..., None].to(table.dtype)  # padding -> 0
        hidden = m.hidden_states(emb, lengths, causal=False)
        h_items, h_context, h_pos, h_neg = hidden.split(B)

        valid = b.items != 0
        attributes = m.category_table[1:]  # real categories 1..C
        target = F.one_hot(b.categories, attributes.shape[0] + 1)[..., 1:].to(h_items.dtype)  # category 0: none

        def attribute_loss(head: nn.Linear, where: torch.Tensor) -> torch.Tensor:
            logits = head(h_items) @ attributes.T  # [B, P, C]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
            return (bce * where).sum() / B

        def pairwise(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            return F.softplus(-(torch.sigmoid(pos) - torch.sigmoid(neg)))  # -log sigmoid(f+ - f-)

        q = self.mip(h_items)
        mip = pairwise((q * F.embedding(b.items, table)).sum(-1), (q * F.embedding(b.negatives, table)).sum(-1))
        rows = torch.arange(B, device=hidden.device)
        last = (b.lengths - 1).clamp_min(0)
        ctx = self.sp(h_context[rows, last])
        sp = pairwise((ctx * h_pos[rows, last]).sum(-1), (ctx * h_neg[rows, last]).sum(-1))
        return {
            "aap": attribute_loss(self.aap, valid & ~b.masked),
            "mip": (mip * b.masked).sum() / B,
            "map": attribute_loss(self.map, b.masked),
            "sp": (sp * b.has_segment).sum() / B,
        }


def weighted_total(losses: dict[str, torch.Tensor], cfg: Config) -> torch.Tensor:
    """The joint pre-training loss: sum of the four losses with their configured weights."""
    s = cfg.model.s3rec
    weights = {"aap": s.aap_weight, "mip": s.mip_weight, "map": s.map_weight, "sp": s.sp_weight}
    return sum(weights[k] * losses[k] for k in LOSSES)


def sampling_generator(seed: int) -> torch.Generator:
    """The generator of the pre-training draws (independent of the weights' torch.manual_seed)."""
    derived = int.from_bytes(hashlib.blake2b(f"s3rec-pretrain:{seed}".encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(derived & ((1 << 63) - 1))


def _device(cfg: Config) -> torch.device:
    if cfg.dist.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("dist.device=cuda but CUDA is not available; use dist.device=auto or cpu")
    use_cuda = cfg.dist.device == "cuda" or (cfg.dist.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda") if use_cuda else torch.device("cpu")


def pretrain(cfg: Config) -> Path:
    """Run the pre-training stage of ``cfg`` and return the checkpoint's path."""
    if cfg.model.name != "s3rec":
        raise ConfigError(f"atjt_dist.pretrain pre-trains S3Rec: pass --model.name=s3rec (got model.name={cfg.model.name!r})")
    s = cfg.model.s3rec
    s.check()
    run_dir = choose_run_dir(cfg.run_dir, "s3rec", "pretrain")
    setup_logging(run_dir, True)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    device = _device(cfg)

    d = cfg.data
    data = TrainingData(resolve_data_path(cfg, None), split=d.split, fold=d.fold, history_length=d.history_length, seed=cfg.seed)
    samples = PretrainSamples(data, d.history_length)
    spec = ModelSpec(data.meta["num_users"], data.meta["num_items"], data.meta["num_categories"], d.history_length)
    torch.manual_seed(cfg.seed)
    module = S3RecPretraining(S3Rec(spec, cfg.model)).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=s.pretrain_lr, betas=(0.9, 0.999), weight_decay=s.pretrain_weight_decay)
    g = sampling_generator(cfg.seed)
    steps = math.ceil(len(samples) / s.pretrain_batch_size)
    log.info(
        "S3Rec pre-training on %s: %d training users, %d sequences, %d steps x %d epochs on %s; run directory %s",
        data.arrays.path,
        len(data.train_users),
        len(samples),
        steps,
        s.pretrain_epochs,
        device,
        run_dir,
    )
    writer = MetricsWriter(run_dir, enabled=True)
    # Progress: a bar on a terminal (train.progress_bar), and a step line every train.log_every
    # steps in the log (an epoch is tens of thousands of steps on the paper's datasets).
    bar = progress_bar(steps * s.pretrain_epochs, 0, cfg.train.progress_bar)
    module.train()
    try:
        for epoch in range(s.pretrain_epochs):
            started = time.perf_counter()
            record = _pretrain_epoch(module, optimizer, samples, cfg, epoch, g, bar)
            elapsed = time.perf_counter() - started
            writer.write("pretrain", epoch=epoch + 1, step=(epoch + 1) * steps, sequences_per_s=len(samples) / elapsed, **record)
            log.info(
                "pretrain epoch %d/%d | loss %.4f | AAP %.4f | MIP %.4f | MAP %.4f | SP %.4f | %.0f sequences/s",
                epoch + 1,
                s.pretrain_epochs,
                record["loss"],
                record["aap"],
                record["mip"],
                record["map"],
                record["sp"],
                len(samples) / elapsed,
            )
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    path = run_dir / "pretrain.pt"
    meta = {**checkpoint_meta(cfg, data), "epochs": s.pretrain_epochs, "seed": cfg.seed, "final_losses": record}
    save_checkpoint(module, meta, path)
    log.info("S3Rec pre-training checkpoint: %s", path)
    return path


def _pretrain_epoch(module: S3RecPretraining, optimizer, samples: PretrainSamples, cfg: Config, epoch: int, g: torch.Generator, bar) -> dict:
    """One pass over the pre-training sequences in a random order; returns the epoch's mean
    losses ("loss" and one per objective), checked finite."""
    s = cfg.model.s3rec
    device = next(module.parameters()).device
    steps = math.ceil(len(samples) / s.pretrain_batch_size)
    started = time.perf_counter()
    sums = torch.zeros(len(LOSSES) + 1, dtype=torch.float64, device=device)
    order = torch.randperm(len(samples), generator=g)
    seen = 0
    for step, rows in enumerate(order.split(s.pretrain_batch_size), 1):
        batch = samples.batch(rows, g, module.model.mask_id, s.mask_prob).to(device)
        losses = module(batch)
        total = weighted_total(losses, cfg)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        sums += torch.stack([total.detach(), *(losses[k].detach() for k in LOSSES)]).double() * len(rows)
        seen += len(rows)
        if bar is not None:
            bar.update(1)
        if step % cfg.train.log_every == 0 and step < steps:
            line = (
                f"pretrain epoch {epoch + 1}/{s.pretrain_epochs} step {step}/{steps} | loss so far "
                f"{sums[0].item() / seen:.4f} | {seen / (time.perf_counter() - started):.0f} sequences/s"
            )
            if bar is not None:
                bar.write(line)
            else:
                log.info("%s", line)
    means = (sums / len(samples)).tolist()  # one host sync per epoch
    record = dict(zip(("loss", *LOSSES), means))
    if not all(math.isfinite(v) for v in means):
        raise NonFiniteLossError(f"S3Rec pre-training: non-finite loss in epoch {epoch + 1}: {record}; lower model.s3rec.pretrain_lr")
    return record


def save_checkpoint(module: S3RecPretraining, meta: dict, path: Path) -> None:
    """Write pretrain.pt atomically: S3Rec's state_dict (full CPU tensors), the heads, the metadata."""
    cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}
    payload = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "meta": meta,
        "model": cpu(module.model.state_dict()),
        "heads": cpu({k: v for k, v in module.state_dict().items() if not k.startswith("model.")}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _main(argv: list[str]) -> int:
    cfg = build_config(argv)
    path = pretrain(cfg)
    print(f"pre-training checkpoint: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_cli(_main, argv, "python -m atjt_dist.pretrain", __doc__)


if __name__ == "__main__":
    sys.exit(main())
