"""Test metrics: AUC, HR@K and NDCG@K over candidate lists, and binary AUC; exact across ranks.

Candidate metrics (METHOD.md section 6)
---------------------------------------
Each test user has one row of candidate ``scores`` (logits: higher means more relevant,
``sigmoid(score)`` is the predicted probability) with the positive in column 0 and ``n = C - 1``
sampled negatives after it (C = 64 in the paper's protocol). Per user, with ``above``, ``tied``
and ``below`` the numbers of negatives scored above, equal to and below the positive:

- ``auc``: the share of negatives scored below the positive, ties counting 1/2:
  ``(below + tied / 2) / n``.
- ``hr@K``: 1 if the positive's rank (1-based) is <= K, else 0.
- ``ndcg@K``: ``1 / log2(rank + 1)`` if rank <= K, else 0 (one relevant item, so IDCG = 1).

Each is averaged over users; the key names follow K (``hr@10`` for K = 10).

Tie policy. When the positive ties with negatives, its rank is not defined by the scores. We
report the *expected* HR and NDCG over a uniformly random order of the tied candidates
(McSherry & Najork, "Computing information retrieval performance measures efficiently in the
presence of tied scores", ECIR 2008): the positive is equally likely to sit at each rank
``above + 1 .. above + tied + 1``, so with cumulative discounts ``D(m) = sum_{r<=m} d(r)``

    hr@K   = (min(above + tied + 1, K) - min(above, K)) / (tied + 1)
    ndcg@K = (D(min(above + tied + 1, K)) - D(min(above, K))) / (tied + 1)

This is deterministic (no random draw), is the same convention as AUC's "ties count 1/2" (AUC
is likewise the expectation over random tie orders), and is fair: a model that outputs a
constant scores what a random ranking scores in expectation, ``hr@K = K / C`` and
``ndcg@K = D(K) / C`` (AUC 0.5) -- not HR = 1 as an optimistic rank would give it, nor 0 as a
pessimistic one would (which also punishes a low-precision model for harmless ties). Plugging
the *mean* rank into the formulas instead would be wrong: the metrics are not linear in rank.

paper_compat variants
---------------------
The authors' evaluation code differs from the definitions above in two ways; we reproduce
them, under the ``paper_compat`` key of :func:`finalize` (or ``paper_compat=True`` in
:func:`candidate_metrics`), only so that our numbers can be put next to the paper's:

- HR@K counts a hit only if the positive is in the top K *and* its predicted probability
  ``sigmoid(score) > 0.5``. We test ``score > 0`` on the logit, which is the same condition
  without float rounding of the sigmoid near 0.5 (``sigmoid(1e-10)`` rounds to 0.5 in float32).
  A score of exactly 0 (probability 0.5) is not a hit.
- NDCG@K uses ``1 / log2(rank + 2)`` with the 1-based rank (an off-by-one) and divides by the
  sum of the K discounts ``Z_K = sum_{i=1..K} 1 / log2(i + 2)`` (an IDCG as if K items were
  relevant), so its maximum, for a positive ranked first, is ``1 / log2(3) / Z_K``; for K = 5,
  ``Z_5 = 2.3046663059874...`` and the maximum is ``0.2737618682289...``.
- AUC is the same as the standard one. Ties follow the same expected-rank policy as above
  (the authors' sort broke ties arbitrarily; with continuous scores ties are rare).

Exactness under data parallelism
--------------------------------
A mean over users is never computed from per-rank (or per-batch) means: each rank sums per-user
values and counts users (:func:`candidate_metric_sums`), the sums are all-reduced with SUM
(:func:`reduce_sums`) and only then divided (:func:`finalize`). :class:`CandidateMetrics` does
this for a trainer: ``update`` per eval batch, ``compute`` once (a collective: every rank calls
it, also a rank that saw no batch).

The sums are float64. Each per-user value is first rounded to a multiple of 2**-30 (an error
below 5e-10, far under any reported digit); every partial sum is then exactly representable in
float64 up to 2**23 (8.4 million) users, so the totals -- and the metrics -- are bit-identical
however the users are split across batches and ranks and in whatever order they are added.

Binary AUC
----------
:func:`binary_auc` is the exact ROC AUC of arbitrary binary labels (label 1 is the positive
class, scored high), ties counting 1/2 (Mann-Whitney U with average ranks), computed with
integer counts per distinct score. It serves the noise recogniser's AUC on its corrupted
batches (label 1 = clean, score = P(clean)) and the weights against planted ground truth (pass
clean = 1). It is NaN when only one class (or nothing) is present. :func:`gather_binary_auc`
all-gathers the variable-length per-rank scores and labels first, so it is the AUC of the union,
not a mean of per-rank AUCs.

The popularity ranker
---------------------
The baseline every model must beat: rank each test user's candidates by the items' interaction
counts among the *training* data (:func:`training_popularity`; test positives never count, so
the ranker sees what a model trains on). It lives here, next to the metrics it is measured
with, because two places score it: ``Trainer.evaluate`` (every run's ``popularity`` entry, over
the same batches and ranks as the model, through :class:`CandidateMetrics`) and ``reproduce``
(one row per dataset, :func:`popularity_metrics`); both give bit-identical numbers. Ties (equal
counts) get the expected rank, as for models. Its paper_compat HR is NaN
(:func:`popularity_result`): the paper counts a hit only when P(positive) > 0.5, which a count
does not define.

Non-finite scores: +-inf compare normally. NaN scores raise ``ValueError``; in the candidate
metrics they are counted (``nan_users``) and the error is raised by :func:`finalize`, after the
reduction, so that every rank raises together instead of one rank leaving the others blocked
in a collective.
"""

from __future__ import annotations

import math
import operator
import re

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "CandidateMetrics",
    "binary_auc",
    "candidate_metric_sums",
    "candidate_metrics",
    "finalize",
    "gather_binary_auc",
    "popularity_metrics",
    "popularity_result",
    "popularity_scores",
    "reduce_sums",
    "training_popularity",
]

_QUANTUM = 2.0**-30  # per-user values are rounded to this grid so that float64 sums are exact
_PAPER = "paper_compat/"
_KEY_RE = re.compile(r"^hr@(\d+)$")


# ---------------------------------------------------------------------------------------------
# Candidate metrics: per-rank sums, reduction, averages
# ---------------------------------------------------------------------------------------------


def _check_k(k: int) -> int:
    try:
        value = operator.index(k)  # ints and numpy integers, not floats
    except TypeError:
        value = None
    if value is None or isinstance(k, bool) or value < 1:
        raise ValueError(f"the cut-off k of HR@k / NDCG@k must be an int >= 1, got {k!r}")
    return int(value)


def _sum_keys(k: int) -> list[str]:
    return ["users", "auc", f"hr@{k}", f"ndcg@{k}", f"{_PAPER}hr@{k}", f"{_PAPER}ndcg@{k}", "nan_users"]


def _cumulative_discounts(k: int, paper_compat: bool, device) -> torch.Tensor:
    """``D[m] = sum_{r=1..m} d(r)`` for m = 0..k (float64), d the per-rank NDCG gain."""
    rank = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    if paper_compat:
        gain = 1.0 / torch.log2(rank + 2.0)
        gain = gain / gain.sum()
    else:
        gain = 1.0 / torch.log2(rank + 1.0)
    return torch.cat([gain.new_zeros(1), gain.cumsum(0)])


@torch.no_grad()
def candidate_metric_sums(scores: torch.Tensor, k: int = 5, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-rank sums of the per-user metrics of ``scores`` [users, candidates], positive first.

    Returns 0-d float64 tensors on ``scores.device``: ``users`` (the number of counted users),
    ``auc``, ``hr@{k}``, ``ndcg@{k}``, ``paper_compat/hr@{k}``, ``paper_compat/ndcg@{k}`` (sums
    over those users) and ``nan_users`` (valid users with a NaN score; :func:`finalize` raises
    if it is not 0). Rows where ``valid`` (bool [users]) is False are left out. Sums of
    different batches or ranks add up key by key; :func:`finalize` turns them into averages.
    """
    k = _check_k(k)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 2-d tensor [users, candidates], got {shape}")
    users, candidates = scores.shape
    if candidates < 2:
        raise ValueError(f"scores has {candidates} candidate column(s); it needs the positive (column 0) and at least one negative")
    device = scores.device
    if valid is None:
        valid = torch.ones(users, dtype=torch.bool, device=device)
    else:
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != (users,):
            got = (valid.dtype, tuple(valid.shape)) if isinstance(valid, torch.Tensor) else type(valid)
            raise ValueError(f"valid must be a bool tensor of shape ({users},), got {got}")
        valid = valid.to(device)

    scores = scores.detach()
    pos = scores[:, :1]
    neg = scores[:, 1:]
    n = candidates - 1
    above = (neg > pos).sum(1)  # int64
    tied = (neg == pos).sum(1)
    below = n - above - tied
    if scores.is_floating_point():
        nan_row = torch.isnan(scores).any(1)
    else:
        nan_row = torch.zeros(users, dtype=torch.bool, device=device)
    counted = valid & ~nan_row

    auc = (2 * below + tied).double() / (2 * n)
    top = torch.clamp(above + tied + 1, max=k)  # highest rank (1-based) the positive can take, capped
    low = torch.clamp(above, max=k)  # ranks low+1..top are the tied ranks inside the top k
    share = (tied + 1).double()
    hr = (top - low).double() / share
    std_d = _cumulative_discounts(k, False, device)
    paper_d = _cumulative_discounts(k, True, device)
    ndcg = (std_d[top] - std_d[low]) / share
    paper_ndcg = (paper_d[top] - paper_d[low]) / share
    paper_hr = torch.where(pos[:, 0] > 0, hr, torch.zeros_like(hr))

    per_user = torch.stack([auc, hr, ndcg, paper_hr, paper_ndcg], dim=1)
    per_user = torch.round(per_user / _QUANTUM) * _QUANTUM  # exact float64 sums; see module doc
    totals = torch.where(counted[:, None], per_user, torch.zeros_like(per_user)).sum(0)
    values = [counted.sum().double(), *totals.unbind(0), (valid & nan_row).sum().double()]
    return dict(zip(_sum_keys(k), values))


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device(group, device: torch.device) -> torch.device:
    """Where a collective's tensors must live: CUDA for NCCL, CPU for gloo, else as given."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    if "gloo" in backend and "nccl" not in backend:
        return torch.device("cpu")
    return device


def reduce_sums(sums: dict[str, torch.Tensor], group=None) -> dict[str, torch.Tensor]:
    """All-reduce (SUM) the sums of :func:`candidate_metric_sums` over ``group``.

    One collective for all keys (stacked in sorted key order, which every rank shares). Returns
    a new dict on the sums' device; without an initialised process group, a copy of ``sums``.
    Every rank of the group must call it with the same keys (the same k).
    """
    if not _dist_active():
        return dict(sums)
    keys = sorted(sums)
    flat = torch.stack([torch.as_tensor(sums[key]).reshape(()).to(torch.float64) for key in keys])
    device = flat.device
    flat = flat.to(_comm_device(group, device))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat = flat.to(device)
    return {key: flat[i] for i, key in enumerate(keys)}


def finalize(sums: dict[str, torch.Tensor]) -> dict:
    """Averages from (reduced) sums.

    Returns ``{'auc', 'hr@K', 'ndcg@K': float, 'users': int, 'paper_compat': {'auc', 'hr@K',
    'ndcg@K'}}``. With no users the metrics are NaN. Raises ``ValueError`` if any counted user
    had a NaN score.
    """
    ks = [int(m.group(1)) for m in map(_KEY_RE.match, sums) if m]
    if len(ks) != 1:
        raise ValueError(f"sums must hold exactly one 'hr@K' key (from candidate_metric_sums), got {sorted(sums)}")
    k = ks[0]
    nan_users = int(float(sums.get("nan_users", 0)))
    if nan_users:
        raise ValueError(
            f"{nan_users} test user(s) have NaN candidate scores; check the model's outputs (a diverged model, or an id out of range) before evaluating"
        )
    users = int(float(sums["users"]))

    def mean(key: str) -> float:
        return float(sums[key]) / users if users else math.nan

    auc = mean("auc")
    return {
        "auc": auc,
        f"hr@{k}": mean(f"hr@{k}"),
        f"ndcg@{k}": mean(f"ndcg@{k}"),
        "users": users,
        "paper_compat": {
            "auc": auc,
            f"hr@{k}": mean(f"{_PAPER}hr@{k}"),
            f"ndcg@{k}": mean(f"{_PAPER}ndcg@{k}"),
        },
    }


def candidate_metrics(scores: torch.Tensor, k: int = 5, paper_compat: bool = False, valid: torch.Tensor | None = None) -> dict[str, float]:
    """``{'auc', 'hr@{k}', 'ndcg@{k}'}`` averaged over the (valid) users of this process.

    ``scores`` [users, candidates] are logits with the positive in column 0. Standard metrics,
    or the paper's variants with ``paper_compat=True`` (see the module docstring). Local only:
    under data parallelism use :class:`CandidateMetrics`, which reduces sums across ranks.
    """
    result = finalize(candidate_metric_sums(scores, k, valid))
    chosen = result["paper_compat"] if paper_compat else result
    return {key: chosen[key] for key in ("auc", f"hr@{k}", f"ndcg@{k}")}


class CandidateMetrics:
    """Accumulates candidate-metric sums over eval batches; ``compute`` reduces across ranks.

    Usage::

        metrics = CandidateMetrics(k=5)
        for batch in loader:                       # this rank's share of the test users
            metrics.update(model(batch), valid=batch.valid)
        result = metrics.compute()                 # collective: every rank calls it

    ``compute`` does not change the accumulated state (call ``reset`` to start over), and a
    rank that saw no batch still takes part with zero sums.
    """

    def __init__(self, k: int = 5):
        self.k = _check_k(k)
        self._sums: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        self._sums = None

    def update(self, scores: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        batch = candidate_metric_sums(scores, self.k, valid)
        if self._sums is None:
            self._sums = batch
        else:
            self._sums = {key: self._sums[key] + batch[key].to(self._sums[key].device) for key in batch}

    def sums(self) -> dict[str, torch.Tensor]:
        """This rank's sums (zeros before any update)."""
        if self._sums is None:
            return {key: torch.zeros((), dtype=torch.float64) for key in _sum_keys(self.k)}
        return dict(self._sums)

    def compute(self, group=None) -> dict:
        """All-reduce the sums over ``group`` (if a process group is initialised), then average."""
        return finalize(reduce_sums(self.sums(), group))


# ---------------------------------------------------------------------------------------------
# The popularity ranker (the baseline every run reports beside its metrics)
# ---------------------------------------------------------------------------------------------


def training_popularity(data, split: str = "kfold", fold: int = 0) -> np.ndarray:
    """Interactions per item among the training data of the split (int64 [num_items + 1]).

    ``data``: a dataset directory (path) or its opened arrays (``data.layout.DatasetArrays``,
    e.g. ``TrainingData.arrays``). 'kfold': the whole sequences of the users outside ``fold``
    (also those too short to give a training sample: they are training interactions all the
    same); 'loo': every user's sequence without its last (test) item. Test positives never
    count, so the ranker sees what a model trains on.
    """
    if not hasattr(data, "seq_items"):
        from .data.layout import open_arrays  # lazily: the metrics need no dataset otherwise

        data = open_arrays(data)
    offsets = np.asarray(data.seq_offsets, dtype=np.int64)
    items = np.asarray(data.seq_items)
    lengths = np.diff(offsets)
    if split == "kfold":
        train = np.asarray(data.fold) != fold
        keep = np.repeat(train, lengths)
    elif split == "loo":
        keep = np.ones(len(items), dtype=bool)
        keep[offsets[1:][lengths > 0] - 1] = False
    else:
        from .config import ConfigError

        raise ConfigError(f"data.split={split!r}: expected 'kfold' or 'loo'")
    return np.bincount(items[keep], minlength=data.num_items + 1).astype(np.int64)


def popularity_scores(popularity: np.ndarray, candidates, device=None) -> torch.Tensor:
    """The popularity ranker's scores of candidate rows ``candidates`` (item ids [users, C],
    positive first): each candidate's training count, float64 (exact for any count < 2**53)."""
    counts = np.asarray(popularity, dtype=np.float64)[np.asarray(candidates)]
    return torch.from_numpy(counts).to(device) if device is not None else torch.from_numpy(counts)


def popularity_result(result: dict) -> dict:
    """The popularity ranker's metrics from :func:`finalize`'s: the same keys, with the
    paper_compat HR set to NaN (the paper's hit needs P(positive) > 0.5; a count is not a
    probability, and a count > 0 read as a logit would make nearly every top-K a hit)."""
    out = dict(result)
    out["paper_compat"] = {key: (math.nan if _KEY_RE.match(key) else value) for key, value in result["paper_compat"].items()}
    return out


def popularity_metrics(data, split: str = "kfold", fold: int = 0, k: int = 5) -> dict:
    """Test metrics of ranking each test user's stored candidates by training popularity.

    The same test users and candidates as a trained model's evaluation (kfold: the users of
    ``fold``; loo: every user), computed in this process (``Trainer.evaluate`` computes the same
    numbers, bit for bit, across ranks). ``data`` as in :func:`training_popularity`. Returns the
    keys of Trainer.evaluate (auc, hr@k, ndcg@k, users, paper_compat), with the paper_compat HR
    NaN (:func:`popularity_result`).
    """
    if not hasattr(data, "seq_items"):
        from .data.layout import open_arrays

        data = open_arrays(data)
    users = np.flatnonzero(np.asarray(data.fold) == fold) if split == "kfold" else np.arange(data.num_users)
    pop = training_popularity(data, split, fold)
    scores = popularity_scores(pop, np.asarray(data.candidates)[users])
    return popularity_result(finalize(candidate_metric_sums(scores, k)))


# ---------------------------------------------------------------------------------------------
# Binary AUC (recogniser, planted noise)
# ---------------------------------------------------------------------------------------------


def _flat(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.detach().reshape(-1)


@torch.no_grad()
def binary_auc(scores, labels) -> float:
    """Exact ROC AUC of ``scores`` for binary ``labels`` (1 = positive), ties counting 1/2.

    Any shapes with the same number of elements (flattened); labels bool or numeric in {0, 1}.
    Equals the Mann-Whitney U statistic with average ranks for ties, divided by
    ``n_pos * n_neg``; computed from integer counts per distinct score, so it is exact up to the
    final division. NaN when only one class (or nothing) is present; ``ValueError`` on NaN
    scores or labels outside {0, 1}.
    """
    s = _flat(scores)
    y = _flat(labels)
    if s.numel() != y.numel():
        raise ValueError(f"binary_auc: {s.numel()} scores but {y.numel()} labels")
    if y.dtype == torch.bool:
        pos = y
    else:
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("binary_auc: labels must be 0/1 (or bool); got other values")
        pos = y == 1
    if s.is_floating_point():
        if bool(torch.isnan(s).any()):
            raise ValueError("binary_auc: scores contain NaN")
        s = s + 0.0  # -0.0 -> +0.0, so that the two zeros form one tie group
    n_pos = int(pos.sum())
    n_neg = s.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, group, counts = torch.unique(s, return_inverse=True, return_counts=True)  # sorted ascending
    pos_in = torch.bincount(group[pos], minlength=counts.numel())
    neg_in = counts - pos_in
    neg_below = torch.cumsum(neg_in, 0) - neg_in
    twice_u = (2 * neg_below * pos_in + pos_in * neg_in).sum()  # 2 * Mann-Whitney U, int64
    return float(twice_u) / (2.0 * n_pos * n_neg)


@torch.no_grad()
def gather_binary_auc(scores, labels, group=None) -> float:
    """:func:`binary_auc` of the union over ranks of each rank's (variable-length) data.

    All-gathers the lengths, then the zero-padded scores and labels (as float64, which holds
    float32/bf16/fp16 scores exactly), trims and concatenates them, and computes the AUC on
    every rank. Without an initialised process group it is :func:`binary_auc`. A collective:
    every rank of ``group`` calls it. A length mismatch on any rank raises on all of them.
    """
    s = _flat(scores)
    y = _flat(labels)
    if not _dist_active():
        return binary_auc(s, y)
    world = dist.get_world_size(group)
    device = _comm_device(group, s.device)
    sizes = torch.tensor([s.numel(), y.numel()], dtype=torch.int64, device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes, group=group)
    all_sizes = torch.stack(all_sizes).cpu()
    mismatched = (all_sizes[:, 0] != all_sizes[:, 1]).nonzero().flatten().tolist()
    if mismatched:
        raise ValueError(f"gather_binary_auc: scores and labels differ in length on rank(s) {mismatched} (sizes per rank: {all_sizes.tolist()})")
    longest = int(all_sizes[:, 0].max())
    buf = torch.zeros(2, longest, dtype=torch.float64, device=device)
    buf[0, : s.numel()] = s.to(device=device, dtype=torch.float64)
    buf[1, : y.numel()] = y.to(device=device, dtype=torch.float64)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf, group=group)
    data = torch.cat([part[:, : int(n)] for part, n in zip(parts, all_sizes[:, 0])], dim=1)
    return binary_auc(data[0], data[1])
