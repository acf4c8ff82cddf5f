"""Numba kernels of the data path: shuffles, windows, negatives, corruption, partition.

Everything here fills preallocated buffers from the CSR sequences (``seq_items`` +
``seq_offsets``) with no per-row Python; randomness comes from :mod:`atjt_dist.data.rng`, keyed
by the global row index, so results do not depend on the number of ranks or threads.

This module is the data path's one import point for them; each concept has a module of its own:

- :mod:`atjt_dist.data.sampling_draws`: permutations, the user partition, alias tables and
  per-user item sets (the draws the other samplers share).
- :mod:`atjt_dist.data.negatives`: negatives of training rows and test candidates.
- :mod:`atjt_dist.data.sampling_windows`: history windows of samples.
- :mod:`atjt_dist.data.sampling_corruption`: corruption of recogniser batches (METHOD.md
  section 2).
- :mod:`atjt_dist.data.sampling_execution`: prefetching and the serial/parallel choice of the
  batch kernels, with why they are written as they are.

Conventions
- Items are 1..num_items; 0 is padding. A history buffer is ``int32[B, L]``: the row's items
  in time order, left-aligned, padded with 0 after ``length`` valid entries.
- A *sample* is (user, target position): the target is ``seq_items[offsets[u] + pos]`` and the
  history is the (at most L) items before it.
- "The r-th most recent valid item" of a row of length n is column ``n - r``.
"""

from __future__ import annotations

from .negatives import sample_candidates, sample_negatives
from .sampling_corruption import corrupt_batch, noisy_rows, shared_positions
from .sampling_draws import build_alias, partition_users, permutation, user_item_sets
from .sampling_execution import PARALLEL_MIN_ROWS
from .sampling_windows import fill_windows

__all__ = [
    "PARALLEL_MIN_ROWS",
    "build_alias",
    "corrupt_batch",
    "fill_windows",
    "noisy_rows",
    "partition_users",
    "permutation",
    "sample_candidates",
    "sample_negatives",
    "shared_positions",
    "user_item_sets",
]
