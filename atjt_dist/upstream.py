"""Workarounds for gaps in TorchRec 1.8 and fbgemm-gpu-cpu 1.8, in one place: each names the gap,
how this build is probed for it, and what to delete once upstream has fixed it.

- data_parallel on CPU: FBGEMM's CPU dense lookup ignores pooling NONE and sums each bag, so a
  sequence lookup returned [batch x features] rows and TorchRec's split by feature failed
  (:func:`cpu_dense_lookup_pools` probes the installed build, :func:`fix_cpu_sequence_lookups`
  gives the affected lookups a correct forward). Delete both, and their call in
  distributed.shard_model, when the probe returns False on the pinned FBGEMM.
- table_row_wise: TorchRec has no table-row-wise sharding for EmbeddingCollection (sequence)
  tables on any device; on one host it is row-wise over the host's ranks, which is planned
  instead, and several hosts get a clear error (:func:`planner_sharding_type`). Delete it when
  TorchRec's EmbeddingCollectionSharder lists table_row_wise.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn


def planner_sharding_type(kind: str, world: int, local_world: int) -> str:
    """The sharding type the planner is asked for.

    TorchRec implements table-row-wise sharding only for pooled (bag) tables: the
    EmbeddingCollection sharder does not list it on any device and ShardedEmbeddingCollection
    has no sequence table-row-wise sharding. Table-row-wise places a table on one host and
    splits its rows over that host's ranks; on one host that is exactly row-wise over its ranks
    (same shard sizes, same input and output distribution), which is what we plan. Across
    hosts it has no TorchRec implementation for sequence tables, so it is refused.
    """
    if kind != "table_row_wise":
        return kind
    if world != local_world:
        raise ValueError(
            "dist.sharding=table_row_wise on several hosts: TorchRec has no table-row-wise sharding for "
            "EmbeddingCollection (sequence) tables; use row_wise (rows over all ranks) or table_wise"
        )
    return "row_wise"


@functools.cache
def cpu_dense_lookup_pools() -> bool:
    """Whether FBGEMM's CPU dense table-batched lookup ignores PoolingMode.NONE.

    TorchRec runs data-parallel EmbeddingCollection tables through FBGEMM's dense kernel
    (``DenseTableBatchedEmbeddingBagsCodegen``, pooling NONE = one row per id). fbgemm-gpu-cpu
    1.8's CPU implementation sums each bag instead, so a sequence lookup of n ids returns
    [batch x features] pooled rows, and TorchRec's split of the output by feature lengths fails
    (``split_with_sizes ... [1710, 128, 0, 1710, 128, 128]``: the history's 1710 ids came back as
    128 sums). With one id per bag the sum is the id's row, which is why a single-id test passes.
    A probe of two ids in one bag tells whether this build is affected.
    """
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    probe = DenseTableBatchedEmbeddingBagsCodegen([(2, 4)], pooling_mode=PoolingMode.NONE, use_cpu=True)
    with torch.no_grad():
        out = probe(indices=torch.tensor([0, 1]), offsets=torch.tensor([0, 2]))
    return out.numel() != 2 * 4


def sequence_lookup(self, indices: torch.Tensor, offsets: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ARG001
    """Unpooled lookup of a dense table batch: [len(indices), D], one row per id.

    ``offsets`` delimit T x B bags (feature-major); feature f reads table feature_table_map[f],
    whose rows start at ``hash_size_cumsum[f]`` in the flat weights (all tables of a sequence
    group share one dimension D). Autograd gives the dense weights their (dense) gradient, as
    the FBGEMM kernel does.
    """
    dims = self.D_offsets[1:] - self.D_offsets[:-1]
    D = int(dims[0])
    if not bool((dims == D).all()):
        raise RuntimeError("sequence tables of one group must share their dimension")
    T = dims.numel()
    per_feature = (offsets[1:] - offsets[:-1]).view(T, -1).sum(1)
    feature = torch.repeat_interleave(torch.arange(T, device=indices.device), per_feature)
    rows = self.hash_size_cumsum[:-1][feature] + indices.long()
    return self.weights.view(-1, D).index_select(0, rows)


def fix_cpu_sequence_lookups(dmp: nn.Module) -> int:
    """Give every unpooled CPU dense lookup of ``dmp`` a correct forward (see
    :func:`cpu_dense_lookup_pools`); a no-op on FBGEMM builds without the bug. Returns the
    number of lookups patched."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    if not cpu_dense_lookup_pools():
        return 0
    patched = 0
    for sharded in dmp.modules():
        # The lookups of a sharded collection sit in a plain list (data-parallel ones wrapped in
        # TorchRec's own DDP), out of reach of ``modules()``.
        for lookup in getattr(sharded, "_lookups", None) or []:
            for m in lookup.modules():
                if isinstance(m, DenseTableBatchedEmbeddingBagsCodegen) and m.pooling_mode == PoolingMode.NONE and m.weights.device.type == "cpu":
                    m.forward = types.MethodType(sequence_lookup, m)
                    patched += 1
    return patched
