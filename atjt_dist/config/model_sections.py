"""The ``model`` section: which base recommender a run trains, and one subsection per model
(DIN, DCN, Wide & Deep, SASRec, FEARec, S3Rec) with its layers and the checks of their values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from ..errors import ConfigError
from .fields import knob


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


#: The recommender's L2 weight decay per base model where train.weight_decay is null. Measured
#: against the paper's 5e-4 on validation users (docs/results.md, section 7d): without it DIN
#: gained 0.011-0.024 AUC on Beauty with a smaller seed-to-seed sd, DCN 0.005 on ml-100k, Wide &
#: Deep was unchanged; SASRec lost 0.026 on ml-100k, so the sequential models keep 5e-4 (FEARec
#: and S3Rec were not measured without it).
RECOMMENDER_WEIGHT_DECAY: dict[str, float] = {"din": 0.0, "dcn": 0.0, "wide_deep": 0.0, "sasrec": 5e-4, "fearec": 5e-4, "s3rec": 5e-4}


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
