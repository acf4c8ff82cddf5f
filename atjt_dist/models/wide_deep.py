"""Wide & Deep (Cheng et al., DLRS 2016), as a base model of the paper.

The paper's model (its equation (3)) sums a linear model over sparse and crossed features and a
deep network's output into one logit:

    logit = w_wide . [x, phi(x)] + w_deep . a^(K) + b

- Deep part: a ReLU network over the embedded fields, the same x0 as DCN
  ([user; mean-pooled history [item; category]; target item; target category], 5D = 40 with
  dim-8 embeddings), whose final linear layer holds w_deep and b.
- Wide part: a weight per sparse id for the user, the target item and the target category,
  plus the cross-product transformations phi(x) of the paper (its app-installed x
  app-impressed crosses), here with the history in place of the installed apps:

      phi_item(x) = sum over valid positions t of the one-hot of hash(hist_item_t, target_item)
      phi_cat(x)  = sum over valid positions t of the one-hot of hash(hist_cat_t, target_cat)

  i.e. a pair seen k times in the history counts k times.

The wide weights live in TorchRec too: a second EmbeddingCollection ``wide.embeddings`` (the
parameter names contain ``.embeddings.embeddings.``, so optim.py gives them the fused sparse
Adagrad and DMP shards them like every table) with five tables, one per wide feature. FBGEMM's
kernels need embedding dims that are multiples of 4, so a table row packs WIDE_PACK = 4 scalar
weights: id i is looked up as row i // 4 and weighs column i % 4. (Its neighbours in the row get
a zero gradient, but the table's L2 weight decay touches the whole looked-up row.)

Crossed features are hashed (the hashing trick, as the crossed columns of the paper's TensorFlow
implementation): the pair (a, b) with b in [0, n_b) becomes the key k = a * n_b + b, unique per
pair, and

    bucket = (((k mod p) * A + B) mod p) mod buckets,      p = 2^31 - 1,

with fixed constants A, B per cross (deterministic across runs, processes and devices; every
intermediate stays below 2^63, so int64 arithmetic is exact). The map k -> (k A + B) mod p is a
bijection for k < p, so distinct pairs collide only in the final ``mod buckets`` (or when keys
differ by a multiple of p, for item vocabularies above ~46k): colliding pairs share one weight,
no resolution, as in the hashing trick; ``model.wide_deep.cross_buckets`` trades memory for
collisions.

Deviations from the paper: the wide part is trained with the project's Adagrad, not FTRL with L1
(one sparse optimiser for all tables, METHOD.md section 5); the wide weights start at zero (a
linear model's usual start), the rest Xavier-uniform with zero biases.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingConfig, KeyedJaggedTensor

from ..config import ModelConfig
from .base import ModelSpec, Recommender, xavier_init_
from .batch import SequenceBatch, embed, make_embedding_collection
from .dcn import embedded_fields
from .layers import MLP

#: scalar wide weights per table row (FBGEMM needs embedding dims that are multiples of 4)
WIDE_PACK = 4

_PRIME = 2**31 - 1
#: (multiplier A, offset B) of each crossed feature's hash, fixed so buckets never change
CROSS_HASH = {"item": (1_500_450_271, 1_023_694_981), "category": (1_957_102_303, 307_161_491)}


def hash_cross(left: torch.Tensor, right: torch.Tensor, right_cardinality: int, buckets: int, salt: str) -> torch.Tensor:
    """Bucket in [0, buckets) of each pair (left[i], right[i]), right in [0, right_cardinality).

    Deterministic and exact in int64 on any device (see the module docstring for the hash).
    """
    a, b = CROSS_HASH[salt]
    key = left.long() * right_cardinality + right.long()
    return ((key % _PRIME) * a + b) % _PRIME % buckets


class WidePart(nn.Module):
    """The linear model over sparse and crossed features; forward(batch) -> [B].

    ``embeddings`` holds one table per feature of FEATURES (names ``{prefix}_wide_*``); its
    input KeyedJaggedTensor (:meth:`kjt`) always carries all of them, as sharded lookups need.
    """

    FEATURES = ("wide_user", "wide_target_item", "wide_target_cat", "wide_cross_item", "wide_cross_cat")

    def __init__(self, spec: ModelSpec, buckets: int, prefix: str) -> None:
        super().__init__()
        self.buckets = buckets
        self.num_items = spec.num_items
        self.num_categories = spec.num_categories
        sizes = {
            "user": max(spec.num_users, 1),
            "item": spec.num_items + 1,
            "category": spec.num_categories + 1,
            "cross_item": buckets,
            "cross_category": buckets,
        }
        tables = [
            EmbeddingConfig(
                name=f"{prefix}_wide_{table}",
                embedding_dim=WIDE_PACK,
                num_embeddings=-(-rows // WIDE_PACK),
                feature_names=[feature],
            )
            for (table, rows), feature in zip(sizes.items(), self.FEATURES)
        ]
        self.embeddings = make_embedding_collection(tables)

    def ids(self, batch: SequenceBatch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Feature -> (weight ids, ids per row): one id per row for user, target item and
        target category; one crossed id per valid history position for the two crosses."""
        mask = batch.mask
        ones = torch.ones_like(batch.lengths)
        target = batch.target[:, None].expand_as(batch.hist)[mask]
        target_cat = batch.target_cat[:, None].expand_as(batch.hist_cat)[mask]
        return {
            "wide_user": (batch.user, ones),
            "wide_target_item": (batch.target, ones),
            "wide_target_cat": (batch.target_cat, ones),
            "wide_cross_item": (hash_cross(batch.hist[mask], target, self.num_items + 1, self.buckets, "item"), batch.lengths),
            "wide_cross_cat": (
                hash_cross(batch.hist_cat[mask], target_cat, self.num_categories + 1, self.buckets, "category"),
                batch.lengths,
            ),
        }

    @staticmethod
    def kjt(ids: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> KeyedJaggedTensor:
        """The table rows to look up (id // WIDE_PACK), every feature of FEATURES, in order."""
        keys = list(WidePart.FEATURES)
        values = torch.cat([ids[k][0] // WIDE_PACK for k in keys])
        lengths = torch.cat([ids[k][1] for k in keys])
        return KeyedJaggedTensor(keys=keys, values=values.long(), lengths=lengths.int())

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        ids = self.ids(batch)
        out = self.embeddings(self.kjt(ids))
        dtype = torch.get_default_dtype()  # TorchRec's lookups are fp32; follow the default

        def weights(feature: str) -> torch.Tensor:  # the scalar weight of every id of a feature
            rows = out[feature].values().to(dtype)  # [N, WIDE_PACK]
            return rows.gather(1, (ids[feature][0] % WIDE_PACK)[:, None]).squeeze(1)

        logit = weights("wide_user") + weights("wide_target_item") + weights("wide_target_cat")
        # Sum over the valid history positions: scatter into [B, L] (zero at padding), then
        # sum the rows (deterministic, unlike an atomic index_add on GPU).
        mask = batch.mask
        crossed = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        crossed[mask] = weights("wide_cross_item") + weights("wide_cross_cat")
        return logit + crossed.sum(1)


class WideDeep(Recommender):
    """Wide & Deep; forward(batch) -> logits [B] = wide part + deep part."""

    def __init__(self, spec: ModelSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg.embedding_dim)
        cfg.wide_deep.check()
        self.deep = MLP(5 * cfg.embedding_dim, cfg.wide_deep.deep_hidden, 1, "relu", cfg.dropout)
        self.wide = WidePart(spec, cfg.wide_deep.cross_buckets, self.table_prefix)
        xavier_init_(self)
        with torch.no_grad():
            for p in self.wide.parameters():
                p.zero_()

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        deep = self.deep(embedded_fields(embed(self.embeddings, batch))).squeeze(-1)
        return deep + self.wide(batch)
