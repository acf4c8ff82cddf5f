"""Small collective helpers that keep losses and statistics exact across ranks.

A quantity computed over "the global batch" (a loss normaliser, Dice's batch moments, a metric
sum) is the sum of per-rank parts. These helpers return that sum on every rank; with no process
group, or a group of one, they are the identity. The differentiable variant routes gradients
back to every rank's local part (the backward of a sum all-reduce is a sum all-reduce).
The object collectives (barrier, gather, broadcast) serve the checkpoint and run-directory
bookkeeping, where every rank must agree on a name or a verdict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size(group=None) -> int:
    """Processes in the group (1 without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def rank(group=None) -> int:
    """This process's rank (0 without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def global_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``t`` over ranks, without gradient (detached)."""
    if world_size(group) == 1:
        return t.detach()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def global_sum_differentiable(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``t`` over ranks; the gradient reaches every rank's ``t``."""
    if world_size(group) == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM, group=group or dist.group.WORLD)


def barrier() -> None:
    """Wait for every rank (nothing to wait for alone)."""
    if world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (the other ranks' argument is ignored)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
