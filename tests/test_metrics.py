"""Tests of atjt_dist.metrics: definitions, tie policy, paper_compat quirks, exact reduction."""

from __future__ import annotations

import datetime
import gc
import itertools
import json
import math
import os
import sys

import pytest
import torch
from sklearn.metrics import roc_auc_score

from atjt_dist.metrics import (
    CandidateMetrics,
    binary_auc,
    candidate_metric_sums,
    candidate_metrics,
    finalize,
    gather_binary_auc,
    reduce_sums,
)

TOL = 1e-9  # per-user values are rounded to multiples of 2**-30 (error < 5e-10)
Z5 = sum(1 / math.log2(i + 2) for i in range(1, 6))  # the paper's NDCG@5 normaliser


def ndcg_gain(rank: int) -> float:
    return 1 / math.log2(rank + 1)


def paper_gain(rank: int, k: int) -> float:
    return 1 / math.log2(rank + 2) / sum(1 / math.log2(i + 2) for i in range(1, k + 1))


def row(pos: float, negs: list[float]) -> torch.Tensor:
    return torch.tensor([[pos, *negs]], dtype=torch.float32)


def random_scores(users: int, candidates: int, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(users, candidates, generator=g)
    s[:, 0] += 1.0  # make the positive better than chance
    return torch.round(s * 1.5) if ties else s


# --------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn_per_user_and_averaged(ties):
    scores = random_scores(40, 64, seed=1, ties=ties)
    labels = [1] + [0] * 63
    per_user = [roc_auc_score(labels, scores[u].numpy()) for u in range(scores.shape[0])]
    if ties:
        assert any((scores[u, 1:] == scores[u, 0]).any() for u in range(40))  # ties do occur
    for u in range(0, 40, 7):
        assert candidate_metrics(scores[u : u + 1])["auc"] == pytest.approx(per_user[u], abs=TOL)
    assert candidate_metrics(scores)["auc"] == pytest.approx(sum(per_user) / 40, abs=TOL)
    # AUC is the same in paper_compat
    assert candidate_metrics(scores, paper_compat=True)["auc"] == candidate_metrics(scores)["auc"]


def test_auc_ties_count_half():
    # 1 negative below, 2 tied, 1 above: (1 + 2/2) / 4
    assert candidate_metrics(row(1.0, [0.0, 1.0, 1.0, 2.0]))["auc"] == pytest.approx(0.5, abs=TOL)
    assert candidate_metrics(row(1.0, [0.0, 0.0, 1.0, 0.0]))["auc"] == pytest.approx(7 / 8, abs=TOL)


# --------------------------------------------------------------------------------------------
# HR / NDCG: hand-computed ranks, boundary K and K+1, ties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "above, hit",
    [(0, True), (3, True), (4, True), (5, False), (6, False)],  # rank = above + 1; K = 5
)
def test_hr_ndcg_hand_computed_ranks_around_k(above, hit):
    negs = [5.0] * above + [-5.0] * (7 - above)
    m = candidate_metrics(row(1.0, negs), k=5)
    p = candidate_metrics(row(1.0, negs), k=5, paper_compat=True)
    rank = above + 1
    assert m["hr@5"] == (1.0 if hit else 0.0)
    assert m["ndcg@5"] == pytest.approx(ndcg_gain(rank) if hit else 0.0, abs=TOL)
    assert p["hr@5"] == (1.0 if hit else 0.0)  # positive logit 1.0 -> probability > 0.5
    assert p["ndcg@5"] == pytest.approx(paper_gain(rank, 5) if hit else 0.0, abs=TOL)
    assert m["auc"] == pytest.approx((7 - above) / 7, abs=TOL)


def test_rank_exactly_k_vs_k_plus_one_values():
    at_k = candidate_metrics(row(0.0, [1, 2, 3, 4, -1, -2]), k=5)
    past_k = candidate_metrics(row(0.0, [1, 2, 3, 4, 5, -2]), k=5)
    assert at_k["hr@5"] == 1.0 and at_k["ndcg@5"] == pytest.approx(1 / math.log2(6), abs=TOL)
    assert past_k["hr@5"] == 0.0 and past_k["ndcg@5"] == 0.0


def test_ties_use_expected_metric_over_random_tie_order():
    # 3 negatives above, 2 tied: the positive's rank is 4, 5 or 6 with probability 1/3 each.
    m = candidate_metrics(row(1.0, [3, 3, 3, 1, 1, 0, 0]), k=5)
    assert m["hr@5"] == pytest.approx(2 / 3, abs=TOL)
    assert m["ndcg@5"] == pytest.approx((ndcg_gain(4) + ndcg_gain(5)) / 3, abs=TOL)
    p = candidate_metrics(row(1.0, [3, 3, 3, 1, 1, 0, 0]), k=5, paper_compat=True)
    assert p["ndcg@5"] == pytest.approx((paper_gain(4, 5) + paper_gain(5, 5)) / 3, abs=TOL)
    # tied with one negative at the top: rank 1 or 2
    m = candidate_metrics(row(2.0, [2, 1, 0]), k=5)
    assert m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 + ndcg_gain(2)) / 2, abs=TOL)
    # not the expected-rank shortcut: mean rank 5 would give ndcg 1/log2(6), hr 1
    m = candidate_metrics(row(1.0, [3, 3, 3, 1, 1, 1, 1, 0]), k=5)  # ranks 4..8
    assert m["hr@5"] == pytest.approx(2 / 5, abs=TOL)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_ties_match_brute_force_over_all_tie_orders(k):
    """Average over every order of the candidates, ties broken by that order (exact expectation)."""
    g = torch.Generator().manual_seed(7)
    scores = torch.randint(0, 3, (12, 5), generator=g).float() - 1.0  # many ties, logits -1/0/1
    perms = list(itertools.permutations(range(5)))
    for u in range(scores.shape[0]):
        s = scores[u].tolist()
        hr = ndcg = phr = pndcg = 0.0
        for perm in perms:  # candidates sorted by (score desc, position in perm)
            order = sorted(range(5), key=lambda c: (-s[c], perm.index(c)))
            rank = order.index(0) + 1
            if rank <= k:
                hr += 1
                ndcg += ndcg_gain(rank)
                phr += 1 if s[0] > 0 else 0
                pndcg += paper_gain(rank, k)
        n = len(perms)
        m = candidate_metrics(scores[u : u + 1], k=k)
        p = candidate_metrics(scores[u : u + 1], k=k, paper_compat=True)
        assert m[f"hr@{k}"] == pytest.approx(hr / n, abs=TOL)
        assert m[f"ndcg@{k}"] == pytest.approx(ndcg / n, abs=TOL)
        assert p[f"hr@{k}"] == pytest.approx(phr / n, abs=TOL)
        assert p[f"ndcg@{k}"] == pytest.approx(pndcg / n, abs=TOL)


def test_constant_scores_score_like_random_not_like_a_perfect_model():
    for value in (0.0, 3.0, -2.0):
        scores = torch.full((10, 64), value)
        m = candidate_metrics(scores)
        assert m["hr@5"] == pytest.approx(5 / 64, abs=TOL)
        assert m["hr@5"] < 0.1  # never HR = 1
        assert m["ndcg@5"] == pytest.approx(sum(ndcg_gain(r) for r in range(1, 6)) / 64, abs=TOL)
        assert m["auc"] == 0.5
        p = candidate_metrics(scores, paper_compat=True)
        assert p["hr@5"] == pytest.approx(5 / 64 if value > 0 else 0.0, abs=TOL)
        assert p["ndcg@5"] == pytest.approx(1 / 64, abs=TOL)  # the K discounts sum to Z_K


# --------------------------------------------------------------------------------------------
# paper_compat quirks
# --------------------------------------------------------------------------------------------


def test_paper_ndcg_maximum():
    top = row(4.0, [1.0] * 63)
    p = candidate_metrics(top, k=5, paper_compat=True)
    assert p["ndcg@5"] == pytest.approx(1 / math.log2(3) / Z5, abs=TOL)
    assert p["ndcg@5"] == pytest.approx(0.2737618682289, abs=TOL)  # the value in the docstring
    assert Z5 == pytest.approx(2.3046663059874, abs=1e-12)
    assert candidate_metrics(top, k=5)["ndcg@5"] == 1.0
    z10 = sum(1 / math.log2(i + 2) for i in range(1, 11))
    assert candidate_metrics(top, k=10, paper_compat=True)["ndcg@10"] == pytest.approx(1 / math.log2(3) / z10, abs=TOL)


def test_paper_hr_requires_probability_above_half():
    negs = [-9.0] * 63
    for logit, paper_hit in [(-1.0, 0.0), (0.0, 0.0), (1e-10, 1.0), (0.5, 1.0)]:
        scores = row(logit, negs)  # the positive is ranked first in every case
        assert candidate_metrics(scores)["hr@5"] == 1.0
        assert candidate_metrics(scores, paper_compat=True)["hr@5"] == paper_hit
        # the paper's NDCG has no probability condition
        assert candidate_metrics(scores, paper_compat=True)["ndcg@5"] == pytest.approx(1 / math.log2(3) / Z5, abs=TOL)
    # average over users: 2 of 4 positives have a positive logit
    scores = torch.cat([row(v, negs) for v in (-1.0, 2.0, -0.5, 3.0)])
    assert candidate_metrics(scores, paper_compat=True)["hr@5"] == 0.5
    assert candidate_metrics(scores)["hr@5"] == 1.0


# --------------------------------------------------------------------------------------------
# valid mask, NaN, k, input errors
# --------------------------------------------------------------------------------------------


def test_valid_mask_leaves_out_padding_rows():
    scores = random_scores(10, 16, seed=3, ties=True)
    valid = torch.tensor([True, False, True, True, False, True, True, True, False, True])
    padded = scores.clone()
    padded[~valid] = float("nan")  # whatever padding rows hold, they must not matter
    for paper in (False, True):
        assert candidate_metrics(padded, valid=valid, paper_compat=paper) == candidate_metrics(scores[valid], paper_compat=paper)
    assert finalize(candidate_metric_sums(padded, valid=valid))["users"] == 7
    assert candidate_metrics(scores, valid=valid) != candidate_metrics(scores)
    nothing = finalize(candidate_metric_sums(scores, valid=torch.zeros(10, dtype=torch.bool)))
    assert nothing["users"] == 0 and math.isnan(nothing["auc"]) and math.isnan(nothing["hr@5"])


def test_nan_scores_raise_at_finalize():
    scores = random_scores(4, 8, seed=4, ties=False)
    scores[2, 3] = float("nan")
    sums = candidate_metric_sums(scores)  # no error yet: every rank must reach the reduction
    assert float(sums["nan_users"]) == 1
    with pytest.raises(ValueError, match="1 test user"):
        finalize(sums)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_key_names_follow_k(k):
    scores = random_scores(30, 20, seed=5, ties=False)
    m = candidate_metrics(scores, k=k)
    assert set(m) == {"auc", f"hr@{k}", f"ndcg@{k}"}
    assert set(candidate_metrics(scores, k=k, paper_compat=True)) == set(m)
    full = CandidateMetrics(k)
    full.update(scores)
    result = full.compute()
    assert set(result) == {"auc", f"hr@{k}", f"ndcg@{k}", "users", "paper_compat"}
    assert set(result["paper_compat"]) == {"auc", f"hr@{k}", f"ndcg@{k}"}
    rank = (scores[:, 1:] > scores[:, :1]).sum(1) + 1  # no ties in continuous scores
    assert m[f"hr@{k}"] == pytest.approx((rank <= k).double().mean().item(), abs=TOL)
    want = torch.where(rank <= k, 1 / torch.log2(rank.double() + 1), torch.zeros(())).mean().item()
    assert m[f"ndcg@{k}"] == pytest.approx(want, abs=TOL)


def test_k_at_least_candidates_always_hits():
    scores = random_scores(5, 4, seed=6, ties=True)
    assert candidate_metrics(scores, k=4)["hr@4"] == 1.0
    assert candidate_metrics(scores, k=9)["hr@9"] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2-d"):
        candidate_metrics(torch.zeros(5))
    with pytest.raises(ValueError, match="at least one negative"):
        candidate_metrics(torch.zeros(5, 1))
    with pytest.raises(ValueError, match="k"):
        candidate_metrics(torch.zeros(5, 3), k=0)
    with pytest.raises(ValueError, match="valid"):
        candidate_metrics(torch.zeros(5, 3), valid=torch.ones(5))
    with pytest.raises(ValueError, match="valid"):
        candidate_metrics(torch.zeros(5, 3), valid=torch.ones(4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Exactness of the reduction
# --------------------------------------------------------------------------------------------


def _add(a, b):
    return {key: a[key] + b[key] for key in a}


def test_uneven_rank_split_sums_exactly_and_differs_from_mean_of_means():
    negs = [0.0] * 63
    hits = torch.cat([row(1.0, negs)] * 3)  # "rank 0": 3 users, all ranked first
    misses = torch.cat([row(-1.0, negs)] * 7)  # "rank 1": 7 users, all ranked last
    everyone = torch.cat([hits, misses])
    single = finalize(candidate_metric_sums(everyone))
    split = finalize(_add(candidate_metric_sums(hits), candidate_metric_sums(misses)))
    assert split == single  # bit-exact, every key
    assert single["hr@5"] == pytest.approx(0.3) and single["users"] == 10
    mean_of_means = (candidate_metrics(hits)["hr@5"] + candidate_metrics(misses)["hr@5"]) / 2
    assert mean_of_means == 0.5 and abs(mean_of_means - single["hr@5"]) > 0.1


def test_any_batch_split_is_bit_identical():
    scores = random_scores(997, 64, seed=8, ties=False)
    valid = torch.rand(997, generator=torch.Generator().manual_seed(9)) > 0.1
    single = finalize(candidate_metric_sums(scores, valid=valid))
    for cuts in ([3], [1, 2, 500], list(range(13, 997, 37))):
        edges = [0, *cuts, 997]
        acc = CandidateMetrics(5)
        for lo, hi in reversed(list(zip(edges[:-1], edges[1:]))):  # another order, too
            acc.update(scores[lo:hi], valid=valid[lo:hi])
        assert acc.compute() == single
        assert acc.compute() == single  # compute leaves the state alone
    acc.reset()
    assert acc.compute()["users"] == 0


def test_reduce_sums_without_process_group_is_a_copy():
    sums = candidate_metric_sums(random_scores(6, 8, seed=10, ties=True))
    out = reduce_sums(sums)
    assert out == sums and out is not sums


# --------------------------------------------------------------------------------------------
# Binary AUC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_binary_auc_matches_sklearn(ties):
    g = torch.Generator().manual_seed(11)
    labels = torch.rand(500, generator=g) < 0.3
    scores = torch.randn(500, generator=g) + labels.float()
    if ties:
        scores = torch.round(scores * 2)
    want = roc_auc_score(labels.numpy(), scores.numpy())
    assert binary_auc(scores, labels) == pytest.approx(want, abs=1e-12)
    assert binary_auc(scores.double(), labels.long()) == pytest.approx(want, abs=1e-12)
    assert binary_auc(scores.reshape(20, 25), labels.float().reshape(20, 25)) == pytest.approx(want, abs=1e-12)


def test_binary_auc_edge_cases():
    assert binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 0])) == 0.0
    assert binary_auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1, 0, 0])) == 0.5
    assert binary_auc(torch.tensor([-0.0, 0.0]), torch.tensor([1, 0])) == 0.5  # one tie group
    assert math.isnan(binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))
    assert math.isnan(binary_auc(torch.tensor([]), torch.tensor([])))
    with pytest.raises(ValueError, match="0/1"):
        binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        binary_auc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1, 1]))
    assert gather_binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0  # no group


# --------------------------------------------------------------------------------------------
# A real 2-process gloo run
# --------------------------------------------------------------------------------------------

_SPLIT = 3  # rank 0 gets users [0, 3), rank 1 users [3, 10)
_AUC_SPLIT = 5  # rank 0 gets 5 binary samples, rank 1 the other 12


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    data = torch.load(os.path.join(tmp, "data.pt"))
    store = dist.FileStore(os.path.join(tmp, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        users = slice(0, _SPLIT) if rank == 0 else slice(_SPLIT, None)
        scores, valid = data["scores"][users], data["valid"][users]
        metrics = CandidateMetrics(5)
        if rank == 0:  # two batches on rank 0, one on rank 1
            metrics.update(scores[:1], valid[:1])
            metrics.update(scores[1:], valid[1:])
        else:
            metrics.update(scores, valid)
        idle = CandidateMetrics(5)  # only rank 1 has data: rank 0 joins with zero sums
        if rank == 1:
            idle.update(scores, valid)
        part = slice(0, _AUC_SPLIT) if rank == 0 else slice(_AUC_SPLIT, None)
        out = {
            "metrics": metrics.compute(),
            "idle": idle.compute(),
            "auc": gather_binary_auc(data["b_scores"][part], data["b_labels"][part]),
        }
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        del metrics, idle, store
        gc.collect()
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_two_process_gloo_matches_single_process(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    scores = random_scores(10, 64, seed=12, ties=True)
    valid = torch.ones(10, dtype=torch.bool)
    valid[[2, 8]] = False
    g = torch.Generator().manual_seed(13)
    b_labels = torch.rand(17, generator=g) < 0.5
    b_scores = torch.round(torch.randn(17, generator=g) * 2)
    torch.save({"scores": scores, "valid": valid, "b_scores": b_scores, "b_labels": b_labels}, tmp_path / "data.pt")

    # fork where the platform has it: the children inherit the imported torch instead of
    # importing torch, sklearn and this module again (seconds each on a small machine). The
    # parent never created a process group, and each child sets one intra-op thread, as
    # DataLoader workers do after fork.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method=method)

    single = finalize(candidate_metric_sums(scores, valid=valid))
    single_idle = finalize(candidate_metric_sums(scores[_SPLIT:], valid=valid[_SPLIT:]))
    single_auc = binary_auc(b_scores, b_labels)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["metrics"] == single  # exact, on every rank
        assert got["idle"] == single_idle
        assert got["auc"] == single_auc
    assert single["users"] == 8
    # the per-rank AUCs differ from the gathered one: it is not their mean
    per_rank = [binary_auc(b_scores[:_AUC_SPLIT], b_labels[:_AUC_SPLIT]), binary_auc(b_scores[_AUC_SPLIT:], b_labels[_AUC_SPLIT:])]
    assert single_auc != pytest.approx(sum(per_rank) / 2, abs=1e-6)
