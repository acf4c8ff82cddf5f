"""S3Rec: causal fine-tuning, bidirectional pre-training, its four losses, the pretrain command and
fine-tuning from its checkpoint (with the checks that the checkpoint fits the run)."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import PAPER_SCHEDULE, write_tiny_dataset
from model_checks import random_batch

import atjt_dist.commands.pretrain as pretrain_cmd
from atjt_dist.commands.pretrain import (
    LOSSES,
    PretrainSamples,
    S3RecPretraining,
    sampling_generator,
    weighted_total,
)
from atjt_dist.config import Config, ConfigError, ModelConfig, build_config
from atjt_dist.data.dataset import TrainingData
from atjt_dist.metrics import candidate_metrics
from atjt_dist.models import ModelSpec, build_recommender
from atjt_dist.models.batch import embed
from atjt_dist.models.s3rec import S3Rec, apply_pretrained, load_checkpoint

SPEC = ModelSpec(num_users=30, num_items=40, num_categories=5, history_length=7)
# A small S3Rec for the data-backed tests (the paper's sizes are configs/models/s3rec.yaml).
SMALL = [*PAPER_SCHEDULE, "--model.name=s3rec", "--model.s3rec.hidden=16", "--model.s3rec.blocks=1", "--data.history_length=8"]
PRETRAIN = ["--model.s3rec.pretrain_epochs=2", "--model.s3rec.pretrain_batch_size=256", "--model.s3rec.pretrain_lr=0.005"]


def _config(argv: list[str]) -> Config:
    # config.knob copies nested defaults one level deep only, so build_config on a plain Config()
    # would write --model.s3rec.* into defaults shared by later Config()s; build on a deep copy.
    return build_config(argv, base=copy.deepcopy(Config()))


def _model(**s3rec) -> S3Rec:
    torch.manual_seed(0)
    cfg = ModelConfig(name="s3rec")
    for k, v in s3rec.items():
        setattr(cfg.s3rec, k, v)
    return build_recommender(SPEC, cfg)


def _with_negatives(batch, seed=2):
    g = torch.Generator().manual_seed(seed)
    batch.neg_seq = torch.randint(1, SPEC.num_items + 1, batch.hist.shape, generator=g) * batch.mask
    return batch


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------


def test_item_table_has_a_mask_row():
    model = _model()
    assert model.mask_id == SPEC.num_items + 1
    assert model.item_table.shape == (SPEC.num_items + 2, 64)
    assert model.category_table.shape == (SPEC.num_categories + 1, 64)


@pytest.mark.parametrize("k", [2, 5])
def test_fine_tuning_is_causal(k):
    """Changing item k never changes an earlier position's hidden state or next-item logits."""
    model = _model().eval()
    batch = _with_negatives(random_batch(SPEC, rows=8, min_len=SPEC.history_length))
    other = batch.select(slice(None))
    other.hist = batch.hist.clone()
    other.hist[:, k] = batch.hist[:, k] % SPEC.num_items + 1
    h1 = model.encode(batch, embed(model.embeddings, batch))
    h2 = model.encode(other, embed(model.embeddings, other))
    assert torch.allclose(h1[:, :k], h2[:, :k], atol=1e-6)
    assert not torch.allclose(h1[:, k], h2[:, k])
    # position t scores item t + 1: logits before k - 1 do not move
    (p1, n1), (p2, n2) = model.sequence_logits(batch), model.sequence_logits(other)
    assert torch.allclose(p1[:, : k - 1], p2[:, : k - 1], atol=1e-6) and torch.allclose(n1[:, :k], n2[:, :k], atol=1e-6)


def test_pretraining_attention_is_bidirectional():
    model = _model().eval()
    batch = random_batch(SPEC, rows=8, min_len=SPEC.history_length)
    e1 = embed(model.embeddings, batch).hist
    e2 = e1.clone()
    e2[:, 5] = model.item_table[1]
    h1 = model.hidden_states(e1, batch.lengths, causal=False)
    h2 = model.hidden_states(e2, batch.lengths, causal=False)
    assert not torch.allclose(h1[:, :5], h2[:, :5])


def test_scores_do_not_depend_on_the_padding_amount():
    """The most recent item always has the last position, however wide the padded batch is."""
    model = _model().eval()
    batch = _with_negatives(random_batch(SPEC, rows=12, min_len=1))
    wide = batch.select(slice(None))
    pad = torch.zeros(len(batch), 3, dtype=torch.long)
    wide.hist, wide.hist_cat, wide.neg_seq = (torch.cat([t, pad], 1) for t in (batch.hist, batch.hist_cat, batch.neg_seq))
    assert torch.allclose(model(batch), model(wide), atol=1e-5)
    (p1, n1), (p2, n2) = model.sequence_logits(batch), model.sequence_logits(wide)
    m = batch.mask
    assert torch.allclose(p1[m], p2[:, : SPEC.history_length][m], atol=1e-5)
    assert torch.allclose(n1[m], n2[:, : SPEC.history_length][m], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Pre-training
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tiny_dataset):
    return TrainingData(tiny_dataset, history_length=8)


def _pretraining(spec_data, seed=0, **s3rec):
    cfg = ModelConfig(name="s3rec")
    cfg.s3rec.hidden, cfg.s3rec.blocks = 16, 1
    for k, v in s3rec.items():
        setattr(cfg.s3rec, k, v)
    m = spec_data.meta
    torch.manual_seed(seed)
    return S3RecPretraining(S3Rec(ModelSpec(m["num_users"], m["num_items"], m["num_categories"], 8), cfg))


def test_pretraining_batches_follow_the_recipe(tiny_data):
    samples = PretrainSamples(tiny_data, 8)
    mask_id = tiny_data.meta["num_items"] + 1
    b = samples.batch(torch.arange(len(samples))[:512], sampling_generator(0), mask_id, 0.2)
    valid = b.items != 0
    assert (valid.sum(1) == b.lengths).all() and (b.lengths >= 1).all() and (b.lengths <= 8).all()
    rows = torch.arange(len(b.lengths))
    assert b.masked[rows, b.lengths - 1].all()  # the last item is always masked
    assert not (b.masked & ~valid).any()
    assert torch.equal(b.masked_items, torch.where(b.masked, mask_id, b.items))
    share = (b.masked & valid).sum() - len(rows)  # masked beyond the forced last ones
    assert 0.1 < share / (valid.sum() - len(rows)) < 0.3
    neg = b.negatives[b.masked]
    assert (neg >= 1).all() and (neg <= tiny_data.meta["num_items"]).all()
    own = (b.negatives[:, :, None] == b.items[:, None, :]).any(-1)
    assert not own[b.masked].any()
    # SP: one contiguous masked segment of length 1..n//2, the positive and negative complements
    seg = (b.segment_context == mask_id) & valid
    seg_len = seg.sum(1)
    has = b.has_segment
    assert torch.equal(has, b.lengths >= 2)
    assert ((seg_len[has] >= 1) & (seg_len[has] <= b.lengths[has] // 2)).all()
    first = seg.float().argmax(1)
    contiguous = (torch.arange(8)[None] >= first[:, None]) & (torch.arange(8)[None] < (first + seg_len)[:, None])
    assert torch.equal(seg[has], contiguous[has])
    assert torch.equal(b.segment_pos[seg], b.items[seg])
    assert ((b.segment_pos == mask_id) == (valid & ~seg)).all()
    assert ((b.segment_neg == mask_id) == (valid & ~seg)).all()
    assert (b.segment_neg[seg] >= 1).all()
    assert torch.equal(b.categories, torch.from_numpy(np.asarray(tiny_data.arrays.item_category, dtype=np.int64))[b.items])


def test_pretraining_reads_only_training_items(tiny_dataset):
    for split in ("kfold", "loo"):
        data = TrainingData(tiny_dataset, split=split, history_length=8)
        samples = PretrainSamples(data, 8)
        offsets = torch.from_numpy(np.asarray(data.arrays.seq_offsets, dtype=np.int64))
        ends = samples.starts + samples.lengths - 1  # flat index of each sequence's last item
        users = torch.searchsorted(offsets, ends, right=True) - 1
        assert set(users.tolist()) == set(data.train_users.tolist())
        assert (samples.starts >= offsets[users]).all()  # never crosses into another user
        last_train = offsets[users] + torch.from_numpy(data.last_train_pos)[users]
        assert (ends <= last_train).all()  # 'loo': never a user's last (test) item
        assert len(samples.long) == int((torch.from_numpy(data.last_train_pos)[data.train_users] + 1).sum())
    assert len(set(users.tolist())) == data.meta["num_users"]


def test_each_pretraining_loss_is_finite_positive_and_differentiable(tiny_data):
    module = _pretraining(tiny_data)
    samples = PretrainSamples(tiny_data, 8)
    b = samples.batch(torch.arange(128), sampling_generator(0), module.model.mask_id, 0.2)
    losses = module(b)
    assert set(losses) == set(LOSSES)
    heads = {"aap": module.aap, "mip": module.mip, "map": module.map, "sp": module.sp}
    encoder = module.model.encoder.blocks[0].attention.qkv.weight
    tables = {"aap": module.model.category_table, "map": module.model.category_table, "mip": module.model.item_table, "sp": module.model.item_table}
    for name, loss in losses.items():
        assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0, name
        grads = torch.autograd.grad(loss, [heads[name].weight, encoder, tables[name]], retain_graph=True)
        for g in grads:
            assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        others = [heads[o].weight for o in LOSSES if o != name]
        assert all(g is None for g in torch.autograd.grad(loss, others, retain_graph=True, allow_unused=True))
    total = weighted_total(losses, _config(["--model.name=s3rec"]))
    expected = 0.2 * losses["aap"] + losses["mip"] + losses["map"] + 0.5 * losses["sp"]
    assert torch.allclose(total, expected)


def _few_steps(data, seed: int) -> dict:
    module = _pretraining(data, seed=seed, dropout=0.5, attention_dropout=0.5)
    samples = PretrainSamples(data, 8)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    g = sampling_generator(seed)
    order = torch.randperm(len(samples), generator=g)
    for rows in order[:192].split(64):
        loss = sum(module(samples.batch(rows, g, module.model.mask_id, 0.2)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.state_dict()


def test_pretraining_is_deterministic_by_seed(tiny_data):
    a, b, c = _few_steps(tiny_data, 3), _few_steps(tiny_data, 3), _few_steps(tiny_data, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# The command, and fine-tuning from its checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tiny_dataset, tmp_path_factory):
    """Run `python -m atjt_dist.pretrain` (its main, in this process) once on the tiny data."""
    run = tmp_path_factory.mktemp("pretrain")
    with pytest.MonkeyPatch.context() as mp:  # see _config
        mp.setattr(pretrain_cmd, "build_config", lambda argv: _config(argv))
        rc = pretrain_cmd.main(["--data.path", str(tiny_dataset), *SMALL, *PRETRAIN, "--train.log_every=5", f"--run-dir={run}"])
    assert rc == 0
    return run


def test_pretrain_command_writes_checkpoint_and_logs(pretrained, tiny_dataset):
    ckpt = load_checkpoint(pretrained / "pretrain.pt")
    meta = ckpt["meta"]
    assert meta["num_items"] == 120 and meta["hidden"] == 16 and meta["history_length"] == 8
    assert meta["split"] == "kfold" and meta["fold"] == 0 and meta["epochs"] == 2
    assert meta["dataset"] == str(tiny_dataset.resolve())
    assert ckpt["model"]["embeddings.embeddings.rec_item.weight"].shape == (122, 16)
    assert set(ckpt["heads"]) == {f"{h}.{p}" for h in LOSSES for p in ("weight", "bias")}
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "pretrain"] == [1, 2]
    for r in records:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("loss", *LOSSES))
    assert records[-1]["loss"] < records[0]["loss"]
    log_text = (pretrained / "train.log").read_text()
    assert len(re.findall(r"pretrain epoch [12]/2 \| loss", log_text)) == 2  # one summary per epoch
    # and a progress line every train.log_every (5) steps within each epoch
    progress = re.findall(r"pretrain epoch ([12])/2 step (\d+)/(\d+) \| loss so far ([0-9.]+)", log_text)
    assert {epoch for epoch, *_ in progress} == {"1", "2"}
    assert len({total for *_, total, _ in progress}) == 1  # the same steps per epoch
    assert all(int(step) % 5 == 0 and int(step) < int(total) for _, step, total, _ in progress)
    assert all(math.isfinite(float(loss)) and float(loss) > 0 for *_, loss in progress)
    assert "name: s3rec" in (pretrained / "config.yaml").read_text()


def test_pretrain_command_refuses_another_model(tiny_dataset, tmp_path, capsys):
    rc = pretrain_cmd.main(["--data.path", str(tiny_dataset), "--model.name=din", f"--run-dir={tmp_path}"])
    assert rc == 2 and "--model.name=s3rec" in capsys.readouterr().err


def _full_tensor(t) -> torch.Tensor:
    """A (possibly sharded) state tensor of the DMP model as one dense tensor (this rank's view)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if not isinstance(t, ShardedTensor):
        return t.detach()
    out = torch.full(tuple(t.size()), float("nan"))
    for shard in t.local_shards():
        index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        out[index] = shard.tensor.detach()
    return out


def _finetune_args(data, run_dir, ckpt, *extra):
    return [
        "--data.path",
        str(data),
        *SMALL,
        "--model.s3rec.pretrained",
        str(ckpt),
        "--train.batch_size=64",
        "--train.lr=0.05",
        f"--run-dir={run_dir}",
        "--no-train.progress_bar",
        "--train.log_every=1",
        *extra,
    ]


def test_fine_tuning_from_the_checkpoint(pretrained, tiny_dataset, tmp_path):
    from atjt_dist.trainer import Trainer

    ckpt_path = pretrained / "pretrain.pt"
    ckpt = load_checkpoint(ckpt_path)
    cfg = _config(_finetune_args(tiny_dataset, tmp_path, ckpt_path, "--atjt.enabled=false", "--train.epochs=3"))
    trainer = Trainer(cfg)
    try:
        state = trainer.model.state_dict()
        for key in (
            "embeddings.embeddings.rec_item.weight",
            "embeddings.embeddings.rec_category.weight",
            "positions.weight",
            "encoder.blocks.0.attention.qkv.weight",
        ):
            assert torch.equal(_full_tensor(state[f"recommender.{key}"]), ckpt["model"][key]), key
        trainer.train()
        metrics = trainer.evaluate()
        data = trainer.data
    finally:
        trainer.close()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(losses) == 18  # 2 phases x 3 epochs x 3 batches of 64 of 240 users
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    popularity = np.asarray(data.arrays.popularity, dtype=np.float64)
    candidates = np.asarray(data.arrays.candidates)[data.test_users]
    popular = candidate_metrics(torch.from_numpy(popularity[candidates]))
    assert metrics["auc"] > popular["auc"] + 0.1 and metrics["hr@5"] > popular["hr@5"] + 0.1, (metrics, popular)


def test_fine_tuning_with_atjt_and_next_item(pretrained, tiny_dataset, tmp_path):
    from atjt_dist.trainer import Trainer

    extra = ("--model.objective=next_item", "--atjt.recognizer_batch_size=32", "--train.epochs=1")
    trainer = Trainer(_config(_finetune_args(tiny_dataset, tmp_path, pretrained / "pretrain.pt", *extra)))
    try:
        trainer.train()
        metrics = trainer.evaluate()
    finally:
        trainer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert records and all(math.isfinite(r[k]) for r in records for k in ("loss", "loss_rec", "loss_aux", "weight_mean"))
    assert all(math.isfinite(metrics[k]) for k in ("auc", "hr@5", "ndcg@5"))


def test_a_checkpoint_of_another_run_is_refused(pretrained, tiny_dataset, tmp_path):
    from atjt_dist.joint import JointModel

    ckpt = pretrained / "pretrain.pt"

    def load(dataset, *extra):
        cfg = _config(_finetune_args(dataset, tmp_path, ckpt, "--atjt.enabled=false", *extra))
        data = TrainingData(dataset, fold=cfg.data.fold, history_length=cfg.data.history_length)
        m = data.meta
        model = JointModel(ModelSpec(m["num_users"], m["num_items"], m["num_categories"], cfg.data.history_length), cfg)
        state = dict(model.state_dict())
        return apply_pretrained(state, cfg, data), state

    n, state = load(tiny_dataset)  # the matching run loads every tensor
    assert n == len(load_checkpoint(ckpt)["model"])
    assert torch.equal(state["recommender.embeddings.embeddings.rec_item.weight"], load_checkpoint(ckpt)["model"]["embeddings.embeddings.rec_item.weight"])

    other = write_tiny_dataset(tmp_path / "other", items=100, seed=1)
    with pytest.raises(ConfigError) as err:
        load(other)
    assert str(ckpt) in str(err.value) and "num_items 120 in the checkpoint vs 100 in this run" in str(err.value)
    assert str(other.resolve()) in str(err.value)
    with pytest.raises(ConfigError, match="hidden 16 in the checkpoint vs 32"):
        load(tiny_dataset, "--model.s3rec.hidden=32")
    with pytest.raises(ConfigError, match="fold 0 in the checkpoint vs 1"):  # its test users were pre-trained on
        load(tiny_dataset, "--data.fold=1")
    with pytest.raises(FileNotFoundError, match="atjt_dist.pretrain"):
        load_checkpoint(tmp_path / "missing.pt")
