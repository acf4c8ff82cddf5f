"""Process group, device, sharding plan and the DistributedModelParallel wrap.

One code path for one process and for many: without a launcher, a single-process gloo group is
created so the model is still wrapped by DistributedModelParallel (world size 1). Launchers:
torchrun, and the deepspeed launcher (``deepspeed --num_nodes 1 --num_gpus N --no_local_rank
--module atjt_dist.train ...``; on CPU with ``DS_ACCELERATOR=cpu``): both set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, read through the env:// rendezvous.

Sharding. Every EmbeddingCollection table, the recommender's and the recognisers' alike, gets a
sharding type: ``dist.table_sharding[name]``, else ``dist.sharding``; 'auto' lets TorchRec's
planner choose for this topology (world size, ranks per host, device). The plan is printed on
rank 0, one line per table (:class:`ShardingSummary`). Model-parallel tables (table-, row-,
column-wise) are updated by FBGEMM's fused Adagrad inside the backward pass, configured per
table through ``apply_optimizer_in_backward`` (optim.py); data-parallel tables are replicated
tensors that TorchRec all-reduces with its own DDP and the dense backend's Adagrad updates.
Where TorchRec 1.8 / fbgemm-gpu-cpu 1.8 fall short (a CPU lookup bug, a sharding type missing for
sequence tables) the workaround lives in :mod:`atjt_dist.upstream`, to be deleted with the fix.
column_wise asks the planner for shards of about dim / world columns (:func:`_column_shard_dim`):
its default keeps tables of dim < 128 in one piece, i.e. table-wise.

Dense parameters: DMP's DDP (``dist.dense=ddp``), or none when a DeepSpeed engine owns them
(``dist.dense=deepspeed``, optim.DeepSpeedAdagrad), which then reduces their gradients. Only
DMP's DDP wrap moves the dense part to the device; :func:`place_dense` does it for every backend,
parameters and buffers (Dice's statistics) alike, so the joint model never straddles devices.

A dead peer on NCCL: NCCL reports it through its watchdog thread, not at the call site. With
``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` (set unless the user set it: :func:`nccl_environment`) the
watchdog aborts the communicators once ``dist.timeout_s`` passes, and the next wait on the
main thread raises, where faults.peer_failure turns it into the one-line error.

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

import numba
import torch
import torch.distributed as dist
from torch import nn

from .config import DistConfig
from .faults import restart_safe_store
from .upstream import fix_cpu_sequence_lookups, planner_sharding_type

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


def align_cpu_threads() -> int:
    """Give numba's parallel samplers torch's number of threads, and keep torch's; returns it.

    torchrun sets OMP_NUM_THREADS=1 per process, but numba starts its own pool with one thread
    per core, and with its OpenMP threading layer starting that pool also sets OpenMP's (so
    torch's) thread count to the number of cores: every rank would then run as many threads
    as there are cores, oversubscribing the machine (about 5x slower steps measured on 2 ranks
    of a 2-core machine). So the pool is started here, then both counts are set to torch's.
    numba's setting is per calling thread: the prefetch thread copies it (prefetch.DevicePrefetcher).
    """
    threads = torch.get_num_threads()
    numba.get_num_threads()  # starts numba's pool (and, with OpenMP, resets OpenMP's count)
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    torch.set_num_threads(threads)
    return threads


def init_distributed(cfg: DistConfig) -> DistContext:
    """Join torchrun's process group (RANK/WORLD_SIZE set) or create a single-process one,
    after aligning the CPU thread counts (:func:`align_cpu_threads`)."""
    align_cpu_threads()
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("dist.device=cuda but CUDA is not available; use dist.device=auto or cpu")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if want_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    # torchrun sets LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE (ranks on this host:
    # the planner's topology, table_row_wise's host)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", os.environ.get("WORLD_SIZE", 1))))
    device = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if backend == "nccl":
        for name, value in nccl_environment(os.environ).items():
            os.environ[name] = value
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    owns = False
    if not dist.is_initialized():
        if launched:
            # under torchrun, a key space of this restart's own (faults.restart_safe_store)
            store, rank, world = restart_safe_store(timeout)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
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


#: NCCL error handling (read by ProcessGroupNCCL when the group is created): 2 = CleanUpOnly,
#: the watchdog aborts the communicators of a timed-out or failed collective and the error is
#: raised on the main thread at the next wait, where it is reported in one line. (1 and 3 kill
#: the process from the watchdog thread, with no line of ours; 0 waits forever on a dead peer.)
NCCL_ERROR_HANDLING = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def nccl_environment(environ: "os._Environ | dict[str, str]") -> dict[str, str]:
    """The NCCL variables to set before the process group is created: NCCL_ERROR_HANDLING for
    the ones the user did not set (a user's own value wins; see the README's faults section)."""
    return {k: v for k, v in NCCL_ERROR_HANDLING.items() if k not in environ}


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


@dataclass(frozen=True)
class TableInfo:
    """An embedding table of the model: name, rows, dimension and the module holding it."""

    name: str
    rows: int
    dim: int
    module: str


def embedding_tables(module: nn.Module) -> list[TableInfo]:
    """Every EmbeddingCollection table of ``module`` (the recommender's and the recognisers')."""
    from torchrec import EmbeddingCollection

    tables = []
    for path, m in module.named_modules():
        if isinstance(m, EmbeddingCollection):
            tables.extend(TableInfo(c.name, c.num_embeddings, c.embedding_dim, path) for c in m.embedding_configs())
    return tables


def table_sharding_types(tables: list[TableInfo], default: str, overrides: dict[str, str]) -> dict[str, str]:
    """Each table's requested sharding type ('auto' = the planner chooses).

    ``overrides`` (dist.table_sharding) must name tables of the model: a typo would otherwise
    silently leave a table on the default.
    """
    names = [t.name for t in tables]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"dist.table_sharding names {', '.join(repr(u) for u in unknown)}, not tables of this model; its tables are: {', '.join(names)}")
    for name, kind in [("dist.sharding", default)] + [(f"dist.table_sharding.{k}", v) for k, v in overrides.items()]:
        if kind != "auto" and kind not in SHARDING_TYPES:
            raise ValueError(f"{name}={kind!r}: expected auto or one of {', '.join(SHARDING_TYPES)}")
    return {n: overrides.get(n, default) for n in names}


def _column_shard_dim(dim: int, world: int) -> int:
    """Smallest column-shard width asked of the planner for a column_wise table.

    TorchRec's default (128 columns) leaves the small tables of these models (dim 8-64) in one
    shard, i.e. table-wise; asking for about dim/world columns (at least 4, FBGEMM's
    granularity) splits a requested column_wise table over up to ``world`` ranks.
    """
    return max(4, dim // max(world, 1))


def shard_model(module: nn.Module, ctx: DistContext, cfg: DistConfig) -> tuple[nn.Module, "ShardingSummary"]:
    """Wrap ``module`` in DistributedModelParallel with a plan for every embedding table.

    Each table's sharding type comes from ``cfg.table_sharding`` or else ``cfg.sharding``;
    'auto' leaves the choice to TorchRec's planner for this topology (world size, ranks per
    host, device type). With ``cfg.dense == 'deepspeed'`` DMP does not wrap the dense part in
    DDP: the DeepSpeed engine reduces (and partitions) the dense gradients instead.
    Returns (dmp, summary); ``str(summary)`` is the plan, one line per table.
    """
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
    from torchrec.distributed.types import ShardingEnv

    tables = embedding_tables(module)
    requested = table_sharding_types(tables, cfg.sharding, cfg.table_sharding)
    env = ShardingEnv.from_process_group(dist.group.WORLD)
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=ctx.world, local_world_size=ctx.local_world),
        kernel_config=KernelConfig(compute_device=ctx.device.type),
    )
    dims = {t.name: t.dim for t in tables}
    constraints = {
        name: ParameterConstraints(
            sharding_types=[planner_sharding_type(kind, ctx.world, ctx.local_world)],
            min_partition=_column_shard_dim(dims[name], ctx.world) if kind == "column_wise" else None,
        )
        for name, kind in requested.items()
        if kind != "auto"
    }
    sharders = [EmbeddingCollectionSharder()]
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints or None)
    plan = planner.collective_plan(module, sharders, dist.group.WORLD)
    if cfg.dense == "deepspeed":
        wrap = dict(init_data_parallel=False)
    else:
        # Every dense parameter takes part in every step (joint.JointModel.idle_dense_parameters),
        # but which recogniser computes changes with the phase: no static graph.
        wrap = dict(data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=False))
    dmp = DistributedModelParallel(module, env=env, device=ctx.device, plan=plan, sharders=sharders, **wrap)
    place_dense(dmp, ctx.device)
    if ctx.device.type == "cpu":
        fix_cpu_sequence_lookups(dmp)
    return dmp, ShardingSummary.from_plan(plan, tables, requested)


@torch.no_grad()
def place_dense(module: nn.Module, device: torch.device) -> int:
    """Move every parameter and buffer outside TorchRec's sharded modules to ``device``.

    DMP moves the dense part only inside its DDP wrap; under ``dist.dense=deepspeed`` it does not,
    and a module's buffers (Dice's running statistics) would stay behind on the host. Between host and GPU
    parameters keep their identity (``.data`` is replaced); the dense optimisers are built after
    this in any case (trainer.Trainer). Sharded modules are left alone: their shards already sit where the plan put them.
    Returns the number of tensors moved.
    """
    try:
        from torchrec.distributed.types import ShardedModule
    except ImportError:  # benchmarks/gpu_check.py's TorchRec stand-in: nothing is sharded
        ShardedModule = ()  # noqa: N806 - isinstance(m, ()) is False

    moved = 0

    def visit(m: nn.Module) -> None:
        nonlocal moved
        if isinstance(m, ShardedModule):
            return
        for name, param in m.named_parameters(recurse=False):
            if param.device != device:
                data = param.data.to(device)
                if torch._has_compatible_shallow_copy_type(param, data):  # host <-> GPU
                    param.data = data
                else:  # e.g. to "meta": a new Parameter (the optimisers are built after this)
                    m._parameters[name] = nn.Parameter(data, requires_grad=param.requires_grad)
                moved += 1
        for name, buf in m.named_buffers(recurse=False):
            if buf is not None and buf.device != device:
                m._buffers[name] = buf.to(device)
                moved += 1
        for child in m.children():
            visit(child)

    visit(module)
    return moved


def misplaced_tensors(module: nn.Module, device: torch.device) -> list[str]:
    """Names of ``module``'s parameters and buffers (local shards included) not on ``device``."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    def local(t) -> list[torch.Tensor]:
        return [s.tensor for s in t.local_shards()] if isinstance(t, ShardedTensor) else [t]

    named = list(module.named_parameters()) + list(module.named_buffers()) + list(module.state_dict().items())

    def elsewhere(x) -> bool:
        return hasattr(x, "device") and (x.device.type != device.type or (device.index is not None and x.device.index != device.index))

    return sorted({name for name, t in named if t is not None for x in local(t) if elsewhere(x)})


@dataclass
class ShardingSummary:
    """The chosen plan, table by table (what rank 0 prints at start)."""

    lines: list[str]
    types: dict[str, str]  # table -> sharding type as planned
    plan: object  # torchrec ShardingPlan

    @classmethod
    def from_plan(cls, plan, tables: list[TableInfo], requested: dict[str, str]) -> "ShardingSummary":
        """One line per table, in the model's order: name, rows x dim, type, kernel, ranks,
        shard sizes; e.g. ``rec_item  26745x8  row_wise  fused  ranks 0-1  shards 13373x8,13372x8``."""
        info = {t.name: t for t in tables}
        order = {t.name: i for i, t in enumerate(tables)}
        entries = sorted(((n, ps) for mp in plan.plan.values() for n, ps in mp.items()), key=lambda e: order.get(e[0], len(order)))
        width = max((len(n) for n, _ in entries), default=0)
        lines, kinds = [], {}
        for name, ps in entries:
            kinds[name] = ps.sharding_type
            t = info.get(name)
            shape = f"{t.rows}x{t.dim}" if t is not None else "?"
            ranks = sorted(set(ps.ranks or []))
            line = f"{name:<{width}} {shape:>10}  {ps.sharding_type:<13} {ps.compute_kernel:<6} ranks {_ranges(ranks) if ranks else 'all'}"
            shards = getattr(ps.sharding_spec, "shards", None) or []
            if len(shards) > 1:
                line += "  shards " + ",".join("x".join(map(str, sh.shard_sizes)) for sh in shards)
            if requested.get(name) == "table_row_wise":
                line += "  (table_row_wise: one host, rows over its ranks)"
            elif requested.get(name) == "auto":
                line += "  (planner's choice)"
            lines.append(line)
        return cls(lines, kinds, plan)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, i = [], 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(out)


# -- data-parallel tables on CPU ---------------------------------------------------------------


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
