"""The evaluation of a trained run (trainer.Trainer): test metrics, and the recognisers' scores.

``evaluate`` computes the exact test metrics over the stored candidates (the model's and the
popularity ranker's), and with ATJT on data with planted noise how well the recognisers' weights
separate the clean training users (and items) from the planted ones.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from .collectives import global_sum
from .config import Config
from .data.dataset import TrainingData
from .metrics import CandidateMetrics, gather_binary_auc, popularity_result, popularity_scores, training_popularity
from .models import SequentialRecommender
from .models.batch import SequenceBatch
from .models.layers import dice_layers, dropout_rows, dropout_step, population_statistics
from .runlog import MetricsWriter, record_user_weights
from .schedule import RECOGNIZER_ONLY, Schedule

if TYPE_CHECKING:
    from .distributed import DistContext


class Evaluation:
    """Test metrics and the recognisers' scores of a run: a part of trainer.Trainer, which sets
    up the attributes below."""

    cfg: Config
    ctx: DistContext
    data: TrainingData
    schedule: Schedule
    model: torch.nn.Module
    metrics_log: MetricsWriter
    noise_users: Optional[torch.Tensor]
    run_dir: Path
    step: int

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test metrics over the stored candidates (exact across ranks).

        With ATJT on a dataset with planted noise, also ``noise_weight_auc``: how well the
        trained recognisers' weights rank clean training users above noisy ones.

        Always also ``popularity``: the same metrics (same keys, paper_compat HR NaN) of the
        popularity ranker (metrics.training_popularity: item counts in the training data) on
        the same test users and candidates, so every run shows the bar its model must clear.
        """
        cfg = self.cfg
        acc = CandidateMetrics(k=cfg.eval.k)
        # The popularity ranker rides along the model's batches (same users, same rank slices),
        # so its metrics are exact across ranks by the same reduction; counting is one bincount.
        pop_acc = CandidateMetrics(k=cfg.eval.k)
        popularity = training_popularity(self.data.arrays, cfg.data.split, cfg.data.fold)
        recommender = self.model.module.recommender
        self.recompute_population_statistics()
        self.model.eval()
        try:
            # A sequential model encodes each history once and scores all its candidates from it.
            once = isinstance(recommender, SequentialRecommender)
            for start, size in self.data.user_batches(self.data.test_users, cfg.eval.batch_users):
                rows, valid = self.data.test_batch(start, size, expand=not once)
                batch = SequenceBatch.from_arrays(rows).to(self.ctx.device)
                scores = recommender.score_candidates(batch) if once else recommender(batch).view(len(valid), -1)
                acc.update(scores, torch.from_numpy(valid).to(self.ctx.device))
                candidates = rows.candidates if once else rows.target.reshape(len(valid), -1)  # [users, C] item ids
                pop_acc.update(popularity_scores(popularity, candidates, self.ctx.device), torch.from_numpy(valid).to(self.ctx.device))
        finally:
            self.model.train()
        metrics = acc.compute()
        metrics["popularity"] = popularity_result(pop_acc.compute())  # a collective, like acc's
        if self.schedule.uses_recognizer and (self.noise_users is not None or cfg.log.user_weights):
            users, weights = self.score_training_users()
            if self.noise_users is not None:
                noisy = self.noise_users[users]
                metrics["noise_weight_auc"] = gather_binary_auc(weights, (~noisy).float())
                # mean P(clean) of the clean and of the planted-noise training users (exact sums;
                # the loss weights their rows by its atjt.weight_exponent-th power)
                sums = global_sum(torch.stack([weights[~noisy].sum(), (~noisy).sum(), weights[noisy].sum(), noisy.sum()]).double())
                metrics["mean_weight_clean_users"] = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
                metrics["mean_weight_noisy_users"] = float(sums[2] / sums[3]) if sums[3] > 0 else float("nan")
                item_auc = self.planted_item_auc()
                if item_auc is not None:
                    metrics["noise_item_auc"] = item_auc
            if cfg.log.user_weights:  # weights.parquet and a 'user_weights' record
                record_user_weights(self.metrics_log, self.run_dir, self.step, users, weights, self.data.arrays.noise_users, cfg.log.weight_hist_bins)
        self.metrics_log.write("test", step=self.step, **metrics)
        return metrics

    @torch.no_grad()
    def recompute_population_statistics(self) -> int:
        """Set the recommender's batch-normalisation statistics (Dice) to their exact values
        over the last ``eval.population_stats_batches`` training batches (a collective when
        several processes train: every rank reads the same steps); returns the batches used.

        The batches are rebuilt from the schedule (a pure function of the config, the seed and
        the step), so an uninterrupted and a resumed run evaluate with the same statistics, and
        the forwards run in a forked generator so that no later random draw changes. Each
        forward draws the dropout masks of its training step (the same keys as in training).
        """
        wanted = self.cfg.eval.population_stats_batches
        recommender = self.model.module.recommender
        if wanted == 0 or not dice_layers(recommender):
            return 0
        plans = collections.deque((p for p in self.schedule.steps() if p.step < self.step and p.stage != RECOGNIZER_ONLY), maxlen=wanted)
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), population_statistics(recommender):
            for plan in plans:
                batch = SequenceBatch.from_arrays(self.schedule.recommender_batch(plan)).to(self.ctx.device)
                with dropout_step(self.cfg.seed, plan.step), dropout_rows(batch.row_ids):
                    recommender(batch)
        return len(plans)

    @torch.no_grad()
    def score_training_users(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training user's sequence weight, P(clean), from the recogniser that did not
        train on it (the one of the user's own part), on its clean last training window.

        Returns this rank's (users, weights); together the ranks cover every training user once.
        """
        users_out, weights_out = [], []
        for recognizer, batch, keep in self._training_windows():
            users_out.append(batch.user[keep])
            weights_out.append(torch.sigmoid(recognizer(batch).float())[keep])
        if not users_out:
            empty = torch.empty(0, device=self.ctx.device)
            return empty.long(), empty
        return torch.cat(users_out), torch.cat(weights_out)

    def planted_item_auc(self) -> Optional[float]:
        """AUC of the item-level recogniser's P(noisy) against the planted items over every
        history item of the training users' last windows (None without item-level scores)."""
        scored = self.score_training_items()
        if scored is None or self.data.arrays.planted is None:
            return None
        users, lengths, noise = scored
        u = users.cpu().numpy()
        _, planted = self.data.planted_in_windows(u, self.data.last_train_pos[u], lengths.cpu().numpy())
        mask = torch.arange(noise.shape[1], device=noise.device)[None, :] < lengths[:, None]
        return gather_binary_auc(noise[mask], torch.from_numpy(planted).to(noise.device)[mask].float())

    @torch.no_grad()
    def score_training_items(self) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The item-level recogniser's P(noisy) of every history item of every training user's
        clean last window (the windows of ``score_training_users``), from the recogniser of the
        user's own part. Returns this rank's (users [n], lengths [n], item_noise [n, L]: oldest
        item first, 0 at padding), or None when the recognisers are not item-level."""
        module = self.model.module
        if not len(module.recognizers) or not module.recognizers[0].item_level:
            return None
        users_out, lengths_out, noise_out = [], [], []
        for recognizer, batch, keep in self._training_windows():
            items = recognizer.forward_items(batch)[1]
            users_out.append(batch.user[keep])
            lengths_out.append(batch.lengths[keep])
            noise_out.append((torch.sigmoid(-items.float()) * batch.mask)[keep])
        return torch.cat(users_out), torch.cat(lengths_out), torch.cat(noise_out)

    def _training_windows(self):
        """(recogniser, batch, mask of real rows) over every training user's clean last training
        window, batch by batch, with the recogniser of the user's own part (in eval mode)."""
        module = self.model.module
        module.eval()
        try:
            for part, recognizer in zip(self.schedule.parts, module.recognizers):
                positions = self.data.last_train_pos[part]
                for start, size in self.data.user_batches(part, self.cfg.eval.batch_users):
                    rows, valid = self.data.user_windows(part, positions, start, size)
                    yield recognizer, SequenceBatch.from_arrays(rows).to(self.ctx.device), torch.from_numpy(valid).to(self.ctx.device)
        finally:
            module.train()
