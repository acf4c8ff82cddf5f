"""The typed configuration tree of atjt-dist.

One dataclass per section; every field is declared with :func:`knob`, which carries the
field's documentation (``atjt_dist.train --help`` prints it, ``docs/config.md`` is generated
from it). A config is built from the defaults, then a YAML file (``--config FILE``), then
command-line overrides (``--section.key=value`` or ``--section.key value``), in that order.

Unknown keys and values of the wrong type are :class:`ConfigError` s that name the key, the
expected type and, for choices, the allowed values. The resolved config is written next to every
output (``config.yaml`` in the run directory) so a run can be repeated with ``--config``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError


def knob(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A config field with a default and its documentation."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        # A deep copy per instance: nested sections and lists are never shared between configs.
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


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


@dataclass
class DINConfig:
    """DIN (Zhou et al. 2018) as the paper configures it."""

    attention_hidden: list[int] = knob([32], "Hidden sizes of the attention MLP (input 4 x item dim = 64).")
    mlp_hidden: list[int] = knob([256, 64], "Hidden sizes of the output MLP (input 40).")


@dataclass
class DCNConfig:
    """DCN, Deep & Cross Network (Wang et al. 2017): a cross network and a deep network side
    by side over the embedded fields [user; mean-pooled history; target item; target category].

    The defaults give the deep network the DIN tower of the ATJT setting (input 40 -> 256 -> 64),
    so base models compare at equal capacity; configs/models/dcn.yaml holds the DCN paper's own
    best setting (6 cross layers, 2 deep layers of 1024).
    """

    cross_layers: int = knob(
        6,
        "Cross layers x_{l+1} = x0 * (x_l . w_l) + b_l + x_l, each adding one degree of feature "
        "interaction (2 x input-dim parameters per layer); 0 = no cross network. The DCN paper's "
        "best Criteo setting has 6.",
    )
    deep_hidden: list[int] = knob(
        [256, 64],
        "Hidden sizes of the deep network (ReLU) that runs beside the cross network; its last "
        "layer and the cross output are concatenated into the logit layer. Empty = cross network "
        "only. The DCN paper's best setting is [1024, 1024].",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values the model cannot build (``key(field)`` names a field)."""
        name = key or (lambda f: f"config key 'model.dcn.{f}'")
        if self.cross_layers < 0:
            raise ConfigError(f"{name('cross_layers')} must be >= 0, got {self.cross_layers}")
        if any(h < 1 for h in self.deep_hidden):
            raise ConfigError(f"{name('deep_hidden')} must list sizes >= 1, got {self.deep_hidden}")
        if self.cross_layers == 0 and not self.deep_hidden:
            raise ConfigError(f"{name('cross_layers')} = 0 and an empty {name('deep_hidden')} leave DCN without a network")


@dataclass
class WideDeepConfig:
    """Wide & Deep (Cheng et al. 2016): a linear ("wide") model over sparse and crossed features
    plus a deep ReLU network over the embedded fields, summed into one logit.

    The wide part weighs the user, the target item and the target category, and two crossed
    (cross-product) features summed over the valid history: (history item x target item) and
    (history category x target category), each hashed into ``cross_buckets`` buckets. The
    default deep network is the DIN tower of the ATJT setting (40 -> 256 -> 64);
    configs/models/wide_deep.yaml holds the Wide & Deep paper's (1024 -> 512 -> 256).
    """

    #: Most buckets a crossed feature can have: its hash works modulo the prime 2^31 - 1
    #: (atjt_dist.models.wide_deep.hash_cross). A class constant, not a config key.
    MAX_CROSS_BUCKETS = 2**31 - 1

    deep_hidden: list[int] = knob(
        [256, 64],
        "Hidden sizes of the deep network (ReLU) over [user; mean-pooled history; target item; "
        "target category]; at least one layer. The Wide & Deep paper uses [1024, 512, 256].",
    )
    cross_buckets: int = knob(
        2**18,
        "Hash buckets of each crossed feature, (history item x target item) and (history "
        "category x target category); each cross has its own table of this many weights. Pairs "
        "that hash to the same bucket share one weight (no collision resolution, the hashing "
        "trick): with n distinct pairs a pair shares its bucket with about n / cross_buckets "
        "others. At most 2^31 - 1.",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values the model cannot build (``key(field)`` names a field)."""
        name = key or (lambda f: f"config key 'model.wide_deep.{f}'")
        if not self.deep_hidden or any(h < 1 for h in self.deep_hidden):
            raise ConfigError(f"{name('deep_hidden')} must list at least one size, all >= 1, got {self.deep_hidden}")
        if not 1 <= self.cross_buckets <= self.MAX_CROSS_BUCKETS:
            raise ConfigError(f"{name('cross_buckets')} must be in [1, 2^31 - 1], got {self.cross_buckets}")


@dataclass
class SASRecConfig:
    """SASRec (Kang and McAuley, ICDM 2018): learned positions, pre-norm causal self-attention
    blocks, the output dotted with the (shared) item embedding.

    Architecture defaults are the paper's (2 blocks, 1 head) except the dropout, which defaults
    to 0 so that a model built from defaults is deterministic in training mode (gradient checks);
    configs/models/sasrec.yaml sets the paper's 0.2 (dense data; 0.5 for sparse data). The
    paper's d = 50 is not a multiple of 4, which TorchRec's sharded tables need, hence 64.
    """

    hidden: int = knob(64, "Hidden size d of the blocks and of the model's embedding tables (a multiple of 4 and of heads).")
    blocks: int = knob(2, "Self-attention blocks.")
    heads: int = knob(1, "Attention heads (must divide hidden).")
    dropout: float = knob(0.0, "Dropout of the embeddings, the attention probabilities and every block's outputs (paper: 0.2 dense, 0.5 sparse data).")
    positions: Literal["end", "start"] = knob(
        "end",
        "Learned position ids: 'end' (the paper's left-padded inputs) gives the most recent item "
        "always the last position embedding; 'start' counts from the oldest item of the window, "
        "so that a position's hidden state is a function of the items up to it only and next-item "
        "training at position t equals the pointwise score of that prefix.",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values SASRec cannot build (SASRec calls it; ``key(field)`` names a field)."""
        name = key or (lambda f: f"config key 'model.sasrec.{f}'")
        for f in ("hidden", "blocks", "heads"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{name(f)} must be >= 1, got {getattr(self, f)}")
        if self.hidden % 4:
            raise ConfigError(f"{name('hidden')} must be a multiple of 4 (TorchRec's embedding kernels), got {self.hidden}")
        if self.hidden % self.heads:
            raise ConfigError(f"{name('heads')}={self.heads} must divide {name('hidden')}={self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name('dropout')} must be in [0, 1), got {self.dropout}")


@dataclass
class FEARecConfig:
    """FEARec (Du et al., SIGIR 2023): hybrid attention blocks (frequency-domain auto-correlation
    over a per-layer band of the spectrum, the "frequency ramp", mixed with band-limited
    time-domain self-attention), plus a dual-domain contrastive regulariser.

    Defaults are the authors' code (sudaada/FEARec, fearec.sh) except the two dropouts, which
    default to 0 so that a model built from defaults is deterministic in training mode (gradient
    checks); configs/models/fearec.yaml sets the paper's 0.5.
    """

    hidden: int = knob(64, "Hidden size of the blocks and of the model's embedding tables (a multiple of 4 and of heads).")
    blocks: int = knob(2, "Hybrid attention blocks; block i attends over its own band of frequencies.")
    heads: int = knob(2, "Attention heads (must divide hidden).")
    inner: int = knob(256, "Width of the point-wise feed-forward layer (GELU).")
    dropout: float = knob(0.0, "Dropout of the embeddings and of every block's outputs (paper: 0.5).")
    attention_dropout: float = knob(0.0, "Dropout of the time-domain attention probabilities (paper: 0.5).")
    global_ratio: float = knob(
        0.6,
        "Frequency ramp: the share of the L//2+1 frequency bins each block sees. Above 1/blocks the "
        "bands overlap and slide from the highest frequencies (first block) to the lowest (last); "
        "at or below 1/blocks each block gets a disjoint 1/blocks of the spectrum.",
    )
    time_attention_share: float = knob(
        0.1,
        "alpha: a block's attention output is (1 - alpha) * frequency-domain auto-correlation + alpha * time-domain self-attention.",
    )
    topk_factor: float = knob(1.0, "Auto-correlation aggregates the top int(topk_factor * ln L) delays (at least 1) of each sequence.")
    contrastive_weight: float = knob(
        0.1,
        "Weight of the contrastive loss (InfoNCE between two dropout views of each sequence, in-batch negatives gathered over all ranks); 0 = off.",
    )
    temperature: float = knob(1.0, "InfoNCE temperature (dot-product similarity).")
    frequency_weight: float = knob(0.1, "Weight of the frequency-domain regulariser: mean |FFT(view 1) - FFT(view 2)| of the two views; 0 = off.")
    positions: Literal["start", "end"] = knob(
        "start",
        "Learned position ids: 'start' (the authors' right-padded RecBole inputs) counts from the "
        "oldest item of the window; 'end' gives the most recent item always the last position "
        "embedding.",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values FEARec cannot build (FEARec calls it; ``key(field)`` names a field)."""
        name = key or (lambda f: f"config key 'model.fearec.{f}'")
        for f in ("hidden", "blocks", "heads", "inner"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{name(f)} must be >= 1, got {getattr(self, f)}")
        if self.hidden % 4:
            raise ConfigError(f"{name('hidden')} must be a multiple of 4 (TorchRec's embedding kernels), got {self.hidden}")
        if self.hidden % self.heads:
            raise ConfigError(f"{name('heads')}={self.heads} must divide {name('hidden')}={self.hidden}")
        for f in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ConfigError(f"{name(f)} must be in [0, 1), got {getattr(self, f)}")
        for f in ("global_ratio", "time_attention_share"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{name(f)} must be in [0, 1], got {getattr(self, f)}")
        if self.global_ratio == 0.0:
            raise ConfigError(f"{name('global_ratio')} must be > 0 (a block needs some frequencies)")
        for f in ("topk_factor", "temperature"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"{name(f)} must be > 0, got {getattr(self, f)}")
        for f in ("contrastive_weight", "frequency_weight"):
            if getattr(self, f) < 0:
                raise ConfigError(f"{name(f)} must be >= 0, got {getattr(self, f)}")


@dataclass
class S3RecConfig:
    """S3Rec (Zhou et al. CIKM 2020): a BERT-style encoder pre-trained with four self-supervised
    objectives (``python -m atjt_dist.pretrain``), then fine-tuned causally like SASRec.

    Defaults are the authors' code (CIKM2020-S3Rec, run_pretrain.py) except the two dropouts,
    which default to 0 so that a model built from defaults is deterministic in training mode
    (gradient checks); configs/models/s3rec.yaml sets the paper's 0.5.
    """

    hidden: int = knob(64, "Hidden size (the item and category embedding dimension).")
    blocks: int = knob(2, "Self-attention blocks.")
    heads: int = knob(2, "Attention heads (must divide hidden).")
    dropout: float = knob(0.0, "Dropout of the embeddings and of every block's outputs (paper: 0.5).")
    attention_dropout: float = knob(0.0, "Dropout of the attention probabilities (paper: 0.5).")
    pretrained: Optional[str] = knob(None, "A pre-training checkpoint (atjt_dist.pretrain) to start fine-tuning from.")
    pretrain_epochs: int = knob(150, "Pre-training epochs over every prefix of the training sequences (authors' released checkpoints: 150).")
    pretrain_batch_size: int = knob(100, "Sequences per pre-training batch.")
    pretrain_lr: float = knob(1e-3, "Adam learning rate of pre-training.")
    pretrain_weight_decay: float = knob(0.0, "Adam weight decay of pre-training.")
    mask_prob: float = knob(0.2, "MIP/MAP: probability that an item is replaced by [mask] (the last item always is).")
    aap_weight: float = knob(0.2, "Weight of the associated attribute prediction loss (AAP).")
    mip_weight: float = knob(1.0, "Weight of the masked item prediction loss (MIP).")
    map_weight: float = knob(1.0, "Weight of the masked attribute prediction loss (MAP).")
    sp_weight: float = knob(0.5, "Weight of the segment prediction loss (SP).")

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values S3Rec cannot honour (S3Rec and atjt_dist.pretrain call it)."""
        name = key or (lambda f: f"config key 'model.s3rec.{f}'")
        for f in ("hidden", "blocks", "heads", "pretrain_epochs", "pretrain_batch_size"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{name(f)} must be >= 1, got {getattr(self, f)}")
        if self.hidden % self.heads:
            raise ConfigError(f"{name('heads')}={self.heads} must divide {name('hidden')}={self.hidden}")
        for f in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ConfigError(f"{name(f)} must be in [0, 1), got {getattr(self, f)}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ConfigError(f"{name('mask_prob')} must be in [0, 1], got {self.mask_prob}")
        for f in ("pretrain_lr", "pretrain_weight_decay", "aap_weight", "mip_weight", "map_weight", "sp_weight"):
            if getattr(self, f) < 0:
                raise ConfigError(f"{name(f)} must be >= 0, got {getattr(self, f)}")


@dataclass
class ModelConfig:
    """The base recommender."""

    name: Literal["din", "dcn", "wide_deep", "sasrec", "fearec", "s3rec"] = knob("din", "Base model (atjt_dist.models.REGISTRY maps each name to its class).")
    embedding_dim: int = knob(8, "Embedding dimension of the user, item and category tables.")
    dropout: float = knob(
        0.0,
        "Dropout of the base model's hidden layers. Every dropout probability (here and in the "
        "model and recogniser sections) is rounded to a multiple of 1/256: the masks are keyed "
        "hashes, one byte per unit (models/layers.py, Dropout).",
    )
    objective: Literal["pointwise", "next_item"] = knob(
        "pointwise",
        "'pointwise': the paper's BCE on (history, target, label) rows, a positive and its "
        "sampled negative per sample; 'next_item': the sequential models' native training, "
        "every history position scored against the next item and a sampled negative (SASRec, "
        "FEARec, S3Rec); ATJT then weights each sequence's loss.",
    )
    din: DINConfig = knob(DINConfig(), "DIN's layer sizes.")
    dcn: DCNConfig = knob(DCNConfig(), "DCN's layers.")
    wide_deep: WideDeepConfig = knob(WideDeepConfig(), "Wide & Deep's layers.")
    sasrec: SASRecConfig = knob(SASRecConfig(), "SASRec's layers.")
    fearec: FEARecConfig = knob(FEARecConfig(), "FEARec's layers and contrastive regularisation.")
    s3rec: S3RecConfig = knob(S3RecConfig(), "S3Rec's layers and pre-training.")


@dataclass
class RecognizerConfig:
    """The noise-recognition model (atjt_dist.models.recognizers): the paper's DIN-like
    target-attention network, the same with reverse-position embeddings, or an item-level
    replaced-item detector (a small bidirectional Transformer)."""

    kind: Literal["din", "din_pos", "transformer"] = knob(
        "din",
        "'din': the paper's DIN-like network; 'din_pos': the same with a learned reverse-position "
        "embedding added to each history item; 'transformer': a bidirectional self-attention "
        "detector that scores every history item (P(item clean)) and derives the sequence's "
        "P(clean) from them (sequence_weight); it has no user table.",
    )
    embedding_dim: int = knob(8, "'din'/'din_pos': embedding dimension of its user, item and category tables.")
    attention_hidden: list[int] = knob([32], "'din'/'din_pos': attention MLP hidden sizes (input 4 x item dim = 64).")
    mlp_hidden: list[int] = knob([256, 64], "'din'/'din_pos': output MLP hidden sizes (input 40).")
    dropout: float = knob(0.5, "'din'/'din_pos': dropout of the attention MLP.")
    transformer_hidden: int = knob(
        16,
        "'transformer': hidden size of the blocks and of its item, category and position "
        "embeddings (a multiple of 4 and of transformer_heads). The defaults (hidden 16, 1 block, "
        "1 head, feed-forward 2H, no dropout) keep its step cost within 2x the din recogniser's "
        "and learn the corruption task faster than hidden 32, 2 blocks, 2 heads, 4H, dropout 0.1 "
        "(benchmarks/step.md, 'recogniser kinds').",
    )
    transformer_blocks: int = knob(1, "'transformer': bidirectional self-attention blocks.")
    transformer_heads: int = knob(1, "'transformer': attention heads (must divide transformer_hidden).")
    transformer_inner_factor: int = knob(2, "'transformer': width of each block's GELU feed-forward layer, in multiples of transformer_hidden.")
    transformer_dropout: float = knob(
        0.0,
        "'transformer': dropout of the embeddings, the attention probabilities and every block's outputs (a byte mask: p rounded to a multiple of 1/256).",
    )
    sequence_weight: Literal["product", "min"] = knob(
        "product",
        "'transformer': a sequence's P(clean) from its items' P(item clean): 'product' over the "
        "valid history positions (P(no item replaced), items taken as independent) or 'min' "
        "(the most suspicious item's). A row without history gets P(clean) = 1 (logit 20).",
    )

    def check(self, key: Any = None) -> None:
        """Raise ConfigError for values the recogniser cannot build (build_recognizer calls it;
        ``key(field)`` names a field)."""
        name = key or (lambda f: f"config key 'atjt.recognizer.{f}'")
        for f in ("embedding_dim", "transformer_hidden", "transformer_blocks", "transformer_heads", "transformer_inner_factor"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{name(f)} must be >= 1, got {getattr(self, f)}")
        if self.transformer_hidden % 4:
            raise ConfigError(f"{name('transformer_hidden')} must be a multiple of 4 (TorchRec's embedding kernels), got {self.transformer_hidden}")
        if self.transformer_hidden % self.transformer_heads:
            raise ConfigError(f"{name('transformer_heads')}={self.transformer_heads} must divide {name('transformer_hidden')}={self.transformer_hidden}")
        for f in ("dropout", "transformer_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ConfigError(f"{name(f)} must be in [0, 1), got {getattr(self, f)}")


@dataclass
class ATJTConfig:
    """Auxiliary Task Joint Training: partition, schedule, corruption and the joint objective."""

    enabled: bool = knob(True, "Train with ATJT weights; false = the baseline with w = 1.")
    num_parts: int = knob(2, "N: the training users are split into N parts and trained in N phases.")
    aux_weight: float = knob(100.0, "lambda: weight of the recogniser loss L_D in L_R + lambda*L_D.")
    detach: bool = knob(False, "Detach the weights w from the recommender loss.")
    weight_dropout: bool = knob(
        True,
        "The recogniser's dropout also drops units of the rows whose P(clean) weights the "
        "recommender's loss (the recogniser is in training mode for its weights as for L_D); "
        "false = those rows pass its dropout layers unchanged, as in eval mode, in the same "
        "pass (batch statistics unchanged). Compared in docs/results.md.",
    )
    isolate_weighted_users: bool = knob(
        True,
        "Keep L_R away from the recogniser's user-embedding rows of the users it weights: their "
        "rows are read without gradient, so neither L_R nor weight decay moves them (otherwise "
        "Adagrad turns L_R's tiny gradients into full-size steps on exactly those rows, leaking "
        "the recommender's loss across the cross-fitting boundary). false = the authors' graph.",
    )
    variant: Literal["joint", "no_aux", "two_stage"] = knob(
        "joint",
        "'joint': the method; 'no_aux': the 'w/o auxiliary task' ablation (weights learned "
        "from L_R alone with a penalty, no L_D); 'two_stage': each recogniser is trained "
        "first, then frozen, and its detached weights reweight the recommender.",
    )
    no_aux_penalty: float = knob(0.04, "'no_aux' ablation: coefficient of -mean(w^2) in the loss.")
    noise_fraction: float = knob(0.5, "Share of each recogniser batch's rows that are corrupted.")
    replace_count: int = knob(1, "History items replaced in a corrupted row.")
    per_row_position: bool = knob(
        True,
        "Draw the replaced position r per row, uniform over the row's own history (1 = most "
        "recent). false = the authors' rule: one r shared by the batch, uniform in [1, shortest "
        "history in the batch], which in sliding mode is r = 1 in most batches (the paper preset).",
    )
    replacement: Literal["uniform", "popularity"] = knob("uniform", "Distribution of the replacement item: uniform over the vocabulary or by popularity.")
    recognizer_batch_size: int = knob(256, "Rows per recogniser batch (global, across ranks).")
    recognizer_warmup_steps: int = knob(
        600,
        "Recogniser budget: steps at the start of each joint phase in which only the phase's "
        "recogniser trains (on its corrupted B^D batches), so that its weights carry information "
        "before they reweight the recommender (600: corrupted-vs-clean AUC about 0.92 on the "
        "synthetic data, docs/results.md). 0 = the paper's schedule.",
    )
    recognizer_batches_per_step: int = knob(
        1,
        "Recogniser budget: K, the recogniser batches per part of B^D that each step trains on (a step reads K * (N-1) of them; the paper: 1).",
    )
    recognizer_lrs: list[float] = knob(
        [0.05],
        "Adagrad learning rate of recogniser j (phase j); the last repeats (paper: 0.023, 0.025; "
        "0.05 learns the corruption task fastest in the probes of docs/results.md, 0.2 diverges).",
    )
    recognizer: RecognizerConfig = knob(RecognizerConfig(), "The noise recogniser's architecture.")


@dataclass
class ObjectiveConfig:
    """Which loss trains the recommender (see atjt_dist/objective.py)."""

    name: Literal["auto", "bce", "atjt", "tce", "rce", "oracle", "oracle_item"] = knob(
        "auto",
        "'bce' (the base model), 'atjt', 'tce' (truncated loss), 'rce' (reweighted loss), or on "
        "data with planted noise the oracles: 'oracle' (weight 0 for planted-noise users) and "
        "'oracle_item' (planted items removed from histories, weight 0 for planted targets); "
        "'auto' = atjt if atjt.enabled else bce.",
    )
    tce_max_drop: float = knob(0.2, "T-CE: the largest share of a batch's rows dropped (eps_max; Wang et al.: 0.2).")
    tce_ramp_steps: int = knob(
        30000,
        "T-CE: steps over which the drop rate rises from 0 to tce_max_drop (Wang et al.: 30000 iterations; set it to a fraction of a shorter run's steps).",
    )
    tce_exponent: float = knob(1.0, "T-CE: shape of the ramp, eps(t) = eps_max * min(t/T, 1)^exponent (1 = linear).")
    loss_backend: Literal["auto", "torch", "triton"] = knob(
        "auto",
        "Implementation of the weighted BCE (atjt_kernels.weighted_bce): 'auto' = the fused Triton "
        "kernel on CUDA for at least loss_triton_min_rows rows, torch's formula otherwise; "
        "'torch' or 'triton' always (Triton on CPU needs TRITON_INTERPRET=1).",
    )
    loss_triton_min_rows: int = knob(
        1 << 10,
        "'auto': rows from which the Triton kernel is used on CUDA (measured on an H200, "
        "benchmarks/kernel.md: faster than torch's formula at every size from 2^10 rows on).",
    )
    rce_beta: float = knob(0.25, "R-CE: positives weighted sigmoid(x)^beta, negatives (1-sigmoid(x))^beta (Wang et al.: 0.05..1, 0.25).")


@dataclass
class TrainConfig:
    """The recommender's optimisation and the loop."""

    epochs: int = knob(4, "E: epochs per phase (the whole run with ATJT off has N*E epochs).")
    batch_size: int = knob(256, "Positives per global batch (each paired with its negative).")
    max_steps: Optional[int] = knob(None, "Stop after this many steps in total (smoke runs).")
    lr: float = knob(
        0.05,
        "Adagrad learning rate of the recommender (the paper's 8.15e-4, configs/paper.yaml, does "
        "not get past the popularity ranker in a few thousand steps; docs/results.md).",
    )
    lr_decay: Literal["none", "linear", "cosine"] = knob(
        "linear",
        "Schedule of the recommender's learning rate over the steps that train it: 'none' keeps "
        "train.lr (the paper); 'linear' and 'cosine' hold it for the first lr_decay_start share "
        "of those steps, then decay it to 0 at the last one (train.max_steps included). The "
        "recognisers keep atjt.recognizer_lrs. Chosen on two validation folds of ml-100k, where "
        "it brought DIN's seed-to-seed sd of AUC under 0.01 (docs/results.md, section 7).",
    )
    lr_decay_start: float = knob(
        0.5,
        "Share of the recommender's steps, in [0, 1), at train.lr before train.lr_decay starts "
        "(0.5: the best mean validation AUC of 0, 0.5 on ml-100k, docs/results.md).",
    )
    weight_decay: float = knob(5e-4, "L2 weight decay of every optimiser.")
    log_every: int = knob(50, "Log a line (rank 0) and a JSONL record every this many steps (S3Rec pre-training: a line).")
    progress_bar: bool = knob(True, "Show a progress bar on rank 0 (also off when not a TTY).")


@dataclass
class EvalConfig:
    """Test metrics over the stored candidates."""

    k: int = knob(5, "Cut-off K of HR@K and NDCG@K.")
    batch_users: int = knob(1024, "Test users scored per forward pass (global).")
    population_stats_batches: int = knob(
        64,
        "Before evaluation, the statistics of batch-normalising layers (DIN's Dice) are recomputed "
        "exactly over the last this many training batches (PreciseBN); 0 = use the running averages, "
        "which trail the weights.",
    )


@dataclass
class LogConfig:
    """What a run records besides metrics.jsonl (atjt_dist.runlog; plotted by atjt_dist.report)."""

    tensorboard: Optional[bool] = knob(
        None,
        "Also write the records as TensorBoard event files in the run directory (rank 0; needs "
        "the viz extra: pip install 'atjt-dist[viz]'). null (default) = when TensorBoard is "
        "installed; true = always, with a warning (and metrics.jsonl only) where it is not; "
        "false = never.",
    )
    weight_hist_bins: int = knob(
        20,
        "Bins over [0, 1] of the weight histograms: each phase's P(clean) on corrupted vs clean "
        "recogniser rows and on planted-noise vs clean users ('weight_hist' records), and the "
        "final per-user weights ('user_weights').",
    )
    user_weights: bool = knob(
        True,
        "After training a run with a recogniser, score every training user with the recogniser "
        "that did not train on it and write RUN_DIR/weights.parquet (user, weight, and the "
        "planted-noise ground truth where the dataset has one).",
    )


@dataclass
class DistConfig:
    """Processes, devices, sharding of the embedding tables, and the dense parameters' backend."""

    backend: Literal["auto", "gloo", "nccl"] = knob("auto", "Process-group backend; auto = nccl on CUDA, gloo on CPU.")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "Device; auto = cuda when available.")
    sharding: str = knob(
        "auto",
        "Sharding type of every embedding table (recommender and recognisers): auto (TorchRec's "
        "planner chooses per table for this machine's topology), data_parallel, table_wise, "
        "row_wise, column_wise or table_row_wise.",
    )
    table_sharding: dict[str, str] = knob(
        {},
        "Per-table sharding types overriding dist.sharding, e.g. {rec_item: row_wise, rg0_user: "
        "table_wise} (on the command line also rec_item=row_wise,rg0_user=table_wise). Tables are "
        "<prefix>_item, <prefix>_category and <prefix>_user with prefixes rec (the recommender), "
        "rg0, rg1, ... (the recognisers; the transformer recogniser has no user table), plus "
        "model-specific ones (e.g. rec_wide_*); unknown "
        "names are an error that lists the model's tables.",
    )
    dense: Literal["ddp", "deepspeed"] = knob(
        "ddp",
        "Backend of the dense (non-table) parameters: ddp = TorchRec's DistributedDataParallel "
        "with torch Adagrad; deepspeed = a DeepSpeed ZeRO engine with the same Adagrad (the "
        "tables' fused optimiser stays in TorchRec either way).",
    )
    zero_stage: int = knob(
        1,
        "DeepSpeed ZeRO stage with dist.dense=deepspeed: 1 partitions the optimiser state, 2 also "
        "the gradients (0 = plain data parallelism). Ignored when dist.deepspeed_config is given.",
    )
    deepspeed_config: Optional[str] = knob(
        None,
        "A DeepSpeed JSON config file to use instead of the generated one (dist.dense=deepspeed). "
        "Missing batch-size keys are filled in, gradient_clipping defaults to 0.0 (DeepSpeed's own "
        "default, 1.0, would silently clip), fp16/bf16 are refused (the model trains in fp32).",
    )
    pipeline: bool = knob(
        False,
        "CUDA only: build and copy the next step's batches to the GPU (pinned memory, side stream) while the current step runs. Ignored on CPU.",
    )
    timeout_s: float = knob(600.0, "Collective timeout: a dead peer ends the run after at most this.")

    def check(self, key: Any = None) -> None:  # noqa: ARG002 - the sections' interface
        """Value checks that need no model (table names are checked when the model is sharded)."""
        kinds = ("auto", "data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise")
        for name, kind in [("dist.sharding", self.sharding)] + [(f"dist.table_sharding.{t}", k) for t, k in self.table_sharding.items()]:
            if kind not in kinds:
                raise ConfigError(f"config key '{name}': expected one of {', '.join(kinds)}, got {kind!r}")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(
                f"config key 'dist.zero_stage' must be 0, 1 or 2, got {self.zero_stage} (stage 3 partitions "
                "the parameters themselves, which the sharded model's forward cannot gather)"
            )
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            raise ConfigError(f"config key 'dist.deepspeed_config': file {self.deepspeed_config} does not exist")


@dataclass
class CheckpointConfig:
    """Checkpoints of the whole training state in RUN_DIR/checkpoints (atjt_dist/checkpoint.py)."""

    every: int = knob(
        1000,
        "Save a checkpoint every this many training steps; 0 = only at the end of training (a "
        "checkpoint is always saved at the end). A step that saves one also ends a log window.",
    )
    keep: int = knob(
        2,
        "Keep the newest this many complete checkpoints; older ones are deleted once a new one is "
        "committed. 2 or more lets a resume fall back to the previous one when the newest is damaged.",
    )


@dataclass
class Config:
    """The whole configuration of a run."""

    seed: int = knob(42, "Seed of everything: same config + seed = same result.")
    run_dir: Optional[str] = knob(None, "Run directory (default runs/<time>-<model>-<method>).")
    resume: bool = knob(
        False,
        "Continue the run in run_dir from its newest complete, undamaged checkpoint (with none, "
        "start from scratch and say so in the log). Implied when torchrun restarts the workers "
        "(--max-restarts). Without it, a run_dir that already holds checkpoints is refused.",
    )
    data: DataConfig = knob(DataConfig(), "Dataset and sample construction.")
    model: ModelConfig = knob(ModelConfig(), "Base recommender.")
    atjt: ATJTConfig = knob(ATJTConfig(), "ATJT.")
    objective: ObjectiveConfig = knob(ObjectiveConfig(), "The training objective (bce, atjt, tce, rce).")
    train: TrainConfig = knob(TrainConfig(), "Optimisation and loop.")
    eval: EvalConfig = knob(EvalConfig(), "Evaluation.")
    log: LogConfig = knob(LogConfig(), "Run records: TensorBoard, weight histograms, per-user weights.")
    dist: DistConfig = knob(DistConfig(), "Distribution.")
    checkpoint: CheckpointConfig = knob(CheckpointConfig(), "Checkpoints and resuming.")


# --------------------------------------------------------------------------------------------
# Typed assignment
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if isinstance(value, str):  # "--x.y=1,2,3" on the command line
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):  # "--x.y=a=1,b=2" (or a:1) on the command line
            pairs = [v.replace(":", "=", 1) if "=" not in v else v for v in value.split(",") if v.strip()]
            if not all("=" in v for v in pairs):
                raise bad
            value = {k.strip(): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
        if not isinstance(value, dict):
            raise bad
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _from_mapping(tp(), value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; so do our flags
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_mapping(obj: Any, mapping: dict, prefix: str) -> Any:
    types_ = _field_types(type(obj))
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        attr = str(name).replace("-", "_")
        if attr not in types_:
            allowed = ", ".join(sorted(types_))
            raise ConfigError(f"unknown config key '{key}'; allowed keys here: {allowed}")
        tp = types_[attr]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _from_mapping(getattr(obj, attr), value, key)
        else:
            setattr(obj, attr, _coerce(value, tp, key))
    return obj


def set_key(cfg: Config, dotted: str, value: Any) -> None:
    """Assign ``value`` (already parsed) to the dotted key, with type checking."""
    parts = dotted.replace("-", "_").split(".")
    mapping: Any = value
    for part in reversed(parts):
        mapping = {part: mapping}
    _from_mapping(cfg, mapping, "")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _merge(base: dict, top: dict) -> dict:
    """Deep merge of two config mappings; ``top`` wins."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML config file into a mapping (empty file = empty mapping).

    A file may start from others: ``include: [a.yaml, b.yaml]`` (paths relative to the file)
    are loaded in order and merged, then the file's own keys override them. This is how
    configs/grid/<dataset>-<model>.yaml combine a dataset's and a model's settings.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} includes itself (through {', '.join(str(p) for p in _seen)})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top level")
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"config file {path}: 'include' must be a file name or a list of file names")
    merged: dict = {}
    for inc in includes:
        merged = _merge(merged, load_yaml(path.parent / inc, _seen + (path.resolve(),)))
    return _merge(merged, data)


def parse_overrides(argv: list[str]) -> tuple[Optional[str], list[tuple[str, Any]], list[str]]:
    """Split ``argv`` into (config file, [(dotted key, value)], flags).

    Accepts ``--config FILE``, ``--key=value`` and ``--key value``; a ``--flag`` followed by
    another option or nothing is a boolean ``true`` (e.g. ``--atjt.enabled``); ``--no-key`` sets
    a boolean to false. Values are parsed as YAML scalars (``1e-3``, ``true``, ``null``).
    """
    config_file: Optional[str] = None
    overrides: list[tuple[str, Any]] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, raw = body, argv[i + 1]
            i += 2
        else:
            key, raw = body, None
            i += 1
        if key == "config":
            if raw is None:
                raise ConfigError("--config needs a file name")
            config_file = raw
            continue
        if raw is None:
            if key.startswith("no-"):
                overrides.append((key[3:], False))
            else:
                overrides.append((key, True))
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if raw.strip() == "":
            value = ""
        overrides.append((key, value))
    return config_file, overrides, rest


def build_config(
    argv: Optional[list[str]] = None,
    config_file: Optional[str | Path] = None,
    base: Optional[Config] = None,
) -> Config:
    """Defaults <- YAML file <- command-line overrides; raises ConfigError on any bad key."""
    cfg = base if base is not None else Config()
    file_from_argv, overrides, _ = parse_overrides(list(argv or []))
    for path in [p for p in (config_file, file_from_argv) if p is not None]:
        _from_mapping(cfg, load_yaml(path), "")
    for key, value in overrides:
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a type cannot express."""
    positive = {
        "data.history_length": cfg.data.history_length,
        "train.batch_size": cfg.train.batch_size,
        "train.epochs": cfg.train.epochs,
        "train.log_every": cfg.train.log_every,
        "atjt.num_parts": cfg.atjt.num_parts,
        "atjt.replace_count": cfg.atjt.replace_count,
        "atjt.recognizer_batch_size": cfg.atjt.recognizer_batch_size,
        "atjt.recognizer_batches_per_step": cfg.atjt.recognizer_batches_per_step,
        "model.embedding_dim": cfg.model.embedding_dim,
        "eval.k": cfg.eval.k,
        "eval.batch_users": cfg.eval.batch_users,
        "log.weight_hist_bins": cfg.log.weight_hist_bins,
        "objective.loss_triton_min_rows": cfg.objective.loss_triton_min_rows,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if cfg.objective.name == "atjt" and not cfg.atjt.enabled:
        raise ConfigError("objective.name=atjt contradicts atjt.enabled=false; set one of them")
    if not 0.0 <= cfg.objective.tce_max_drop < 1.0:
        raise ConfigError(f"config key 'objective.tce_max_drop' must be in [0, 1), got {cfg.objective.tce_max_drop}")
    if cfg.objective.tce_ramp_steps < 0 or cfg.objective.rce_beta < 0 or cfg.objective.tce_exponent <= 0:
        raise ConfigError("config keys 'objective.tce_ramp_steps' and 'objective.rce_beta' must be >= 0, 'objective.tce_exponent' > 0")
    if cfg.atjt.enabled and cfg.objective.name in ("auto", "atjt") and cfg.atjt.num_parts < 2:
        raise ConfigError("config key 'atjt.num_parts' must be >= 2 with ATJT on (cross-fitting needs another part)")
    if not 0.0 < cfg.atjt.noise_fraction < 1.0:
        raise ConfigError(f"config key 'atjt.noise_fraction' must be in (0, 1), got {cfg.atjt.noise_fraction}")
    if not cfg.atjt.recognizer_lrs:
        raise ConfigError("config key 'atjt.recognizer_lrs' needs at least one learning rate")
    if cfg.train.lr < 0 or any(lr < 0 for lr in cfg.atjt.recognizer_lrs):  # 0 = frozen (a probe)
        raise ConfigError(f"config keys 'train.lr' and 'atjt.recognizer_lrs' must be >= 0, got {cfg.train.lr} and {cfg.atjt.recognizer_lrs}")
    if cfg.train.weight_decay < 0:
        raise ConfigError(f"config key 'train.weight_decay' must be >= 0, got {cfg.train.weight_decay}")
    if not 0.0 <= cfg.train.lr_decay_start < 1.0:
        raise ConfigError(f"config key 'train.lr_decay_start' must be in [0, 1), got {cfg.train.lr_decay_start}")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ConfigError(f"config key 'train.max_steps' must be >= 1 or null, got {cfg.train.max_steps}")
    if cfg.checkpoint.every < 0:
        raise ConfigError(f"config key 'checkpoint.every' must be >= 0 (0 = only at the end), got {cfg.checkpoint.every}")
    if cfg.atjt.recognizer_warmup_steps < 0:
        raise ConfigError(f"config key 'atjt.recognizer_warmup_steps' must be >= 0, got {cfg.atjt.recognizer_warmup_steps}")
    if cfg.eval.population_stats_batches < 0:
        raise ConfigError(f"config key 'eval.population_stats_batches' must be >= 0 (0 = running averages), got {cfg.eval.population_stats_batches}")
    if cfg.checkpoint.keep < 1:
        raise ConfigError(f"config key 'checkpoint.keep' must be >= 1, got {cfg.checkpoint.keep}")
    if cfg.resume and not cfg.run_dir:
        raise ConfigError("--resume continues the run in --run-dir: give the run directory to resume")
    for key, value in {"model.dropout": cfg.model.dropout, "atjt.recognizer.dropout": cfg.atjt.recognizer.dropout}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {value}")
    cfg.data.synthetic.check()
    cfg.atjt.recognizer.check()
    for section in (cfg.model.dcn, cfg.model.wide_deep, cfg.model.sasrec, cfg.model.fearec, cfg.model.s3rec):
        section.check()
    cfg.dist.check()


# --------------------------------------------------------------------------------------------
# Output and documentation
# --------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict:
    """The config as plain data (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config; loading it with --config reproduces the run's config."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def iter_fields(cls: type = Config, prefix: str = ""):
    """Yield (dotted key, type, default, help) for every leaf field of the tree."""
    types_ = _field_types(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = types_[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, key + ".")
        else:
            yield key, tp, getattr(instance, f.name), f.metadata.get("help", "")


def describe(cls: type = Config) -> str:
    """A Markdown table of every config key (the source of docs/config.md and --help)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, help_ in iter_fields(cls):
        lines.append(f"| `{key}` | {_type_name(tp)} | `{default!r}` | {help_} |")
    return "\n".join(lines) + "\n"


CONFIG_DOC_HEADER = """# Configuration reference

Every key of the config tree (`atjt_dist/config.py`), its type, default and meaning. A run's
config is these defaults, then `--config FILE` (YAML, sections as below; `include: [...]` pulls
in other files first), then `--section.key=value` overrides. The resolved config is written to
`RUN_DIR/config.yaml`.

This file is generated: `python -m atjt_dist.config > docs/config.md` (a test checks it is
current).

"""


def config_doc() -> str:
    """docs/config.md: a short header and the table of every key (:func:`describe`)."""
    return CONFIG_DOC_HEADER + describe()


if __name__ == "__main__":
    sys.stdout.write(config_doc())
