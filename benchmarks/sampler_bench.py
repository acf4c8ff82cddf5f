"""Throughput of one training batch build: the numba samplers against a vectorised numpy version.

    python benchmarks/sampler_bench.py [--users 100000] [--items 20000] [--batch 512] [--quick]

One *batch build* is what the data path does for a step, on ``--batch`` samples (user, target
position) of the sliding-window mode:

1. windows: the history (at most L = 19 items before the target), its categories, the length,
   the target and its category, for every sample (``fill_windows``);
2. negatives: one per sample, drawn with probability proportional to popularity^0.75 and never
   an item of the user's sequence (``sample_negatives``);
3. corruption: the batch's rows as a recogniser batch, corrupted in place as METHOD.md
   section 2 says (``noisy_rows`` + ``corrupt_batch``: half the rows, one shared position r,
   a uniform replacement different from the original, its category, labels).

A *sample* is one (user, position) row; samples/s = batch x batches/s (each sample also gets
its negative and goes through corruption).

The dataset is generated here: ``--users`` users with lengths 5 + geometric (mean about
``--mean-length``), items drawn i.i.d. from a Zipf(``--zipf``) popularity over ``--items``
items in shuffled id order, 50 categories. The batches' samples are drawn uniformly from all
(user, position >= 1) pairs, like a shuffled epoch, so every batch touches cold memory: the
numbers include the cache misses a real loader pays.

The numpy version builds the same arrays with numpy's RNG: fancy indexing for windows,
``Generator.choice(p=...)`` for negatives plus a vectorised rejection loop (membership by
``searchsorted`` on sorted user*(N+1)+item keys), a vectorised corruption. A second numpy
variant draws the negatives by ``searchsorted`` on a precomputed CDF (what a careful numpy
user would write; ``choice(p=...)`` rebuilds the CDF on every call).

Implementations are interleaved round by round over the same batches; each figure is the median
over rounds (and the best round's CPU time, the least disturbed one on a shared machine). One
thread = ``numba.set_num_threads(1)`` and CPU time of the calling thread (the cost on one core,
robust to other processes on a shared machine); all cores = numba's default thread count and
wall time. Never a timed test: a script and a report (benchmarks/sampler.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numba
import numpy as np
from machine_info import cpu_model, memory_gib

from atjt_dist.data import sampling as S
from atjt_dist.data.rng import stream_key

L = 19
NOISE_FRACTION = 0.5


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def make_dataset(users: int, items: int, mean_length: float, zipf: float, seed: int):
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1.0 / max(mean_length - 5.0, 1.0), users).astype(np.int64) - 1
    offsets = np.zeros(users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    weights = 1.0 / np.arange(1, items + 1) ** zipf
    cdf = np.cumsum(weights / weights.sum())
    ids = rng.permutation(items) + 1  # popularity rank -> item id: not sorted by id
    ranks = np.minimum(np.searchsorted(cdf, rng.random(int(offsets[-1])), side="right"), items - 1)
    seq_items = ids[ranks].astype(np.int32)
    item_category = np.concatenate([[0], rng.integers(1, 51, items)]).astype(np.int32)
    return seq_items, offsets, item_category


def draw_batches(offsets: np.ndarray, batch: int, count: int, seed: int):
    """``count`` batches of (user, position >= 1) samples, uniform over all such samples."""
    rng = np.random.default_rng(seed + 1)
    lengths = np.diff(offsets)
    per_user = lengths - 1  # positions 1..len-1
    cum = np.concatenate([[0], np.cumsum(per_user)])
    ids = rng.integers(0, cum[-1], batch * count)
    users = np.searchsorted(cum, ids, side="right") - 1
    pos = 1 + ids - cum[users]
    return users.astype(np.int64).reshape(count, batch), pos.astype(np.int64).reshape(count, batch)


# ---------------------------------------------------------------------------------------------
# The two implementations
# ---------------------------------------------------------------------------------------------


class NumbaBuild:
    name = "numba kernels"

    def __init__(self, data, batch: int, seed: int = 0):
        self.seq_items, self.offsets, self.item_category, self.num_items = data
        pop = np.bincount(self.seq_items, minlength=self.num_items + 1)[1:].astype(np.float64)
        self.prob, self.alias = S.build_alias(pop**0.75)
        self.owned, self.owned_offsets = S.user_item_sets(self.seq_items, self.offsets)
        self.seed = seed
        self.hist = np.empty((batch, L), dtype=np.int32)
        self.hist_cat = np.empty((batch, L), dtype=np.int32)
        self.lengths = np.empty(batch, dtype=np.int32)
        self.target = np.empty(batch, dtype=np.int32)
        self.target_cat = np.empty(batch, dtype=np.int32)
        self.negatives = np.empty(batch, dtype=np.int32)
        self.row_ids = np.arange(batch, dtype=np.int64)

    def __call__(self, step: int, users: np.ndarray, pos: np.ndarray):
        S.fill_windows(self.seq_items, self.offsets, self.item_category, users, pos, self.hist, self.hist_cat, self.lengths, self.target, self.target_cat)
        S.sample_negatives(stream_key(self.seed, "negatives", step), self.row_ids, users, self.owned, self.owned_offsets, self.prob, self.alias, self.negatives)
        noisy = S.noisy_rows(stream_key(self.seed, "corrupt_rows", step), len(users), NOISE_FRACTION)
        labels = S.corrupt_batch(
            seed=self.seed,
            counters=(step,),
            row_ids=self.row_ids,
            global_noisy=noisy,
            global_min_length=int(self.lengths.min()),
            hist=self.hist,
            hist_cat=self.hist_cat,
            lengths=self.lengths,
            item_category=self.item_category,
            num_items=self.num_items,
        )
        return self.hist, self.hist_cat, self.lengths, self.target, self.target_cat, self.negatives, labels


class NumpyBuild:
    name = "numpy, choice(p=)"

    def __init__(self, data, batch: int, seed: int = 0, cdf_negatives: bool = False):
        self.seq_items, self.offsets, self.item_category, self.num_items = data
        if cdf_negatives:
            self.name = "numpy, CDF search"
        self.cdf_negatives = cdf_negatives
        pop = np.bincount(self.seq_items, minlength=self.num_items + 1)[1:].astype(np.float64)
        w = pop**0.75
        self.p = w / w.sum()
        self.cdf = np.cumsum(self.p)
        self.cdf[-1] = 1.0
        # Every (user, item) pair as one sorted int64 key, for vectorised membership tests.
        owned, _ = S.user_item_sets(self.seq_items, self.offsets)
        user_of = np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))
        self.keys = user_of * (self.num_items + 1) + owned
        self.cols = np.arange(L, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def _draw(self, n: int) -> np.ndarray:
        if self.cdf_negatives:
            return np.searchsorted(self.cdf, self.rng.random(n), side="right").astype(np.int64) + 1
        return self.rng.choice(self.num_items, size=n, p=self.p) + 1

    def _owned(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = users * (self.num_items + 1) + items
        at = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        return self.keys[at] == k

    def __call__(self, step: int, users: np.ndarray, pos: np.ndarray):
        rng = self.rng
        # windows
        base = self.offsets[users]
        start = np.maximum(pos - L, 0)
        lengths = pos - start
        idx = (base + start)[:, None] + self.cols[None, :]
        valid = self.cols[None, :] < lengths[:, None]
        hist = np.where(valid, self.seq_items[np.minimum(idx, (base + pos)[:, None])], 0).astype(np.int32)
        hist_cat = self.item_category[hist]
        target = self.seq_items[base + pos]
        target_cat = self.item_category[target]
        # negatives: draw, then redraw the rows that hit an owned item
        negatives = self._draw(len(users))
        bad = np.flatnonzero(self._owned(users, negatives))
        while len(bad):
            negatives[bad] = self._draw(len(bad))
            bad = bad[self._owned(users[bad], negatives[bad])]
        # corruption: round(f * B) rows, one shared r, a different uniform item
        b = len(users)
        noisy = np.zeros(b, dtype=bool)
        noisy[rng.permutation(b)[: int(round(NOISE_FRACTION * b))]] = True
        rows = np.flatnonzero(noisy & (lengths > 0))
        r = rng.integers(1, int(lengths.min()) + 1)
        cols = lengths[rows] - r
        original = hist[rows, cols]
        new = rng.integers(1, self.num_items + 1, size=len(rows))
        same = np.flatnonzero(new == original)
        while len(same):
            new[same] = rng.integers(1, self.num_items + 1, size=len(same))
            same = same[new[same] == original[same]]
        hist[rows, cols] = new
        hist_cat[rows, cols] = self.item_category[new]
        labels = np.ones(b, dtype=np.float32)
        labels[rows] = 0.0
        return hist, hist_cat, lengths, target, target_cat, negatives.astype(np.int32), labels


# ---------------------------------------------------------------------------------------------
# Checks and timing
# ---------------------------------------------------------------------------------------------


def check_same_shape_of_result(impls, users, pos, data):
    """Both implementations build the same windows and valid negatives / corruption."""
    seq_items, offsets, item_category, _ = data
    outs = [impl(0, users, pos) for impl in impls]
    ref = outs[0]
    for out in outs[1:]:
        for k in (2, 3, 4):  # lengths, target, target_cat are deterministic
            assert np.array_equal(np.asarray(ref[k]), np.asarray(out[k])), k
        for o in (ref, out):
            assert (o[6] == 0).sum() == round(NOISE_FRACTION * len(users))
            for r in range(len(users)):  # every negative is outside its user's sequence
                seq = seq_items[offsets[users[r]] : offsets[users[r] + 1]]
                assert o[5][r] not in seq
            assert np.array_equal(o[1], item_category[o[0]])


def time_round(impl, users, pos, step0: int, threads_all: bool):
    clock = time.process_time if threads_all else time.thread_time
    t0, c0 = time.perf_counter(), clock()
    for i in range(len(users)):
        impl(step0 + i, users[i], pos[i])
    return time.perf_counter() - t0, clock() - c0


def measure(impls, users, pos, rounds: int, threads_all: bool):
    """Per implementation: (median wall, median CPU, best-round CPU) seconds per batch."""
    walls = {impl.name: [] for impl in impls}
    cpus = {impl.name: [] for impl in impls}
    for rnd in range(rounds):
        for impl in impls:
            w, c = time_round(impl, users, pos, rnd * len(users), threads_all)
            walls[impl.name].append(w / len(users))
            cpus[impl.name].append(c / len(users))
    return {n: (statistics.median(walls[n]), statistics.median(cpus[n]), min(cpus[n])) for n in walls}


def machine() -> dict:
    info = {"nproc": os.cpu_count(), "cpu": cpu_model(), "mem": f"{memory_gib():.1f} GiB"}
    try:
        info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        info["load"] = "?"
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--mean-length", type=float, default=50.0)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--batches", type=int, default=300, help="distinct batches per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--large-batch", type=int, default=65_536, help="rows of the parallel-path measurement (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.items, args.batches, args.rounds, args.large_batch = 5000, 2000, 20, 2, 0

    info = machine()
    print(f"machine: nproc={info['nproc']} cpu={info['cpu']} mem={info['mem']} load(1/5/15 min)={info['load']}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, default numba threads {numba.config.NUMBA_NUM_THREADS}")
    t = time.perf_counter()
    seq_items, offsets, item_category = make_dataset(args.users, args.items, args.mean_length, args.zipf, args.seed)
    data = (seq_items, offsets, item_category, args.items)
    print(
        f"dataset: {args.users} users, {args.items} items, {len(seq_items)} interactions "
        f"(mean length {len(seq_items) / args.users:.1f}), Zipf {args.zipf}; generated in {time.perf_counter() - t:.1f} s"
    )
    users, pos = draw_batches(offsets, args.batch, args.batches, args.seed)

    t = time.perf_counter()
    impls = [NumbaBuild(data, args.batch), NumpyBuild(data, args.batch), NumpyBuild(data, args.batch, cdf_negatives=True)]
    check_same_shape_of_result(impls, users[0], pos[0], data)
    print(f"setup + compile/cache load + agreement check: {time.perf_counter() - t:.1f} s; threading layer {numba.threading_layer()}")

    all_threads = numba.config.NUMBA_NUM_THREADS
    results = {}
    for label, threads in (("1 thread", 1), (f"{all_threads} threads", all_threads)):
        numba.set_num_threads(threads)
        results[label] = measure(impls, users, pos, args.rounds, threads_all=threads > 1)
    numba.set_num_threads(all_threads)

    b = args.batch
    print(f"\nbatch build, L = {L}, batch = {b}: median over {args.rounds} rounds of {args.batches} batches")
    print("| threads | implementation | us/batch (wall) | us/batch (CPU) | batches/s (wall) | samples/s (wall) | samples/s per core (CPU) | same, best round |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, res in results.items():
        for name, (wall, cpu, best) in res.items():
            print(f"| {label} | {name} | {wall * 1e6:.0f} | {cpu * 1e6:.0f} | {1 / wall:,.0f} | {b / wall:,.0f} | {b / cpu:,.0f} | {b / best:,.0f} |")
    print("\nratio numba / numpy (samples/s):")
    for label, res in results.items():
        nb = res[impls[0].name]
        for other in impls[1:]:
            o = res[other.name]
            print(f"  {label}: vs {other.name}: wall {o[0] / nb[0]:.1f}x, CPU {o[1] / nb[1]:.1f}x")

    if args.large_batch:
        # The prange kernels take over from PARALLEL_MIN_ROWS rows: one big batch per round.
        nbig = max(args.large_batch, S.PARALLEL_MIN_ROWS)
        bu, bp = draw_batches(offsets, nbig, 4, args.seed + 7)
        big = NumbaBuild(data, nbig)
        print(f"\nparallel path: one batch build of {nbig} rows (>= PARALLEL_MIN_ROWS = {S.PARALLEL_MIN_ROWS})")
        for threads in sorted({1, all_threads}):
            numba.set_num_threads(threads)
            big(0, bu[0], bp[0])
            walls = []
            for rnd in range(args.rounds):
                t0 = time.perf_counter()
                for i in range(len(bu)):
                    big(rnd * len(bu) + i, bu[i], bp[i])
                walls.append((time.perf_counter() - t0) / len(bu))
            wall = statistics.median(walls)
            print(f"  {threads} thread(s): {wall * 1e3:.2f} ms/batch, {nbig / wall:,.0f} samples/s (wall)")
        numba.set_num_threads(all_threads)
    print(f"\nload average at the end: {machine()['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
