"""ATJT's joint module: the recommender and the N recognisers in one module tree.

One DistributedModelParallel shards all their tables and one backward serves L_R + lambda * L_D.
Which recogniser computes, and on what, follows the step's plan (atjt_dist.schedule); the
'two_stage' ablation freezes g_j while it reweights the recommender. T-CE, R-CE and the
baseline build the module without recognisers. Its output, objective.StepOutput, is what the
losses (objective.py) read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from .config import Config, ConfigError
from .models import ModelSpec, SequentialRecommender, build_recommender
from .models.batch import SequenceBatch
from .models.layers import dropout_rows, name_dropout_layers
from .models.recognizers import build_recognizer
from .objective import StepOutput, objective_name
from .schedule import RECOGNIZER_ONLY, RECOMMENDER_ONLY


class JointModel(nn.Module):
    """The recommender and the N recognisers in one module tree (one DMP, one backward).

    ``forward(rec, aux, phase, stage)`` returns an objective.StepOutput with
    - ``rec_logits`` [R]: the recommender's logits on the recommender rows (positives, negatives);
      in next-item training ``seq_logits`` = (positive, negative) logits [R, L] instead;
    - ``extra_loss``: the recommender's own regulariser, when it has one (training only);
    - ``weight_logits``: recogniser g_phase on the clean positives, one per sequence (None for
      the baseline);
    - ``aux_logits`` [A] (and ``aux_item_logits`` [A, L] from an item-level recogniser): g_phase
      on the corrupted recogniser rows (None without them);
    - ``idle_touch``: the zero-valued touch of the idle parameters (training only).
    The recogniser sees its two inputs in one pass (rows concatenated).
    """

    def __init__(self, spec: ModelSpec, cfg: Config) -> None:
        super().__init__()
        self.recommender = build_recommender(spec, cfg.model)
        self.next_item = cfg.model.objective == "next_item"
        if self.next_item and not isinstance(self.recommender, SequentialRecommender):
            raise ConfigError(f"config key 'model.objective': next_item needs a sequential model; {cfg.model.name!r} is pointwise only")
        n = cfg.atjt.num_parts if objective_name(cfg) == "atjt" else 0
        self.recognizers = nn.ModuleList(build_recognizer(spec, cfg.atjt.recognizer, table_prefix=f"rg{j}") for j in range(n))
        # The leak fix: the recogniser's user rows of the users it weights stay out of L_R's
        # backward (the 'no_aux' ablation learns its weights from L_R alone, so it keeps them).
        self.isolate_weighted_users = cfg.atjt.isolate_weighted_users and cfg.atjt.variant != "no_aux"
        # Dropout masks are keyed by each layer's path in this tree (the same in every process).
        name_dropout_layers(self)
        self.weight_dropout = cfg.atjt.weight_dropout

    def idle_dense_parameters(self, phase: int, stage: str) -> list[nn.Parameter]:
        """Dense parameters that this step's forward leaves without a gradient: the other
        phases' recognisers, and in two-stage training the model not being trained.

        DDP needs every parameter it manages to take part in every step. Rather than search the
        autograd graph each step (``find_unused_parameters``, a few ms per step), the forward
        touches these with a zero-weighted term, and the trainer drops their (zero) gradients
        before the optimiser step so that neither weight decay nor Adagrad's state moves them.
        """
        key = (phase, stage)
        cache = self.__dict__.setdefault("_idle_cache", {})
        if key not in cache:
            idle: list[nn.Module] = [g for j, g in enumerate(self.recognizers) if j != phase]
            if stage == RECOGNIZER_ONLY:
                idle.append(self.recommender)
            elif stage == RECOMMENDER_ONLY and len(self.recognizers):
                idle.append(self.recognizers[phase])  # frozen in two-stage training
            cache[key] = [p for m in idle for name, p in m.named_parameters() if p.requires_grad and "embeddings." not in name]
        return cache[key]

    def forward(
        self, rec: Optional[SequenceBatch], aux: Optional[SequenceBatch], phase: int, stage: str, weight_rows: Optional[SequenceBatch] = None
    ) -> StepOutput:
        """The step's outputs for the objective (the fields the class docstring lists); in training
        also the zero-valued touch of the parameters this (phase, stage) leaves idle.
        ``weight_rows``: what the recogniser scores for the weights instead of the recommender's
        positives, row for row (atjt.weight_scope='user': each positive's user's latest window)."""
        out = self._forward(rec, aux, phase, stage, weight_rows)
        if self.training:
            idle = self.idle_dense_parameters(phase, stage)
            if idle:
                out = out._replace(idle_touch=torch.stack([p.reshape(-1)[0] for p in idle]).sum() * 0.0)
        return out

    def _forward(self, rec: Optional[SequenceBatch], aux: Optional[SequenceBatch], phase: int, stage: str, weight_rows: Optional[SequenceBatch]) -> StepOutput:
        # Each model call names the global ids of the rows it reads: they key its dropout masks.
        out = StepOutput()
        if stage != RECOGNIZER_ONLY and rec is not None:
            out = self._recommender_outputs(rec)
        if not len(self.recognizers):
            return out
        g = self.recognizers[phase]
        if stage == RECOGNIZER_ONLY:
            with dropout_rows(aux.row_ids):
                return out._replace(**self._aux_outputs(*g.forward_items(aux)))
        # The weight of a sequence comes from its clean positive: the first half of pointwise
        # rows, every row of a next-item batch. The recogniser runs in the module's mode (in
        # training: batch statistics); its dropout drops units of the weights' rows too unless
        # atjt.weight_dropout is off.
        if weight_rows is not None:
            positives = weight_rows
        else:
            positives = rec.without_negatives() if self.next_item else rec.select(slice(0, len(rec) // 2))
        n = len(positives)
        if stage == RECOMMENDER_ONLY:  # two-stage: g is frozen
            with torch.no_grad(), dropout_rows(positives.row_ids, self._weight_rows_exempt(n, n, positives.hist.device)):
                return out._replace(weight_logits=g(positives))
        frozen = n if self.isolate_weighted_users else 0
        if aux is None:
            with dropout_rows(positives.row_ids, self._weight_rows_exempt(n, n, positives.hist.device)):
                return out._replace(weight_logits=g.forward_items(positives, frozen_user_rows=frozen)[0])
        if aux.replaced is not None:  # the positives are clean: nothing of theirs was replaced
            positives = replace(positives, replaced=torch.zeros_like(positives.hist, dtype=torch.bool))
        both = SequenceBatch.concat([positives, aux])
        with dropout_rows(both.row_ids, self._weight_rows_exempt(n, len(both), positives.hist.device)):
            seq, items = g.forward_items(both, frozen_user_rows=frozen)
        return out._replace(weight_logits=seq[:n], **self._aux_outputs(seq[n:], None if items is None else items[n:]))

    def _recommender_outputs(self, rec: SequenceBatch) -> StepOutput:
        """The recommender's logits on its rows, and its own regulariser in training."""
        with dropout_rows(rec.row_ids):
            if self.next_item:
                out = StepOutput(seq_logits=self.recommender.sequence_logits(rec))
            else:
                out = StepOutput(rec_logits=self.recommender.score_pairs(rec))
            extra = self.recommender.extra_loss(rec) if self.training else None
        return out._replace(extra_loss=extra)

    def _weight_rows_exempt(self, n: int, total: int, device: torch.device) -> Optional[torch.Tensor]:
        """bool [total]: the first n rows (the weights' rows) exempt from the recogniser's
        dropout when atjt.weight_dropout is off; None (no exemption) when it is on."""
        if self.weight_dropout:
            return None
        return torch.arange(total, device=device) < n

    @staticmethod
    def _aux_outputs(seq_logits: torch.Tensor, item_logits: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        """The recogniser's outputs on the corrupted rows, as StepOutput fields: sequence
        logits, and the item-level detector's per-history-item logits (its L_D is per item)."""
        return {"aux_logits": seq_logits, "aux_item_logits": item_logits}
