"""SASRec and FEARec: causality, padding, next-item training, FEARec's regulariser, short runs.

(tests/test_models.py checks what every model must do: shapes, padding content, determinism,
row independence, gradients.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PAPER_SCHEDULE
from model_checks import random_batch

from atjt_dist.config import ConfigError, ModelConfig, build_config
from atjt_dist.metrics import candidate_metrics
from atjt_dist.models import ModelSpec, build_recommender
from atjt_dist.models.batch import SequenceBatch, embed
from atjt_dist.models.fearec import frequency_band, info_nce_sum
from atjt_dist.models.transformer import position_ids

SPEC = ModelSpec(num_users=30, num_items=40, num_categories=5, history_length=7)
REPO = Path(__file__).resolve().parents[1]

# (model, its position alignment): every variant must be causal and padding-independent
VARIANTS = [("sasrec", "end"), ("sasrec", "start"), ("fearec", "start"), ("fearec", "end")]
# the variants whose hidden state at t is a function of items 0..t alone (so next-item position
# t equals a pointwise forward of the prefix): all but SASRec with the paper's 'end' positions
PREFIX_EXACT = [v for v in VARIANTS if v != ("sasrec", "end")]


def _model(name: str, positions: str, **section) -> torch.nn.Module:
    cfg = ModelConfig(name=name)
    sub = getattr(cfg, name)
    sub.positions = positions
    for key, value in section.items():
        setattr(sub, key, value)
    torch.manual_seed(0)
    return build_recommender(SPEC, cfg)


def _with_negatives(batch: SequenceBatch, seed: int = 3) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    out = batch.select(slice(None))
    out.neg_seq = torch.randint(1, SPEC.num_items + 1, batch.hist.shape, generator=g) * batch.mask
    return out


def _hidden(model, batch: SequenceBatch) -> torch.Tensor:
    return model.encode(batch, embed(model.embeddings, batch))


def _padded(batch: SequenceBatch, width: int) -> SequenceBatch:
    """The same rows laid out on ``width`` columns (zero padding added or trailing padding cut)."""

    def fit(t):
        if t is None:
            return None
        return F.pad(t, (0, width - t.shape[1])) if width >= t.shape[1] else t[:, :width]

    out = batch.select(slice(None))
    out.hist, out.hist_cat, out.neg_seq = fit(batch.hist), fit(batch.hist_cat), fit(batch.neg_seq)
    return out


def _prefix(batch: SequenceBatch, t: int, target: torch.Tensor) -> SequenceBatch:
    """Rows cut to their first t + 1 items (rows with fewer keep theirs), scored on ``target``."""
    out = batch.without_negatives().select(slice(None))
    out.lengths = batch.lengths.clamp(max=t + 1)
    keep = out.mask
    out.hist, out.hist_cat = batch.hist * keep, batch.hist_cat * keep
    out.target = target
    return out


# ---------------------------------------------------------------------------------------------
# Positions, causality, padding
# ---------------------------------------------------------------------------------------------


def test_position_ids_start_and_end():
    lengths = torch.tensor([3, 0, 5])
    assert position_ids(lengths, 6, 5, "start").tolist() == [[0, 1, 2, 0, 0, 0], [0] * 6, [0, 1, 2, 3, 4, 0]]
    # 'end': the most recent item always gets id max_len - 1, whatever the padded width
    assert position_ids(lengths, 6, 5, "end").tolist() == [[2, 3, 4, 0, 0, 0], [0] * 6, [0, 1, 2, 3, 4, 0]]
    assert position_ids(lengths, 9, 5, "end")[:, :6].tolist() == position_ids(lengths, 6, 5, "end").tolist()


@pytest.mark.parametrize("name,positions", VARIANTS)
def test_a_later_item_never_changes_an_earlier_position(name, positions):
    model = _model(name, positions).eval()
    batch = _with_negatives(random_batch(SPEC, rows=16, min_len=4))
    t = 1
    later = batch.mask & (torch.arange(SPEC.history_length)[None, :] > t)
    other = batch.select(slice(None))
    other.hist = torch.where(later, batch.hist % SPEC.num_items + 1, batch.hist)
    with torch.no_grad():
        h, h2 = _hidden(model, batch), _hidden(model, other)
        (pos, neg), (pos2, neg2) = model.sequence_logits(batch), model.sequence_logits(other)
    assert torch.allclose(h[:, : t + 1], h2[:, : t + 1], atol=1e-6)
    assert not torch.allclose(h[:, t + 1 :], h2[:, t + 1 :], atol=1e-4)  # later positions do change
    assert torch.allclose(neg[:, : t + 1], neg2[:, : t + 1], atol=1e-6)
    assert torch.allclose(pos[:, :t], pos2[:, :t], atol=1e-6)  # position t's positive is item t + 1


@pytest.mark.parametrize("name,positions", VARIANTS)
def test_the_amount_of_padding_does_not_matter(name, positions):
    model = _model(name, positions).eval()
    batch = _with_negatives(random_batch(SPEC, rows=16, min_len=1))
    short = _with_negatives(random_batch(SPEC, rows=16, seed=5, min_len=1))
    short.lengths = short.lengths.clamp(max=4)
    short.hist, short.hist_cat, short.neg_seq = (x * short.mask for x in (short.hist, short.hist_cat, short.neg_seq))
    L = SPEC.history_length
    with torch.no_grad():
        for b, width in ((batch, L + 5), (short, 4)):  # wider than the model's L, and narrower
            other = _padded(b, width)
            assert torch.allclose(model(b), model(other), atol=1e-6)
            h, h2 = _hidden(model, b), _hidden(model, other)
            n = min(L, width)
            assert h2.shape[1] == width and torch.allclose(h[:, :n], h2[:, :n], atol=1e-6)
            assert (h2[:, n:] == 0).all() and (h[:, n:] == 0).all()
            (pos, neg), (pos2, neg2) = model.sequence_logits(b), model.sequence_logits(other)
            assert torch.allclose(pos[:, :n], pos2[:, :n], atol=1e-6) and torch.allclose(neg[:, :n], neg2[:, :n], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Next-item training
# ---------------------------------------------------------------------------------------------


def _next_items(batch: SequenceBatch) -> torch.Tensor:
    nxt = torch.cat([batch.hist[:, 1:], torch.zeros_like(batch.hist[:, :1])], dim=1)
    last = batch.lengths - 1
    rows = torch.arange(len(batch))
    nxt[rows, last.clamp_min(0)] = torch.where(last >= 0, batch.target, nxt[rows, last.clamp_min(0)])
    return nxt * batch.mask


@pytest.mark.parametrize("name,positions", VARIANTS)
def test_next_item_logits_at_the_last_position_are_the_pointwise_scores(name, positions):
    model = _model(name, positions).eval()
    batch = _with_negatives(random_batch(SPEC, rows=12, min_len=1))
    with torch.no_grad():
        pos, neg = model.sequence_logits(batch)
        assert pos.shape == neg.shape == batch.hist.shape
        rows, last = torch.arange(len(batch)), batch.lengths - 1
        assert torch.allclose(pos[rows, last], model(batch.without_negatives()), atol=1e-5)
        as_negative = batch.without_negatives().select(slice(None))
        as_negative.target = batch.neg_seq[rows, last]
        assert torch.allclose(neg[rows, last], model(as_negative), atol=1e-5)


@pytest.mark.parametrize("name,positions", PREFIX_EXACT)
def test_next_item_logits_at_every_position_score_the_prefix(name, positions):
    """Position t scores the item after it exactly as a pointwise forward of items 0..t."""
    model = _model(name, positions).eval()
    batch = _with_negatives(random_batch(SPEC, rows=12, min_len=2))
    nxt = _next_items(batch)
    with torch.no_grad():
        pos, neg = model.sequence_logits(batch)
        for t in range(SPEC.history_length):
            rows = batch.lengths > t
            if not rows.any():
                continue
            expected_pos = model(_prefix(batch, t, nxt[:, t].clamp_min(1)))
            expected_neg = model(_prefix(batch, t, batch.neg_seq[:, t].clamp_min(1)))
            assert torch.allclose(pos[rows, t], expected_pos[rows], atol=1e-5), t
            assert torch.allclose(neg[rows, t], expected_neg[rows], atol=1e-5), t


def test_sasrec_with_end_positions_depends_on_the_row_length_not_on_later_items():
    """The paper's left-padded positions: position t's id depends on how many items follow it,
    so an earlier position is not a pointwise forward of its prefix (documented in sasrec.py)."""
    model = _model("sasrec", "end").eval()
    batch = _with_negatives(random_batch(SPEC, rows=12, min_len=3))
    with torch.no_grad():
        pos, _ = model.sequence_logits(batch)
        first = model(_prefix(batch, 0, batch.hist[:, 1]))
    assert not torch.allclose(pos[:, 0], first, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# FEARec's mechanisms and regulariser
# ---------------------------------------------------------------------------------------------


def test_frequency_ramp_bands():
    # the authors' code with L = 50, 2 blocks, global ratio 0.6: bins [10, 26) then [0, 16)
    assert [frequency_band(i, 2, 50, 0.6) for i in range(2)] == [(10, 26), (0, 16)]
    assert [frequency_band(i, 2, 19, 0.6) for i in range(2)] == [(4, 10), (0, 6)]
    # global ratio <= 1/blocks: disjoint bands, highest first, covering the spectrum
    assert [frequency_band(i, 2, 50, 0.5) for i in range(2)] == [(13, 26), (0, 13)]
    assert frequency_band(0, 1, 19, 1.0) == (0, 10)
    for L in (1, 2, 7, 19):  # never empty
        for blocks in (1, 2, 3, 4):
            for ratio in (0.1, 0.6, 1.0):
                assert all(lo < hi for lo, hi in (frequency_band(i, blocks, L, ratio) for i in range(blocks)))


def _pointwise_training_batch() -> SequenceBatch:
    pos = random_batch(SPEC, rows=6, min_len=1)
    neg = pos.select(slice(None))
    neg.target = pos.target % SPEC.num_items + 1
    neg.label = torch.zeros_like(pos.label)
    pos.label = torch.ones_like(pos.label)
    return SequenceBatch.concat([pos, neg])


def test_fearec_extra_loss_is_finite_positive_and_differentiable():
    model = _model("fearec", "start", dropout=0.5, attention_dropout=0.5).train()
    for batch, sequences in ((_pointwise_training_batch(), 6), (_with_negatives(random_batch(SPEC, rows=8, min_len=1)), 8)):
        model.zero_grad()
        total, rows = model.extra_loss(batch)
        assert rows == sequences and total.ndim == 0 and torch.isfinite(total) and total > 0
        total.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert grads["blocks.0.attention.qkv.weight"].abs().sum() > 0
    # each term on its own: with identical views (no dropout) the frequency term vanishes
    batch = _pointwise_training_batch()
    assert _model("fearec", "start", dropout=0.5, contrastive_weight=0.0).train().extra_loss(batch)[0] > 0
    assert _model("fearec", "start", dropout=0.5, frequency_weight=0.0).train().extra_loss(batch)[0] > 0
    assert _model("fearec", "start", contrastive_weight=0.0).train().extra_loss(batch)[0] == 0
    assert _model("fearec", "start", contrastive_weight=0.0, frequency_weight=0.0).extra_loss(batch) is None


def test_fearec_extra_loss_reuses_the_training_forwards_lookups(monkeypatch):
    from atjt_dist.models import base, fearec
    from atjt_dist.models import batch as batch_module

    calls = []
    real = batch_module.embed

    def counting(ec, b):
        calls.append(1)
        return real(ec, b)

    for module in (base, batch_module, fearec):
        monkeypatch.setattr(module, "embed", counting, raising=False)
    model = _model("fearec", "start", dropout=0.5).train()
    batch = _pointwise_training_batch()
    model(batch)
    model.extra_loss(batch)
    assert len(calls) == 1  # one lookup per step: the tables' fused optimiser updates once
    nxt = _with_negatives(random_batch(SPEC, rows=8, min_len=1))
    model.sequence_logits(nxt)  # base class -> embed(...) -> FEARec.encode
    model.extra_loss(nxt)
    assert len(calls) == 2
    model.extra_loss(nxt)  # nothing remembered any more: looks up again
    assert len(calls) == 3


@pytest.mark.parametrize("name", ["sasrec", "s3rec"])
def test_pointwise_training_encodes_each_history_once_with_the_same_logits_and_gradients(name, monkeypatch):
    """score_pairs (what a pointwise training step calls) encodes the shared histories once and
    gives forward's logits and gradients (dropout off), with half the encoder rows."""
    from atjt_dist.models import base

    cfg = ModelConfig(name=name)
    torch.manual_seed(0)
    model = build_recommender(SPEC, cfg).train()
    batch = _pointwise_training_batch()
    encoded = []
    real = type(model).last_hidden

    def counting(self, b, e):
        encoded.append(len(b))
        return real(self, b, e)

    monkeypatch.setattr(type(model), "last_hidden", counting)
    grads = []
    for score in (model.forward, model.score_pairs):
        model.zero_grad()
        logits = score(batch)
        (logits * torch.linspace(-1, 1, len(batch))).sum().backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert encoded == [12, 6]  # 12 rows: 6 histories, each with a positive and a negative
    (want, want_grads), (got, got_grads) = grads
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        # float32 sums in another order: differences of ~1e-7 of the largest gradient
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-5, atol=1e-6 * want_grads[n].abs().max().item(), msg=n)
    assert base.SequentialRecommender.score_pairs is not base.Recommender.score_pairs


def test_fearec_extra_loss_reuses_the_lookups_of_score_pairs(monkeypatch):
    from atjt_dist.models import base, fearec
    from atjt_dist.models import batch as batch_module

    calls = []
    real = batch_module.embed

    def counting(ec, b):
        calls.append(len(b))
        return real(ec, b)

    for module in (base, batch_module, fearec):
        monkeypatch.setattr(module, "embed", counting, raising=False)
    model = _model("fearec", "start", dropout=0.5).train()
    batch = _pointwise_training_batch()
    model.score_pairs(batch)  # FEARec: forward, one lookup of all 12 rows, reused by extra_loss
    total, rows = model.extra_loss(batch)
    assert calls == [12] and rows == 6 and torch.isfinite(total)


def _reference_info_nce(z1, z2, temperature):
    """The authors' info_nce + CrossEntropyLoss (mean over the 2N views)."""
    N = len(z1)
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    positives = torch.cat([torch.diag(sim, N), torch.diag(sim, -N)]).reshape(2 * N, 1)
    mask = torch.ones(2 * N, 2 * N, dtype=torch.bool).fill_diagonal_(False)
    for i in range(N):
        mask[i, N + i] = mask[N + i, i] = False
    logits = torch.cat([positives, sim[mask].reshape(2 * N, -1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(2 * N, dtype=torch.long))


def test_info_nce_matches_the_authors_and_splits_exactly_over_ranks():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    whole = info_nce_sum(z1, z2, z1, z2, 0, 0.7)
    assert torch.allclose(whole / 8, _reference_info_nce(z1, z2, 0.7))
    # two ranks of 4 rows, each with the gathered views: the shares add up to the whole
    shares = info_nce_sum(z1[:4], z2[:4], z1, z2, 0, 0.7) + info_nce_sum(z1[4:], z2[4:], z1, z2, 4, 0.7)
    assert torch.allclose(shares, whole)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def test_model_configs_load_with_the_papers_settings():
    s = build_config(["--config", str(REPO / "configs/models/sasrec.yaml")]).model
    assert s.name == "sasrec" and (s.sasrec.hidden, s.sasrec.blocks, s.sasrec.heads, s.sasrec.dropout) == (64, 2, 1, 0.2)
    f = build_config(["--config", str(REPO / "configs/models/fearec.yaml")]).model
    assert f.name == "fearec" and (f.fearec.dropout, f.fearec.attention_dropout, f.fearec.global_ratio) == (0.5, 0.5, 0.6)


@pytest.mark.parametrize(
    "name,key,value,message",
    [
        ("sasrec", "hidden", 50, "multiple of 4"),
        ("sasrec", "heads", 3, "must divide"),
        ("fearec", "global_ratio", 0.0, "global_ratio"),
        ("fearec", "temperature", 0.0, "temperature"),
    ],
)
def test_bad_settings_name_the_config_key(name, key, value, message):
    cfg = ModelConfig(name=name)
    setattr(getattr(cfg, name), key, value)
    with pytest.raises(ConfigError, match=message) as err:
        build_recommender(SPEC, cfg)
    assert f"model.{name}." in str(err.value)


# ---------------------------------------------------------------------------------------------
# Short training runs on the tiny dataset
# ---------------------------------------------------------------------------------------------


def _train(tiny_dataset, tmp_path, *args) -> tuple[dict, dict, list[dict]]:
    """Train and evaluate; return (test metrics, a popularity ranker's metrics on the same
    candidates, the log record of every step). The learning rate is raised from the paper's
    Adagrad 8.15e-4 so that a dozen steps show learning."""
    from atjt_dist.trainer import Trainer

    # numba's OpenMP pool (first used by the data path) raises torch's intra-op threads to the
    # core count; on a shared 2-core machine that oversubscription makes steps ~8x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = build_config(
            [
                *PAPER_SCHEDULE,
                "--data.path",
                str(tiny_dataset),
                "--train.batch_size=64",
                "--train.epochs=3",
                "--train.log_every=1",
                "--train.lr=0.01",
                "--eval.batch_users=40",
                f"--run-dir={tmp_path}",
                "--no-train.progress_bar",
                *args,
            ]
        )
        trainer = Trainer(cfg)
        try:
            trainer.train()
            metrics = trainer.evaluate()
            d = trainer.data
            popularity = np.asarray(d.arrays.popularity)[np.asarray(d.arrays.candidates)[d.test_users]]
            baseline = candidate_metrics(torch.from_numpy(popularity).double(), k=5)
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return metrics, baseline, [r for r in records if r["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,objective,extra",
    [
        ("sasrec", "pointwise", []),
        ("sasrec", "next_item", []),
        ("fearec", "pointwise", []),
        # FEARec's next-item form runs one encoder pass per prefix: a smaller model keeps it short
        ("fearec", "next_item", ["--model.fearec.hidden=32", "--model.fearec.inner=64", "--train.epochs=2"]),
    ],
)
def test_training_learns_and_beats_popularity(tiny_dataset, tmp_path, name, objective, extra):
    metrics, popularity, steps = _train(
        tiny_dataset,
        tmp_path,
        "--config",
        str(REPO / f"configs/models/{name}.yaml"),
        f"--model.objective={objective}",
        "--atjt.enabled=false",
        *extra,
    )
    assert steps and all(math.isfinite(r["loss"]) for r in steps)
    rec = [r["loss_rec"] for r in steps]  # FEARec's total also holds its contrastive terms
    assert np.mean(rec[-3:]) < np.mean(rec[:3]) - 0.01
    assert metrics["auc"] > popularity["auc"] + 0.1
    assert metrics["hr@5"] > popularity["hr@5"]


@pytest.mark.slow
def test_training_with_atjt_gives_finite_losses(tiny_dataset, tmp_path):
    metrics, _, steps = _train(
        tiny_dataset,
        tmp_path,
        "--config",
        str(REPO / "configs/models/fearec.yaml"),
        "--model.objective=next_item",
        "--model.fearec.hidden=32",
        "--model.fearec.inner=64",
        "--atjt.enabled=true",
        "--atjt.recognizer_batch_size=32",
        "--train.max_steps=6",
    )
    assert len(steps) == 6
    assert all(math.isfinite(r[k]) for r in steps for k in ("loss", "loss_rec", "loss_aux", "loss_extra"))
    assert all(r["loss_extra"] > 0 for r in steps)  # FEARec's regulariser joins the objective
    assert all(math.isfinite(v) for k, v in metrics.items() if isinstance(v, float))


def _gathered_info_nce(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    from atjt_dist.models.fearec import gather_views

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = len(z1) // world
        rows = slice(rank * n, (rank + 1) * n)
        a, b = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
        z1_all, z2_all, offset = gather_views(a, b)
        share = info_nce_sum(a, b, z1_all, z2_all, offset, 0.5)
        share.backward()  # all_gather's backward sums every rank's gradient into a's and b's
        total = share.detach().clone()
        dist.all_reduce(total)
        out[rank] = (total, a.grad, b.grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_contrastive_negatives_are_gathered_across_ranks():
    """Two gloo processes with half the rows each: the same loss and the same gradients as one
    process with the whole batch (the negatives are the global batch's views)."""
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    whole = info_nce_sum(a, b, a, b, 0, 0.5)
    whole.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=_gathered_info_nce, args=(r, 2, port, z1, z2, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        results = dict(out)
    for r in range(2):
        total, g1, g2 = results[r]
        assert torch.allclose(total, whole.detach())
        assert torch.allclose(g1, a.grad[4 * r : 4 * (r + 1)]) and torch.allclose(g2, b.grad[4 * r : 4 * (r + 1)])
