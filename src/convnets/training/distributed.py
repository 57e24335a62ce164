"""Distributed data parallel through torchrun: one process per device, any number of machines.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process; without them the run is a
single process and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from convnets.device import resolve_device


@dataclass(frozen=True)
class Context:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Context:
    """Join the process group torchrun prepared (gloo on CPU, NCCL on GPU), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: Context, *values: float) -> list[float]:
    """Sum scalars over all ranks (identity for a single process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast(ctx: Context, value: object) -> object:
    """Rank 0's ``value`` on every rank (itself for a single process); any picklable value."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_lists(ctx: Context, items: list) -> list:
    """The concatenation of every rank's ``items``, in rank order, on every rank (``items`` for a single process)."""
    if not ctx.distributed:
        return list(items)
    lists: list[list] = [[] for _ in range(ctx.world_size)]
    dist.all_gather_object(lists, list(items))
    return [item for part in lists for item in part]


def all_min(ctx: Context, value: int) -> int:
    """The smallest of every rank's ``value`` (itself for a single process)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
