"""The dataset sections: which dataset a run trains on (``data``) and the generator of the
embedded synthetic default dataset (``data.synthetic``)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional

from ..errors import ConfigError
from .fields import knob


@dataclass
class SyntheticConfig:
    """The generator of the embedded default dataset (see atjt_dist.data.synthetic).

    Items fall into clusters (their categories); a user has a taste over a few clusters and
    walks a sticky Markov chain over them, picking items by within-cluster Zipf popularity or by
    following the previous item's successor links. Then a share of users get a share of their
    history replaced by (or, with noise_kind 'insert', extra items inserted as) planted noise,
    whose ground truth is stored with the dataset.
    """

    folds: typing.ClassVar[int] = 5  # the k-fold split written with the dataset (not a knob)

    users: int = knob(12800, "Number of users to generate.")
    items: int = knob(1000, "Number of items to generate (at least 128: test candidates need 63 free items).")
    clusters: int = knob(20, "Number of item clusters (they are the items' categories).")
    taste_clusters: int = knob(2, "Clusters in a user's taste (a sparse mixture with random weights).")
    stickiness: float = knob(0.95, "Probability that a step not following a successor link stays in the current cluster.")
    successor_prob: float = knob(0.5, "Probability that the next item is one of the previous item's successor links.")
    successors: int = knob(4, "Successor links per item (other items of its cluster).")
    zipf_exponent: float = knob(1.0, "Within-cluster popularity: the item of rank r has weight (r + 1)^-a.")
    mean_length: float = knob(12.0, "Mean sequence length per user (min_length + an exponential tail).")
    min_length: int = knob(4, "Shortest sequence a user can have (at least 2: a history and a last item).")
    noisy_user_share: float = knob(0.3, "Share of users whose histories get planted noise.")
    noisy_item_share: float = knob(
        0.3,
        "Share of a noisy user's history (every item but the last) replaced by noise, rounded, at least one item ('insert': that many items inserted).",
    )
    noise_kind: Literal["random", "popular", "foreign", "insert"] = knob(
        "random",
        "Planted noise: 'random' items drawn uniformly, 'popular' items drawn by popularity, "
        "'foreign' a burst of consecutive items of another user's sequence (shared accounts), "
        "or 'insert' uniform items inserted between the user's own (the sequence grows, nothing "
        "is replaced).",
    )
    noise_in_targets: bool = knob(
        True,
        "Noise may also replace a noisy user's last item (its training target in the paper "
        "protocol: a false-positive sample), or with 'insert' follow it as the new last item; "
        "false = histories only, the last item is never replaced nor followed by an inserted one "
        "(use false with data.split=loo, whose test positives are the last items).",
    )
    clean_test_fold: Optional[int] = knob(
        0,
        "Users of this k-fold fold (0..4; the data.fold whose users are tested) get no noise, so "
        "test metrics measure true preferences; null = every user may be noisy.",
    )
    seed: int = knob(0, "Generator seed: the same config (seed included) gives identical arrays.")
    cache_dir: Optional[str] = knob(
        None,
        "Where the generated dataset is cached (default: $ATJT_CACHE or ~/.cache/atjt-dist). A dataset is generated once per distinct generator config.",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values the generator cannot honour.

        ``key(field)`` names a field in the message (default: its dotted config key; the CLI
        passes its option names).
        """
        name = key or (lambda f: f"config key 'data.synthetic.{f}'")
        for f in ("users", "clusters", "taste_clusters", "successors"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{name(f)} must be >= 1, got {getattr(self, f)}")
        if self.items < 128:
            raise ConfigError(f"{name('items')} must be >= 128 (64 test candidates per user), got {self.items}")
        if self.clusters > self.items:
            raise ConfigError(f"{name('clusters')} must be <= items ({self.items}), got {self.clusters}")
        if self.taste_clusters > self.clusters:
            raise ConfigError(f"{name('taste_clusters')} must be <= clusters ({self.clusters}), got {self.taste_clusters}")
        if not 2 <= self.min_length <= self.items // 2:
            raise ConfigError(f"{name('min_length')} must be in [2, items/2 = {self.items // 2}], got {self.min_length}")
        if not self.min_length <= self.mean_length <= self.items // 2:
            raise ConfigError(f"{name('mean_length')} must be in [min_length = {self.min_length}, items/2 = {self.items // 2}], got {self.mean_length}")
        for f in ("stickiness", "successor_prob", "noisy_user_share", "noisy_item_share"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{name(f)} must be in [0, 1], got {getattr(self, f)}")
        if not 0.0 <= self.zipf_exponent <= 10.0:
            raise ConfigError(f"{name('zipf_exponent')} must be in [0, 10], got {self.zipf_exponent}")
        if self.clean_test_fold is not None and not 0 <= self.clean_test_fold < self.folds:
            raise ConfigError(f"{name('clean_test_fold')} must be a fold in 0..{self.folds - 1} or null, got {self.clean_test_fold}")


@dataclass
class DataConfig:
    """Which dataset to train on and how samples are built from it."""

    path: Optional[str] = knob(
        None,
        "A prepared dataset directory (atjt_dist.data.prepare or .synthetic). Default: the embedded synthetic dataset, generated and cached on first use.",
    )
    split: Literal["kfold", "loo"] = knob(
        "kfold",
        "'kfold': the paper's split over users (train and test users disjoint, folds stored "
        "in the dataset); 'loo': leave-one-out per user (every user's last item is its test).",
    )
    fold: int = knob(0, "The k-fold fold whose users are the test users.")
    history_length: int = knob(19, "L: at most this many items before the target form the history.")
    mode: Literal["paper", "sliding"] = knob(
        "sliding",
        "'sliding': every position of every training sequence is a target (built on the fly, "
        "never materialised); 'paper': one positive per training user (target = its last "
        "training interaction), the paper's protocol (configs/paper.yaml), which learns only on "
        "datasets of the authors' size.",
    )
    negative_sampler: Literal["popularity", "uniform"] = knob(
        "popularity",
        "Training negatives: drawn with probability proportional to popularity^exponent, or uniformly; never an item of the user's own sequence.",
    )
    popularity_exponent: float = knob(0.75, "Exponent of popularity for the negative sampler.")
    synthetic: SyntheticConfig = knob(SyntheticConfig(), "The embedded default dataset.")
