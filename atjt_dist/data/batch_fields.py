"""The fields of a batch of rows, declared once for both of its forms.

A batch exists as numpy arrays, as the samplers build them (:class:`atjt_dist.data.dataset.BatchArrays`,
one rank's rows), and as tensors, as the models read them (:class:`atjt_dist.models.batch.SequenceBatch`).
Both are :class:`BatchFields` over their array type, so a field added here exists in both and
``SequenceBatch.from_arrays`` converts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

Array = TypeVar("Array")

#: fields holding floats (the rest are ids and lengths, except the boolean ``replaced``)
FLOAT_FIELDS = ("label", "weight")
#: fields holding booleans
BOOL_FIELDS = ("replaced",)


@dataclass
class BatchFields(Generic[Array]):
    """R rows of (user, left-aligned history, lengths, target, label) and what some batches add.

    ``hist[r, :lengths[r]]`` are row r's history items in time order, the rest 0. Ids are int32
    in the numpy form (``user`` and ``row_ids`` int64) and int64 in the tensor form, as TorchRec
    expects; floats are float32.
    """

    user: Array  # [R]
    hist: Array  # [R, L]
    hist_cat: Array  # [R, L]: the history items' categories (0 = none)
    lengths: Array  # [R]
    target: Array  # [R]
    target_cat: Array  # [R]
    #: the recommendation label (1 positive, 0 negative) in recommender batches, the recogniser
    #: label (1 clean, 0 corrupted) in recogniser batches
    label: Array  # float32 [R]
    #: next-item training only: a sampled negative for every history position (0 at padding)
    neg_seq: Optional[Array] = None  # [R, L]
    #: evaluation of sequential models: the row's candidate items, scored from one encoding
    candidates: Optional[Array] = None  # [R, C]
    #: corrupted recogniser batches: True at the history items that corruption replaced
    replaced: Optional[Array] = None  # bool [R, L]
    #: oracle training only: each row's ground-truth weight (0 = planted noise)
    weight: Optional[Array] = None  # float32 [R]
    #: the rows' indices in the global batch (the schedule numbers the recogniser's rows after
    #: the recommender's): what keys their dropout masks and exact cross-rank statistics
    row_ids: Optional[Array] = None  # int64 [R]
