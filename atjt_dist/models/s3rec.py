"""S3Rec (Zhou et al., CIKM 2020, "S3-Rec: Self-Supervised Learning for Sequential Recommendation
with Mutual Information Maximization"), fine-tuning side; the pre-training stage is
atjt_dist.pretrain, whose checkpoint :func:`apply_pretrained` loads.

Encoder (as the authors' code, CIKM2020-S3Rec/modules.py): item embedding + learned position
embedding -> LayerNorm -> dropout -> ``blocks`` post-LayerNorm transformer blocks (multi-head
self-attention, then a GELU feed-forward of width 4 x hidden, each with a residual and a
LayerNorm, eps 1e-12; the shared blocks of models/transformer.py). Weights are N(0, 0.02),
biases 0. The score of an item is the dot product of a hidden state with its item embedding
(SequentialRecommender's output layer).

- Positions. Histories are left-aligned (padding after ``lengths``); the authors left-pad, so
  their most recent item always sits at the last position. We keep that: item t of a row of
  length n gets position P - n + t (P = the table's size = the dataset's history length), so the
  most recent item always has position P - 1 whatever the padding or the batch's width.
- Attention. Fine-tuning (``encode``) is causal: position t attends to valid positions <= t.
  Pre-training is bidirectional over the valid positions (BERT-style, as in the paper). Every
  query may also attend to itself, so a row without history gives finite values, not NaN.
- Tables (dim = hidden). ``rec_item`` has num_items + 2 rows: row 0 is padding (never looked up),
  rows 1..num_items the items, and row num_items + 1 the [mask] token of pre-training (the
  authors' ``mask_id = max_item + 1``). Fine-tuning never looks the [mask] row up: sampled
  negatives and test candidates are real items. ``rec_category`` holds the item attributes
  (one category per item in our data), used by pre-training's AAP and MAP only; ``rec_user`` is
  unused by S3Rec but kept so every model reads the same features.

The trainer calls :func:`apply_pretrained` once, on the unsharded model's state, before it is
copied into the sharded model: the checkpoint's tensors replace the recommender's entries after
checks that it was pre-trained on this dataset, split and fold, with these layer sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingConfig

from ..config import Config, ConfigError, ModelConfig
from ..data.layout import dataset_fingerprint  # kept importable from here; it lives with the dataset layout
from .base import ModelSpec, SequentialRecommender
from .batch import Embedded, SequenceBatch, embedding_tables, make_embedding_collection
from .layers import Dropout
from .transformer import LearnedPositions, TransformerEncoder, position_ids

log = logging.getLogger("atjt_dist")

INIT_STD = 0.02  # the authors' initializer_range
LAYER_NORM_EPS = 1e-12
CHECKPOINT_KIND = "atjt-dist/s3rec-pretrain"
CHECKPOINT_VERSION = 1


def s3rec_tables(prefix: str, spec: ModelSpec, dim: int) -> list[EmbeddingConfig]:
    """The usual three tables, with one extra item row for the [mask] token (id num_items + 1)."""
    tables = embedding_tables(prefix, dim, spec.num_users, spec.num_items, spec.num_categories)
    item = tables[0]
    tables[0] = EmbeddingConfig(name=item.name, embedding_dim=dim, num_embeddings=spec.num_items + 2, feature_names=list(item.feature_names))
    return tables


class S3Rec(SequentialRecommender):
    """S3Rec's encoder: causal in fine-tuning (``encode``), bidirectional in pre-training."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig) -> None:
        c = cfg.s3rec
        c.check()
        super().__init__(spec, c.hidden)
        # The base class built the standard tables; S3Rec's item table has the extra [mask] row.
        self.embeddings = make_embedding_collection(s3rec_tables(self.table_prefix, spec, c.hidden))
        self.mask_id = spec.num_items + 1
        self.positions = LearnedPositions(spec.history_length, c.hidden)
        self.input_norm = nn.LayerNorm(c.hidden, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(c.dropout)
        self.encoder = TransformerEncoder(
            c.hidden,
            c.blocks,
            c.heads,
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            inner=4 * c.hidden,
            act="gelu",
            norm="post",
            causal=True,
            eps=LAYER_NORM_EPS,
        )
        init_weights_(self)

    # -- tables (unsharded: pre-training reads them directly) ----------------------------------

    def apply_pretrained(self, full_state: dict, cfg, data) -> None:
        """Load ``model.s3rec.pretrained`` (written by atjt_dist.pretrain) if it is set."""
        if cfg.model.s3rec.pretrained:
            apply_pretrained(full_state, cfg, data)

    @property
    def item_table(self) -> torch.Tensor:
        return self.embeddings.embeddings[f"{self.table_prefix}_item"].weight

    @property
    def category_table(self) -> torch.Tensor:
        return self.embeddings.embeddings[f"{self.table_prefix}_category"].weight

    # -- encoder -----------------------------------------------------------------------------

    def hidden_states(self, items: torch.Tensor, lengths: torch.Tensor, causal: bool) -> torch.Tensor:
        """Hidden states [B, L, H] of left-aligned item embeddings ``items`` [B, L, H] (zero at
        padding) of rows with ``lengths`` valid items; causal or bidirectional attention."""
        L = items.shape[1]
        mask = torch.arange(L, device=items.device)[None, :] < lengths[:, None]
        # the most recent item at position P - 1 (align='end'), whatever the padding; looked up
        # with F.embedding, whose CPU backward is deterministic (indexing's index_put is not)
        ids = position_ids(lengths, L, self.positions.max_len, align="end")
        x = self.dropout(self.input_norm(items + F.embedding(ids, self.positions.weight)))
        return self.encoder(x, mask, causal=causal)

    def encode(self, batch: SequenceBatch, embedded: Embedded) -> torch.Tensor:
        return self.hidden_states(embedded.hist, batch.lengths, causal=True)


def init_weights_(module: nn.Module) -> None:
    """The authors' initialisation: N(0, 0.02) weights and tables, zero biases, unit LayerNorms."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, INIT_STD)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            if isinstance(m, LearnedPositions):
                m.weight.normal_(0.0, INIT_STD)


# ---------------------------------------------------------------------------------------------
# The pre-training checkpoint
# ---------------------------------------------------------------------------------------------


def checkpoint_meta(cfg: Config, data) -> dict:
    """What a pre-training checkpoint records about its run (checked by apply_pretrained)."""
    s = cfg.model.s3rec
    return {
        "dataset": str(Path(data.arrays.path).resolve()),
        "dataset_fingerprint": dataset_fingerprint(data.arrays),
        "num_users": int(data.meta["num_users"]),
        "num_items": int(data.meta["num_items"]),
        "num_categories": int(data.meta["num_categories"]),
        "split": cfg.data.split,
        "fold": cfg.data.fold if cfg.data.split == "kfold" else None,
        "history_length": cfg.data.history_length,
        "hidden": s.hidden,
        "blocks": s.blocks,
        "heads": s.heads,
    }


# Keys compared at load time, in the order their mismatches are reported.
_CHECKED = ("num_items", "num_categories", "num_users", "split", "fold", "history_length", "hidden", "blocks", "heads")


def load_checkpoint(path: str | Path) -> dict:
    """Read a pre-training checkpoint; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config key 'model.s3rec.pretrained': {path} does not exist; write it with "
            "python -m atjt_dist.pretrain --model.name=s3rec --run-dir=DIR (then DIR/pretrain.pt)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"config key 'model.s3rec.pretrained': cannot read {path} as a checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise ConfigError(f"config key 'model.s3rec.pretrained': {path} is not an S3Rec pre-training checkpoint (atjt_dist.pretrain)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: checkpoint version {ckpt.get('version')}, this code reads version {CHECKPOINT_VERSION}")
    return ckpt


def check_checkpoint(ckpt: dict, path: str | Path, expected: dict) -> None:
    """Raise ConfigError naming ``path`` and every mismatch between its run and this one."""
    meta = ckpt["meta"]
    problems = [f"{k} {meta.get(k)!r} in the checkpoint vs {expected[k]!r} in this run" for k in _CHECKED if meta.get(k) != expected[k]]
    if meta.get("dataset_fingerprint") != expected["dataset_fingerprint"]:
        problems.insert(
            0,
            f"dataset {meta.get('dataset')} (fingerprint {meta.get('dataset_fingerprint')}) vs "
            f"{expected['dataset']} (fingerprint {expected['dataset_fingerprint']})",
        )
    if problems:
        raise ConfigError(
            f"config key 'model.s3rec.pretrained': {path} was pre-trained for another run: "
            + "; ".join(problems)
            + ". Pre-train again with this run's data and model settings."
        )
    if meta.get("dataset") != expected["dataset"]:
        log.info("%s was pre-trained on %s, an identical copy of %s", path, meta.get("dataset"), expected["dataset"])


def apply_pretrained(full_state: dict[str, torch.Tensor], cfg: Config, data, prefix: str = "recommender.") -> int:
    """Replace the S3Rec entries of ``full_state`` (the unsharded model's state; the
    recommender's keys start with ``prefix``) by cfg.model.s3rec.pretrained's tensors.

    ``data`` is the run's TrainingData. Returns the number of tensors replaced. Raises
    ConfigError when the checkpoint was pre-trained on another dataset, split or fold, or with
    other layer sizes, naming the file and each mismatch.
    """
    path = cfg.model.s3rec.pretrained
    ckpt = load_checkpoint(path)
    check_checkpoint(ckpt, path, checkpoint_meta(cfg, data))
    for key, tensor in ckpt["model"].items():
        full_key = prefix + key
        if full_key not in full_state or full_state[full_key].shape != tensor.shape:
            have = tuple(full_state[full_key].shape) if full_key in full_state else "missing"
            raise ConfigError(f"{path}: tensor {key} {tuple(tensor.shape)} does not fit this model ({have})")
    for key, tensor in ckpt["model"].items():
        full_state[prefix + key] = tensor.to(full_state[prefix + key].dtype)
    log.info("S3Rec: %d pre-trained tensors loaded from %s", len(ckpt["model"]), path)
    return len(ckpt["model"])


__all__ = ["S3Rec", "apply_pretrained", "checkpoint_meta", "dataset_fingerprint", "load_checkpoint"]
