"""The ATJT schedule: partition, phases, pairing, cross-fitting, and the baseline's data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PAPER_SCHEDULE

from atjt_dist.config import build_config
from atjt_dist.data.dataset import TrainingData
from atjt_dist.schedule import JOINT, RECOGNIZER_ONLY, RECOMMENDER_ONLY, Schedule


def _schedule(path, *argv, world=1, rank=0):
    cfg = build_config([*PAPER_SCHEDULE, "--train.batch_size=64", "--atjt.recognizer_batch_size=32", "--train.epochs=2", *argv])
    data = TrainingData(path, history_length=cfg.data.history_length, seed=cfg.seed, rank=rank, world=world, split=cfg.data.split, mode=cfg.data.mode)
    return Schedule(data, cfg), data


@pytest.mark.parametrize("parts", [2, 3])
def test_partition_is_disjoint_equal_and_complete(tiny_dataset, parts):
    sched, data = _schedule(tiny_dataset, f"--atjt.num_parts={parts}")
    sizes = [len(p) for p in sched.parts]
    assert max(sizes) - min(sizes) <= 1
    union = np.concatenate(sched.parts)
    assert len(np.unique(union)) == len(union) == len(data.train_users)
    assert set(union) == set(data.train_users)
    assert not set(union) & set(data.test_users)


@pytest.mark.parametrize("parts", [2, 3])
def test_every_step_pairs_n_minus_1_recognizer_batches_in_order(tiny_dataset, parts):
    sched, _ = _schedule(tiny_dataset, f"--atjt.num_parts={parts}")
    steps = list(sched.steps())
    assert len(steps) == sched.total_steps()
    for plan in steps:
        i = plan.phase_batch
        assert plan.recognizer_batches == tuple(range(i * (parts - 1), (i + 1) * (parts - 1)))
    assert [p.phase for p in steps] == sorted(p.phase for p in steps)
    assert {p.phase for p in steps} == set(range(parts))


def test_cross_fitting_a_recognizer_never_weights_a_user_it_trained_on(tiny_dataset):
    sched, _ = _schedule(tiny_dataset, "--atjt.num_parts=3")
    trained_on = {j: set() for j in range(3)}
    weighted = {j: set() for j in range(3)}
    for plan in sched.steps():
        rec = sched.recommender_batch(plan)
        aux = sched.recognizer_batch(plan)
        weighted[plan.phase].update(rec.user.tolist())
        trained_on[plan.phase].update(aux.user.tolist())
    for j in range(3):
        assert weighted[j] and trained_on[j]
        assert not weighted[j] & trained_on[j]
        assert weighted[j] <= set(sched.parts[j].tolist())


def test_baseline_sees_the_same_batches_in_the_same_order(tiny_dataset):
    atjt, _ = _schedule(tiny_dataset)
    base, _ = _schedule(tiny_dataset, "--atjt.enabled=false")
    a_steps, b_steps = list(atjt.steps()), list(base.steps())
    assert len(a_steps) == len(b_steps)
    assert all(p.stage == JOINT for p in a_steps) and all(p.stage == RECOMMENDER_ONLY for p in b_steps)
    assert all(not p.recognizer_batches for p in b_steps)
    for pa_, pb in zip(a_steps, b_steps):
        ra, rb = atjt.recommender_batch(pa_), base.recommender_batch(pb)
        assert np.array_equal(ra.user, rb.user) and np.array_equal(ra.target, rb.target)
        assert np.array_equal(ra.hist, rb.hist)


def test_recommender_batches_are_positives_then_their_negatives(tiny_dataset):
    sched, data = _schedule(tiny_dataset)
    plan = next(iter(sched.steps()))
    b = sched.recommender_batch(plan)
    half = len(b) // 2
    assert half == 64
    assert np.all(b.label[:half] == 1) and np.all(b.label[half:] == 0)
    assert np.array_equal(b.user[:half], b.user[half:]) and np.array_equal(b.hist[:half], b.hist[half:])
    a = data.arrays
    for r in range(half):
        seq = set(a.seq_items[a.seq_offsets[b.user[r]] : a.seq_offsets[b.user[r] + 1]].tolist())
        assert b.target[half + r] not in seq  # a negative is never an item of the user
        # paper protocol: the positive is the user's last training interaction
        assert b.target[r] == a.seq_items[a.seq_offsets[b.user[r] + 1] - 1]


def test_recognizer_batch_is_half_corrupted(tiny_dataset):
    sched, _ = _schedule(tiny_dataset)
    plan = next(iter(sched.steps()))
    aux = sched.recognizer_batch(plan)
    assert len(aux) == 32 and aux.label.sum() == 16


def test_two_stage_trains_each_recognizer_before_its_phase(tiny_dataset):
    sched, _ = _schedule(tiny_dataset, "--atjt.variant=two_stage")
    stages = [(p.phase, p.stage) for p in sched.steps()]
    per = len(stages) // 4
    assert stages == [(0, RECOGNIZER_ONLY)] * per + [(0, RECOMMENDER_ONLY)] * per + [(1, RECOGNIZER_ONLY)] * per + [(1, RECOMMENDER_ONLY)] * per
    assert all(p.recognizer_batches for p in sched.steps() if p.stage == RECOGNIZER_ONLY)


def test_no_aux_variant_builds_no_recognizer_batches(tiny_dataset):
    sched, _ = _schedule(tiny_dataset, "--atjt.variant=no_aux")
    assert all(not p.recognizer_batches for p in sched.steps())
    assert sched.recognizer_batch(next(iter(sched.steps()))) is None


@pytest.mark.parametrize("mode", ["paper", "sliding"])
def test_two_ranks_build_exactly_the_one_rank_batch(tiny_dataset, mode):
    one, _ = _schedule(tiny_dataset, f"--data.mode={mode}")
    halves = [_schedule(tiny_dataset, f"--data.mode={mode}", world=2, rank=r)[0] for r in (0, 1)]
    for plan in list(one.steps())[:3]:
        whole = one.recommender_batch(plan)
        parts = [h.recommender_batch(plan) for h in halves]
        half = len(whole) // 2
        for name in ("user", "hist", "target", "label"):
            w = getattr(whole, name)
            pos = np.concatenate([getattr(p, name)[: half // 2] for p in parts])
            neg = np.concatenate([getattr(p, name)[half // 2 :] for p in parts])
            assert np.array_equal(np.concatenate([pos, neg]), w), name
        aux_whole = one.recognizer_batch(plan)
        aux_parts = [h.recognizer_batch(plan) for h in halves]
        for name in ("user", "hist", "hist_cat", "label"):
            assert np.array_equal(np.concatenate([getattr(p, name) for p in aux_parts]), getattr(aux_whole, name)), name


def test_sliding_mode_targets_every_position(tiny_dataset):
    sched, data = _schedule(tiny_dataset, "--data.mode=sliding", "--atjt.num_parts=2")
    space = sched.phases[0].rec_space
    expected = int((data.lengths[sched.parts[0]] - 1).sum())
    assert space.size == expected


def test_batches_are_a_pure_function_of_the_seed(tiny_dataset):
    s1, _ = _schedule(tiny_dataset)
    s2, _ = _schedule(tiny_dataset)
    s3, _ = _schedule(tiny_dataset, "--seed=7")
    p = list(s1.steps())[5]
    assert np.array_equal(s1.recommender_batch(p).target, s2.recommender_batch(p).target)
    assert np.array_equal(s1.recognizer_batch(p).hist, s2.recognizer_batch(p).hist)
    assert not np.array_equal(s1.recommender_batch(p).user, s3.recommender_batch(p).user)


def _replaced_positions(sched) -> tuple[np.ndarray, np.ndarray]:
    """(r, history length) of every replaced item over the first phase's first epoch of
    recogniser batches (r = 1 is the most recent history item)."""
    ph = sched.phases[0]
    rs, ns = [], []
    for plan in sched.steps():
        if plan.phase != 0 or plan.epoch != 0:
            break
        aux = sched.recognizer_batch(plan)
        rows, cols = np.nonzero(aux.replaced)
        assert np.array_equal(np.unique(rows), np.flatnonzero(aux.label == 0))  # one item per corrupted row
        rs.append(aux.lengths[rows] - cols)
        ns.append(aux.lengths[rows])
    assert ph.aux_batches > 0
    return np.concatenate(rs), np.concatenate(ns)


def test_sliding_epoch_replaces_positions_uniformly_over_each_rows_own_history(tiny_dataset):
    # Sliding batches mix history lengths 1..L; by default r is uniform on 1..n for a row of
    # n items, so r / n is spread over (0, 1] and r = 1 has probability 1/n, not ~1.
    sched, _ = _schedule(tiny_dataset, "--data.mode=sliding", "--atjt.recognizer_batch_size=64")
    r, n = _replaced_positions(sched)
    assert len(r) > 1500 and np.all((1 <= r) & (r <= n))
    expected_recent = (1.0 / n).sum()  # E[#(r = 1)] under per-row uniform draws
    assert abs((r == 1).sum() - expected_recent) < 4 * np.sqrt(expected_recent)
    u = (r - 0.5) / n  # for long rows ~ uniform on (0, 1)
    long_rows = n >= 10
    assert abs(u[long_rows].mean() - 0.5) < 0.03
    # The literal per-batch rule (a switch) collapses to the most recent item in sliding mode.
    literal, _ = _schedule(tiny_dataset, "--data.mode=sliding", "--atjt.recognizer_batch_size=64", "--atjt.per_row_position=false")
    r_literal, _ = _replaced_positions(literal)
    assert (r_literal == 1).mean() > 0.9 > (r == 1).mean() + 0.5


def test_recognizer_budget_warmup_and_batches_per_step(tiny_dataset):
    plain, _ = _schedule(tiny_dataset)
    sched, _ = _schedule(tiny_dataset, "--atjt.recognizer_warmup_steps=3", "--atjt.recognizer_batches_per_step=2")
    steps = list(sched.steps())
    assert len(steps) == sched.total_steps() == plain.total_steps() + 3 * len(sched.phases)
    assert [p.step for p in steps] == list(range(len(steps)))
    for phase in range(len(sched.phases)):
        mine = [p for p in steps if p.phase == phase]
        assert [p.stage for p in mine[:3]] == [RECOGNIZER_ONLY] * 3 and all(p.warmup for p in mine[:3])
        assert all(p.stage == JOINT and not p.warmup for p in mine[3:])
        # every step reads the next K * (N-1) = 2 batches of the phase's B^D stream, in order
        read = [k for p in mine for k in p.recognizer_batches]
        assert read == list(range(2 * len(mine)))
    warm = steps[0]
    assert sched.recognizer_batch(warm) is not None and len(sched.recognizer_batch(warm)) == 64


def test_default_budget_is_the_papers_schedule(tiny_dataset):
    sched, _ = _schedule(tiny_dataset)
    for p in sched.steps():
        assert p.recognizer_batches == (p.phase_batch,) and not p.warmup  # N = 2: batch i pairs with B^D batch i
