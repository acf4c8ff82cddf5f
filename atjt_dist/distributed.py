"""Process group, device, sharding plan and the DistributedModelParallel wrap.

One code path for one process and for many: without torchrun, a single-process gloo group is
created so the model is still wrapped by DistributedModelParallel (world size 1). Embedding
tables are sharded by TorchRec's planner (or a sharding type forced in config); their optimiser
runs fused in the backward pass (FBGEMM), configured per table through
``apply_optimizer_in_backward``. Dense parameters are replicated with DDP.

Initial weights: every rank builds the same unsharded model from the same seed; after sharding,
each rank copies its shards out of those full tensors (:func:`load_full_state`). On CPU the
sharded tables are not initialised from the unsharded module by TorchRec, and this also makes
1-process and N-process runs start from identical weights.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .config import DistConfig

log = logging.getLogger(__name__)

SHARDING_TYPES = ("data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise")


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device, and whether we own the group."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device
    backend: str
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: DistConfig) -> DistContext:
    """Join torchrun's process group (RANK/WORLD_SIZE set) or create a single-process one."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("dist.device=cuda but CUDA is not available; use dist.device=auto or cpu")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if want_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    device = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    owns = False
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        owns = True
    return DistContext(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=local_rank,
        local_world=local_world,
        device=device,
        backend=backend,
        owns_group=owns,
    )


def shutdown(ctx: Optional[DistContext]) -> None:
    """Destroy the process group cleanly.

    Callers must drop their references to the DMP module and optimisers first: gloo's worker
    thread can otherwise still be finalising work during interpreter shutdown and abort the
    process ("terminate called without an active exception").
    """
    gc.collect()
    if ctx is not None and ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------


def _embedding_tables(module: nn.Module) -> list[str]:
    from torchrec import EmbeddingCollection

    names = []
    for m in module.modules():
        if isinstance(m, EmbeddingCollection):
            names.extend(cfg.name for cfg in m.embedding_configs())
    return names


def shard_model(module: nn.Module, ctx: DistContext, sharding: str = "auto"):
    """Wrap ``module`` in DistributedModelParallel with a plan for every embedding table.

    ``sharding``: 'auto' lets TorchRec's planner choose per table for this topology; any of
    SHARDING_TYPES forces that type for every table. Returns (dmp, plan).
    """
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
    from torchrec.distributed.types import ShardingEnv

    env = ShardingEnv.from_process_group(dist.group.WORLD)
    compute_device = ctx.device.type
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=ctx.world, local_world_size=ctx.local_world),
        kernel_config=KernelConfig(compute_device=compute_device),
    )
    constraints = None
    if sharding != "auto":
        if sharding not in SHARDING_TYPES:
            raise ValueError(f"dist.sharding={sharding!r}: expected auto or one of {', '.join(SHARDING_TYPES)}")
        constraints = {name: ParameterConstraints(sharding_types=[sharding]) for name in _embedding_tables(module)}
    sharders = [EmbeddingCollectionSharder()]
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(module, sharders, dist.group.WORLD)
    dmp = DistributedModelParallel(
        module,
        env=env,
        device=ctx.device,
        plan=plan,
        sharders=sharders,
        # Every dense parameter takes part in every step (atjt.JointModel.idle_dense_parameters),
        # but which recogniser computes changes with the phase: no static graph.
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=False),
    )
    return dmp, plan


@torch.no_grad()
def load_full_state(dmp: nn.Module, full_state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Copy full (unsharded) tensors into ``dmp``'s parameters and buffers, shard by shard.

    ``full_state`` maps the unsharded module's state-dict keys (optionally restricted to the
    keys starting with ``prefix``) to tensors. Sharded tables receive the slice of each local
    shard; replicated tensors are copied whole.
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    target = dmp.state_dict()
    missing = [k for k in full_state if k.startswith(prefix) and k not in target]
    if missing:
        raise KeyError(f"state keys not in the model: {missing[:5]}")
    for key, full in full_state.items():
        if not key.startswith(prefix):
            continue
        dst = target[key]
        if isinstance(dst, ShardedTensor):
            for shard in dst.local_shards():
                offsets = shard.metadata.shard_offsets
                sizes = shard.metadata.shard_sizes
                index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
                shard.tensor.copy_(full[index])
        elif hasattr(dst, "copy_"):
            dst.copy_(full)
        else:
            raise TypeError(f"cannot load {key}: unsupported state type {type(dst).__name__}")


def plan_summary(plan) -> str:
    """The sharding plan as text (printed on rank 0 at start)."""
    return str(plan)
